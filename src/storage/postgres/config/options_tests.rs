//! Unit tests of `options.rs`: defaults, setters and the checks before connecting.

use super::super::tests::*;
use super::*;

/// Defaults: 5 s connect, 2 s statement, keepalives 10 s/2 s/3, 8 s TCP user timeout, 2 s
/// heartbeat, 5 s reconnect backoff ceiling, 30 s reconcile, 10 s lease, pool 4 closing
/// connections idle for 60 s, namespace `default`.
#[test]
fn defaults() {
    let o = PostgresOptions::from_dsn("host=h user=u").unwrap();
    assert_eq!(o.network.connect_timeout, Duration::from_secs(5));
    assert_eq!(o.statement_timeout, Duration::from_secs(2));
    assert_eq!(o.heartbeat_interval, Duration::from_secs(2));
    assert_eq!(o.reconnect_backoff_max, Duration::from_secs(5));
    assert_eq!(o.reconcile_interval, Duration::from_secs(30));
    assert_eq!(o.lease_timeout, Duration::from_secs(10));
    assert_eq!(o.pool_size, 4);
    assert_eq!(o.pool_idle_timeout, Duration::from_secs(60));
    assert_eq!(o.pool_reaping(), Some(Duration::from_secs(60)));
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
        .pool_idle_timeout(Duration::from_millis(1500))
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
    assert_eq!(o.pool_reaping(), Some(Duration::from_millis(1500)));
    assert_eq!(
        PostgresOptions::new()
            .pool_idle_timeout(Duration::ZERO)
            .pool_reaping(),
        None,
        "zero keeps pooled connections"
    );
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

/// Settings that cannot work (empty or long namespace, zero durations, empty pool, no host or user,
/// mismatched lists) fail in pg_config with their name.
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
            ok().reconnect_backoff_max(Duration::ZERO),
            "reconnect_backoff_max",
        ),
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

#[test]
fn a_polling_instance_follows_any_server_unless_told_otherwise() {
    use super::super::Follow;
    use tokio_postgres::config::TargetSessionAttrs as Pg;
    let attrs = |o: &PostgresOptions| o.listener_pg_config().unwrap().get_target_session_attrs();
    let listening = PostgresOptions::from_dsn("host=primary user=app").unwrap();
    assert_eq!(attrs(&listening), Pg::ReadWrite, "LISTEN needs the primary");
    let polling = listening.clone().follow(Follow::Poll);
    assert_eq!(attrs(&polling), Pg::Any, "a replica will do");
    let replica = polling
        .clone()
        .listener_dsn("host=replica target_session_attrs=read-only")
        .unwrap();
    assert_eq!(attrs(&replica), Pg::ReadOnly, "an explicit setting wins");
    // The pool still needs the primary.
    assert_eq!(
        polling.pg_config("x").unwrap().get_target_session_attrs(),
        Pg::ReadWrite
    );
    let zero = polling
        .poll_interval(Duration::ZERO)
        .pg_config("x")
        .unwrap_err();
    assert!(zero.to_string().contains("poll_interval"), "{zero}");
}

#[test]
fn the_pools_application_name_is_not_the_listeners() {
    let o = PostgresOptions::from_dsn("host=h user=u application_name=svc")
        .unwrap()
        .application_name("checkout");
    assert_eq!(
        o.pg_config("x").unwrap().get_application_name(),
        Some("checkout")
    );
    assert_eq!(
        o.listener_pg_config().unwrap().get_application_name(),
        Some(LISTENER_APPLICATION_NAME)
    );
    let named = o.listener_dsn("application_name=ears").unwrap();
    assert_eq!(
        named.listener_pg_config().unwrap().get_application_name(),
        Some("ears")
    );
}
