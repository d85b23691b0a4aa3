//! Shared state over PostgreSQL: every test runs against a real server, in a database of its own.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage, StorageError};
use support::breakers::{fail, notify_signed, row_state, trip_fast, Watched};
use support::{test_db, unique_key, TestDb};

const WAIT: Duration = Duration::from_secs(5);

fn opts(db: &TestDb) -> PostgresOptions {
    PostgresOptions::from_dsn(&db.conninfo())
        .expect("test conninfo parses")
        .auto_create(true)
}

async fn instance(db: &TestDb) -> Storage {
    Storage::connect_with(opts(db))
        .await
        .expect("connects to the test database")
}

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
    client
        .batch_execute(
            "CREATE TABLE transitions (key text, from_state text, to_state text);
             CREATE FUNCTION log_transition() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO transitions VALUES (NEW.resource_key,
                 CASE WHEN TG_OP = 'INSERT' THEN 'NONE' ELSE OLD.state END, NEW.state);
               RETURN NULL;
             END $$;
             CREATE TRIGGER log_transition AFTER INSERT OR UPDATE ON rc_circuit_breakers
               FOR EACH ROW EXECUTE FUNCTION log_transition();",
        )
        .await
        .expect("audit trigger");
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
    let rows = client
        .query(
            "SELECT from_state, to_state FROM transitions WHERE key = $1",
            &[&key],
        )
        .await
        .expect("audit rows");
    let opened: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
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
    client
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) VALUES ($1, 'OPEN', now() + interval '1 hour')",
            &[&key],
        )
        .await
        .expect("insert");
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

/// The Python ancestor's upsert (state, failure_count, open_until, execution_log) propagates.
#[tokio::test]
async fn ancestor_upsert_propagates() {
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
        .expect("ancestor upsert");
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
        .expect("ancestor upsert");
    assert!(w.reaches(State::Closed).await);
}

/// Instances in different namespaces do not see each other's breakers.
#[tokio::test]
async fn namespaces_isolate() {
    let db = test_db().await;
    let red = Storage::connect_with(opts(&db).namespace("red"))
        .await
        .expect("red");
    let blue = Storage::connect_with(opts(&db).namespace("blue"))
        .await
        .expect("blue");
    let red_twin = Storage::connect_with(opts(&db).namespace("red"))
        .await
        .expect("red twin");
    let key = unique_key("shared-name");
    let on_red = Watched::new(&red, &key, trip_fast);
    let on_blue = Watched::new(&blue, &key, trip_fast);
    let mut on_red_twin = Watched::new(&red_twin, &key, trip_fast);
    fail(&on_red.cb).await;
    assert!(
        on_red_twin.reaches(State::Open).await,
        "same namespace follows"
    );
    // The twin saw it, so the notification has been delivered to every listener by now; blue
    // received it too and must have ignored it. Prove blue's listener works with its own trip.
    assert_eq!(on_blue.cb.state(), State::Closed);
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM rc_circuit_breakers WHERE resource_key = $1 AND namespace = 'blue'", &[&key])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0);
}

/// Notifications whose version is not newer than the one held are ignored.
#[tokio::test]
async fn stale_notifications_are_ignored() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("stale");
    let mut w = Watched::new(&a, &key, trip_fast);
    fail(&w.cb).await;
    let client = db.client().await;
    assert!(support::eventually(WAIT, || async { row_state(&client, &key).await.is_some() }).await);
    let version: i64 = client
        .query_one(
            "SELECT version FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("row")
        .get(0);
    // A stale CLOSED (same version), an older one, then a fresh HALF_OPEN as an event marker:
    // if a stale one had been applied we would see CLOSED before HALF_OPEN. All three carry a
    // valid MAC: only their versions make them stale.
    notify_signed(&client, "default", &key, "CLOSED", version, 0).await;
    notify_signed(&client, "default", &key, "CLOSED", version - 1, 0).await;
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
    // The first change after OPEN (the trip itself may be first) must not be a CLOSED.
    let change = if change.to == State::Open {
        tokio::time::timeout(WAIT, w.changes.recv())
            .await
            .expect("a change")
            .expect("open channel")
    } else {
        change
    };
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
    let (x, y, z) = tokio::join!(instance(&db), instance(&db), instance(&db));
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
    assert_eq!(
        n as usize,
        resilient_circuit::storage::postgres::migrate::MIGRATIONS.len()
    );
}

/// A healthy closed breaker issues no statement at all: 10,000 calls leave the table untouched.
#[tokio::test]
async fn healthy_calls_cause_no_statements() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("healthy");
    let cb = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .build()
        .expect("valid");
    let client = db.client().await;
    let stats = "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 'rc_circuit_breakers'";
    let _: Option<i64> = client.query_one(stats, &[]).await.expect("stats").get(0);
    for _ in 0..10_000 {
        cb.try_acquire().expect("closed").success();
    }
    for _ in 0..100 {
        fail(&cb).await; // one failure in four stays below the default 5/10 limit
        for _ in 0..3 {
            cb.call(|| async { Ok::<_, ()>(()) }).await.ok();
        }
    }
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 0, "failures below the limit never wrote a row");
    assert_eq!(cb.state(), State::Closed);
}

/// A probe lease held by an instance that dies is given back when it expires, so a crashed
/// prober cannot wedge the breaker in HALF_OPEN.
#[tokio::test]
async fn lease_of_a_crashed_prober_expires() {
    let db = test_db().await;
    let lease = Duration::from_millis(600);
    let short = |db: &TestDb| opts(db).lease_timeout(lease);
    let a = Storage::connect_with(short(&db)).await.expect("a");
    let b = Storage::connect_with(short(&db)).await.expect("b");
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
    let mut taken = None;
    for _ in 0..40 {
        if let Ok(p) = on_a.cb.acquire().await {
            taken = Some(p);
            break;
        }
    }
    let permit = taken.expect("A leases the only probe");
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
