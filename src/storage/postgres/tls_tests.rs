//! Unit tests of `tls.rs`.

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
            if request[..4] != 8u32.to_be_bytes() || request[4..] != 80_877_103u32.to_be_bytes() {
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
    let settings = opts.tls_settings();
    let client = tokio::time::timeout(Duration::from_secs(10), config.connect(tls))
        .await
        .expect("the client hung");
    let client_error = match client {
        Ok(_) => "connected".to_owned(),
        Err(e) => describe_connect_error(&e, &settings),
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
    assert_eq!(
        client.matches("certificate verify failed").count(),
        1,
        "said once: {client}"
    );
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

/// verify-full without sslrootcert uses the system store, which does not trust the self-signed
/// certificate; the error says so.
#[tokio::test]
async fn verify_full_without_root_uses_system_store() {
    let dir = Dir::new();
    let (cert, key, _) = localhost_cert(&dir);
    let (port, rx) = server(cert, key);
    let (seen, client) = handshake(to_localhost(port).ssl_mode(SslMode::VerifyFull), rx).await;
    assert!(seen.is_err(), "{seen:?}");
    assert!(client.contains("certificate verify failed"), "{client}");
    assert!(
        client.ends_with("(sslmode=verify-full, no sslrootcert: the system's CAs)"),
        "{client}"
    );
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

/// require with an sslrootcert that does not sign the server's certificate fails, as libpq (a root
/// file turns verification on); the error gives OpenSSL's reason once (not its long form), the
/// mode and the file.
#[tokio::test]
async fn require_with_root_verifies_the_chain() {
    let dir = Dir::new();
    let (cert, key, _) = localhost_cert(&dir);
    let (other, _) = self_signed("other-ca", None);
    let other = dir.write("other.pem", &other.to_pem().unwrap());
    let (port, rx) = server(cert, key);
    let opts = to(port, "127.0.0.1")
        .ssl_mode(SslMode::Require)
        .ssl_root_cert(&other);
    let (seen, client) = handshake(opts, rx).await;
    assert!(seen.is_err(), "{seen:?}");
    assert!(
        client.starts_with("error performing TLS handshake: certificate verify failed: "),
        "{client}"
    );
    assert_eq!(client.matches("certificate verify failed").count(), 1);
    assert!(
        !client.contains("error:0A"),
        "OpenSSL's long form: {client}"
    );
    assert!(
        client.ends_with(&format!(
            "(sslmode=require, sslrootcert={})",
            other.display()
        )),
        "{client}"
    );
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

/// A key that does not match the certificate, or an encrypted key, is refused (and OpenSSL never
/// prompts for a passphrase).
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

/// TLS modes that need the handshake refuse a host given only as hostaddr; prefer and disable do
/// not.
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

/// sslmode=disable and Unix sockets ignore the TLS files, as libpq; `sslrootcert=system` is only
/// for verify-full.
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
