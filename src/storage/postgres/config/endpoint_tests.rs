//! Unit tests of `endpoint.rs`: the listener's inheritance from the main endpoint, and where a
//! DSN's network settings meet the options' values.

use super::super::options::LISTENER_APPLICATION_NAME;
use super::super::tests::*;
use super::*;

/// The listener uses the main settings by default, with its own application_name and read-write; a
/// listener DSN or host replaces the address only.
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

/// A DSN's connect_timeout=0 keeps the default (libpq: no limit), and a setter after from_dsn
/// overrides the DSN.
#[test]
fn dsn_network_settings_and_setter_precedence() {
    let o = PostgresOptions::from_dsn("host=h user=u connect_timeout=0 keepalives=0").unwrap();
    assert_eq!(o.network.connect_timeout, Duration::from_secs(5));
    assert!(!o.pg_config("x").unwrap().get_keepalives());
    let o = PostgresOptions::from_dsn("host=h user=u connect_timeout=9")
        .unwrap()
        .connect_timeout(Duration::from_millis(1500));
    assert_eq!(
        o.pg_config("x").unwrap().get_connect_timeout(),
        Some(&Duration::from_millis(1500))
    );
}

/// Each network setting a DSN gives replaces the options' value; the others are kept.
#[test]
fn network_overrides_replace_only_what_they_give() {
    let base = Network {
        connect_timeout: Duration::from_secs(5),
        keepalives: true,
        keepalives_idle: Duration::from_secs(10),
        keepalives_interval: Duration::from_secs(2),
        keepalives_retries: 3,
        tcp_user_timeout: Duration::from_secs(8),
    };
    assert_eq!(NetworkOverrides::default().over(base), base);
    let dsn = NetworkOverrides {
        keepalives_idle: Some(Duration::from_secs(30)),
        tcp_user_timeout: Some(Duration::ZERO),
        ..NetworkOverrides::default()
    };
    let want = Network {
        keepalives_idle: Duration::from_secs(30),
        tcp_user_timeout: Duration::ZERO,
        ..base
    };
    assert_eq!(dsn.over(base), want);
}
