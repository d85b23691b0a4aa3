//! TLS against a real PostgreSQL: each test starts a throwaway cluster with `ssl=on`, a server
//! certificate (SAN `localhost` only) signed by a CA the test makes, that CA as the server's
//! `ssl_ca_file` (for client certificates), and the `pg_hba.conf` the test needs. The superuser
//! `postgres` keeps plain `trust` access (the harness connects without TLS); the application
//! role, which owns nothing, gets what each test's rules say. Instances run as that role.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509NameBuilder, X509};
use resilient_circuit::admin::AdminSession;
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{State, Storage, StorageError};

use crate::support::breakers::{fail, trip_fast, Watched};
use crate::support::{unique_key, Cluster, TestRole};

/// A password put in every DSN: the servers here never ask for it, and no message may show it.
const PASSWORD: &str = "Tls-Secret-pw7";

/// `pg_hba.conf` lines every cluster here starts with: local and the superuser over plain TCP
/// (the harness's own connections, made without TLS).
const ADMIN_HBA: &str = "local all all trust\nhost all postgres 127.0.0.1/32 trust\n";

/// Everyone else: trusted, with or without TLS.
const TRUST: &str = "host all all 127.0.0.1/32 trust\n";
/// Everyone else must use TLS.
const DEMAND_TLS: &str =
    "hostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 trust\n";
/// Everyone else must use TLS and present a certificate whose CN is the role's name.
const CERT_AUTH: &str =
    "hostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 cert\n";

fn p256_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("P-256");
    PKey::from_ec_key(EcKey::generate(&group).expect("EC key")).expect("PKey")
}

/// What a certificate is for.
enum Kind<'a> {
    /// A self-signed CA.
    Ca,
    /// A server certificate for these DNS names.
    Server(&'a [&'a str]),
    /// A client certificate.
    Client,
}

/// A certificate for `cn` and `key`, signed by `issuer` (or by itself), valid for two days.
fn certificate(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    kind: Kind<'_>,
) -> X509 {
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_nid(Nid::COMMONNAME, cn).expect("CN");
    let name = name.build();
    let mut b = X509::builder().expect("builder");
    b.set_version(2).expect("v3");
    let mut serial = BigNum::new().expect("bn");
    serial
        .rand(64, MsbOption::MAYBE_ZERO, false)
        .expect("serial");
    b.set_serial_number(&serial.to_asn1_integer().expect("asn1"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(issuer.map_or(&name, |(ca, _)| ca.subject_name()))
        .expect("issuer");
    b.set_pubkey(key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("now"))
        .expect("not before");
    b.set_not_after(&Asn1Time::days_from_now(2).expect("later"))
        .expect("not after");
    match kind {
        Kind::Ca => {
            let bc = BasicConstraints::new().critical().ca().build().expect("bc");
            b.append_extension(bc).expect("bc");
            let ku = KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .expect("ku");
            b.append_extension(ku).expect("ku");
        }
        Kind::Server(names) => {
            let mut san = SubjectAlternativeName::new();
            for n in names {
                san.dns(n);
            }
            let san = san
                .build(&b.x509v3_context(issuer.map(|(ca, _)| &**ca), None))
                .expect("san");
            b.append_extension(san).expect("san");
            let eku = ExtendedKeyUsage::new().server_auth().build().expect("eku");
            b.append_extension(eku).expect("eku");
        }
        Kind::Client => {
            let eku = ExtendedKeyUsage::new().client_auth().build().expect("eku");
            b.append_extension(eku).expect("eku");
        }
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).expect("sign");
    b.build()
}

fn pem(c: &X509) -> Vec<u8> {
    c.to_pem().expect("PEM")
}

fn key_pem(k: &PKey<Private>) -> Vec<u8> {
    k.private_key_to_pem_pkcs8().expect("PEM key")
}

/// A cluster serving TLS with a certificate signed by a CA made here, a database set up for an
/// application, and that application's role.
struct TlsServer {
    // Declared first, dropped first: the role is dropped while the cluster still runs.
    app: TestRole,
    db: String,
    ca: X509,
    ca_key: PKey<Private>,
    /// The CA's certificate, for clients' `sslrootcert`.
    ca_file: PathBuf,
    cluster: Cluster,
}

impl TlsServer {
    /// Starts a cluster with `ssl=on`, the server certificate for `localhost` (no IP address in
    /// it), the CA as `ssl_ca_file`, and `pg_hba.conf` = [`ADMIN_HBA`] then `hba`.
    async fn start(hba: &str) -> TlsServer {
        let ca_key = p256_key();
        let ca = certificate("rc-test-ca", &ca_key, None, Kind::Ca);
        let server_key = p256_key();
        let server = certificate(
            "localhost",
            &server_key,
            Some((&ca, &ca_key)),
            Kind::Server(&["localhost"]),
        );
        let hba_file = format!("{ADMIN_HBA}{hba}");
        let cluster = Cluster::start_with_files(
            &[
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "server.crt".into()),
                ("ssl_key_file".into(), "server.key".into()),
                ("ssl_ca_file".into(), "root.crt".into()),
            ],
            &[
                ("server.crt", &pem(&server), 0o644),
                ("server.key", &key_pem(&server_key), 0o600),
                ("root.crt", &pem(&ca), 0o644),
                ("pg_hba.conf", hba_file.as_bytes(), 0o600),
            ],
        )
        .await;
        let ca_file = cluster.write_file("ca.crt", &pem(&ca), 0o644);
        let db = cluster.create_db().await;
        let app = cluster.app_role(&db).await;
        TlsServer {
            app,
            db,
            ca,
            ca_key,
            ca_file,
            cluster,
        }
    }

    /// A client certificate and key for `cn`, signed by this server's CA, written into the
    /// cluster's directory (the key with mode 0600); returns their paths.
    fn client_cert(&self, cn: &str) -> (PathBuf, PathBuf) {
        let key = p256_key();
        let cert = certificate(cn, &key, Some((&self.ca, &self.ca_key)), Kind::Client);
        let file = format!("client-{}", unique_key("c"));
        (
            self.cluster
                .write_file(&format!("{file}.crt"), &pem(&cert), 0o644),
            self.cluster
                .write_file(&format!("{file}.key"), &key_pem(&key), 0o600),
        )
    }

    /// A CA certificate that did not sign the server's, written into the cluster's directory.
    fn wrong_ca_file(&self) -> PathBuf {
        let key = p256_key();
        let other = certificate("rc-test-other-ca", &key, None, Kind::Ca);
        self.cluster.write_file("wrong-ca.crt", &pem(&other), 0o644)
    }

    /// A conninfo for the application role at `host` (with the password nobody asks for) and
    /// `tls` (`sslmode=… sslrootcert=…`).
    fn conninfo(&self, host: &str, tls: &str) -> String {
        format!(
            "host={host} port={} user={} password={PASSWORD} dbname={} {tls}",
            self.cluster.port(),
            self.app.name(),
            self.db
        )
    }

    fn ca(&self) -> String {
        self.ca_file.display().to_string()
    }

    /// Connects an instance, strictly: any failure is the error.
    async fn connect(&self, conninfo: &str) -> Result<Storage, StorageError> {
        let opts = PostgresOptions::from_dsn(conninfo)
            .expect("conninfo parses")
            .strict(true);
        Storage::connect_with(opts).await
    }

    /// The sessions of the application role, `(application_name, ssl, TLS version, client DN)`,
    /// as `pg_stat_ssl` shows them to the cluster's superuser, leaving out a crate's
    /// `AdminSession` connected with `conninfo` first (it must connect and read the breakers
    /// too).
    async fn app_sessions(
        &self,
        conninfo: &str,
    ) -> Vec<(String, bool, Option<String>, Option<String>)> {
        let opts = PostgresOptions::from_dsn(conninfo).expect("conninfo parses");
        let session = AdminSession::connect(&opts)
            .await
            .expect("the application role connects");
        session
            .status(session.namespace())
            .await
            .expect("the application role reads the breakers");
        let admin = self.cluster.client(&self.db).await;
        admin
            .query(
                "SELECT a.application_name, s.ssl, s.version, s.client_dn \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.usename = $1 AND a.application_name <> 'resilient-circuit-cli' \
                 ORDER BY a.application_name",
                &[&self.app.name()],
            )
            .await
            .expect("pg_stat_ssl")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
}

/// The error of a connect that must fail, shown, after checking it hides the password.
fn refused(r: Result<Storage, StorageError>) -> String {
    let e = match r {
        Ok(_) => panic!("connected, but the connection should have been refused"),
        Err(e) => e,
    };
    let shown = format!("{e} / {e:?}");
    assert!(!shown.contains(PASSWORD), "the password is shown: {shown}");
    assert!(matches!(e, StorageError::Connect { .. }), "{e:?}");
    e.to_string()
}

/// verify-full connects to `localhost` (the certificate's name) and refuses `127.0.0.1` (the same server, by a name not in its certificate), saying why.
#[tokio::test]
async fn verify_full_checks_the_host_name() {
    let server = TlsServer::start(TRUST).await;
    let tls = format!("sslmode=verify-full sslrootcert={}", server.ca());
    let storage = server
        .connect(&server.conninfo("localhost", &tls))
        .await
        .expect("verify-full to localhost connects");
    drop(storage);
    let e = refused(server.connect(&server.conninfo("127.0.0.1", &tls)).await);
    println!("MEASURED verify-full to 127.0.0.1: {e}");
    assert!(e.contains("IP address mismatch"), "{e}");
    assert!(e.contains("sslmode=verify-full"), "{e}");
}

/// verify-ca checks the chain only: `localhost` and `127.0.0.1` both connect.
#[tokio::test]
async fn verify_ca_accepts_either_name() {
    let server = TlsServer::start(TRUST).await;
    let tls = format!("sslmode=verify-ca sslrootcert={}", server.ca());
    for host in ["localhost", "127.0.0.1"] {
        let storage = server.connect(&server.conninfo(host, &tls)).await;
        assert!(storage.is_ok(), "verify-ca to {host}: {:?}", storage.err());
    }
}

/// sslmode=require encrypts the pool's and the listener's connections of two instances (as the application role sees them in pg_stat_ssl), and a trip travels between them over TLS.
#[tokio::test]
async fn require_encrypts_the_pool_and_the_listener() {
    let server = TlsServer::start(TRUST).await;
    // No root certificate and a name not in the certificate: require verifies nothing (libpq).
    let conninfo = server.conninfo("127.0.0.1", "sslmode=require");
    let a = server.connect(&conninfo).await.expect("instance a");
    let b = server.connect(&conninfo).await.expect("instance b");
    let key = unique_key("tls");
    let on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);
    fail(&on_a.cb).await;
    assert!(on_b.reaches(State::Open).await, "b saw a's trip");
    let sessions = server.app_sessions(&conninfo).await;
    println!("MEASURED sessions of the application role: {sessions:?}");
    let named = |name: &str| {
        sessions
            .iter()
            .filter(|(app, ..)| app == name)
            .collect::<Vec<_>>()
    };
    assert_eq!(named("resilient-circuit-listener").len(), 2, "{sessions:?}");
    assert!(!named("resilient-circuit").is_empty(), "{sessions:?}");
    assert_eq!(
        named("resilient-circuit").len() + 2,
        sessions.len(),
        "only the pools' and the listeners' sessions: {sessions:?}"
    );
    for (app, ssl, version, _) in &sessions {
        assert!(ssl, "{app} is not encrypted: {sessions:?}");
        assert!(
            version.as_deref().is_some_and(|v| v.starts_with("TLSv1.")),
            "{app}: {sessions:?}"
        );
    }
    // The same view shows a plain session as unencrypted: the check above can fail.
    let admin = server.cluster.client(&server.db).await;
    let plain: bool = admin
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("own pg_stat_ssl")
        .get(0);
    assert!(!plain, "the harness's own connection is plain");
}

/// Sessions of the server's application role, once they settle at `want` (at most 5 s).
async fn sessions_settle(server: &TlsServer, want: i64) -> bool {
    let admin = server.cluster.client(&server.db).await;
    let role = server.app.name().to_owned();
    crate::support::eventually(Duration::from_secs(5), || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == want)
            .unwrap_or(false)
    })
    .await
}

/// Asserts that the server logged no cut connection (a socket closed without Terminate and TLS
/// close_notify) for `what`. Backends leave pg_stat_activity only once they exited, after logging.
fn assert_no_reset_logged(server: &TlsServer, what: &str) {
    let log = server.cluster.log();
    for noise in [
        "could not receive data from client",
        "unexpected EOF",
        "SSL error",
    ] {
        assert!(
            !log.contains(noise),
            "the server logged {noise:?} for {what}:\n{log}"
        );
    }
}

/// Pooled TLS connections closed for being idle say goodbye (Terminate, close_notify): the server
/// logs no "could not receive data from client: Connection reset by peer" for them, as it did
/// when the pool cut their sockets.
#[tokio::test]
async fn reaped_tls_connections_close_cleanly() {
    let server = TlsServer::start(DEMAND_TLS).await;
    let conninfo = server.conninfo("127.0.0.1", "sslmode=require");
    let opts = PostgresOptions::from_dsn(&conninfo)
        .expect("conninfo parses")
        .strict(true)
        .pool_idle_timeout(Duration::from_millis(300));
    let a = Storage::connect_with(opts).await.expect("instance");
    let key = unique_key("tls-reaped");
    let on_a = Watched::new(&a, &key, trip_fast);
    fail(&on_a.cb).await;
    assert!(
        a.flush(Duration::from_secs(5)).await,
        "the trip is answered"
    );
    assert!(
        sessions_settle(&server, 1).await,
        "the pooled connections were closed"
    );
    assert_no_reset_logged(&server, "a closed pooled connection");
    drop(a);
}

/// A listener that stops (its instance dropped) or reconnects closes its TLS session as a client
/// should: the server logs no reset for it.
#[tokio::test]
async fn listener_tls_connections_close_cleanly() {
    let server = TlsServer::start(DEMAND_TLS).await;
    let conninfo = server.conninfo("127.0.0.1", "sslmode=require");
    let opts = PostgresOptions::from_dsn(&conninfo)
        .expect("conninfo parses")
        .strict(true)
        .pool_idle_timeout(Duration::ZERO);
    for _ in 0..3 {
        let a = Storage::connect_with(opts.clone()).await.expect("instance");
        assert!(!a.is_degraded());
        drop(a);
    }
    assert!(
        sessions_settle(&server, 0).await,
        "every session of the dropped instances ended"
    );
    assert_no_reset_logged(&server, "a listener that stopped");
}

/// sslmode=disable against a server that refuses plain connections (`hostnossl … reject`) fails with the server's reason and the mode to change; require connects.
#[tokio::test]
async fn disable_fails_clearly_where_tls_is_demanded() {
    let server = TlsServer::start(DEMAND_TLS).await;
    let e = refused(
        server
            .connect(&server.conninfo("localhost", "sslmode=disable"))
            .await,
    );
    println!("MEASURED sslmode=disable where TLS is demanded: {e}");
    assert!(
        e.contains("pg_hba.conf rejects connection") && e.contains("no encryption"),
        "{e}"
    );
    assert!(e.contains("sslmode=disable"), "{e}");
    let ok = server
        .connect(&server.conninfo("localhost", "sslmode=require"))
        .await;
    assert!(ok.is_ok(), "require: {:?}", ok.err());
}

/// A client certificate whose CN is the role authenticates it where the server requires one (`cert`), on the pool and the listener; no certificate, or another role's, is refused.
#[tokio::test]
async fn client_certificate_authenticates() {
    let server = TlsServer::start(CERT_AUTH).await;
    let (cert, key) = server.client_cert(server.app.name());
    let tls = format!(
        "sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        server.ca(),
        cert.display(),
        key.display()
    );
    let storage = server
        .connect(&server.conninfo("localhost", &tls))
        .await
        .expect("the client certificate authenticates");
    let sessions = server
        .app_sessions(&server.conninfo("localhost", &tls))
        .await;
    let dn = format!("/CN={}", server.app.name());
    for name in ["resilient-circuit", "resilient-circuit-listener"] {
        assert!(
            sessions.iter().any(|(app, ..)| app == name),
            "no {name} session: {sessions:?}"
        );
    }
    for (app, ssl, _, client_dn) in &sessions {
        assert!(
            *ssl && client_dn.as_deref() == Some(dn.as_str()),
            "{app}: {sessions:?}"
        );
    }
    drop(storage);
    let plain_tls = format!("sslmode=verify-full sslrootcert={}", server.ca());
    let e = refused(
        server
            .connect(&server.conninfo("localhost", &plain_tls))
            .await,
    );
    assert!(e.contains("requires a valid client certificate"), "{e}");
    let (cert, key) = server.client_cert("someone-else");
    let other = format!(
        "{plain_tls} sslcert={} sslkey={}",
        cert.display(),
        key.display()
    );
    let e = refused(server.connect(&server.conninfo("localhost", &other)).await);
    assert!(e.contains("certificate authentication failed"), "{e}");
}

/// A root file that did not sign the server's certificate is refused in every mode that reads it; the message says "certificate verify failed" once, with the mode and the file.
#[tokio::test]
async fn wrong_ca_is_refused_once_with_file_and_mode() {
    let server = TlsServer::start(TRUST).await;
    let wrong = server.wrong_ca_file();
    for mode in ["verify-full", "verify-ca", "require"] {
        let tls = format!("sslmode={mode} sslrootcert={}", wrong.display());
        let e = refused(server.connect(&server.conninfo("localhost", &tls)).await);
        println!("MEASURED {mode} with a wrong CA: {e}");
        assert_eq!(
            e.matches("certificate verify failed").count(),
            1,
            "said once: {e}"
        );
        assert!(e.contains(&format!("sslmode={mode}")), "{e}");
        assert!(e.contains(&wrong.display().to_string()), "{e}");
    }
}

/// The TLS settings work from the `RC_DB_*` variables and from `RC_DB_DSN` (conninfo and URL): verify-full with a client certificate connects to `localhost` and refuses `127.0.0.1` (checked in child processes: this test binary never changes its own environment).
#[tokio::test]
async fn settings_from_the_environment_and_a_dsn() {
    let server = TlsServer::start(CERT_AUTH).await;
    let (cert, key) = server.client_cert(server.app.name());
    let (ca, cert, key) = (
        server.ca(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    let port = server.cluster.port().to_string();
    let discrete = |host: &str| -> Vec<(&'static str, String)> {
        vec![
            ("RC_DB_HOST", host.to_owned()),
            ("RC_DB_PORT", port.clone()),
            ("RC_DB_NAME", server.db.clone()),
            ("RC_DB_USER", server.app.name().to_owned()),
            ("RC_DB_PASSWORD", PASSWORD.to_owned()),
            ("RC_DB_SSLMODE", "verify-full".to_owned()),
            ("RC_DB_SSLROOTCERT", ca.clone()),
            ("RC_DB_SSLCERT", cert.clone()),
            ("RC_DB_SSLKEY", key.clone()),
            ("RC_DB_STRICT", "1".to_owned()),
        ]
    };
    let conninfo = |host: &str| {
        vec![
            (
                "RC_DB_DSN",
                server.conninfo(
                    host,
                    &format!("sslmode=verify-full sslrootcert={ca} sslcert={cert} sslkey={key}"),
                ),
            ),
            ("RC_DB_STRICT", "1".to_owned()),
        ]
    };
    let url = |host: &str| {
        vec![
            (
                "RC_DB_DSN",
                format!(
                    "postgresql://{}:{PASSWORD}@{host}:{port}/{}?sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}",
                    server.app.name(),
                    server.db
                ),
            ),
            ("RC_DB_STRICT", "1".to_owned()),
        ]
    };
    type Form<'a> = &'a dyn Fn(&str) -> Vec<(&'static str, String)>;
    let forms: [(&str, Form<'_>); 3] = [
        ("RC_DB_* variables", &discrete),
        ("RC_DB_DSN conninfo", &conninfo),
        ("RC_DB_DSN URL", &url),
    ];
    for (form, vars) in forms {
        let out = env_child(&vars("localhost"));
        assert!(out.contains("CHILD-OK"), "{form}, localhost: {out}");
        let out = env_child(&vars("127.0.0.1"));
        assert!(
            out.contains("CHILD-ERR") && out.contains("IP address mismatch"),
            "{form}, 127.0.0.1: {out}"
        );
        assert!(out.contains("sslmode=verify-full"), "{form}: {out}");
    }
}

/// Runs [`env_probe_child`] with exactly `vars` as its environment; returns its output, which
/// must not show the password.
fn env_child(vars: &[(&'static str, String)]) -> String {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            "--exact",
            "tls_server::env_probe_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed: {text}");
    assert!(!text.contains(PASSWORD), "the password is shown: {text}");
    text
}

/// Helper of `settings_from_the_environment_and_a_dsn`: connects with the options of `PostgresOptions::from_env` and prints the outcome.
#[tokio::test]
#[ignore = "run by settings_from_the_environment_and_a_dsn in a child process with RC_DB_* set"]
async fn env_probe_child() {
    let opts = match PostgresOptions::from_env() {
        Ok(Some(opts)) => opts,
        Ok(None) => return println!("CHILD-UNCONFIGURED"),
        Err(e) => return println!("CHILD-ERR {e}"),
    };
    assert!(opts.to_string().contains("verify-full"), "{opts}");
    let outcome = tokio::time::timeout(Duration::from_secs(30), Storage::connect_with(opts)).await;
    match outcome {
        Ok(Ok(_storage)) => println!("CHILD-OK"),
        Ok(Err(e)) => println!("CHILD-ERR {e}"),
        Err(_) => println!("CHILD-ERR timed out"),
    }
}
