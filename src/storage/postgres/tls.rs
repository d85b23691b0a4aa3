//! The TLS connector: one `postgres_openssl::MakeTlsConnector` for every `sslmode`, set up as
//! libpq would.
//!
//! | sslmode | chain | host name |
//! |---|---|---|
//! | `disable` | (never used) | |
//! | `prefer`, `require` | not verified, unless `sslrootcert` is set (then verified, as libpq) | no |
//! | `verify-ca` | against `sslrootcert`, or the system store when unset | no |
//! | `verify-full` | against `sslrootcert`, or the system store when unset | yes |
//!
//! postgres-openssl verifies chain and host name by default (so its `require` is really
//! `verify-full`); here verification is turned off explicitly for libpq's `prefer` / `require`,
//! and the host-name check is turned off per connection (`set_callback`) for `verify-ca`.
//! `sslrootcert` replaces the system store (only its CAs are trusted); `sslrootcert=system` keeps
//! the system store and, as in libpq, is only allowed with `verify-full`. `sslcert` / `sslkey`
//! present a client certificate. Files are read here, when connecting, so a missing or unreadable
//! one is a `StorageError::Tls` naming the setting.

use std::path::Path;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;

use super::config::{PostgresOptions, SslMode, TlsSettings};
use crate::StorageError;

/// The connector of the pool's connections.
pub(crate) fn make_tls(opts: &PostgresOptions) -> Result<MakeTlsConnector, StorageError> {
    connector(&opts.tls_settings())
}

/// The connector of the LISTEN connection: differs from [`make_tls`]'s only when the listener DSN
/// sets its own TLS settings.
pub(crate) fn make_listener_tls(opts: &PostgresOptions) -> Result<MakeTlsConnector, StorageError> {
    connector(&opts.listener_tls_settings())
}

const ROOTCERT: &str = "RC_DB_SSLROOTCERT / sslrootcert";
const CERT: &str = "RC_DB_SSLCERT / sslcert";
const KEY: &str = "RC_DB_SSLKEY / sslkey";

fn tls_err(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Tls(format!("{what}: {e}"))
}

/// Builds the connector for one endpoint's settings.
pub(crate) fn connector(s: &TlsSettings) -> Result<MakeTlsConnector, StorageError> {
    let mut b = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| tls_err("creating the TLS context", e))?;
    // libpq ignores every TLS setting with sslmode=disable and on Unix sockets: so do we, and
    // do not even read the files.
    if s.mode == SslMode::Disable || s.unix_only {
        b.set_verify(SslVerifyMode::NONE);
        return Ok(MakeTlsConnector::new(b.build()));
    }
    if !s.has_host_name {
        // tokio-postgres refuses any TLS handshake without a host name.
        if s.mode == SslMode::Prefer {
            tracing::warn!("sslmode=prefer with only hostaddr: the connection fails if the server offers TLS; add host= (the name to verify) or use sslmode=disable");
        } else {
            return Err(StorageError::Tls(format!(
                "sslmode={} needs a host name (host=…), not only hostaddr: TLS sends and verifies the name",
                s.mode
            )));
        }
    }
    let system_roots = s.rootcert.as_deref() == Some(Path::new("system"));
    if system_roots && s.mode != SslMode::VerifyFull {
        return Err(StorageError::Tls(format!(
            "{ROOTCERT}: `system` needs sslmode=verify-full (any public CA would do otherwise), not {}",
            s.mode
        )));
    }
    let verify_chain =
        matches!(s.mode, SslMode::VerifyCa | SslMode::VerifyFull) || s.rootcert.is_some();
    if verify_chain {
        b.set_verify(SslVerifyMode::PEER);
        match &s.rootcert {
            // `SslConnector::builder` has loaded the system store already.
            None => {}
            Some(_) if system_roots => {}
            Some(path) => b.set_cert_store(trust_store(path)?),
        }
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    match (&s.cert, &s.key) {
        (Some(cert), Some(key)) => client_identity(&mut b, cert, key)?,
        (Some(_), None) => {
            return Err(StorageError::Tls(format!(
                "{KEY}: not set, but {CERT} is: the client certificate needs its key"
            )));
        }
        (None, Some(_)) => {
            return Err(StorageError::Tls(format!("{CERT}: not set, but {KEY} is")));
        }
        (None, None) => {}
    }
    let mut connector = MakeTlsConnector::new(b.build());
    let check_host_name = s.mode == SslMode::VerifyFull;
    connector.set_callback(move |config, _domain| {
        config.set_verify_hostname(check_host_name);
        Ok(())
    });
    Ok(connector)
}

fn read(setting: &str, path: &Path) -> Result<Vec<u8>, StorageError> {
    std::fs::read(path)
        .map_err(|e| StorageError::Tls(format!("{setting}: {}: {e}", path.display())))
}

/// PEM certificates of `path`, at least one.
fn certificates(setting: &str, path: &Path) -> Result<Vec<X509>, StorageError> {
    let pem = read(setting, path)?;
    let certs = X509::stack_from_pem(&pem).map_err(|e| {
        StorageError::Tls(format!(
            "{setting}: {}: not PEM certificates: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(StorageError::Tls(format!(
            "{setting}: {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}

/// A store trusting only the certificates of `path`.
fn trust_store(path: &Path) -> Result<openssl::x509::store::X509Store, StorageError> {
    let mut store = X509StoreBuilder::new().map_err(|e| tls_err("creating the trust store", e))?;
    for cert in certificates(ROOTCERT, path)? {
        store
            .add_cert(cert)
            .map_err(|e| StorageError::Tls(format!("{ROOTCERT}: {}: {e}", path.display())))?;
    }
    Ok(store.build())
}

fn client_identity(
    b: &mut SslConnectorBuilder,
    cert: &Path,
    key: &Path,
) -> Result<(), StorageError> {
    let mut chain = certificates(CERT, cert)?.into_iter();
    if let Some(leaf) = chain.next() {
        b.set_certificate(&leaf)
            .map_err(|e| StorageError::Tls(format!("{CERT}: {}: {e}", cert.display())))?;
    }
    for extra in chain {
        b.add_extra_chain_cert(extra)
            .map_err(|e| StorageError::Tls(format!("{CERT}: {}: {e}", cert.display())))?;
    }
    let pem = read(KEY, key)?;
    // A callback that supplies no passphrase: without it OpenSSL would prompt on the terminal for
    // an encrypted key.
    let pkey = PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|e| {
        StorageError::Tls(format!(
            "{KEY}: {}: not an unencrypted PEM private key (sslpassword is not supported): {e}",
            key.display()
        ))
    })?;
    // OpenSSL compares key and certificate in both calls.
    b.set_private_key(&pkey)
        .and_then(|()| b.check_private_key())
        .map_err(|e| {
            StorageError::Tls(format!(
                "{KEY}: {} does not match the certificate in {}: {e}",
                key.display(),
                cert.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, TcpListener};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
    use openssl::symm::Cipher;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    use super::*;
    use crate::error::describe_pg_error;

    /// A scratch directory for certificate files, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("rc-tls-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A self-signed P-256 certificate for `cn`, with `dns` as its subject alternative name.
    fn self_signed(cn: &str, dns: Option<&str>) -> (X509, PKey<Private>) {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
            .unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        if let Some(dns) = dns {
            let san = SubjectAlternativeName::new()
                .dns(dns)
                .build(&b.x509v3_context(None, None))
                .unwrap();
            b.append_extension(san).unwrap();
        }
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (b.build(), key)
    }

    /// The server certificate (CN and SAN `localhost`) in PEM, with its key.
    fn localhost_cert(dir: &Dir) -> (X509, PKey<Private>, PathBuf) {
        let (cert, key) = self_signed("localhost", Some("localhost"));
        let path = dir.write("server.pem", &cert.to_pem().unwrap());
        (cert, key, path)
    }

    /// What the test server saw: a completed handshake (with the client certificate's CN, if
    /// one was sent) or the reason it failed.
    type Seen = Result<Option<String>, String>;

    /// A one-connection server on 127.0.0.1 that answers PostgreSQL's SSLRequest with `S`, does
    /// the TLS handshake with `cert` (asking for, not requiring, a client certificate), reports
    /// the outcome and closes.
    fn server(cert: X509, key: PKey<Private>) -> (u16, mpsc::Receiver<Seen>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_certificate(&cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        acceptor.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
        let acceptor = acceptor.build();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let seen = (|| -> Seen {
                let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                let mut request = [0u8; 8];
                s.read_exact(&mut request).map_err(|e| e.to_string())?;
                // Length 8, then the SSLRequest code 80877103 (1234 << 16 | 5679).
                if request[..4] != 8u32.to_be_bytes() || request[4..] != 80_877_103u32.to_be_bytes()
                {
                    return Err(format!("not an SSLRequest: {request:?}"));
                }
                s.write_all(b"S").map_err(|e| e.to_string())?;
                let tls = acceptor
                    .accept(s)
                    .map_err(|e| format!("handshake failed: {e}"))?;
                Ok(tls.ssl().peer_certificate().and_then(|c| {
                    let cn = c.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
                    String::from_utf8(cn.data().as_slice().to_vec()).ok()
                }))
            })();
            let _ = tx.send(seen);
        });
        (port, rx)
    }

    /// Connects with `opts` to the test server; returns what the server saw and the client's
    /// error (the server always closes after the handshake, so the client always fails).
    async fn handshake(opts: PostgresOptions, rx: mpsc::Receiver<Seen>) -> (Seen, String) {
        let config = opts.pg_config("tls-test").unwrap();
        let tls = make_tls(&opts).unwrap();
        let client = tokio::time::timeout(Duration::from_secs(10), config.connect(tls))
            .await
            .expect("the client hung");
        let client_error = match client {
            Ok(_) => "connected".to_owned(),
            Err(e) => describe_pg_error(&e),
        };
        let seen = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the server saw no connection");
        (seen, client_error)
    }

    fn to(port: u16, host: &str) -> PostgresOptions {
        PostgresOptions::new()
            .host(host)
            .port(port)
            .user("u")
            .password("s3cr3t-PW")
    }

    fn to_localhost(port: u16) -> PostgresOptions {
        to(port, "localhost").hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// verify-full to `localhost` trusting the server's certificate completes the handshake.
    #[tokio::test]
    async fn verify_full_with_root_and_matching_name_passes() {
        let dir = Dir::new();
        let (cert, key, root) = localhost_cert(&dir);
        let (port, rx) = server(cert, key);
        let opts = to_localhost(port)
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_cert(root);
        let (seen, client) = handshake(opts, rx).await;
        assert_eq!(seen, Ok(None), "client said: {client}");
    }

    /// verify-full to `127.0.0.1` fails on the host name although the chain is trusted.
    #[tokio::test]
    async fn verify_full_checks_the_host_name() {
        let dir = Dir::new();
        let (cert, key, root) = localhost_cert(&dir);
        let (port, rx) = server(cert, key);
        let opts = to(port, "127.0.0.1")
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_cert(root);
        let (seen, client) = handshake(opts, rx).await;
        assert!(seen.is_err(), "{seen:?}");
        assert!(client.contains("IP address mismatch"), "{client}");
    }

    /// verify-ca to `127.0.0.1` checks the chain only, so the handshake completes.
    #[tokio::test]
    async fn verify_ca_skips_the_host_name() {
        let dir = Dir::new();
        let (cert, key, root) = localhost_cert(&dir);
        let (port, rx) = server(cert, key);
        let opts = to(port, "127.0.0.1")
            .ssl_mode(SslMode::VerifyCa)
            .ssl_root_cert(root);
        let (seen, client) = handshake(opts, rx).await;
        assert_eq!(seen, Ok(None), "client said: {client}");
    }

    /// verify-full without sslrootcert uses the system store, which does not trust the self-signed certificate.
    #[tokio::test]
    async fn verify_full_without_root_uses_system_store() {
        let dir = Dir::new();
        let (cert, key, _) = localhost_cert(&dir);
        let (port, rx) = server(cert, key);
        let (seen, client) = handshake(to_localhost(port).ssl_mode(SslMode::VerifyFull), rx).await;
        assert!(seen.is_err(), "{seen:?}");
        assert!(client.contains("certificate verify failed"), "{client}");
    }

    /// require without sslrootcert verifies nothing (libpq), so any certificate and name pass.
    #[tokio::test]
    async fn require_without_root_verifies_nothing() {
        let dir = Dir::new();
        let (cert, key, _) = localhost_cert(&dir);
        let (port, rx) = server(cert, key);
        let (seen, client) = handshake(to(port, "127.0.0.1").ssl_mode(SslMode::Require), rx).await;
        assert_eq!(seen, Ok(None), "client said: {client}");
    }

    /// require with an sslrootcert that does not sign the server's certificate fails, as libpq (a root file turns verification on).
    #[tokio::test]
    async fn require_with_root_verifies_the_chain() {
        let dir = Dir::new();
        let (cert, key, _) = localhost_cert(&dir);
        let (other, _) = self_signed("other-ca", None);
        let other = dir.write("other.pem", &other.to_pem().unwrap());
        let (port, rx) = server(cert, key);
        let opts = to(port, "127.0.0.1")
            .ssl_mode(SslMode::Require)
            .ssl_root_cert(other);
        let (seen, client) = handshake(opts, rx).await;
        assert!(seen.is_err(), "{seen:?}");
        assert!(client.contains("certificate verify failed"), "{client}");
    }

    /// sslcert/sslkey reach the connector: the server receives the client certificate.
    #[tokio::test]
    async fn client_certificate_is_presented() {
        let dir = Dir::new();
        let (cert, key, root) = localhost_cert(&dir);
        let (client_cert, client_key) = self_signed("rc-client", None);
        let c = dir.write("client.pem", &client_cert.to_pem().unwrap());
        let k = dir.write(
            "client.key",
            &client_key.private_key_to_pem_pkcs8().unwrap(),
        );
        let (port, rx) = server(cert, key);
        let opts = to_localhost(port)
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_cert(root)
            .ssl_cert(c)
            .ssl_key(k);
        let (seen, client) = handshake(opts, rx).await;
        assert_eq!(
            seen,
            Ok(Some("rc-client".to_owned())),
            "client said: {client}"
        );
    }

    fn tls_error(opts: &PostgresOptions) -> String {
        match make_tls(opts) {
            Err(StorageError::Tls(m)) => m,
            Err(other) => panic!("not a TLS error: {other}"),
            Ok(_) => panic!("no error"),
        }
    }

    /// A missing root, certificate or key file is a TLS error naming the setting and the path.
    #[test]
    fn missing_files_name_the_setting() {
        let dir = Dir::new();
        let (cert, key) = self_signed("c", None);
        let c = dir.write("c.pem", &cert.to_pem().unwrap());
        let k = dir.write("k.pem", &key.private_key_to_pem_pkcs8().unwrap());
        let base = || to(5432, "db").ssl_mode(SslMode::VerifyFull);
        let m = tls_error(&base().ssl_root_cert("/nope.pem"));
        assert!(
            m.starts_with("RC_DB_SSLROOTCERT / sslrootcert: /nope.pem: No such file"),
            "{m}"
        );
        let m = tls_error(&base().ssl_cert("/nope-cert.pem").ssl_key(&k));
        assert!(
            m.starts_with("RC_DB_SSLCERT / sslcert: /nope-cert.pem: No such file"),
            "{m}"
        );
        let m = tls_error(&base().ssl_cert(&c).ssl_key("/nope-key.pem"));
        assert!(
            m.starts_with("RC_DB_SSLKEY / sslkey: /nope-key.pem: No such file"),
            "{m}"
        );
        let m = tls_error(&base().ssl_cert(&c));
        assert!(m.starts_with("RC_DB_SSLKEY / sslkey: not set"), "{m}");
        let m = tls_error(&base().ssl_key(&k));
        assert!(m.starts_with("RC_DB_SSLCERT / sslcert: not set"), "{m}");
        let garbage = dir.write("garbage.pem", b"not a certificate");
        let m = tls_error(&base().ssl_root_cert(&garbage));
        assert!(m.starts_with("RC_DB_SSLROOTCERT / sslrootcert:"), "{m}");
        assert!(make_tls(&base().ssl_cert(&c).ssl_key(&k)).is_ok());
    }

    /// A key that does not match the certificate, or an encrypted key, is refused (and OpenSSL never prompts for a passphrase).
    #[test]
    fn bad_client_keys_are_refused() {
        let dir = Dir::new();
        let (cert, _) = self_signed("c", None);
        let (_, other_key) = self_signed("d", None);
        let c = dir.write("c.pem", &cert.to_pem().unwrap());
        let wrong = dir.write("wrong.pem", &other_key.private_key_to_pem_pkcs8().unwrap());
        let encrypted = dir.write(
            "enc.pem",
            &other_key
                .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"pw")
                .unwrap(),
        );
        let base = || to(5432, "db").ssl_mode(SslMode::Require).ssl_cert(&c);
        let m = tls_error(&base().ssl_key(&wrong));
        assert!(
            m.starts_with("RC_DB_SSLKEY / sslkey:") && m.contains("does not match"),
            "{m}"
        );
        let m = tls_error(&base().ssl_key(&encrypted));
        assert!(
            m.starts_with("RC_DB_SSLKEY / sslkey:") && m.contains("unencrypted"),
            "{m}"
        );
    }

    /// TLS modes that need the handshake refuse a host given only as hostaddr; prefer and disable do not.
    #[test]
    fn tls_needs_a_host_name() {
        let addr_only = || PostgresOptions::from_dsn("hostaddr=10.0.0.1 user=u").unwrap();
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert!(
                tls_error(&addr_only().ssl_mode(mode)).contains("needs a host name"),
                "{mode}"
            );
        }
        for mode in [SslMode::Prefer, SslMode::Disable] {
            assert!(make_tls(&addr_only().ssl_mode(mode)).is_ok(), "{mode}");
        }
    }

    /// sslmode=disable and Unix sockets ignore the TLS files, as libpq; `sslrootcert=system` is only for verify-full.
    #[test]
    fn files_ignored_when_tls_is_not_used_and_system_roots() {
        let missing = |o: PostgresOptions| {
            o.ssl_root_cert("/nope.pem")
                .ssl_cert("/nope.pem")
                .ssl_key("/nope.pem")
        };
        assert!(make_tls(&missing(to(5432, "db").ssl_mode(SslMode::Disable))).is_ok());
        assert!(make_tls(&missing(
            to(5432, "/var/run/postgresql").ssl_mode(SslMode::VerifyFull)
        ))
        .is_ok());
        assert!(make_tls(
            &to(5432, "db")
                .ssl_mode(SslMode::VerifyFull)
                .ssl_root_cert("system")
        )
        .is_ok());
        assert!(tls_error(
            &to(5432, "db")
                .ssl_mode(SslMode::VerifyCa)
                .ssl_root_cert("system")
        )
        .contains("verify-full"));
    }

    /// The listener's connector follows the listener DSN's TLS settings, the pool's its own.
    #[test]
    fn listener_connector_has_its_own_settings() {
        let opts = to(5432, "pgbouncer")
            .ssl_mode(SslMode::Require)
            .listener_dsn("host=primary sslmode=verify-full sslrootcert=/nope.pem")
            .unwrap();
        assert!(make_tls(&opts).is_ok());
        match make_listener_tls(&opts) {
            Err(StorageError::Tls(m)) => assert!(m.contains("/nope.pem"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }
}
