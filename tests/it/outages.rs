//! Outages between an instance and PostgreSQL, and how it comes back: keys that were OPEN or
//! HALF_OPEN when the database went away run on local state, the schema is made when a
//! database that was down at start comes up, nothing sent is lost or kept without bound, calls
//! the client gave up on release the server, and sessions killed at once cause no reconnect
//! storm. Faults go through the test proxy or a cluster of the test's own, never the shared
//! server. (Outages under load, and failover, are `faults.rs` and `failover.rs`.)

use std::time::{Duration, Instant};

use crate::support::breakers::{
    behind, fail, fleet_probe, instance, options_at as options, pool_behind, published, quick_trip,
    row_state, trip_fast, Logs,
};
use crate::support::{eventually, test_db, unique_key, version_of, Mode, Proxy, WAIT};
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

/// A key HALF_OPEN (a fleet probe in flight) when the database goes away runs a
/// round of its own at once, instead of rejecting every call for the whole outage.
#[tokio::test]
async fn half_open_key_recovers_locally_when_the_database_goes_away() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = behind(&db, &proxy).await;
    let key = unique_key("halfopen");
    let cb = quick_trip(&a, &key, Duration::from_millis(200));
    fail(&cb).await;
    published(&a).await;
    // The fleet probe: leased from the database and held.
    let probe = fleet_probe(&cb).await;
    assert!(probe.is_probe());
    assert_eq!(cb.state(), State::HalfOpen);
    assert!(cb.try_acquire().is_err(), "the only slot is taken");

    proxy.set_mode(Mode::Cut);
    assert!(eventually(WAIT, || async { a.is_degraded() }).await);
    let local = cb
        .try_acquire()
        .expect("a local round admits a probe during the outage");
    assert!(local.is_probe());
    local.success();
    assert_eq!(
        cb.state(),
        State::Closed,
        "the local round closes the breaker"
    );
    drop(probe);
}

/// A key OPEN when the database goes away probes locally once its cooldown is
/// over.
#[tokio::test]
async fn open_key_probes_locally_after_its_cooldown_during_an_outage() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = behind(&db, &proxy).await;
    let key = unique_key("open-outage");
    let cb = quick_trip(&a, &key, Duration::from_millis(300));
    fail(&cb).await;
    published(&a).await;
    proxy.set_mode(Mode::Cut);
    assert!(eventually(WAIT, || async { a.is_degraded() }).await);
    assert!(
        eventually(WAIT, || async {
            cb.call(|| async { Ok::<_, ()>(()) }).await.is_ok()
        })
        .await,
        "after the cooldown a local probe runs"
    );
    assert_eq!(cb.state(), State::Closed);
}

/// An instance that starts while the database is down says so at WARN while it
/// keeps failing, and on the first successful connect creates the schema (auto_create) and syncs.
#[tokio::test]
async fn instance_started_degraded_creates_the_schema_when_the_database_comes() {
    let (logs, _guard) = Logs::capture();
    let cluster = crate::support::Cluster::start().await;
    let db = cluster.create_db().await;
    cluster.stop().await;
    // About setup: the one place an instance runs as the superuser, to create the schema.
    let a = Storage::connect_with(options(&cluster.conninfo(&db)).auto_create(true))
        .await
        .expect("starts degraded");
    assert!(a.is_degraded());
    assert!(
        eventually(WAIT, || async {
            logs.text().contains("cannot reach PostgreSQL; breakers run on local state and the listener keeps trying")
        })
        .await,
        "a reconnect failure is a WARN:\n{}",
        logs.text()
    );
    cluster.start_again().await;
    assert!(
        eventually(Duration::from_secs(15), || async { !a.is_degraded() }).await,
        "synced once the database is up"
    );
    let client = cluster.client(&db).await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM rc_schema_migrations", &[])
        .await
        .expect("the schema exists")
        .get(0);
    assert!(n >= 6, "{n} migrations applied");
    let key = unique_key("after");
    let cb = trip_fast(CircuitBreaker::builder(&key).storage(a.clone()))
        .build()
        .expect("valid");
    fail(&cb).await;
    assert!(
        eventually(WAIT, || async {
            row_state(&client, &key).await.as_deref() == Some("OPEN")
        })
        .await
    );
}

/// In a fleet half-open round whose only slot is leased elsewhere, other callers
/// are rejected at once (not after `probe_wait`), and the instance stops asking the database
/// until the lease can have expired.
#[tokio::test]
async fn full_half_open_round_fails_fast_and_stops_polling() {
    let db = test_db().await;
    let a = instance(&db).await;
    let proxy = Proxy::start(db.addr()).await;
    let b = pool_behind(&db, &proxy, |o| o.lease_timeout(Duration::from_secs(5))).await;
    let key = unique_key("fastfail");
    let build = |s: &Storage| quick_trip(s, &key, Duration::from_millis(100));
    let (on_a, on_b) = (build(&a), build(&b));
    fail(&on_a).await;
    published(&a).await;
    let probe = fleet_probe(&on_a).await;
    assert!(eventually(WAIT, || async { on_b.state() == State::HalfOpen }).await);
    // B's first call asks the database and learns the round is full.
    let _ = on_b.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(eventually(WAIT, || async { on_b.try_acquire().is_err() }).await);
    let before = proxy.bytes_from_clients();
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    while t.elapsed() < Duration::from_secs(1) {
        let c = Instant::now();
        let r = on_b.call(|| async { Ok::<_, ()>(()) }).await;
        assert!(r.expect_err("the round is full").is_rejected());
        slowest = slowest.max(c.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = proxy.bytes_from_clients() - before;
    assert!(
        slowest < Duration::from_millis(200),
        "a rejected call waited {slowest:?}"
    );
    assert_eq!(sent, 0, "B kept asking the database ({sent} bytes in 1 s)");
    drop(probe);
}

/// A call the client gave up on (statement timeout) must not keep waiting for a row lock
/// on the server.
#[tokio::test]
async fn abandoned_call_releases_the_server() {
    let db = test_db().await;
    let a = Storage::connect_with(
        options(&db.app_conninfo().await).statement_timeout(Duration::from_millis(500)),
    )
    .await
    .expect("connects");
    let key = unique_key("locked");
    let cb = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .build()
        .expect("valid");
    cb.force_closed_confirmed().await.expect("row exists");
    let mut locker = db.client().await;
    let tx = locker.transaction().await.expect("tx");
    tx.execute(
        "SELECT 1 FROM rc_circuit_breakers WHERE resource_key = $1 FOR UPDATE",
        &[&key],
    )
    .await
    .expect("lock");
    cb.force_open(Duration::from_secs(60));
    let client = db.client().await;
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'resilient-circuit' AND wait_event_type = 'Lock'";
    assert!(
        eventually(WAIT, || async {
            client
                .query_one(waiting, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0)
                > 0
        })
        .await,
        "the override waits for the lock"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            client
                .query_one(waiting, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(1)
                == 0
        })
        .await,
        "the server gave up waiting within about the statement timeout"
    );
    tx.rollback().await.expect("unlock");
    assert!(
        eventually(WAIT, || async {
            row_state(&client, &key).await.as_deref() == Some("OPEN")
        })
        .await,
        "the override is retried and lands once the lock is gone"
    );
}

/// The outbox holds one entry per key, however often the key trips while the database is
/// unreachable (cooldown zero: every call trips again).
#[tokio::test]
async fn outbox_is_bounded_per_key_during_an_outage() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = behind(&db, &proxy).await;
    proxy.set_mode(Mode::Cut);
    assert!(eventually(WAIT, || async { a.is_degraded() }).await);
    let keys: Vec<CircuitBreaker> = (0..3)
        .map(|i| {
            CircuitBreaker::builder(unique_key(&format!("churn{i}")))
                .storage(a.clone())
                .failure_limit(Ratio::new(1, 1))
                .cooldown(Duration::from_secs(30))
                .build()
                .expect("valid")
        })
        .collect();
    for _ in 0..500 {
        for cb in &keys {
            fail(cb).await;
            cb.force_closed();
        }
    }
    assert!(
        a.pending_publications() <= 3,
        "{} entries for 3 keys",
        a.pending_publications()
    );
}

/// A trip whose publication fails while the listener is up is retried promptly, not at the
/// next reconciliation (here an hour away).
#[tokio::test]
async fn failed_publication_is_retried_while_the_listener_is_up() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = pool_behind(&db, &proxy, |o| {
        o.reconcile_interval(Duration::from_secs(3600))
    })
    .await;
    let key = unique_key("retry");
    let cb = trip_fast(CircuitBreaker::builder(&key).storage(a.clone()))
        .build()
        .expect("valid");
    proxy.set_mode(Mode::Cut);
    fail(&cb).await;
    assert!(
        eventually(WAIT, || async { proxy.connections() >= 2 }).await,
        "it tried"
    );
    assert!(!a.is_degraded(), "the listener is fine");
    proxy.set_mode(Mode::Pass);
    let client = db.client().await;
    assert!(
        eventually(Duration::from_secs(8), || async {
            row_state(&client, &key).await.as_deref() == Some("OPEN")
        })
        .await,
        "published within the retry backoff's cap"
    );
    let _ = version_of(&client, &key).await;
}

/// A probe lease's local deadline counts from the request, not from the
/// answer: over a slow link, an instance must stop using a lease before the database lets
/// someone else have its slot.
#[tokio::test]
async fn lease_deadline_counts_from_the_request() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let lease = Duration::from_secs(2);
    let a = pool_behind(&db, &proxy, |o| o.lease_timeout(lease)).await;
    let key = unique_key("lease");
    let cb = quick_trip(&a, &key, Duration::from_millis(50));
    fail(&cb).await;
    published(&a).await;
    // Every packet of the pool now waits 500 ms: the lease is granted ~0.5 s after the request
    // and its answer arrives ~1 s after it.
    proxy.set_mode(Mode::Delay(Duration::from_millis(500)));
    let client = db.client().await;
    tokio::time::sleep(Duration::from_millis(60)).await; // the cooldown (50 ms) passes
    let probe = fleet_probe(&cb).await;
    drop(probe); // cancelled: the lease goes back to the instance for the next caller
    let left: i64 = client
        .query_one(
            "SELECT ceil(extract(epoch FROM (max(expires_at) - clock_timestamp())) * 1000)::bigint
             FROM rc_probe_leases WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("the lease row")
        .get(0);
    // Just after the database's expiry, the instance must not start a probe on that lease.
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(left).unwrap_or(0) + 100,
    ))
    .await;
    proxy.set_mode(Mode::Pass);
    assert!(
        cb.try_acquire().is_err(),
        "a lease the database has expired was still used locally"
    );
}

/// A proxy that kills every session right after it connects must not make the listener
/// reconnect and reload in a tight loop: the backoff grows across connections that die young.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sessions_do_not_cause_a_reconnect_storm() {
    let db = test_db().await;
    let a = instance(&db).await;
    let client = db.client().await;
    let mut killed = std::collections::HashSet::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let pids: Vec<i32> = client
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                   AND application_name = 'resilient-circuit-listener'",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for pid in pids {
            if killed.insert(pid) {
                let _ = client
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        killed.len() <= 12,
        "{} listener sessions in 4 s: the reconnects are not backing off",
        killed.len()
    );
    assert!(
        killed.len() >= 3,
        "the test killed {} sessions",
        killed.len()
    );
    assert!(
        eventually(Duration::from_secs(15), || async { !a.is_degraded() }).await,
        "it reconnects once the killing stops"
    );
}

/// A fleet whose listeners all lose their connections at once (a failover, a pooler's restart)
/// comes back checking that it hears other sessions a few times, not once an instance:
/// PostgreSQL before 19 wakes every listening backend for every NOTIFY, so a check each would
/// cost the server `n` × `n` wake-ups. Each reconnected listener checks only if nothing arrives
/// within a heartbeat, on one channel for all, so one instance's check answers the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reconnecting_at_once_checks_itself_a_few_times_not_once_each() {
    const N: usize = 24;
    let db = test_db().await;
    let conninfo = db.app_conninfo().await;
    // Listeners that come back spread over `s` seconds send about √(s × N / (2 × heartbeat))
    // checks (each check answers every listener already back; the next comes from one that
    // reconnected after it). On a loaded server the reconnects spread over a second or two, so
    // the heartbeat is long enough that "a few" stays well apart from "one each".
    const HEARTBEAT: Duration = Duration::from_secs(2);
    let mut fleet = Vec::with_capacity(N);
    for _ in 0..N {
        fleet.push(
            Storage::connect_with(options(&conninfo).heartbeat_interval(HEARTBEAT))
                .await
                .expect("connects"),
        );
    }
    let (_counter, mut checks) =
        crate::support::listening(&db.conninfo(), &["rc_listener_check"]).await;
    let client = db.client().await;
    let listeners = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                       AND application_name = 'resilient-circuit-listener'";
    let pids = |rows: Vec<tokio_postgres::Row>| -> std::collections::HashSet<i32> {
        rows.iter().map(|r| r.get(0)).collect()
    };
    let before = pids(
        client
            .query(listeners, &[])
            .await
            .expect("pg_stat_activity"),
    );
    assert_eq!(before.len(), N, "one listener an instance");
    crate::support::terminate(&client, "resilient-circuit-listener").await;
    let back = eventually(WAIT * 4, || async {
        let now = pids(client.query(listeners, &[]).await.unwrap_or_default());
        now.len() == N && now.is_disjoint(&before) && fleet.iter().all(|s| !s.is_degraded())
    })
    .await;
    assert!(back, "every instance listens again on a new session");
    // Every deferred check is due within a heartbeat of its reconnect; a second more for one
    // still in flight.
    tokio::time::sleep(HEARTBEAT + Duration::from_secs(1)).await;
    let mut sent = 0;
    while checks.try_recv().is_ok() {
        sent += 1;
    }
    assert!(
        (1..=N / 4).contains(&sent),
        "{sent} checks for {N} reconnecting listeners: at least one, and far fewer than one each"
    );
    // And they hear: a trip reaches every one of them.
    let key = unique_key("after-storm");
    let watched: Vec<_> = fleet
        .iter()
        .map(|s| crate::support::breakers::Watched::new(s, &key, trip_fast))
        .collect();
    crate::support::breakers::insert_open(&client, &key).await;
    for (i, mut w) in watched.into_iter().enumerate() {
        assert!(w.reaches(State::Open).await, "instance {i} hears the trip");
    }
}

/// A listener that heard other sessions and reconnects to an address that now leads through a
/// transaction pooler (where its LISTEN stays on a server session no client is attached to)
/// finds out within a heartbeat of the reconnect that it hears nothing, says so, and follows
/// the table by polling, as one that started that way does.
#[tokio::test]
async fn a_listener_that_reconnects_deaf_finds_out_and_polls() {
    use crate::support::pgbouncer::{PgBouncer, PoolMode};
    use resilient_circuit::storage::postgres::PostgresOptions;
    let (logs, _guard) = Logs::capture();
    let cluster = crate::support::Cluster::start().await;
    let db = cluster.create_db().await;
    let app = cluster.app_role(&db).await;
    let bouncer = PgBouncer::start(
        cluster.addr(),
        PoolMode::Transaction,
        &[app.name(), "postgres"],
        3,
    )
    .await;
    let proxy = Proxy::start(cluster.addr()).await;
    let a = Storage::connect_with(
        PostgresOptions::from_dsn(&app.conninfo())
            .expect("parses")
            .listener_dsn(&app.conninfo_via(proxy.addr()))
            .expect("parses")
            .heartbeat_interval(Duration::from_millis(500))
            .statement_timeout(Duration::from_secs(1)),
    )
    .await
    .expect("connects");
    let client = cluster.client(&db).await;
    let heard = unique_key("heard");
    let mut w = crate::support::breakers::Watched::new(&a, &heard, trip_fast);
    crate::support::breakers::insert_open(&client, &heard).await;
    assert!(w.reaches(State::Open).await, "it hears the table at first");
    const DEAF: &str = "does not hear notifications sent by other sessions";
    assert!(!logs.text().contains(DEAF), "{}", logs.text());

    proxy.retarget(bouncer.addr());
    let cut = Instant::now();
    crate::support::terminate(&client, "resilient-circuit-listener").await;
    assert!(
        eventually(WAIT, || async { logs.text().contains(DEAF) }).await,
        "the reconnected listener finds out that it hears nothing:\n{}",
        logs.text()
    );
    let found = cut.elapsed();
    // A reconnect (a first backoff of at most 100 ms), at most a heartbeat (0.5 s) before the
    // check, the check's statement timeout (1 s), a reconnect that polls: about 2 s at worst.
    assert!(found < Duration::from_secs(4), "found out after {found:?}");
    let polled = unique_key("polled");
    let mut p = crate::support::breakers::Watched::new(&a, &polled, trip_fast);
    crate::support::breakers::insert_open(&client, &polled).await;
    assert!(
        p.reaches_within(State::Open, Duration::from_secs(2)).await,
        "polling the change log delivers a trip"
    );
    eprintln!("MEASURED a_listener_that_reconnects_deaf_finds_out_and_polls: deafness found {found:?} after the cut");
}
