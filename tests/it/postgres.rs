//! Shared state over PostgreSQL: every test runs against a real server, in a database of its own.

use crate::support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, SlowCalls, State, Storage, StorageError};
use support::breakers::{
    audit_transitions, audited, caught_up, fail, insert_open, instance, notify_signed, options,
    row_state, trip_fast, Watched,
};
use support::{test_db, unique_key};

const WAIT: Duration = Duration::from_secs(5);

/// A trip on instance A is seen on instance B, which then rejects without running the call.
#[tokio::test]
async fn trip_on_a_is_seen_on_b() {
    let db = test_db().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let key = unique_key("payments");
    let on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);
    fail(&on_a.cb).await;
    assert_eq!(
        on_a.cb.state(),
        State::Open,
        "A trips on its own window at once"
    );
    assert!(on_b.reaches(State::Open).await, "B follows by NOTIFY");
    let ran = AtomicUsize::new(0);
    let r = on_b
        .cb
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await;
    assert!(r.expect_err("B rejects").is_rejected());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let change = on_b.changes.try_recv().ok();
    assert!(change.is_none() || change.is_some_and(|c| c.to == State::Open));
}

/// An instance started while the fleet's breaker is OPEN rejects its very first call.
#[tokio::test]
async fn new_instance_sees_open_at_once() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("kyc");
    let mut on_a = Watched::new(&a, &key, trip_fast);
    fail(&on_a.cb).await;
    // Wait for the database to have accepted the trip (the row exists and is OPEN).
    let client = db.client().await;
    assert!(
        support::eventually(WAIT, || async {
            row_state(&client, &key).await.as_deref() == Some("OPEN")
        })
        .await
    );
    assert!(on_a.reaches(State::Open).await);
    let late = instance(&db).await;
    let cb = CircuitBreaker::builder(&key)
        .storage(late)
        .build()
        .expect("valid");
    assert_eq!(cb.state(), State::Open);
    assert!(
        cb.try_acquire().is_err(),
        "first call of the new instance is rejected"
    );
    assert!(cb.cooldown_remaining() > Duration::from_secs(50));
}

/// Ten instances racing to trip the same key produce exactly one transition in the table.
#[tokio::test]
async fn ten_racing_instances_make_one_transition() {
    let db = test_db().await;
    let first = instance(&db).await;
    let client = db.client().await;
    audit_transitions(&client).await;
    let mut storages = vec![first];
    for _ in 1..10 {
        storages.push(instance(&db).await);
    }
    let key = unique_key("race");
    let mut breakers: Vec<Watched> = storages
        .iter()
        .map(|s| Watched::new(s, &key, trip_fast))
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(10));
    let mut tasks = Vec::new();
    for w in &breakers {
        let cb = w.cb.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            fail(&cb).await;
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    for w in &mut breakers {
        assert!(w.reaches(State::Open).await);
    }
    // Once every instance's trip has been answered by the database, the audit table holds
    // everything that happened.
    assert!(
        support::eventually(WAIT, || async {
            storages.iter().all(|s| s.pending_publications() == 0)
        })
        .await
    );
    let opened = audited(&client, &key).await;
    assert_eq!(
        opened,
        vec![("NONE".to_owned(), "OPEN".to_owned())],
        "exactly one transition"
    );
}

/// In a fleet-wide half-open round, exactly `den` probe permits exist across all instances.
#[tokio::test]
async fn fleet_wide_probe_count_is_exact() {
    let db = test_db().await;
    let key = unique_key("probes");
    let mut storages = Vec::new();
    for _ in 0..4 {
        storages.push(instance(&db).await);
    }
    let configure = |b: resilient_circuit::Builder| {
        b.failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(3, 3))
            .cooldown(Duration::from_millis(200))
            .probe_wait(Duration::from_millis(100))
    };
    let mut breakers: Vec<Watched> = storages
        .iter()
        .map(|s| Watched::new(s, &key, configure))
        .collect();
    fail(&breakers[0].cb).await;
    for w in &mut breakers {
        assert!(w.reaches(State::Open).await);
    }
    tokio::time::sleep(breakers[0].cb.cooldown_remaining() + Duration::from_millis(20)).await;
    // Every instance keeps asking; permits are held (not reported) so none can come back.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        for w in &breakers {
            if let Ok(p) = w.cb.acquire().await {
                held.push(p);
            }
        }
        if held.len() >= 3 {
            // Keep trying a little longer: a fourth permit must never appear.
            for w in &breakers {
                for _ in 0..3 {
                    assert!(
                        w.cb.acquire().await.is_err(),
                        "no fourth probe permit anywhere"
                    );
                }
            }
            break;
        }
    }
    assert_eq!(held.len(), 3, "exactly den = 3 probes across 4 instances");
    for p in held {
        p.success();
    }
    for w in &mut breakers {
        assert!(
            w.reaches(State::Closed).await,
            "three successful probes close it fleet-wide"
        );
    }
}

/// Plain SQL INSERT, UPDATE and DELETE by an operator propagate to every instance.
#[tokio::test]
async fn plain_sql_writes_propagate() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("ops");
    let mut w = Watched::new(&a, &key, |b| b);
    let client = db.client().await;
    insert_open(&client, &key).await;
    assert!(w.reaches(State::Open).await, "INSERT propagates");
    assert!(w.cb.cooldown_remaining() > Duration::from_secs(3500));
    client
        .execute("UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL WHERE resource_key = $1", &[&key])
        .await
        .expect("update");
    assert!(w.reaches(State::Closed).await, "UPDATE propagates");
    client
        .execute("UPDATE rc_circuit_breakers SET state = 'OPEN', open_until = now() + interval '1 hour' WHERE resource_key = $1", &[&key])
        .await
        .expect("update");
    assert!(w.reaches(State::Open).await);
    client
        .execute(
            "DELETE FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("delete");
    assert!(w.reaches(State::Closed).await, "DELETE means CLOSED");
}

/// The Python package's upsert (state, failure_count, open_until, execution_log) propagates.
#[tokio::test]
async fn python_package_upsert_propagates() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("python");
    let mut w = Watched::new(&a, &key, |b| b);
    let client = db.client().await;
    let upsert = "INSERT INTO rc_circuit_breakers (resource_key, namespace, state, failure_count, open_until, execution_log)
                  VALUES ($1, 'default', $2, $3, $4, $5::text::jsonb)
                  ON CONFLICT (resource_key, namespace) DO UPDATE SET
                    state = EXCLUDED.state, failure_count = EXCLUDED.failure_count,
                    open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log";
    let until = std::time::SystemTime::now() + Duration::from_secs(120);
    client
        .execute(
            upsert,
            &[
                &key,
                &"OPEN",
                &3i32,
                &Some(until),
                &"[true,false,false,false]",
            ],
        )
        .await
        .expect("Python package upsert");
    assert!(w.reaches(State::Open).await);
    let left = w.cb.cooldown_remaining();
    assert!(
        left > Duration::from_secs(100) && left <= Duration::from_secs(120),
        "{left:?}"
    );
    client
        .execute(
            upsert,
            &[
                &key,
                &"CLOSED",
                &0i32,
                &None::<std::time::SystemTime>,
                &"[]",
            ],
        )
        .await
        .expect("Python package upsert");
    assert!(w.reaches(State::Closed).await);
}

/// Writes an OPEN row for `marker` in `namespace` by SQL and waits until every `watchers` has
/// applied it. Notifications reach a listener in commit order, so by then each has also handled
/// (applied or ignored) every change committed before.
async fn mark(
    client: &tokio_postgres::Client,
    namespace: &str,
    marker: &str,
    watchers: &mut [Watched],
) {
    client
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, namespace, state, open_until)
             VALUES ($1, $2, 'OPEN', now() + interval '1 hour')",
            &[&marker, &namespace],
        )
        .await
        .expect("marker row");
    for w in watchers {
        assert!(
            w.reaches(State::Open).await,
            "the {namespace} marker arrives"
        );
    }
}

/// Instances in different namespaces do not see each other's breakers: a trip in red reaches
/// red's other instance and not blue's two, and a trip in blue reaches blue's other instance
/// and not red's two; each namespace's table row is its own.
#[tokio::test]
async fn namespaces_isolate() {
    let db = test_db().await;
    let base = options(&db).await;
    let connect = |ns: &'static str| {
        let o = base.clone().namespace(ns);
        async move { Storage::connect_with(o).await.expect(ns) }
    };
    let (red, red_twin) = (connect("red").await, connect("red").await);
    let (blue, blue_twin) = (connect("blue").await, connect("blue").await);
    let client = db.client().await;
    // The same names in both namespaces: `tripped_in_red` is tripped by red only,
    // `tripped_in_blue` by blue only.
    let tripped_in_red = unique_key("shared-name");
    let tripped_in_blue = unique_key("shared-name");
    let watch = |s: &Storage, key: &str| Watched::new(s, key, trip_fast);
    let (on_red, mut on_red_twin) = (
        watch(&red, &tripped_in_red),
        watch(&red_twin, &tripped_in_red),
    );
    let (blue_sees_red, blue_twin_sees_red) = (
        watch(&blue, &tripped_in_red),
        watch(&blue_twin, &tripped_in_red),
    );
    let (on_blue, mut on_blue_twin) = (
        watch(&blue, &tripped_in_blue),
        watch(&blue_twin, &tripped_in_blue),
    );
    let (red_sees_blue, red_twin_sees_blue) = (
        watch(&red, &tripped_in_blue),
        watch(&red_twin, &tripped_in_blue),
    );

    fail(&on_red.cb).await;
    assert!(
        on_red_twin.reaches(State::Open).await,
        "red's other instance follows red's trip"
    );
    assert!(support::eventually(WAIT, || async { red.pending_publications() == 0 }).await);
    let blue_marker = unique_key("blue-marker");
    let mut blue_markers = [watch(&blue, &blue_marker), watch(&blue_twin, &blue_marker)];
    mark(&client, "blue", &blue_marker, &mut blue_markers).await;
    assert_eq!(
        (blue_sees_red.cb.state(), blue_twin_sees_red.cb.state()),
        (State::Closed, State::Closed),
        "blue's instances received red's trip and ignored it"
    );

    fail(&on_blue.cb).await;
    assert!(
        on_blue_twin.reaches(State::Open).await,
        "blue's other instance follows blue's trip: blue's listener works"
    );
    assert!(support::eventually(WAIT, || async { blue.pending_publications() == 0 }).await);
    let red_marker = unique_key("red-marker");
    let mut red_markers = [watch(&red, &red_marker), watch(&red_twin, &red_marker)];
    mark(&client, "red", &red_marker, &mut red_markers).await;
    assert_eq!(
        (red_sees_blue.cb.state(), red_twin_sees_blue.cb.state()),
        (State::Closed, State::Closed),
        "red's instances received blue's trip and ignored it"
    );

    let rows: Vec<(String, String)> = client
        .query(
            "SELECT resource_key, namespace FROM rc_circuit_breakers
             WHERE resource_key = ANY($1) ORDER BY namespace",
            &[&vec![tripped_in_red.clone(), tripped_in_blue.clone()]],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (tripped_in_blue.clone(), "blue".to_owned()),
            (tripped_in_red.clone(), "red".to_owned()),
        ],
        "one row per trip, each in its own namespace"
    );
}

/// Notifications whose version is not newer than the one held are ignored, even fresh and
/// validly signed: a HALF_OPEN taken on trust loses to the version held, and a CLOSED (read from
/// the table before it is believed) finds the row still OPEN.
#[tokio::test]
async fn stale_notifications_are_ignored() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("stale");
    let mut w = Watched::new(&a, &key, trip_fast);
    fail(&w.cb).await;
    assert!(w.reaches(State::Open).await);
    let client = db.client().await;
    assert!(support::eventually(WAIT, || async { row_state(&client, &key).await.is_some() }).await);
    assert!(
        support::eventually(WAIT, || async { a.pending_publications() == 0 }).await,
        "the trip is accepted"
    );
    while w.changes.try_recv().is_ok() {} // the trip's own change
    let version = support::version_of(&client, &key).await;
    // All carry a valid MAC and a fresh commit time: only their versions make them stale.
    for (state, v) in [
        ("HALF_OPEN", version),
        ("HALF_OPEN", version - 1),
        ("CLOSED", version),
        ("CLOSED", version - 1),
    ] {
        notify_signed(&client, "default", &key, state, v, 0).await;
    }
    assert!(
        caught_up(&client, &[&a], WAIT).await,
        "the instance applied every notification sent before the marker"
    );
    assert_eq!(w.cb.state(), State::Open, "no stale notification applied");
    assert!(
        w.changes.try_recv().is_err(),
        "no transition from a stale notification"
    );
    // A newer one, signed the same way, is applied.
    notify_signed(
        &client,
        "default",
        &key,
        "HALF_OPEN",
        version + 1_000_000,
        0,
    )
    .await;
    let change = tokio::time::timeout(WAIT, w.changes.recv())
        .await
        .expect("a change")
        .expect("open channel");
    assert_eq!((change.from, change.to), (State::Open, State::HalfOpen));
}

/// Without auto_create, a database without the schema gives SchemaNotReady naming the fix;
/// instances applying the migrations together apply each file once.
#[tokio::test]
async fn schema_not_ready_then_concurrent_migration() {
    let db = test_db().await;
    let plain = PostgresOptions::from_dsn(&db.conninfo()).expect("parses");
    let err = Storage::connect_with(plain)
        .await
        .expect_err("schema missing");
    assert!(
        matches!(err, StorageError::SchemaNotReady { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("RC_DB_AUTO_CREATE=1"), "{err}");
    // About setup: instances of a role that may create tables (here the superuser).
    let migrating = || async {
        Storage::connect_with(
            PostgresOptions::from_dsn(&db.conninfo())
                .expect("parses")
                .auto_create(true),
        )
        .await
        .expect("migrates and connects")
    };
    let (x, y, z) = tokio::join!(migrating(), migrating(), migrating());
    assert_eq!(
        (x.backend_name(), y.backend_name(), z.backend_name()),
        ("postgres", "postgres", "postgres")
    );
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM rc_schema_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n as usize, resilient_circuit::admin::MIGRATIONS.len());
}

/// What the instance's backends last ran: (pid, application_name, query_start), by pid.
async fn instance_activity(client: &tokio_postgres::Client) -> Vec<(i32, String, String)> {
    client
        .query(
            "SELECT pid, application_name, coalesce(query_start::text, '') FROM pg_stat_activity
             WHERE datname = current_database() AND application_name LIKE 'resilient-circuit%'
             ORDER BY pid",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A healthy closed breaker sends nothing to the database: during 10,000 healthy calls (and 100
/// failures below the limit) not one byte goes from the instance to the server, counted by a
/// proxy the instance reaches the server through, and none of its backends starts a statement.
/// A trip on the same instance, afterwards, does send bytes and run a statement, so both
/// counters see this instance's traffic.
#[tokio::test]
async fn healthy_calls_cause_no_statements() {
    let db = test_db().await;
    let proxy = support::Proxy::start(db.addr()).await;
    // No heartbeat and no reconciliation during the test: only calls could send anything.
    let quiet = PostgresOptions::from_dsn(&db.app_conninfo_via(proxy.addr()).await)
        .expect("test conninfo parses")
        .heartbeat_interval(Duration::from_secs(3600))
        .reconcile_interval(Duration::from_secs(3600));
    let a = Storage::connect_with(quiet).await.expect("connects");
    assert!(
        proxy.bytes_from_clients() > 0,
        "the instance goes through the proxy"
    );
    let key = unique_key("healthy");
    let cb = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .build()
        .expect("valid");
    let tripper = trip_fast(CircuitBreaker::builder(unique_key("control")).storage(a.clone()))
        .build()
        .expect("valid");
    let client = db.client().await;
    // connect_with has had an answer to everything it sent, so every byte it sent has been
    // read by the proxy already.
    let sent_before = proxy.bytes_from_clients();
    let activity_before = instance_activity(&client).await;
    assert!(
        activity_before.len() >= 2
            && activity_before
                .iter()
                .any(|(_, app, _)| app == "resilient-circuit-listener"),
        "the listener and a pooled connection: {activity_before:?}"
    );

    for _ in 0..10_000 {
        cb.try_acquire().expect("closed").success();
    }
    for _ in 0..100 {
        fail(&cb).await; // one failure in four stays below the default 5/10 limit
        for _ in 0..3 {
            cb.call(|| async { Ok::<_, ()>(()) }).await.ok();
        }
    }
    assert_eq!(cb.state(), State::Closed);
    // Absence can only be watched over a window: long enough for anything the calls spawned to
    // run and write to its socket (a local round trip takes well under a millisecond).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        proxy.bytes_from_clients() - sent_before,
        0,
        "healthy calls sent bytes to the server"
    );
    assert_eq!(
        instance_activity(&client).await,
        activity_before,
        "the instance's backends ran a statement (or a new one connected) during healthy calls"
    );
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "failures below the limit never wrote a row");

    // Positive control: one trip on the same instance is seen by both counters.
    fail(&tripper).await;
    assert_eq!(tripper.state(), State::Open);
    assert!(support::eventually(WAIT, || async { a.pending_publications() == 0 }).await);
    let trip_bytes = proxy.bytes_from_clients() - sent_before;
    assert!(trip_bytes > 0, "a trip sends bytes through the proxy");
    assert_ne!(
        instance_activity(&client).await,
        activity_before,
        "a trip runs a statement on one of the instance's backends"
    );
    eprintln!(
        "MEASURED healthy_calls_cause_no_statements: 0 bytes to the server during 10,400 calls; one trip sent {trip_bytes} bytes"
    );
}

/// A probe lease held by an instance that dies is given back when it expires, so a crashed
/// prober cannot wedge the breaker in HALF_OPEN.
#[tokio::test]
async fn lease_of_a_crashed_prober_expires() {
    let db = test_db().await;
    let lease = Duration::from_millis(600);
    let short = options(&db).await.lease_timeout(lease);
    let a = Storage::connect_with(short.clone()).await.expect("a");
    let b = Storage::connect_with(short).await.expect("b");
    let key = unique_key("crashed-prober");
    let configure = |bld: resilient_circuit::Builder| {
        bld.failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(100))
            .probe_wait(Duration::from_millis(50))
    };
    let on_a = Watched::new(&a, &key, configure);
    let mut on_b = Watched::new(&b, &key, configure);
    fail(&on_a.cb).await;
    assert!(on_b.reaches(State::Open).await);
    tokio::time::sleep(on_a.cb.cooldown_remaining() + Duration::from_millis(20)).await;
    // Before A asks: the database grants the lease after this instant, so it expires after
    // `leased_at + lease`.
    let leased_at = std::time::Instant::now();
    // The row's cooldown may end a little after A's own (it counts from the trip's commit): a
    // rejection that says how long is waited out, as a caller would.
    let permit = loop {
        match on_a.cb.acquire().await {
            Ok(p) => break p,
            Err(r) => {
                assert!(leased_at.elapsed() < WAIT, "A leases the only probe: {r}");
                let rest = r.retry_after().unwrap_or_default();
                tokio::time::sleep(rest.clamp(Duration::from_millis(1), lease / 4)).await;
            }
        }
    };
    // A dies holding it: the permit is never reported nor returned.
    std::mem::forget(permit);
    drop(on_a);
    drop(a);
    assert!(on_b.reaches(State::HalfOpen).await);
    assert!(
        on_b.cb.acquire().await.is_err(),
        "the slot is still leased to A"
    );
    let mut got = None;
    while leased_at.elapsed() < lease * 4 {
        if let Ok(p) = on_b.cb.acquire().await {
            got = Some(p);
            break;
        }
    }
    let waited = leased_at.elapsed();
    let p = got.expect("B gets the slot once A's lease expires");
    assert!(waited >= lease, "not before the lease expired: {waited:?}");
    p.success();
    assert!(on_b.reaches(State::Closed).await);
}

/// A burst of local trips on many keys (sent in batches) reaches the table and every other
/// instance, one transition per key.
#[tokio::test]
async fn burst_of_local_trips_is_published_in_batches() {
    let db = test_db().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let keys: Vec<String> = (0..300).map(|i| unique_key(&format!("burst{i}"))).collect();
    let on_a: Vec<CircuitBreaker> = keys
        .iter()
        .map(|k| {
            trip_fast(CircuitBreaker::builder(k).storage(a.clone()))
                .build()
                .expect("valid")
        })
        .collect();
    let mut on_b: Vec<Watched> = keys
        .iter()
        .map(|k| Watched::new(&b, k, trip_fast))
        .collect();
    for cb in &on_a {
        fail(cb).await;
    }
    // B's transitions arrive through its callbacks; wait for all of them, then count.
    assert!(
        support::eventually(WAIT, || async {
            on_b.iter().all(|w| w.cb.state() == State::Open)
        })
        .await,
        "every key reached B"
    );
    assert!(support::eventually(WAIT, || async { a.pending_publications() == 0 }).await);
    let client = db.client().await;
    let open: i64 = client
        .query_one(
            "SELECT count(*) FROM rc_circuit_breakers WHERE state = 'OPEN' AND resource_key = ANY($1)",
            &[&keys],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(open, 300);
    for w in &mut on_b {
        let mut opened = 0;
        while let Ok(c) = w.changes.try_recv() {
            opened += usize::from(c.to == State::Open);
        }
        assert_eq!(opened, 1, "{}: one transition", w.cb.key());
    }
}

/// A trip decided right after a manual close wins: the close's late answer neither cancels it
/// nor closes the instance again, and the fleet ends OPEN.
#[tokio::test]
async fn trip_after_force_closed_wins() {
    let db = test_db().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let key = unique_key("close-then-trip");
    let on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);
    fail(&on_a.cb).await;
    assert!(on_b.reaches(State::Open).await);
    assert!(support::eventually(WAIT, || async { a.pending_publications() == 0 }).await);
    on_a.cb.force_closed();
    fail(&on_a.cb).await; // the window trips again at once, before the close is answered
    assert_eq!(on_a.cb.state(), State::Open);
    let client = db.client().await;
    assert!(
        support::eventually(WAIT, || async {
            a.pending_publications() == 0
                && client
                    .query_opt(
                        "SELECT 1 FROM rc_circuit_breakers WHERE resource_key = $1 AND state = 'OPEN' AND open_until > now()",
                        &[&key],
                    )
                    .await
                    .ok()
                    .flatten()
                    .is_some()
        })
        .await,
        "the second trip reached the table"
    );
    assert!(on_b.reaches(State::Open).await);
    assert_eq!(
        on_a.cb.state(),
        State::Open,
        "the close's answer did not undo the trip"
    );
}

/// `Storage::flush` returns once the database answered the trip and the probe result (the row
/// says so at once, with no waiting), reports `false` within its bound while the database is
/// unreachable, and is true at once in memory.
#[tokio::test]
async fn flush_waits_until_the_database_answered() {
    let db = test_db().await;
    let client = db.client().await;
    let a = instance(&db).await;
    let key = unique_key("flushed");
    let cb = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .failure_limit(Ratio::new(1, 1))
        .success_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_millis(300))
        // The probe's lease is one commit away: on a loaded CI machine that can take longer
        // than the default second, and this test is about flush, not lease latency.
        .probe_wait(WAIT)
        .build()
        .expect("valid");
    fail(&cb).await;
    assert!(a.flush(WAIT).await, "the trip is answered");
    assert_eq!(a.pending_publications(), 0);
    assert_eq!(row_state(&client, &key).await.as_deref(), Some("OPEN"));

    tokio::time::sleep(cb.cooldown_remaining()).await; // the cooldown itself: time, not an event
    let probe = cb.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(probe.is_ok(), "the probe runs: {probe:?}");
    assert!(a.flush(WAIT).await, "the probe's result is answered");
    assert_eq!(row_state(&client, &key).await.as_deref(), Some("CLOSED"));

    // Unreachable: false within the bound, the trip still pending; true once it is back.
    let proxy = support::Proxy::start(db.addr()).await;
    let via_proxy = PostgresOptions::from_dsn(&db.conninfo_via(proxy.addr()))
        .expect("parses")
        .auto_create(true);
    let b = Storage::connect_with(via_proxy)
        .await
        .expect("connects through the proxy");
    let cut_key = unique_key("flush-cut");
    let on_b = Watched::new(&b, &cut_key, trip_fast);
    proxy.set_mode(support::Mode::Cut);
    assert!(support::eventually(WAIT, || async { b.is_degraded() }).await);
    fail(&on_b.cb).await;
    let started = std::time::Instant::now();
    assert!(!b.flush(Duration::from_millis(300)).await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(b.pending_publications(), 1);
    assert_eq!(row_state(&client, &cut_key).await, None);
    proxy.set_mode(support::Mode::Pass);
    assert!(
        b.flush(Duration::from_secs(15)).await,
        "published once back"
    );
    assert_eq!(row_state(&client, &cut_key).await.as_deref(), Some("OPEN"));

    let memory = Storage::in_memory();
    assert!(memory.flush(Duration::ZERO).await);
}

/// A trip is published while the task that tripped keeps computing without yielding, on a
/// current-thread runtime: the instance's I/O has a thread of its own, so another instance
/// rejects long before the busy task lets its runtime run anything.
#[test]
fn a_trip_is_published_while_the_tripping_task_computes() {
    busy_tripper(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
        "current-thread",
    );
}

/// The same on a multi-thread runtime, the tripping task on a worker: a task it spawned would
/// wait in that worker's LIFO slot, which the other worker does not steal from.
#[test]
fn a_trip_is_published_while_a_worker_computes() {
    busy_tripper(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime"),
        "multi-thread",
    );
}

/// Trips on `rt` inside a spawned task that then spins for 1 s; another instance on another
/// thread must reject within 500 ms.
fn busy_tripper(rt: tokio::runtime::Runtime, flavor: &str) {
    use std::time::Instant;
    let db = rt.block_on(test_db());
    let conninfo = rt.block_on(db.app_conninfo());
    let key = unique_key("busy");
    let a = rt
        .block_on(Storage::connect_with(
            PostgresOptions::from_dsn(&conninfo).expect("dsn"),
        ))
        .expect("a connects");
    // The observer: another instance on another thread and runtime.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let observer = {
        let (conninfo, key) = (conninfo.clone(), key.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("a runtime");
            rt.block_on(async move {
                let b = Storage::connect_with(PostgresOptions::from_dsn(&conninfo).expect("dsn"))
                    .await
                    .expect("b connects");
                let mut on_b = Watched::new(&b, &key, trip_fast);
                ready_tx.send(()).expect("the test waits");
                let opened = on_b.reaches(State::Open).await;
                seen_tx
                    .send((opened, Instant::now()))
                    .expect("the test waits");
            })
        })
    };
    ready_rx.recv().expect("the observer is ready");
    let cb = trip_fast(CircuitBreaker::builder(&key).storage(a.clone()))
        .build()
        .expect("valid");
    let tripped = rt
        .block_on(rt.spawn(async move {
            let tripped = Instant::now();
            cb.try_acquire().expect("closed").failure();
            // Computing for a second without an await.
            let busy_until = tripped + Duration::from_secs(1);
            while Instant::now() < busy_until {
                std::hint::spin_loop();
            }
            tripped
        }))
        .expect("the busy task ends");
    let (opened, at) = seen_rx.recv().expect("the observer reports");
    assert!(opened, "B follows A's trip");
    let took = at.duration_since(tripped);
    assert!(
        took < Duration::from_millis(500),
        "{flavor}: published while the tripping task was busy: B saw it after {took:?}"
    );
    eprintln!("MEASURED busy_tripper ({flavor}): B rejected {took:?} after the trip, while the tripping task spun for 1 s");
    observer.join().expect("the observer ends");
    drop(a);
    rt.block_on(async move { drop(db) });
}

/// The cooldown a row's last write set (`open_until` less the write's transaction start, so a
/// slow test machine does not shorten it), the time left of it by the database's clock, and the
/// row's reopen count (`sql/0011_growing_cooldowns.sql`); -1 for times of a row not open.
async fn row_cooldown(client: &tokio_postgres::Client, key: &str) -> (i64, i64, i32) {
    let row = client
        .query_one(
            "SELECT coalesce((extract(epoch FROM open_until - updated_at) * 1000)::bigint, -1),
                    coalesce(public.rc_remaining_ms(open_until), -1), reopens
             FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .unwrap_or_else(|e| panic!("reading the row of {key}: {e}"));
    (row.get(0), row.get(1), row.get(2))
}

/// Growing cooldowns across two instances: each failed fleet round reopens the row for about
/// 2×, 4× the base (less at most 10% of jitter, computed by the database), capped at the
/// maximum, whichever instance reported the probe; both instances' `cooldown_remaining` follow
/// the row; a round that closes resets the count, so the next trip rests the base again.
#[tokio::test]
async fn failed_rounds_grow_the_cooldown_fleet_wide() {
    const BASE: u64 = 250;
    const MAX: u64 = 1200;
    // A row's `open_until - updated_at` is what it rests plus the time the transaction took
    // before it set `open_until` (`updated_at` is the transaction's start): up to this much on
    // a loaded server, still short of the next step of growth.
    const IN_TRANSACTION: i64 = 150;
    let db = test_db().await;
    let client = db.client().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let key = unique_key("growing");
    let configure = |builder: resilient_circuit::Builder| {
        builder
            .failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(BASE))
            .max_cooldown(Duration::from_millis(MAX))
            .probe_wait(WAIT)
    };
    let mut on_a = Watched::new(&a, &key, configure);
    let mut on_b = Watched::new(&b, &key, configure);
    let tripped = Instant::now();
    fail(&on_a.cb).await;
    assert!(a.flush(WAIT).await, "the trip is answered");
    // The instance sends the cooldown it has left, in whole milliseconds, when it publishes.
    let publishing = i64::try_from(tripped.elapsed().as_millis()).unwrap_or(i64::MAX) + 1;
    assert!(on_b.reaches(State::Open).await);
    let (set, _, reopens) = row_cooldown(&client, &key).await;
    assert_eq!(reopens, 0, "a trip is no reopen");
    assert!(
        (BASE as i64 - publishing..BASE as i64 + IN_TRANSACTION).contains(&set),
        "a trip rests the base cooldown, less the {publishing} ms its publication took: {set} ms"
    );

    // Failed rounds, reported alternately by B and A.
    for (grown, on_a_side, n) in [(2 * BASE, false, 1), (4 * BASE, true, 2), (MAX, false, 3)] {
        let (prober, reporter) = if on_a_side { (&on_a, &a) } else { (&on_b, &b) };
        // The cooldown itself: time, not an event.
        tokio::time::sleep(prober.cb.cooldown_remaining()).await;
        support::breakers::fleet_probe(&prober.cb).await.failure();
        assert!(reporter.flush(WAIT).await, "the probe's report is answered");
        let (set, left, reopens) = row_cooldown(&client, &key).await;
        assert_eq!(reopens, n, "reopen {n} is counted in the row");
        let (low, high) = (
            grown as i64 - grown as i64 / 10,
            grown as i64 + IN_TRANSACTION,
        );
        assert!(
            (low..=high).contains(&set),
            "reopen {n}: the database set {set} ms, expected {low}..={high} ms"
        );
        // What it set is the growth; what is left depends on how long the report took.
        assert!(
            left > 0 && left <= set,
            "reopen {n}: {left} ms left of {set} ms"
        );
        assert!(
            support::breakers::caught_up(&client, &[&a, &b], WAIT).await,
            "both instances heard the reopen"
        );
        // The instances rest what the row says (read just before them), not the base: compared
        // with the row's time left rather than with the base, so a slow machine cannot fail it.
        let (_, left_now, _) = row_cooldown(&client, &key).await;
        let left_now = Duration::from_millis(u64::try_from(left_now).unwrap_or(0));
        for w in [&on_a, &on_b] {
            assert_eq!(w.cb.state(), State::Open);
            let remaining = w.cb.cooldown_remaining();
            assert!(
                remaining + Duration::from_millis(300) >= left_now
                    && remaining <= Duration::from_millis(set as u64),
                "reopen {n}: the instance rests {remaining:?}; the row {left_now:?} of {set} ms"
            );
        }
        let why: serde_json::Value = client
            .query_one(
                "SELECT why FROM rc_changes WHERE resource_key = $1 AND version = \
                 (SELECT version FROM rc_circuit_breakers WHERE resource_key = $1)",
                &[&key],
            )
            .await
            .expect("the reopen is in the change log")
            .get(0);
        assert_eq!(why["probes"]["failures"], 1, "the round's result: {why}");
        assert_eq!(why["probes"]["successes"], 0, "{why}");
        assert_eq!(why["reopens"], n, "{why}");
        // The grown cooldown less its jitter, which the row rests from within the transaction.
        let rests = why["cooldown_ms"].as_i64().unwrap_or(-1);
        assert!(
            (grown as i64 - grown as i64 / 10..=grown as i64).contains(&rests) && rests <= set,
            "the change log says what it rests ({set} ms from the transaction's start): {why}"
        );
    }

    // A round that closes resets the count: the next trip rests the base, and growth restarts.
    tokio::time::sleep(on_a.cb.cooldown_remaining()).await;
    support::breakers::fleet_probe(&on_a.cb).await.success();
    assert!(on_a.reaches(State::Closed).await);
    assert!(on_b.reaches(State::Closed).await);
    assert_eq!(
        row_cooldown(&client, &key).await.2,
        0,
        "a close resets the count"
    );
    let tripped = Instant::now();
    fail(&on_b.cb).await;
    assert!(b.flush(WAIT).await);
    let publishing = i64::try_from(tripped.elapsed().as_millis()).unwrap_or(i64::MAX) + 1;
    let (set, _, reopens) = row_cooldown(&client, &key).await;
    assert_eq!(reopens, 0);
    assert!(
        (BASE as i64 - publishing..BASE as i64 + IN_TRANSACTION).contains(&set),
        "after a close, a trip rests the base again, less the {publishing} ms its publication \
         took: {set} ms"
    );
    assert!(on_a.reaches(State::Open).await);
    tokio::time::sleep(on_a.cb.cooldown_remaining()).await;
    support::breakers::fleet_probe(&on_a.cb).await.failure();
    assert!(a.flush(WAIT).await);
    let (set, _, reopens) = row_cooldown(&client, &key).await;
    assert_eq!(reopens, 1);
    let (low, high) = (
        2 * BASE as i64 - BASE as i64 / 5,
        2 * BASE as i64 + IN_TRANSACTION,
    );
    assert!(
        (low..=high).contains(&set),
        "the first reopen after a close rests about twice the base: {set} ms"
    );
}

/// The reopens an instance heard from the fleet carry into the rounds it runs alone while the
/// database is unreachable: after one failed fleet round (about 2× the base), a failed local
/// round rests about 4×; a local round that closes resets the count, so the next trip rests the
/// base.
#[tokio::test]
async fn local_rounds_keep_growing_during_an_outage() {
    const BASE: u64 = 200;
    let db = test_db().await;
    let proxy = support::Proxy::start(db.addr()).await;
    let storage = Storage::connect_with(
        PostgresOptions::from_dsn(&db.app_conninfo_via(proxy.addr()).await).expect("parses"),
    )
    .await
    .expect("connects through the proxy");
    let key = unique_key("grow-offline");
    let w = Watched::new(&storage, &key, |b| {
        b.failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(BASE))
            .max_cooldown(Duration::from_secs(10))
            .probe_wait(WAIT)
    });
    fail(&w.cb).await;
    assert!(storage.flush(WAIT).await, "the trip is answered");
    tokio::time::sleep(w.cb.cooldown_remaining()).await; // the cooldown: time, not an event
    support::breakers::fleet_probe(&w.cb).await.failure();
    assert!(storage.flush(WAIT).await, "the probe's report is answered");
    let fleet = w.cb.cooldown_remaining();
    assert!(
        fleet > Duration::from_millis(BASE) && fleet <= Duration::from_millis(2 * BASE),
        "the fleet's first reopen rests about twice the base: {fleet:?}"
    );

    proxy.set_mode(support::Mode::Cut);
    assert!(support::eventually(WAIT, || async { storage.is_degraded() }).await);
    tokio::time::sleep(w.cb.cooldown_remaining()).await;
    let probe =
        w.cb.acquire()
            .await
            .expect("a local probe during the outage");
    assert!(probe.is_probe());
    probe.failure();
    assert_eq!(w.cb.state(), State::Open);
    let local = w.cb.cooldown_remaining();
    let grown = Duration::from_millis(4 * BASE);
    assert!(
        local <= grown && local >= grown - grown / 10 - Duration::from_millis(50),
        "the second reopen, run locally, rests about 4x the base: {local:?}"
    );

    tokio::time::sleep(local).await;
    w.cb.acquire().await.expect("a local probe").success();
    assert_eq!(w.cb.state(), State::Closed, "a good local probe closes it");
    fail(&w.cb).await;
    let again = w.cb.cooldown_remaining();
    assert!(
        again <= Duration::from_millis(BASE) && again > Duration::from_millis(BASE / 2),
        "after a close, a local trip rests the base: {again:?}"
    );
}

/// A trip on slow calls alone (each call succeeded, slowly) on instance A opens the breaker on
/// instance B; the row's `execution_log` is A's window, as for any trip.
#[tokio::test]
async fn slow_call_trip_on_a_opens_b() {
    let db = test_db().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let key = unique_key("slow_calls");
    let configure = |b: resilient_circuit::Builder| {
        b.failure_limit(Ratio::new(1, 2))
            .cooldown(Duration::from_secs(60))
            .slow_call(Duration::from_millis(20), SlowCalls::Rate(Ratio::new(1, 1)))
    };
    let on_a = Watched::new(&a, &key, configure);
    let mut on_b = Watched::new(&b, &key, configure);
    for _ in 0..2 {
        let r = on_a
            .cb
            .call(|| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, ()>("slow but fine")
            })
            .await;
        assert_eq!(r.expect("ran"), "slow but fine");
    }
    assert_eq!(on_a.cb.state(), State::Open, "A trips on 2 slow calls in 2");
    assert!(on_b.reaches(State::Open).await, "B follows by NOTIFY");
    let ran = AtomicUsize::new(0);
    let r = on_b
        .cb
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>("")
        })
        .await;
    assert!(r.expect_err("B rejects").is_rejected());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT execution_log, failure_count FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("the trip's row");
    let log: serde_json::Value = row.get(0);
    let failures: i32 = row.get(1);
    assert_eq!(
        log,
        serde_json::json!([true, true]),
        "A's window: two successes"
    );
    assert_eq!(failures, 0);
}
