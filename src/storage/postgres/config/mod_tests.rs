//! Unit tests of `config/`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use tokio_postgres::config::{Host, SslMode as PgSslMode, TargetSessionAttrs as PgAttrs};

use super::*;

const PW: &str = "s3cr3t-PW";

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn setting_name(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::InvalidSetting { name, .. } => name,
        other => panic!("not InvalidSetting: {other:?}"),
    }
}

fn tcp(h: &str) -> Host {
    Host::Tcp(h.to_owned())
}

/// Asserts that no rendering of `e` shows the password.
fn assert_hidden(e: &ConfigError) {
    assert!(!e.to_string().contains(PW), "password in Display: {e}");
    assert!(!format!("{e:?}").contains(PW), "password in Debug: {e:?}");
}

/// A URL with every part (multi-host, ports, percent-encoding, query keys) lands in the right fields.
#[test]
fn url_form_parses_every_part() {
    let o = PostgresOptions::from_dsn(
        "postgresql://app%20user:s3cr3t-PW@db1.example:6432,db2.example/break%2Fers?sslmode=verify-full&sslrootcert=/etc/ca.pem&sslcert=/c.pem&sslkey=/k.pem&target_session_attrs=read-write&connect_timeout=7&application_name=svc&options=-c%20lock_timeout%3D100",
    )
    .unwrap();
    let c = o.pg_config("resilient-circuit").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db1.example"), tcp("db2.example")]);
    assert_eq!(c.get_ports(), [6432, 5432]);
    assert_eq!(c.get_user(), Some("app user"));
    assert_eq!(c.get_password(), Some(PW.as_bytes()));
    assert_eq!(c.get_dbname(), Some("break/ers"));
    assert_eq!(c.get_options(), Some("-c lock_timeout=100"));
    assert_eq!(c.get_application_name(), Some("svc"));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
    assert_eq!(c.get_target_session_attrs(), PgAttrs::ReadWrite);
    let t = o.tls_settings();
    assert_eq!(t.mode, SslMode::VerifyFull);
    assert_eq!(t.rootcert.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(t.cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(t.key.as_deref(), Some(Path::new("/k.pem")));
    assert!(t.has_host_name);
    assert_eq!(o.target(), "db1.example:6432,db2.example:5432/break/ers");
}

/// The `postgres://` scheme, IPv6 hosts and an unencoded `@` in the password are understood.
#[test]
fn url_form_variants() {
    let o = PostgresOptions::from_dsn("postgres://u:p@ss@[::1]:6000/db").unwrap();
    assert_eq!(o.conn.password.as_ref().map(Secret::expose), Some("p@ss"));
    assert_eq!(o.conn.hosts, ["::1"]);
    assert_eq!(o.target(), "[::1]:6000/db");
    let o = PostgresOptions::from_dsn("postgresql://u:a%40b@h/db?password=").unwrap();
    assert_eq!(
        o.conn.password, None,
        "an empty later password wins, as in libpq"
    );
    let o = PostgresOptions::from_dsn("postgresql:///db?host=/var/run/postgresql&user=u").unwrap();
    assert_eq!(o.conn.hosts, ["/var/run/postgresql"]);
    let c = o.pg_config("x").unwrap();
    assert_eq!(
        c.get_ssl_mode(),
        PgSslMode::Disable,
        "no TLS on Unix sockets, as libpq"
    );
    assert_eq!(o.target(), "/var/run/postgresql/db");
}

/// Conninfo with quoting, escapes, spaces around `=` and libpq's key names lands in the right fields.
#[test]
fn conninfo_form_parses_every_part() {
    let o = PostgresOptions::from_dsn(
        r"host=db.example hostaddr=10.0.0.5 port = 6543 dbname='my db' user=app password='s3cr3t-PW \'q\\' sslmode=verify-ca sslrootcert='/etc/pg ca.pem' keepalives_idle=30 keepalives_interval=4 keepalives_count=5 tcp_user_timeout=9000 fallback_application_name=fb client_encoding=UTF8 gssencmode=disable",
    )
    .unwrap();
    assert_eq!(
        o.conn.password.as_ref().map(Secret::expose),
        Some(r"s3cr3t-PW 'q\")
    );
    let c = o.pg_config("resilient-circuit").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db.example")]);
    assert_eq!(c.get_hostaddrs(), [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))]);
    assert_eq!(c.get_ports(), [6543]);
    assert_eq!(c.get_dbname(), Some("my db"));
    assert_eq!(c.get_user(), Some("app"));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(4)));
    assert_eq!(c.get_keepalives_retries(), Some(5));
    assert_eq!(
        c.get_tcp_user_timeout(),
        Some(&Duration::from_millis(9000)),
        "libpq counts milliseconds"
    );
    assert_eq!(
        c.get_application_name(),
        Some("fb"),
        "fallback_application_name beats the crate's name"
    );
    assert_eq!(o.tls_settings().mode, SslMode::VerifyCa);
    assert_eq!(
        o.tls_settings().rootcert.as_deref(),
        Some(Path::new("/etc/pg ca.pem"))
    );
    assert_eq!(o.target(), "db.example:6543/my db");
}

/// verify-ca and verify-full, which tokio-postgres refuses, are read from both forms and sent as `require`.
#[test]
fn verify_modes_parsed_from_both_forms() {
    for (dsn, mode) in [
        ("postgresql://u@h/d?sslmode=verify-ca", SslMode::VerifyCa),
        (
            "postgresql://u@h/d?sslmode=verify-full",
            SslMode::VerifyFull,
        ),
        ("host=h user=u sslmode=verify-ca", SslMode::VerifyCa),
        ("host=h user=u sslmode='verify-full'", SslMode::VerifyFull),
        ("host=h user=u sslmode=VERIFY-FULL", SslMode::VerifyFull),
    ] {
        let o = PostgresOptions::from_dsn(dsn).unwrap();
        assert_eq!(o.tls_settings().mode, mode, "{dsn}");
        assert_eq!(
            o.pg_config("x").unwrap().get_ssl_mode(),
            PgSslMode::Require,
            "{dsn}"
        );
    }
    for (dsn, pg) in [
        ("host=h user=u sslmode=disable", PgSslMode::Disable),
        ("host=h user=u sslmode=prefer", PgSslMode::Prefer),
        ("host=h user=u", PgSslMode::Prefer),
        ("host=h user=u sslmode=require", PgSslMode::Require),
    ] {
        assert_eq!(
            PostgresOptions::from_dsn(dsn)
                .unwrap()
                .pg_config("x")
                .unwrap()
                .get_ssl_mode(),
            pg,
            "{dsn}"
        );
    }
}

/// An unknown sslmode is a typed error from FromStr and an InvalidSetting from a DSN or RC_DB_SSLMODE.
#[test]
fn unknown_sslmode_is_refused() {
    let e = "verify_full".parse::<SslMode>().unwrap_err();
    assert!(e.to_string().contains("`verify_full`"), "{e}");
    assert!("allow"
        .parse::<SslMode>()
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    assert_eq!("Require".parse::<SslMode>(), Ok(SslMode::Require));
    for dsn in [
        "host=h user=u sslmode=strict",
        "postgresql://u@h/d?sslmode=strict",
    ] {
        let e = PostgresOptions::from_dsn(dsn).unwrap_err();
        assert_eq!(setting_name(&e), "dsn");
        assert!(e.to_string().contains("unknown sslmode `strict`"), "{e}");
    }
    let e = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "h"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_SSLMODE", "on"),
    ]))
    .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_SSLMODE");
    // A value equal to the password is not echoed.
    let e = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "h"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_SSLMODE", PW),
    ]))
    .unwrap_err();
    assert_hidden(&e);
}

/// A URL with a bad port names the port and never shows the password.
#[test]
fn bad_port_is_refused_without_the_password() {
    for dsn in [
        "postgresql://app:s3cr3t-PW@db.example:54x2/app",
        "postgresql://app:s3cr3t-PW@db.example:99999/app",
        "postgresql://app:s3cr3t-PW@db.example:0/app",
        "host=db.example port=54x2 user=app password=s3cr3t-PW",
        "password=s3cr3t-PW host=db.example port=s3cr3t-PW user=app",
    ] {
        let e = PostgresOptions::from_dsn(dsn).unwrap_err();
        assert_eq!(setting_name(&e), "dsn");
        assert!(e.to_string().contains("port"), "{e}");
        assert_hidden(&e);
    }
    let e =
        PostgresOptions::from_dsn("postgresql://app:s3cr3t-PW@db.example:54x2/app").unwrap_err();
    assert!(
        e.to_string().contains("`54x2`"),
        "the bad value is shown: {e}"
    );
}

/// Malformed DSNs of every kind are InvalidSetting errors that never show the password.
#[test]
fn password_never_in_parse_errors() {
    for dsn in [
        "postgresql://app:s3cr3t-PW@[::1/app",
        "postgresql://app:s3cr3t-PW@host/app?sslmode",
        "postgresql://app:s3cr3t-PW@host/app?bogus=1",
        "postgresql://app:s3cr3t-PW@host/app?hostaddr=s3cr3t-PW",
        "postgresql://app:s3cr3t-PW%zz@host/app",
        "postgresql://app:s3cr3t-PW@h%FF/app",
        "postgresql://app:s3cr3t-PW@host/app?keepalives=s3cr3t-PW",
        "postgresql://app@host/app?password=s3cr3t-PW&sslmode=s3cr3t-PW",
        "mysql://app:s3cr3t-PW@host/app",
        "postgresql+psycopg://app:s3cr3t-PW@host/app",
        "user=app password='s3cr3t-PW",
        "user=app password=s3cr3t-PW bogus",
        "user=app password=s3cr3t-PW s3cr3t-PW=1",
        "user=app password=s3cr3t-PW sslmode=s3cr3t-PW",
        "user=app password=s3cr3t-PW connect_timeout=s3cr3t-PW",
        "user=app password=s3cr3t-PW target_session_attrs=s3cr3t-PW",
        "user=app password=s3cr3t-PW sslpassword=x",
        "user=app password=s3cr3t-PW =x",
        "user=app password=s3cr3t-PW host=a,,b",
    ] {
        let e = PostgresOptions::from_dsn(dsn).unwrap_err();
        assert_eq!(setting_name(&e), "dsn", "{dsn}");
        assert_hidden(&e);
    }
}

/// Debug and Display of the options, and connection errors' target, never show the password.
#[test]
fn password_never_in_debug_or_display() {
    for o in [
        PostgresOptions::from_dsn("postgresql://app:s3cr3t-PW@db/app").unwrap(),
        PostgresOptions::from_dsn("host=db user=app password=s3cr3t-PW").unwrap(),
        PostgresOptions::new()
            .password(PW)
            .listener_dsn("postgresql://u:s3cr3t-PW@direct/app")
            .unwrap(),
        PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "db"), ("RC_DB_PASSWORD", PW)]))
            .unwrap()
            .unwrap(),
    ] {
        let debug = format!("{o:?}");
        assert!(!debug.contains(PW), "{debug}");
        assert!(debug.contains(r#"password: Some("<redacted>")"#), "{debug}");
        assert!(!o.to_string().contains(PW), "{o}");
        assert!(!o.target().contains(PW));
        assert!(!o.listener_target().contains(PW));
        assert!(!format!("{:?}", o.pg_config("x").unwrap()).contains(PW));
    }
}

/// Unknown options are refused by name; libpq options this crate cannot honour are refused, harmless ones ignored.
#[test]
fn unknown_and_unsupported_options() {
    let e = PostgresOptions::from_dsn("host=h user=u sslmdoe=require").unwrap_err();
    assert!(e.to_string().contains("unknown option `sslmdoe`"), "{e}");
    for key in [
        "sslcrl=/crl.pem",
        "sslpassword=x",
        "service=svc",
        "target_session_attrs=primary",
        "gssencmode=require",
        "sslnegotiation=direct",
        "client_encoding=LATIN1",
    ] {
        let e = PostgresOptions::from_dsn(&format!("host=h user=u {key}")).unwrap_err();
        assert_eq!(setting_name(&e), "dsn", "{key}");
    }
    assert!(PostgresOptions::from_dsn(
        "host=h user=u sslsni=1 sslcompression=0 gssencmode=prefer sslnegotiation=postgres"
    )
    .is_ok());
}

/// A DSN's connect_timeout=0 keeps the default (libpq: no limit), and a setter after from_dsn overrides the DSN.
#[test]
fn dsn_network_settings_and_setter_precedence() {
    let o = PostgresOptions::from_dsn("host=h user=u connect_timeout=0 keepalives=0").unwrap();
    assert_eq!(o.connect_timeout, Duration::from_secs(5));
    assert!(!o.pg_config("x").unwrap().get_keepalives());
    let o = PostgresOptions::from_dsn("host=h user=u connect_timeout=9")
        .unwrap()
        .connect_timeout(Duration::from_millis(1500));
    assert_eq!(
        o.pg_config("x").unwrap().get_connect_timeout(),
        Some(&Duration::from_millis(1500))
    );
}

/// Defaults: 5 s connect, 2 s statement, keepalives 10 s/2 s/3, 8 s TCP user timeout, 2 s heartbeat, 30 s reconcile, 10 s lease, pool 4, namespace `default`.
#[test]
fn defaults() {
    let o = PostgresOptions::from_dsn("host=h user=u").unwrap();
    assert_eq!(o.connect_timeout, Duration::from_secs(5));
    assert_eq!(o.statement_timeout, Duration::from_secs(2));
    assert_eq!(o.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(o.reconcile_interval, Duration::from_secs(30));
    assert_eq!(o.lease_timeout, Duration::from_secs(10));
    assert_eq!(o.pool_size, 4);
    assert_eq!(o.namespace, "default");
    assert!(!o.strict && !o.auto_create);
    let c = o.pg_config("resilient-circuit").unwrap();
    assert_eq!(c.get_application_name(), Some("resilient-circuit"));
    assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(5)));
    assert!(c.get_keepalives());
    assert_eq!(c.get_keepalives_idle(), Duration::from_secs(10));
    assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(2)));
    assert_eq!(c.get_keepalives_retries(), Some(3));
    assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(8)));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Prefer);
    // The pool writes on every call, so it needs the primary too.
    assert_eq!(c.get_target_session_attrs(), PgAttrs::ReadWrite);
    let n = PostgresOptions::new().pg_config("x").unwrap();
    assert_eq!(n.get_hosts(), [tcp("localhost")]);
    assert_eq!(n.get_user(), Some("postgres"));
    assert_eq!(n.get_dbname(), Some("resilient_circuit_db"));
}

/// Every builder setter reaches the tokio-postgres config or the options.
#[test]
fn builder_setters() {
    let o = PostgresOptions::new()
        .hosts(["a", "b"])
        .port(6000)
        .dbname("d")
        .user("u")
        .password(PW)
        .ssl_mode(SslMode::VerifyFull)
        .ssl_root_cert("/ca.pem")
        .ssl_cert("/c.pem")
        .ssl_key("/k.pem")
        .application_name("svc")
        .target_session_attrs(TargetSessionAttrs::ReadWrite)
        .connect_timeout(Duration::from_secs(3))
        .keepalives_idle(Duration::from_secs(20))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(7)
        .tcp_user_timeout(Duration::ZERO)
        .statement_timeout(Duration::from_millis(700))
        .heartbeat_interval(Duration::from_secs(1))
        .reconcile_interval(Duration::from_secs(60))
        .lease_timeout(Duration::from_secs(4))
        .pool_size(2)
        .namespace("tenant-a")
        .auto_create(true)
        .strict(true);
    let c = o.pg_config("ignored").unwrap();
    assert_eq!(c.get_hosts(), [tcp("a"), tcp("b")]);
    assert_eq!(c.get_ports(), [6000]);
    assert_eq!(c.get_application_name(), Some("svc"));
    assert_eq!(c.get_target_session_attrs(), PgAttrs::ReadWrite);
    assert_eq!(c.get_keepalives_idle(), Duration::from_secs(20));
    assert_eq!(c.get_keepalives_retries(), Some(7));
    assert_eq!(
        c.get_tcp_user_timeout(),
        None,
        "zero keeps the system default"
    );
    assert_eq!(o.tls_settings().cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(
        (o.pool_size, o.namespace.as_str(), o.auto_create, o.strict),
        (2, "tenant-a", true, true)
    );
    let o = PostgresOptions::new()
        .host("h")
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .keepalives(false);
    let c = o.pg_config("x").unwrap();
    assert_eq!(c.get_hostaddrs(), [IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    assert!(!c.get_keepalives());
}

/// Settings that cannot work (empty or long namespace, zero durations, empty pool, no host or user, mismatched lists) fail in pg_config with their name.
#[test]
fn unusable_settings_are_refused() {
    let ok = || PostgresOptions::from_dsn("host=h user=u").unwrap();
    for (o, name) in [
        (ok().namespace(""), "namespace"),
        (ok().namespace("x".repeat(256)), "namespace"),
        (ok().namespace("a\nb"), "namespace"),
        (ok().statement_timeout(Duration::ZERO), "statement_timeout"),
        (ok().connect_timeout(Duration::ZERO), "connect_timeout"),
        (
            ok().reconcile_interval(Duration::ZERO),
            "reconcile_interval",
        ),
        (
            ok().heartbeat_interval(Duration::ZERO),
            "heartbeat_interval",
        ),
        (ok().lease_timeout(Duration::ZERO), "lease_timeout"),
        (
            ok().keepalives_idle(Duration::from_millis(10)),
            "keepalives_idle",
        ),
        (ok().pool_size(0), "pool_size"),
        (PostgresOptions::from_dsn("user=u").unwrap(), "dsn"),
        (PostgresOptions::from_dsn("host=h").unwrap(), "dsn"),
        (
            PostgresOptions::from_dsn("host=a,b hostaddr=127.0.0.1 user=u").unwrap(),
            "dsn",
        ),
        (
            PostgresOptions::from_dsn("host=a,b port=1,2,3 user=u").unwrap(),
            "dsn",
        ),
    ] {
        let e = o.pg_config("x").unwrap_err();
        assert_eq!(setting_name(&e), name, "{e}");
    }
    assert!(ok().namespace("x".repeat(255)).pg_config("x").is_ok());
    assert!(
        PostgresOptions::from_dsn("host=h")
            .unwrap()
            .user("u")
            .pg_config("x")
            .is_ok(),
        "setters can complete a DSN"
    );
}

/// Nothing set selects in-memory storage (Ok(None)); unrelated variables alone do not select PostgreSQL.
#[test]
fn env_nothing_set_is_none() {
    assert!(PostgresOptions::from_lookup(env(&[])).unwrap().is_none());
    assert!(PostgresOptions::from_lookup(env(&[
        ("RC_NAMESPACE", "x"),
        ("RC_DB_STRICT", "1"),
        ("RC_DB_DSN", "  ")
    ]))
    .unwrap()
    .is_none());
}

/// RC_DB_HOST with RC_DB_PASSWORD selects PostgreSQL with the ancestor's defaults (5432, resilient_circuit_db, postgres, prefer).
#[test]
fn env_discrete_defaults() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "db.internal"),
        ("RC_DB_PASSWORD", PW),
    ]))
    .unwrap()
    .unwrap();
    let c = o.pg_config("x").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db.internal")]);
    assert!(c.get_ports().is_empty() || c.get_ports() == [5432]);
    assert_eq!(c.get_dbname(), Some("resilient_circuit_db"));
    assert_eq!(c.get_user(), Some("postgres"));
    assert_eq!(c.get_password(), Some(PW.as_bytes()));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Prefer);
    assert_eq!(o.target(), "db.internal:5432/resilient_circuit_db");
    assert_eq!(o.namespace, "default");
    assert!(!o.strict && !o.auto_create && o.listener.is_none());
    assert_eq!(o.statement_timeout, Duration::from_secs(2));
    assert_eq!(o.reconcile_interval, Duration::from_secs(30));
    assert_eq!(o.connect_timeout, Duration::from_secs(5));
}

/// Every RC_* variable reaches its setting.
#[test]
fn env_every_variable() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "db1,db2"),
        ("RC_DB_PORT", " 6432 "),
        ("RC_DB_NAME", "rc"),
        ("RC_DB_USER", "svc"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_SSLMODE", "verify-full"),
        ("RC_DB_SSLROOTCERT", "/ca.pem"),
        ("RC_DB_SSLCERT", "/c.pem"),
        ("RC_DB_SSLKEY", "/k.pem"),
        ("RC_DB_STRICT", "1"),
        ("RC_DB_AUTO_CREATE", "yes"),
        ("RC_NAMESPACE", "tenant-a"),
        ("RC_DB_LISTENER_DSN", "postgresql://direct:5432"),
        ("RC_DB_RECONCILE_INTERVAL_MS", "45000"),
        ("RC_DB_STATEMENT_TIMEOUT_MS", "750"),
        ("RC_DB_CONNECT_TIMEOUT_MS", "2500"),
    ]))
    .unwrap()
    .unwrap();
    let c = o.pg_config("x").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db1"), tcp("db2")]);
    assert_eq!(c.get_ports(), [6432]);
    assert_eq!(c.get_dbname(), Some("rc"));
    assert_eq!(c.get_user(), Some("svc"));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(c.get_connect_timeout(), Some(&Duration::from_millis(2500)));
    let t = o.tls_settings();
    assert_eq!(t.mode, SslMode::VerifyFull);
    assert_eq!(t.rootcert.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(t.cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(t.key.as_deref(), Some(Path::new("/k.pem")));
    assert!(o.strict && o.auto_create);
    assert_eq!(o.namespace, "tenant-a");
    assert_eq!(o.reconcile_interval, Duration::from_secs(45));
    assert_eq!(o.statement_timeout, Duration::from_millis(750));
    let l = o.listener_pg_config().unwrap();
    assert_eq!(l.get_hosts(), [tcp("direct")]);
    assert_eq!(l.get_ports(), [5432]);
    assert_eq!(l.get_user(), Some("svc"), "inherited");
    assert_eq!(l.get_password(), Some(PW.as_bytes()), "inherited");
    assert_eq!(l.get_dbname(), Some("rc"), "inherited");
    assert_eq!(
        o.listener_tls_settings().mode,
        SslMode::VerifyFull,
        "inherited"
    );
}

/// Booleans accept 1/true/yes/on and 0/false/no/off in any case; anything else names the variable.
#[test]
fn env_booleans() {
    let base = [("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)];
    for (v, want) in [
        ("1", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("0", false),
        ("false", false),
        ("NO", false),
        ("off", false),
    ] {
        let o = PostgresOptions::from_lookup(env(&[
            base[0],
            base[1],
            ("RC_DB_STRICT", v),
            ("RC_DB_AUTO_CREATE", v),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((o.strict, o.auto_create), (want, want), "{v}");
    }
    for var in ["RC_DB_STRICT", "RC_DB_AUTO_CREATE"] {
        let e = PostgresOptions::from_lookup(env(&[base[0], base[1], (var, "2")])).unwrap_err();
        assert_eq!(setting_name(&e), var);
    }
}

/// RC_DB_DSN wins over the discrete variables and its errors are named RC_DB_DSN.
#[test]
fn env_dsn_wins() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_DSN", "postgresql://app:s3cr3t-PW@dsnhost/dsndb"),
        ("RC_DB_HOST", "other"),
        ("RC_DB_PASSWORD", "other"),
        ("RC_DB_SSLMODE", "verify-full"),
        ("RC_DB_PORT", "not-a-port"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(o.target(), "dsnhost:5432/dsndb");
    assert_eq!(
        o.tls_settings().mode,
        SslMode::Prefer,
        "discrete TLS variables are ignored with a DSN, as the ancestor"
    );
    let e =
        PostgresOptions::from_lookup(env(&[("RC_DB_DSN", "postgresql://app:s3cr3t-PW@h:bad/d")]))
            .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_DSN");
    assert_hidden(&e);
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_DSN", "host=h")])).unwrap_err();
    assert_eq!(
        setting_name(&e),
        "RC_DB_DSN",
        "a DSN without user fails at from_env: {e}"
    );
}

/// Only one of RC_DB_HOST / RC_DB_PASSWORD is an error naming the other (the ancestor silently stayed in memory).
#[test]
fn env_host_without_password_and_back() {
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "db")])).unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_PASSWORD");
    assert!(e.to_string().contains("missing"), "{e}");
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_PASSWORD", PW)])).unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_HOST");
    assert_hidden(&e);
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_LISTENER_DSN", "postgresql://direct")]))
        .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_LISTENER_DSN");
}

/// Bad values of RC_DB_PORT, the *_MS variables, RC_NAMESPACE and RC_DB_LISTENER_DSN name their variable and hide the password.
#[test]
fn env_bad_values() {
    let base = [("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)];
    for (var, v) in [
        ("RC_DB_PORT", "54x2"),
        ("RC_DB_PORT", "70000"),
        ("RC_DB_PORT", PW),
        ("RC_DB_RECONCILE_INTERVAL_MS", "0"),
        ("RC_DB_STATEMENT_TIMEOUT_MS", "-5"),
        ("RC_DB_CONNECT_TIMEOUT_MS", "1.5"),
        ("RC_NAMESPACE", &"n".repeat(256)),
        ("RC_NAMESPACE", "a\tb"),
        ("RC_DB_LISTENER_DSN", "postgresql://u:s3cr3t-PW@h:x/d"),
    ] {
        let e = PostgresOptions::from_lookup(env(&[base[0], base[1], (var, v)])).unwrap_err();
        assert_eq!(setting_name(&e), var, "{var}={v}: {e}");
        assert_hidden(&e);
    }
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "a,,b"), ("RC_DB_PASSWORD", PW)]))
        .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_HOST");
}

/// The listener uses the main settings by default, with its own application_name and read-write; a listener DSN or host replaces the address only.
#[test]
fn listener_settings() {
    let main = PostgresOptions::from_dsn(
        "postgresql://app:s3cr3t-PW@pgbouncer:6432/rc?sslmode=require&target_session_attrs=any",
    )
    .unwrap();
    let l = main.listener_pg_config().unwrap();
    assert_eq!(l.get_application_name(), Some(LISTENER_APPLICATION_NAME));
    assert_eq!(l.get_hosts(), [tcp("pgbouncer")]);
    assert_eq!(
        l.get_target_session_attrs(),
        PgAttrs::Any,
        "explicit main setting is kept"
    );
    let plain = PostgresOptions::from_dsn("host=h user=u").unwrap();
    assert_eq!(
        plain
            .listener_pg_config()
            .unwrap()
            .get_target_session_attrs(),
        PgAttrs::ReadWrite
    );
    assert_eq!(
        plain.pg_config("x").unwrap().get_target_session_attrs(),
        PgAttrs::ReadWrite,
        "the pool writes, so it needs the primary too"
    );

    let o = main.clone().listener_dsn("host=primary port=5432 sslmode=verify-full sslrootcert=/ca.pem keepalives_idle=30 application_name=lsn").unwrap();
    let l = o.listener_pg_config().unwrap();
    assert_eq!(l.get_hosts(), [tcp("primary")]);
    assert_eq!(l.get_ports(), [5432]);
    assert_eq!(l.get_user(), Some("app"));
    assert_eq!(l.get_password(), Some(PW.as_bytes()));
    assert_eq!(l.get_dbname(), Some("rc"));
    assert_eq!(l.get_application_name(), Some("lsn"));
    assert_eq!(l.get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(o.listener_tls_settings().mode, SslMode::VerifyFull);
    assert_eq!(
        o.tls_settings().mode,
        SslMode::Require,
        "the pool keeps its own"
    );
    assert_eq!(
        o.pg_config("x").unwrap().get_keepalives_idle(),
        Duration::from_secs(10)
    );
    assert_eq!(o.listener_target(), "primary:5432/rc");
    assert!(o.to_string().contains("listener=primary:5432/rc"), "{o}");

    let o = main.clone().listener_host("10.0.0.9", 5433);
    let l = o.listener_pg_config().unwrap();
    assert_eq!(l.get_hosts(), [tcp("10.0.0.9")]);
    assert_eq!(l.get_ports(), [5433]);
    assert_eq!(l.get_ssl_mode(), PgSslMode::Require);

    let e = main.listener_dsn("host=h port=x").unwrap_err();
    assert_eq!(setting_name(&e), "listener_dsn");
}

/// Display shows user, target, sslmode and namespace, and nothing secret.
#[test]
fn display() {
    let o = PostgresOptions::from_dsn("postgresql://app:s3cr3t-PW@db:6432/rc?sslmode=verify-full")
        .unwrap()
        .namespace("n");
    assert_eq!(
        o.to_string(),
        "app@db:6432/rc sslmode=verify-full namespace=n"
    );
}

proptest! {
    /// from_dsn never panics, whatever the string.
    #[test]
    fn from_dsn_never_panics(s in any::<String>()) {
        let _ = PostgresOptions::from_dsn(&s);
    }

    /// from_dsn never panics on URL-shaped strings either.
    #[test]
    fn from_dsn_never_panics_on_urls(s in "postgres(ql)?://[a-z@:/?&=%,\\[\\]0-9.]{0,40}") {
        let _ = PostgresOptions::from_dsn(&s);
    }

    /// Whatever surrounds a password in either form, no error (from parsing or pg_config) contains it.
    #[test]
    fn errors_never_contain_the_password(pre in ".{0,16}", post in ".{0,24}", sep in "[ =:@/?&,'%]{0,2}") {
        for dsn in [
            format!("postgresql://{pre}u:{PW}@{post}"),
            format!("postgresql://u:{PW}@{pre}{sep}{post}"),
            format!("postgres://h/d?{pre}&password={PW}&{post}"),
            format!("{pre} password={PW} {sep}{post}"),
            format!("{pre} password='{PW}'{sep}{post}"),
            format!("host=h user=u password={PW}{sep}{post}"),
        ] {
            match PostgresOptions::from_dsn(&dsn) {
                Err(e) => {
                    prop_assert!(!e.to_string().contains(PW), "{dsn:?} -> {e}");
                    prop_assert!(!format!("{e:?}").contains(PW), "{dsn:?} -> {e:?}");
                }
                Ok(o) => {
                    if let Err(e) = o.pg_config("x") {
                        prop_assert!(!e.to_string().contains(PW), "{dsn:?} -> {e}");
                    }
                    if let Err(e) = o.listener_pg_config() {
                        prop_assert!(!e.to_string().contains(PW), "{dsn:?} -> {e}");
                    }
                }
            }
        }
    }
}
