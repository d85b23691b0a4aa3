//! Unit tests of `hosts.rs`: how a DSN's host list becomes one configuration per host for the
//! pool and the listener, the order of the attempts, and the per-host time limit (against local
//! sockets that refuse or stay silent; no PostgreSQL needed).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tokio_postgres::config::{Host as PgHost, TargetSessionAttrs as PgAttrs};

use super::*;
use crate::storage::postgres::PostgresOptions;

fn tcp(h: &str) -> PgHost {
    PgHost::Tcp(h.to_owned())
}

/// `(host, port, target_session_attrs)` of each configuration, in order.
fn summary(hosts: &Hosts) -> Vec<(PgHost, u16, PgAttrs)> {
    hosts
        .hosts
        .iter()
        .map(|h| {
            assert_eq!(h.config.get_hosts().len(), 1, "one host per configuration");
            assert!(h.config.get_ports().len() <= 1, "one port at most");
            (
                h.config.get_hosts()[0].clone(),
                h.config.get_ports().first().copied().unwrap_or(5432),
                h.config.get_target_session_attrs(),
            )
        })
        .collect()
}

/// A failover DSN: the pool and the listener each get both hosts, each with its own port, both
/// asking for a writable server; a listener DSN without an address keeps the list, one with an
/// address has its own.
#[test]
fn both_connections_get_every_host_and_read_write() {
    let o = PostgresOptions::from_dsn("host=pg-a,pg-b port=5433,5434 user=app dbname=rc").unwrap();
    let want = vec![
        (tcp("pg-a"), 5433, PgAttrs::ReadWrite),
        (tcp("pg-b"), 5434, PgAttrs::ReadWrite),
    ];
    let pool = o.pool_hosts("resilient-circuit").unwrap();
    assert_eq!(summary(&pool), want);
    assert_eq!(summary(&o.listener_hosts().unwrap()), want);
    assert_eq!(
        pool.hosts
            .iter()
            .map(|h| h.target.as_str())
            .collect::<Vec<_>>(),
        ["pg-a:5433/rc", "pg-b:5434/rc"]
    );
    for h in &o.listener_hosts().unwrap().hosts {
        assert_eq!(
            h.config.get_application_name(),
            Some("resilient-circuit-listener")
        );
    }
    let url = PostgresOptions::from_dsn("postgresql://app@pg-a:5433,pg-b:5434/rc").unwrap();
    assert_eq!(summary(&url.pool_hosts("x").unwrap()), want);

    let named = o.clone().listener_dsn("application_name=l").unwrap();
    assert_eq!(summary(&named.listener_hosts().unwrap()), want);
    let own = o
        .clone()
        .listener_dsn("host=direct-a,direct-b port=6000")
        .unwrap();
    assert_eq!(
        summary(&own.listener_hosts().unwrap()),
        [
            (tcp("direct-a"), 6000, PgAttrs::ReadWrite),
            (tcp("direct-b"), 6000, PgAttrs::ReadWrite)
        ]
    );
    let any = PostgresOptions::from_dsn("host=a,b user=u target_session_attrs=any").unwrap();
    assert!(summary(&any.pool_hosts("x").unwrap())
        .iter()
        .all(|(_, port, attrs)| *port == 5432 && *attrs == PgAttrs::Any));
}

/// `hostaddr`s go with their hosts, one each.
#[test]
fn hostaddrs_are_split_with_their_hosts() {
    let o = PostgresOptions::from_dsn("host=a,b hostaddr=10.0.0.1,10.0.0.2 user=u").unwrap();
    let hosts = o.pool_hosts("x").unwrap();
    let addrs: Vec<_> = hosts
        .hosts
        .iter()
        .map(|h| {
            (
                h.config.get_hosts().to_vec(),
                h.config.get_hostaddrs().to_vec(),
            )
        })
        .collect();
    assert_eq!(
        addrs,
        [
            (
                vec![tcp("a")],
                vec!["10.0.0.1".parse::<std::net::IpAddr>().unwrap()]
            ),
            (vec![tcp("b")], vec!["10.0.0.2".parse().unwrap()]),
        ]
    );
}

/// The host that answered last goes first, the others keep their order; `random` tries each
/// host once in some order.
#[test]
fn order_prefers_the_last_host_that_answered() {
    let o = PostgresOptions::from_dsn("host=a,b,c user=u").unwrap();
    let hosts = o.pool_hosts("x").unwrap();
    assert_eq!(hosts.order(), [0, 1, 2]);
    hosts.preferred.store(2, Ordering::Relaxed);
    assert_eq!(hosts.order(), [2, 0, 1]);
    let listener = o.listener_hosts().unwrap().sharing_preference_with(&hosts);
    assert_eq!(listener.order(), [2, 0, 1], "shared with the pool's list");
    assert_eq!(hosts.bound(), Duration::from_secs(15), "5 s per host");

    let random = PostgresOptions::from_dsn("host=a,b,c user=u load_balance_hosts=random").unwrap();
    let random = random.pool_hosts("x").unwrap();
    for _ in 0..20 {
        let mut order = random.order();
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2]);
    }
    for h in &random.hosts {
        assert_eq!(
            h.config.get_load_balance_hosts(),
            tokio_postgres::config::LoadBalanceHosts::Disable,
            "each configuration has one host; the list is ordered here"
        );
    }
}

/// A silent host (it accepts the connection and never answers) costs one connect timeout, then
/// the next host is tried; every failure is reported with its host.
#[tokio::test]
async fn a_silent_host_costs_one_timeout_then_the_next_is_tried() {
    let silent = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    // A port nobody listens on: bound, then closed.
    let refused_port = {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let dsn = format!(
        "host=127.0.0.1,127.0.0.1 port={silent_port},{refused_port} user=u sslmode=disable"
    );
    let o = PostgresOptions::from_dsn(&dsn)
        .unwrap()
        .connect_timeout(Duration::from_millis(300));
    let hosts = o.pool_hosts("x").unwrap();
    for bound_last in [true, false] {
        let started = Instant::now();
        let failed = match hosts.connect(tokio_postgres::NoTls, bound_last).await {
            Ok(_) => panic!("nothing here speaks PostgreSQL"),
            Err(f) => f,
        };
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "one timeout for the silent host, then an immediate refusal: {took:?}"
        );
        let text = failed.describe();
        assert!(
            text.starts_with(&format!(
                "127.0.0.1:{silent_port}/u: no answer within 300ms; 127.0.0.1:{refused_port}/u: "
            )),
            "{text}"
        );
        assert!(failed.last.is_some(), "the refusal is the last error");
    }
    drop(silent);
}

/// With `bound_last`, a silent last host is bounded too; without, the caller bounds it.
#[tokio::test]
async fn the_last_host_is_bounded_only_when_asked() {
    let silent = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = silent.local_addr().unwrap().port();
    let o = PostgresOptions::from_dsn(&format!(
        "host=127.0.0.1 port={port} user=u sslmode=disable"
    ))
    .unwrap()
    .connect_timeout(Duration::from_millis(200));
    let hosts = o.pool_hosts("x").unwrap();
    let failed = match hosts.connect(tokio_postgres::NoTls, true).await {
        Ok(_) => panic!("silent"),
        Err(f) => f,
    };
    assert!(failed.last.is_none());
    assert!(failed.describe().ends_with("no answer within 200ms"));
    let unbounded = tokio::time::timeout(
        Duration::from_millis(600),
        hosts.connect(tokio_postgres::NoTls, false),
    )
    .await;
    assert!(unbounded.is_err(), "left to the caller's bound");
    drop(silent);
}
