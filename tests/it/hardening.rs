//! Regression tests of the defects found by adversarial review (issues "Hardening I and II"):
//! each failed on the code before the fix. Real PostgreSQL, a database per test; faults go
//! through the test proxy, never the shared server.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{
    CircuitBreaker, ConfigError, Ratio, State, Storage, StorageError, MAX_DURATION,
};
use support::breakers::{
    caught_up, fail, fleet_probe, insert_open, published, quick_trip, row_state, trip_fast, Logs,
    Watched, REACH,
};
use support::{eventually, test_db, unique_key, Mode, Proxy, TestDb};

/// Something expected in milliseconds.
use crate::support::{version_of, WAIT};

/// Options logging in as `conninfo`'s role (the tests' application role: see `TestDb::app`).
/// Options for an instance of its own name (votes and rate reports count by name: each instance
/// is a pod of its own).
fn options(conninfo: &str) -> PostgresOptions {
    PostgresOptions::from_dsn(conninfo)
        .expect("test conninfo parses")
        .instance_name(unique_key("instance"))
}

async fn instance(db: &TestDb) -> Storage {
    Storage::connect_with(options(&db.app_conninfo().await))
        .await
        .expect("connects")
}

/// An instance reaching the database only through `proxy` (pool and listener), with reconciling
/// pushed out of the test's way so that only what the test names can heal it.
async fn behind(db: &TestDb, proxy: &Proxy) -> Storage {
    Storage::connect_with(
        options(&db.app_conninfo_via(proxy.addr()).await)
            .reconcile_interval(Duration::from_secs(3600)),
    )
    .await
    .expect("connects through the proxy")
}

/// An instance whose pool goes through `proxy` while its listener connects directly.
async fn pool_behind(
    db: &TestDb,
    proxy: &Proxy,
    tune: impl FnOnce(PostgresOptions) -> PostgresOptions,
) -> Storage {
    let listener = format!("host={} port={}", db.host(), db.port());
    let opts = tune(options(&db.app_conninfo_via(proxy.addr()).await))
        .listener_dsn(&listener)
        .expect("listener DSN");
    Storage::connect_with(opts).await.expect("connects")
}

/// Hardening I, 1: A trips K while cut off; B trips K and then closes it (two newer versions);
/// when A's path heals, A's stale trip must lose to the close: K stays CLOSED on A, on B and in
/// the table.
#[tokio::test]
async fn stale_trip_is_not_replayed_over_a_later_close() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = behind(&db, &proxy).await;
    let b = instance(&db).await;
    let key = unique_key("replayed");
    let mut on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);

    proxy.set_mode(Mode::Cut);
    assert!(eventually(WAIT, || async { a.is_degraded() }).await);
    fail(&on_a.cb).await;
    assert_eq!(on_a.cb.state(), State::Open);
    assert_eq!(
        a.pending_publications(),
        1,
        "A's trip waits for the database"
    );

    fail(&on_b.cb).await;
    assert!(on_b.reaches(State::Open).await);
    on_b.cb
        .force_closed_confirmed()
        .await
        .expect("B's close is accepted");
    let client = db.client().await;
    assert_eq!(row_state(&client, &key).await.as_deref(), Some("CLOSED"));

    proxy.set_mode(Mode::Pass);
    assert!(
        eventually(WAIT, || async {
            !a.is_degraded() && a.pending_publications() == 0
        })
        .await,
        "A reconnects and its trip is answered"
    );
    assert!(
        on_a.reaches(State::Closed).await,
        "A follows the later close"
    );
    // A marker committed after A's answer: once B has it, anything A's trip caused has reached B.
    assert!(caught_up(&client, &[&b], REACH).await);
    assert_eq!(
        row_state(&client, &key).await.as_deref(),
        Some("CLOSED"),
        "the table keeps the close"
    );
    assert_eq!(on_b.cb.state(), State::Closed, "B keeps the close");
    assert_eq!(on_a.cb.state(), State::Closed, "A keeps the close");
}

/// Hardening I, 2: while A's override is on its way (A's pool is slow), B trips the key after
/// it, and B's NOTIFY reaches A before A's own answer: A must end OPEN (B's newer trip), not
/// CLOSED at the older version of its own override.
#[tokio::test]
async fn notification_during_override_is_not_lost() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = pool_behind(&db, &proxy, |o| {
        o.reconcile_interval(Duration::from_secs(3600))
    })
    .await;
    let b = instance(&db).await;
    let key = unique_key("override");
    let mut on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);
    fail(&on_b.cb).await;
    assert!(on_a.reaches(State::Open).await);

    // Every packet of A's pool now waits 400 ms: the close commits ~400 ms after the call and
    // its answer reaches A ~400 ms after that.
    proxy.set_mode(Mode::Delay(Duration::from_millis(400)));
    let closing = {
        let cb = on_a.cb.clone();
        tokio::spawn(async move { cb.force_closed_confirmed().await })
    };
    assert!(
        eventually(WAIT, || async { on_a.cb.state() == State::Closed }).await,
        "the override is local at once"
    );
    // B sees A's close by NOTIFY, then trips after it.
    assert!(on_b.reaches(State::Closed).await);
    fail(&on_b.cb).await;
    assert_eq!(on_b.cb.state(), State::Open);
    closing
        .await
        .expect("task")
        .expect("A's close was accepted");
    assert!(
        on_a.reaches(State::Open).await,
        "A applies B's trip, which is newer than its own close (now {})",
        on_a.cb.state()
    );
    let client = db.client().await;
    assert_eq!(row_state(&client, &key).await.as_deref(), Some("OPEN"));
}

/// Hardening I, 3a: a key HALF_OPEN (a fleet probe in flight) when the database goes away runs a
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

/// Hardening I, 3b: a key OPEN when the database goes away probes locally once its cooldown is
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

/// Hardening I, 4: status-change callbacks never run on the listener or under the key map's
/// locks. A callback fired by a reload builds breakers on the same storage (it used to deadlock
/// the listener and every later build), and another blocks for seconds (it used to stall every
/// key): the listener keeps applying other keys' changes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_cannot_stall_or_deadlock_the_listener() {
    let db = test_db().await;
    let a = Storage::connect_with(
        options(&db.app_conninfo().await).reconcile_interval(Duration::from_millis(200)),
    )
    .await
    .expect("connects");
    let client = db.client().await;
    let builder_key = unique_key("builds");
    let built = Arc::new(AtomicUsize::new(0));
    let storage = a.clone();
    let count = built.clone();
    let _builds = CircuitBreaker::builder(&builder_key)
        .storage(a.clone())
        .on_status_change(move |c| {
            for i in 0..3 {
                let cb = CircuitBreaker::builder(format!("{}-child-{i}", c.key))
                    .storage(storage.clone())
                    .build();
                if cb.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .build()
        .expect("valid");
    // A change no NOTIFY announces (triggers off for this session): only a reload applies it,
    // so the callback runs from the reload.
    client
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             INSERT INTO rc_circuit_breakers (resource_key, state, open_until, version)
             VALUES ('{builder_key}', 'OPEN', now() + interval '1 hour', 1000000);
             SET session_replication_role = origin;"
        ))
        .await
        .expect("silent write");
    assert!(
        eventually(WAIT, || async { built.load(Ordering::SeqCst) == 3 }).await,
        "the callback built its breakers"
    );

    let slow_key = unique_key("slow");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let _slow = CircuitBreaker::builder(&slow_key)
        .storage(a.clone())
        .on_status_change(move |_| {
            // Blocks until the test says so (or 10 s).
            let _ = rx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(Duration::from_secs(10));
        })
        .build()
        .expect("valid");
    insert_open(&client, &slow_key).await;
    let other = unique_key("other");
    let mut w = Watched::new(&a, &other, |b| b);
    let started = Instant::now();
    insert_open(&client, &other).await;
    // `w`'s callback queues behind the blocked one, so look at the state, not the callback.
    assert!(
        eventually(Duration::from_secs(2), || async {
            w.cb.state() == State::Open
        })
        .await,
        "another key's change applies while a callback blocks"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // Building breakers still works from this thread too.
    let late = CircuitBreaker::builder(unique_key("late"))
        .storage(a.clone())
        .build();
    assert!(late.is_ok());
    tx.send(()).expect("release the callback");
    assert!(w.reaches(State::Open).await);
}

/// Hardening I, 5: the PostgreSQL key map is bounded: keys whose rows are CLOSED cost no cell,
/// and unused CLOSED cells are dropped past the capacity, while a breaker built later for a key
/// that changed meanwhile starts with the fleet's state.
#[tokio::test]
async fn key_map_stays_bounded_and_late_breakers_see_the_fleet() {
    let db = test_db().await;
    let a = instance(&db).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state)
             SELECT 'bulk-' || i, 'CLOSED' FROM generate_series(1, 20000) i;
             UPDATE rc_circuit_breakers SET state = 'OPEN', open_until = now() + interval '1 hour'
               WHERE resource_key = 'bulk-7';
             UPDATE rc_circuit_breakers SET state = 'HALF_OPEN' WHERE resource_key = 'bulk-8';",
        )
        .await
        .expect("rows");
    assert!(
        caught_up(&client, &[&a], REACH).await,
        "every notification was handled"
    );
    assert!(a.len() < 100, "20,000 CLOSED rows made {} cells", a.len());
    // A fresh instance loads the same table: same bound.
    let b = instance(&db).await;
    assert!(
        b.len() < 100,
        "a snapshot of 20,000 CLOSED rows made {} cells",
        b.len()
    );
    for (storage, who) in [(&a, "A"), (&b, "B")] {
        let open = CircuitBreaker::builder("bulk-7")
            .storage(storage.clone())
            .build()
            .expect("valid");
        assert_eq!(open.state(), State::Open, "{who}: a late breaker sees OPEN");
        let half = CircuitBreaker::builder("bulk-8")
            .storage(storage.clone())
            .build()
            .expect("valid");
        assert_eq!(
            half.state(),
            State::HalfOpen,
            "{who}: a late breaker sees HALF_OPEN"
        );
        let closed = CircuitBreaker::builder("bulk-9")
            .storage(storage.clone())
            .build()
            .expect("valid");
        assert_eq!(closed.state(), State::Closed, "{who}");
    }
    // Past the capacity, breakers come and go: their CLOSED cells are dropped.
    for i in 0..9000 {
        let cb = CircuitBreaker::builder(format!("transient-{i}"))
            .storage(a.clone())
            .build()
            .expect("valid");
        drop(cb);
    }
    assert!(a.len() <= 8192, "{} cells", a.len());
    assert_eq!(
        a.state_of("bulk-7"),
        Some(State::Open),
        "open keys are never dropped"
    );
}

/// Hardening I, 6: overrides are retried until the database takes them (a cut path does not lose
/// them, and the reload after the reconnect does not undo them), and the confirmed variant says
/// when the fleet has it.
#[tokio::test]
async fn overrides_are_retried_and_confirmed() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let a = behind(&db, &proxy).await;
    let b = instance(&db).await;
    let key = unique_key("retried");
    let on_a = Watched::new(&a, &key, |b| b);
    let mut on_b = Watched::new(&b, &key, |b| b);
    proxy.set_mode(Mode::Cut);
    assert!(eventually(WAIT, || async { a.is_degraded() }).await);
    let confirmed = {
        let cb = on_a.cb.clone();
        tokio::spawn(async move { cb.force_open_confirmed(Duration::from_secs(600)).await })
    };
    assert!(
        eventually(WAIT, || async { on_a.cb.state() == State::Open }).await,
        "local at once"
    );
    // Some failed attempts, then the path heals.
    assert!(eventually(WAIT, || async { proxy.connections() >= 3 }).await);
    assert!(
        !confirmed.is_finished(),
        "not confirmed while the database is unreachable"
    );
    proxy.set_mode(Mode::Pass);
    tokio::time::timeout(WAIT, confirmed)
        .await
        .expect("confirmed once the database is back")
        .expect("task")
        .expect("accepted");
    assert!(on_b.reaches(State::Open).await, "the fleet follows");
    assert_eq!(on_a.cb.state(), State::Open, "the reload did not undo it");
    let left = on_b.cb.cooldown_remaining();
    assert!(left > Duration::from_secs(500), "{left:?}");
}

/// Hardening I, 7: durations past the maximum are refused at build time with the maximum named,
/// and an override with `Duration::MAX` is clamped: it reaches the fleet and does not sink the
/// other overrides sent with it.
#[tokio::test]
async fn huge_durations_are_refused_or_clamped() {
    let err = CircuitBreaker::builder("huge")
        .storage(Storage::in_memory())
        .cooldown(Duration::MAX)
        .build()
        .expect_err("refused");
    assert!(
        matches!(err, ConfigError::DurationTooLong { name: "cooldown", max, .. } if max == MAX_DURATION)
    );
    assert!(err.to_string().contains("ten years"), "{err}");
    CircuitBreaker::builder("max")
        .storage(Storage::in_memory())
        .cooldown(MAX_DURATION)
        .build()
        .expect("the maximum itself is fine");
    let lease = Storage::connect_with(
        PostgresOptions::from_dsn("host=127.0.0.1 dbname=nothing")
            .expect("dsn")
            .lease_timeout(Duration::MAX),
    )
    .await
    .expect_err("refused");
    assert!(lease.to_string().contains("lease_timeout"), "{lease}");

    let db = test_db().await;
    let a = instance(&db).await;
    let b = instance(&db).await;
    let keys: Vec<String> = (0..3).map(|i| unique_key(&format!("batch{i}"))).collect();
    let on_a: Vec<CircuitBreaker> = keys
        .iter()
        .map(|k| {
            CircuitBreaker::builder(k)
                .storage(a.clone())
                .build()
                .expect("valid")
        })
        .collect();
    let mut on_b: Vec<Watched> = keys.iter().map(|k| Watched::new(&b, k, |b| b)).collect();
    on_a[0].force_open(Duration::from_secs(60));
    on_a[1].force_open(Duration::MAX);
    on_a[2].force_open(Duration::from_secs(60));
    for (w, k) in on_b.iter_mut().zip(&keys) {
        assert!(w.reaches(State::Open).await, "{k} reaches the fleet");
    }
    assert!(on_b[1].cb.cooldown_remaining() > Duration::from_secs(9 * 365 * 86_400));
}

/// Hardening I, 8: an instance that starts while the database is down says so at WARN while it
/// keeps failing, and on the first successful connect creates the schema (auto_create) and syncs.
#[tokio::test]
async fn instance_started_degraded_creates_the_schema_when_the_database_comes() {
    let (logs, _guard) = Logs::capture();
    let cluster = support::Cluster::start().await;
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

/// Hardening I, 9: in a fleet half-open round whose only slot is leased elsewhere, other callers
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

/// Hardening I, 10 (and 7): `connect` outside a tokio runtime is a typed error, not a panic.
#[test]
fn connect_outside_a_runtime_is_an_error() {
    let fut = Storage::connect("host=127.0.0.1 dbname=test user=postgres");
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(StorageError::NoRuntime)) => {}
        other => panic!(
            "expected NoRuntime, got {:?}",
            other.map(|r| r.map(|s| s.backend_name()))
        ),
    }
}

use std::future::Future;

/// Risk: a call the client gave up on (statement timeout) must not keep waiting for a row lock
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

/// Risk: the outbox holds one entry per key, however often the key trips while the database is
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

/// Risk: a trip whose publication fails while the listener is up is retried promptly, not at the
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

/// Hardening I, 10: a probe lease's local deadline counts from the request, not from the
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

/// Risk: a proxy that kills every session right after it connects must not make the listener
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

/// Risk: a storm of notifications larger than the listener's buffer is neither kept without
/// bound nor lost: the listener drops the excess and reloads every row (here it finds a change
/// that no notification announced; reconciliation is an hour away). The storm is signed and
/// sent on the secret channel as the owner, as the trigger would send it.
#[tokio::test]
async fn notification_storm_past_the_buffer_reloads() {
    let db = test_db().await;
    let a = Storage::connect_with(
        options(&db.app_conninfo().await)
            .notification_buffer(8)
            .reconcile_interval(Duration::from_secs(3600)),
    )
    .await
    .expect("connects");
    let key = unique_key("silent");
    let w = Watched::new(&a, &key, |b| b);
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             INSERT INTO rc_circuit_breakers (resource_key, state, open_until, version)
             VALUES ('{key}', 'OPEN', now() + interval '1 hour', 1000000);
             SET session_replication_role = origin;
             SELECT pg_notify(k.channel, json_build_object(
                 'v', 3, 'op', 'row', 'ns', 'elsewhere', 'key', 'k' || i, 'state', 'OPEN',
                 'version', i, 'remaining_ms', 0, 'at_us', m.at_us,
                 'mac', encode(sha256(k.opad || sha256(k.ipad || convert_to(concat_ws('|', '3', 'row',
                     '9:elsewhere', char_length('k' || i) || ':k' || i, 'OPEN', i::text, '0',
                     m.at_us::text), 'UTF8'))), 'hex'))::text)
             FROM public.rc_notify_key k,
                  (SELECT floor(date_part('epoch', clock_timestamp()) * 1e6)::bigint AS at_us) m,
                  generate_series(1, 2000) i;"
        ))
        .await
        .expect("silent write, then a storm");
    assert!(
        eventually(WAIT, || async { w.cb.state() == State::Open }).await,
        "the overflow made the listener reload"
    );
    assert!(!a.is_degraded());
}

/// The runtime an instance was connected on may shut down: the instance lives on the library's
/// own I/O thread, so a caller on another runtime still gets a probe lease from the database at
/// once and the breaker closes (before, its tasks died with that runtime).
#[test]
fn an_instance_outlives_the_runtime_that_connected_it() {
    let rt = |_: ()| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    let main = rt(());
    let db = main.block_on(test_db());
    let first = rt(());
    let key = unique_key("deadrt");
    let (storage, cb) = first.block_on(async {
        let storage = instance(&db).await;
        let cb = quick_trip(&storage, &key, Duration::from_millis(50));
        fail(&cb).await;
        published(&storage).await;
        tokio::time::sleep(Duration::from_millis(80)).await; // the cooldown passes
        (storage, cb)
    });
    drop(first); // shuts the runtime that connected down
    main.block_on(async {
        let t = Instant::now();
        let r = cb.call(|| async { Ok::<_, ()>(()) }).await;
        assert!(r.is_ok(), "the probe lease came from the database: {r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "the probe waited {:?}",
            t.elapsed()
        );
        assert!(
            eventually(WAIT, || async { cb.state() == State::Closed }).await,
            "the probe's report closed it"
        );
    });
    drop(storage);
}
