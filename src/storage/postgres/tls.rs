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
//! one is a `StorageError::Tls` naming the setting. When a connection fails for a TLS reason,
//! [`describe_connect_error`] says so once, with the mode and the files that were used.

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;

use super::config::{PostgresOptions, SslMode, TlsSettings};
use crate::error::describe_pg_error;
use crate::StorageError;

/// The connector of the pool's connections.
pub(crate) fn make_tls(opts: &PostgresOptions) -> Result<MakeTlsConnector, StorageError> {
    cached(&opts.tls_settings())
}

/// The connector of the LISTEN connection: differs from [`make_tls`]'s only when the listener DSN
/// sets its own TLS settings.
pub(crate) fn make_listener_tls(opts: &PostgresOptions) -> Result<MakeTlsConnector, StorageError> {
    cached(&opts.listener_tls_settings())
}

/// A cached connector for `s`. Building one loads the system CA bundle, about 20 ms on the
/// machines we measure on, which dominated `connect`; so each distinct configuration is built
/// once per process. The key includes the files' modification times, so a rotated certificate
/// is read again by the next connect.
fn cached(s: &TlsSettings) -> Result<MakeTlsConnector, StorageError> {
    type Entry = (TlsSettings, [Option<SystemTime>; 3], MakeTlsConnector);
    static CACHE: OnceLock<Mutex<Vec<Entry>>> = OnceLock::new();
    let stamp = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| m.modified().ok())
    };
    let stamps = [stamp(&s.rootcert), stamp(&s.cert), stamp(&s.key)];
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    {
        // A poisoned lock only means another thread panicked mid-lookup; the list is still valid.
        let entries = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, c)) = entries.iter().find(|(k, t, _)| k == s && *t == stamps) {
            return Ok(c.clone());
        }
    }
    let made = connector(s)?;
    let mut entries = cache.lock().unwrap_or_else(|e| e.into_inner());
    if entries.len() >= 16 {
        entries.remove(0); // a process uses a handful of configurations; keep the newest
    }
    entries.push((s.clone(), stamps, made.clone()));
    Ok(made)
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

/// The cause of a failed connection attempt made with `s`, for `StorageError::Connect`:
/// [`describe_pg_error`]'s text and, where TLS is why, the settings that were used, so that the
/// message says what to change. A failed handshake gets OpenSSL's reason instead of its long form
/// (code, function, source file and line) and `(sslmode=…, sslrootcert=…, sslcert=…)`; a server
/// refusing a plain connection (`hostnossl … reject`) under `sslmode=disable` gets the mode to
/// change. It names files, never a password.
pub(crate) fn describe_connect_error(e: &tokio_postgres::Error, s: &TlsSettings) -> String {
    let mut cause = describe_pg_error(e);
    let mut source = std::error::Error::source(e);
    let mut openssl_error = None;
    while let Some(err) = source {
        if let Some(ssl) = err.downcast_ref::<openssl::ssl::Error>() {
            openssl_error = Some(ssl);
            break;
        }
        source = err.source();
    }
    // tokio-postgres's own TLS failures (the server answered the SSLRequest with "no") carry no
    // OpenSSL error, only this text.
    let handshake = openssl_error.is_some() || e.to_string() == "error performing TLS handshake";
    if let Some(stack) = openssl_error.and_then(|ssl| ssl.ssl_error()) {
        for err in stack.errors() {
            if let Some(reason) = err.reason() {
                cause = cause.replace(&err.to_string(), reason);
            }
        }
    }
    if handshake {
        cause.push_str(&format!(" ({})", summary(s)));
    } else if s.mode == SslMode::Disable && refused_without_tls(e) {
        cause.push_str(" (sslmode=disable, and the server accepts this connection only over TLS: set sslmode=require or a verify mode)");
    }
    cause
}

/// `sslmode=…` and the files of `s` that take part in a handshake.
fn summary(s: &TlsSettings) -> String {
    let mut parts = vec![format!("sslmode={}", s.mode)];
    match &s.rootcert {
        Some(root) => parts.push(format!("sslrootcert={}", root.display())),
        None if matches!(s.mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            parts.push("no sslrootcert: the system's CAs".to_owned());
        }
        None => {}
    }
    if let Some(cert) = &s.cert {
        parts.push(format!("sslcert={}", cert.display()));
    }
    parts.join(", ")
}

/// The server's refusal of a connection for want of TLS: `pg_hba.conf rejects connection for
/// host …, no encryption` (SQLSTATE 28000), recognised by its English text.
fn refused_without_tls(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            && db.message().contains("no encryption")
    })
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
