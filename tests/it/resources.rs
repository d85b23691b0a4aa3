//! Resources and their bounds: the key map, durations, the listener's notification buffer,
//! callbacks that block or build breakers, and the runtimes an instance lives on. Nothing grows
//! without bound, nothing blocks the listener, nothing panics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::breakers::{
    caught_up, fail, insert_open, instance, options_at as options, published, quick_trip, Watched,
    REACH,
};
use crate::support::{eventually, test_db, unique_key, WAIT};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, ConfigError, State, Storage, StorageError, MAX_DURATION};

/// Status-change callbacks never run on the listener or under the key map's
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

/// The PostgreSQL key map is bounded: keys whose rows are CLOSED cost no cell,
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

/// Durations past the maximum are refused at build time with the maximum named,
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

/// `connect` outside a tokio runtime is a typed error, not a panic.
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

/// A storm of notifications larger than the listener's buffer is neither kept without
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
/// Own I/O thread, so a caller on another runtime still gets a probe lease from the database at
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
