//! The SQL contract: the table and its functions hold however the table is
//! written — by this crate, by the Python package's plain upserts on a role that owns nothing,
//! by operators, by cleanup DELETEs — and the functions refuse bad input with clear errors.

use crate::support;

use std::time::Duration;

use resilient_circuit::admin::RoleKind;
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
use support::breakers::{caught_up, fail, fleet_probe, row_state, trip_fast, Watched, REACH};
use support::{eventually, test_db, unique_key, TestDb};
use tokio_postgres::Client;

use crate::support::WAIT;

/// An instance on `db` once the schema is set up (`TestDb::app`), as the application role.
async fn migrated(db: &TestDb) -> Storage {
    Storage::connect_with(PostgresOptions::from_dsn(&db.app_conninfo().await).expect("dsn"))
        .await
        .expect("connects as the application role")
}

async fn connect_as(conninfo: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// The text of a database error.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// A role granted what the Python package needs (`setup --grant-python`, which
/// owns nothing) writes rows the way the package does (upsert, update, delete; the triggers need
/// the sequence and the lease table, which it has no right to) and runs an instance: trip and
/// fleet probe. An operator's role (`--grant-operator`) overrides, and the Python role's instance
/// follows.
#[tokio::test]
async fn least_privilege_role_writes_and_runs_an_instance() {
    let db = test_db().await;
    let _owner = migrated(&db).await;
    let role = db.role_of(&[RoleKind::Python]).await;
    let operator = db.role_of(&[RoleKind::Operator]).await;
    let app = connect_as(&db.conninfo_as(&role)).await;
    let key = unique_key("py");
    app.execute(
        "INSERT INTO rc_circuit_breakers (resource_key, namespace, state, failure_count, open_until, execution_log)
         VALUES ($1, 'default', 'OPEN', 3, now() + interval '1 hour', '[false,false,false]')
         ON CONFLICT (resource_key, namespace) DO UPDATE
         SET state = EXCLUDED.state, failure_count = EXCLUDED.failure_count,
             open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log",
        &[&key],
    )
    .await
    .expect("the package's upsert works on its grant");
    app.execute(
        "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL WHERE resource_key = $1",
        &[&key],
    )
    .await
    .expect("update");
    app.execute(
        "DELETE FROM rc_circuit_breakers WHERE resource_key = $1",
        &[&key],
    )
    .await
    .expect("delete");

    let opts = || {
        PostgresOptions::from_dsn(&db.conninfo_as(&role))
            .expect("dsn")
            .instance_name(unique_key("instance"))
    };
    let a = Storage::connect_with(opts())
        .await
        .expect("connects as the Python role");
    let b = Storage::connect_with(opts())
        .await
        .expect("connects as the Python role");
    let by_operator = Storage::connect_with(
        PostgresOptions::from_dsn(&db.conninfo_as(&operator))
            .expect("dsn")
            .instance_name(unique_key("instance")),
    )
    .await
    .expect("connects as the operator's role");
    assert!(!a.is_degraded());
    let key = unique_key("app");
    let on_a = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_millis(100))
        .build()
        .expect("valid");
    let mut on_b = Watched::new(&b, &key, |b| {
        b.failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(100))
    });
    fail(&on_a).await;
    assert!(
        on_b.reaches(State::Open).await,
        "the trip reached the fleet"
    );
    let probe = fleet_probe(&on_a).await;
    assert!(probe.is_probe(), "a fleet probe was leased");
    probe.success();
    assert!(
        on_b.reaches(State::Closed).await,
        "the probe's report closed it"
    );
    let decreed = CircuitBreaker::builder(&key)
        .storage(by_operator.clone())
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_millis(100))
        .build()
        .expect("valid");
    decreed
        .force_open_confirmed(Duration::from_secs(60))
        .await
        .expect("the operator's override is accepted");
    assert!(on_b.reaches(State::Open).await);
}

/// The change log shows its rows to exactly the roles that may read the breaker table: a reader
/// polls it (`rc_changes_since`), a stranger may not call the function and reads no row of the
/// table, and nobody but the owner writes it.
#[tokio::test]
async fn the_change_log_is_for_those_who_may_read_breakers() {
    let db = test_db().await;
    let _instance = migrated(&db).await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let stranger = db.role_of(&[]).await;
    let admin = db.client().await;
    let start: String = admin
        .query_one(
            "SELECT o_snapshot FROM rc_changes_since('default', NULL)",
            &[],
        )
        .await
        .expect("a snapshot")
        .get(0);
    admin
        .batch_execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state) VALUES ('logged', 'OPEN')",
        )
        .await
        .expect("writes");
    let keys = |client: Client| {
        let start = start.clone();
        async move {
            client
                .query(
                    "SELECT o_key FROM rc_changes_since('default', $1) WHERE o_key IS NOT NULL",
                    &[&start],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect::<Vec<_>>()
                })
        }
    };
    let as_reader = connect_as(&db.conninfo_as(&reader)).await;
    assert_eq!(keys(as_reader).await.expect("polls"), ["logged"]);
    let as_stranger = connect_as(&db.conninfo_as(&stranger)).await;
    let e = keys(as_stranger)
        .await
        .expect_err("a stranger may not poll");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e:?}"
    );
    let as_stranger = connect_as(&db.conninfo_as(&stranger)).await;
    let seen: i64 = as_stranger
        .query_one("SELECT count(*) FROM public.rc_changes", &[])
        .await
        .expect("the log's table is readable, its rows are not")
        .get(0);
    assert_eq!(seen, 0, "a stranger sees no change");
    let as_reader = connect_as(&db.conninfo_as(&reader)).await;
    let e = as_reader
        .execute(
            "INSERT INTO rc_changes (txid, version, namespace, resource_key, state) VALUES (1, 1, 'default', 'forged', 'OPEN')",
            &[],
        )
        .await
        .expect_err("only the trigger writes the log");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

/// A reader (may read the table, runs no function that changes it)
/// cannot move a breaker (`rc_force` is not granted to it) nor read the notification secret,
/// and its instance's override says why with a matchable SQLSTATE.
#[tokio::test]
async fn read_only_role_cannot_change_breakers() {
    let db = test_db().await;
    let writer_instance = migrated(&db).await;
    let role = db.role_of(&[RoleKind::Reader]).await;
    let ro = connect_as(&db.conninfo_as(&role)).await;
    let e = ro
        .query("SELECT * FROM rc_force('default', 'k', 'OPEN', 1000)", &[])
        .await
        .expect_err("refused");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{e:?}"
    );
    assert!(
        message(&e).contains("permission denied for function rc_force"),
        "{e:?}"
    );
    let e = ro
        .query("SELECT * FROM rc_notify_secret()", &[])
        .await
        .expect_err("the notification secret is for instances only");
    assert!(
        message(&e).contains("permission denied for function rc_notify_secret"),
        "{e:?}"
    );

    // An instance on it still follows the fleet (by polling the change log: it hears nothing).
    let ro_storage =
        Storage::connect_with(PostgresOptions::from_dsn(&db.conninfo_as(&role)).expect("dsn"))
            .await
            .expect("a reader connects");
    let key = unique_key("ro");
    let mut seen = Watched::new(&ro_storage, &key, |b| b);
    let writer = trip_fast(CircuitBreaker::builder(&key).storage(writer_instance.clone()))
        .build()
        .expect("valid");
    fail(&writer).await;
    assert!(
        seen.reaches(State::Open).await,
        "a reader follows by polling the change log"
    );
    let err = seen
        .cb
        .force_closed_confirmed()
        .await
        .expect_err("the reader's override is refused");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(
        err.sqlstate(),
        Some("42501"),
        "insufficient_privilege, matchable"
    );
}

/// A DELETE racing a trip: the trip's INSERT waits for the deletion, so its
/// version is newer and every instance ends OPEN, like the table.
#[tokio::test]
async fn delete_racing_a_trip_does_not_hide_the_open() {
    let db = test_db().await;
    let a = migrated(&db).await;
    let key = unique_key("race");
    let mut w = Watched::new(&a, &key, |b| b);
    let admin = db.client().await;
    admin
        .execute(
            "SELECT * FROM rc_force('default', $1, 'CLOSED', 0)",
            &[&key],
        )
        .await
        .expect("row");
    let deleter = db.client().await;
    let tripper = db.client().await;
    let del_key = key.clone();
    let deleting = tokio::spawn(async move {
        deleter
            .query(
                "WITH d AS (DELETE FROM rc_circuit_breakers WHERE namespace = 'default' AND resource_key = $1 RETURNING 1)
                 SELECT pg_sleep(1) FROM d",
                &[&del_key],
            )
            .await
    });
    let active = |q: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(q, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0)
                > 0
        }
    };
    assert!(
        eventually(WAIT, || active(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"
        ))
        .await,
        "the deletion holds the row"
    );
    let trip_key = key.clone();
    let tripping = tokio::spawn(async move {
        tripper
            .query(
                "SELECT * FROM rc_trip('default', $1, 60000, 5, '[]', NULL)",
                &[&trip_key],
            )
            .await
    });
    assert!(
        eventually(WAIT, || active("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%rc_trip%' AND datname = current_database()")).await,
        "the trip waits for the deletion"
    );
    deleting.await.expect("task").expect("deleted");
    tripping.await.expect("task").expect("tripped");
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert!(
        w.reaches(State::Open).await,
        "the instance believes the table"
    );
    // And a fresh look agrees.
    let b = migrated(&db).await;
    assert_eq!(b.state_of(&key), Some(State::Open));
}

/// A cleanup DELETE of many CLOSED rows while sessions
/// trip some of those keys: every OPEN row is believed OPEN by the listening instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_delete_during_trips_hides_nothing() {
    let db = test_db().await;
    let a = migrated(&db).await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state, updated_at)
             SELECT 'old-' || i, 'CLOSED', now() - interval '8 days' FROM generate_series(1, 20000) i",
        )
        .await
        .expect("old rows");
    // The update trigger keeps updated_at current; put it back in the past.
    admin
        .batch_execute(
            "ALTER TABLE rc_circuit_breakers DISABLE TRIGGER update_rc_circuit_breakers_updated_at;
             UPDATE rc_circuit_breakers SET updated_at = now() - interval '8 days';
             ALTER TABLE rc_circuit_breakers ENABLE TRIGGER update_rc_circuit_breakers_updated_at;",
        )
        .await
        .expect("aged");
    let cleaner = db.client().await;
    let cleaning = tokio::spawn(async move {
        cleaner
            .execute(
                "DELETE FROM rc_circuit_breakers WHERE state = 'CLOSED' AND updated_at < now() - interval '7 days'",
                &[],
            )
            .await
    });
    let mut trippers = Vec::new();
    for s in 0..4 {
        let c = db.client().await;
        trippers.push(tokio::spawn(async move {
            for i in (s * 50..s * 50 + 50).map(|i| i * 97 % 20000 + 1) {
                c.query(
                    "SELECT * FROM rc_trip('default', $1, 600000, 5, '[]', NULL)",
                    &[&format!("old-{i}")],
                )
                .await
                .expect("trip");
            }
        }));
    }
    cleaning.await.expect("task").expect("cleanup");
    for t in trippers {
        t.await.expect("task");
    }
    assert!(caught_up(&admin, &[&a], REACH).await);
    let open: Vec<String> = admin
        .query(
            "SELECT resource_key FROM rc_circuit_breakers WHERE state = 'OPEN' AND resource_key LIKE 'old-%'",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!open.is_empty());
    let hidden: Vec<&String> = open
        .iter()
        .filter(|k| a.state_of(k) != Some(State::Open))
        .collect();
    assert!(
        hidden.is_empty(),
        "{} of {} OPEN rows believed otherwise: {hidden:?}",
        hidden.len(),
        open.len()
    );
}

async fn one(client: &Client, sql: &str) -> (String, Option<i64>, Option<i64>) {
    let row = client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    (
        row.get("o_state"),
        row.get("o_lease_id"),
        row.get("o_retry_ms"),
    )
}

/// The round's size is fixed when it starts; a later caller asking for fewer
/// probes neither wedges the round nor resizes it.
#[tokio::test]
async fn round_size_is_fixed_when_it_starts() {
    let db = test_db().await;
    let _a = migrated(&db).await;
    let c = db.client().await;
    one(&c, "SELECT * FROM rc_trip('ns', 'w', 0, 3, '[]')").await;
    let (state, lease, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'w', 'h1', 100, 3)",
    )
    .await;
    assert_eq!(state, "HALF_OPEN");
    let lease = lease.expect("a lease");
    one(
        &c,
        &format!("SELECT * FROM rc_report_probe('ns', 'w', {lease}, true, 3, 3, 1000, NULL)"),
    )
    .await;
    // Another instance with a smaller round asks: the round is still 3 (2 slots left).
    let (_, l2, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'w', 'h2', 100, 1)",
    )
    .await;
    let (_, l3, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'w', 'h2', 100, 1)",
    )
    .await;
    let (_, l4, retry) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'w', 'h2', 100, 1)",
    )
    .await;
    assert!(
        l2.is_some() && l3.is_some(),
        "two more slots in a round of 3"
    );
    assert!(l4.is_none(), "no fourth slot");
    assert!(
        retry.is_some_and(|ms| ms > 0 && ms <= 100),
        "told when to ask again: {retry:?}"
    );
    // The leases expire unused: their slots come back, whoever asks.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (_, l5, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'w', 'h3', 1000, 1)",
    )
    .await;
    let l5 = l5.expect("an expired lease's slot is free again");
    let (_, l6, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'w', 'h3', 1000, 1)",
    )
    .await;
    let l6 = l6.expect("a round of 3 has room for it");
    one(
        &c,
        &format!("SELECT * FROM rc_report_probe('ns', 'w', {l5}, true, 1, 1, 1000, NULL)"),
    )
    .await;
    let (state, ..) = one(
        &c,
        &format!("SELECT * FROM rc_report_probe('ns', 'w', {l6}, true, 1, 1, 1000, NULL)"),
    )
    .await;
    assert_eq!(state, "CLOSED", "three successes close a round of 3");
    for bad in ["0", "-1", "NULL", "8193"] {
        let e = c
            .query(
                &format!("SELECT * FROM rc_acquire_probe('ns', 'w', 'h', 100, {bad})"),
                &[],
            )
            .await
            .expect_err("refused");
        assert!(
            message(&e).contains("probe count must be 1 to 8192"),
            "{bad}: {e:?}"
        );
    }
}

/// A round begun by a plain write (the Python package, an operator) starts clean:
/// counts and leases of an earlier round do not carry over, and a stale lease's report does not
/// count in the new round.
#[tokio::test]
async fn rounds_have_an_identity() {
    let db = test_db().await;
    let _a = migrated(&db).await;
    let c = db.client().await;
    one(&c, "SELECT * FROM rc_trip('ns', 'r', 0, 3, '[]')").await;
    let (_, l1, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'r', 'h', 60000, 3)",
    )
    .await;
    let (_, l2, _) = one(
        &c,
        "SELECT * FROM rc_acquire_probe('ns', 'r', 'h', 60000, 3)",
    )
    .await;
    let (l1, l2) = (l1.expect("lease"), l2.expect("lease"));
    one(
        &c,
        &format!("SELECT * FROM rc_report_probe('ns', 'r', {l1}, true, 3, 3, 1000, NULL)"),
    )
    .await;
    // An operator reopens it, then the Python package moves it to HALF_OPEN itself.
    c.batch_execute(
        "UPDATE rc_circuit_breakers SET state = 'OPEN', open_until = now() - interval '1 s' WHERE resource_key = 'r';
         UPDATE rc_circuit_breakers SET state = 'HALF_OPEN' WHERE resource_key = 'r';",
    )
    .await
    .expect("plain writes");
    let row = c
        .query_one(
            "SELECT probe_successes, probe_failures, round_id = version AS fresh,
                    (SELECT count(*) FROM rc_probe_leases WHERE resource_key = 'r') AS leases
             FROM rc_circuit_breakers WHERE resource_key = 'r'",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i32>(0), 0, "successes reset");
    assert_eq!(row.get::<_, i32>(1), 0, "failures reset");
    assert!(row.get::<_, bool>(2), "a new round id");
    assert_eq!(row.get::<_, i64>(3), 0, "the old round's leases are gone");
    // The old round's second lease reports: it does not count.
    one(
        &c,
        &format!("SELECT * FROM rc_report_probe('ns', 'r', {l2}, true, 3, 3, 1000, NULL)"),
    )
    .await;
    let n: i32 = c
        .query_one(
            "SELECT probe_successes FROM rc_circuit_breakers WHERE resource_key = 'r'",
            &[],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(n, 0, "a stale lease's report counted in the new round");
    // The new round is sized by its first asker and closes after its own probes only.
    let mut leases = Vec::new();
    for _ in 0..2 {
        let (_, l, _) = one(
            &c,
            "SELECT * FROM rc_acquire_probe('ns', 'r', 'h', 60000, 2)",
        )
        .await;
        leases.push(l.expect("lease"));
    }
    one(
        &c,
        &format!(
            "SELECT * FROM rc_report_probe('ns', 'r', {}, true, 9, 9, 1000, NULL)",
            leases[0]
        ),
    )
    .await;
    let (state, ..) = one(
        &c,
        &format!(
            "SELECT * FROM rc_report_probe('ns', 'r', {}, true, 9, 9, 1000, NULL)",
            leases[1]
        ),
    )
    .await;
    assert_eq!(state, "CLOSED");
}

/// A table made by an older Python package with `open_until timestamp` (no time zone)
/// is converted, so a cooldown no longer depends on the writer's and reader's TimeZone.
#[tokio::test]
async fn old_timestamp_column_is_converted() {
    let db = test_db().await;
    let c = db.client().await;
    c.batch_execute(
        "CREATE TABLE public.rc_circuit_breakers (
             resource_key varchar(255) NOT NULL, namespace varchar(255) NOT NULL DEFAULT 'default',
             state varchar(50) NOT NULL, failure_count integer NOT NULL DEFAULT 0,
             open_until timestamp NULL, execution_log jsonb NULL,
             created_at timestamp DEFAULT now(), updated_at timestamp DEFAULT now(),
             PRIMARY KEY (resource_key, namespace))",
    )
    .await
    .expect("the old table");
    let _a = migrated(&db).await;
    let ty: String = c
        .query_one(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'rc_circuit_breakers' AND column_name = 'open_until'",
            &[],
        )
        .await
        .expect("column")
        .get(0);
    assert_eq!(ty, "timestamp with time zone");
    c.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .expect("tz");
    c.query(
        "SELECT * FROM rc_trip('default', 'tz', 30000, 1, '[]')",
        &[],
    )
    .await
    .expect("trip");
    let utc = db.client().await;
    utc.batch_execute("SET TimeZone = 'UTC'").await.expect("tz");
    let left: i64 = utc
        .query_one(
            "SELECT rc_remaining_ms(open_until) FROM rc_circuit_breakers WHERE resource_key = 'tz'",
            &[],
        )
        .await
        .expect("row")
        .get(0);
    assert!((25_000..=30_000).contains(&left), "{left} ms left of 30 s");
}

/// One bad element of a batch is reported for its key; the others apply.
#[tokio::test]
async fn one_bad_element_does_not_sink_a_batch() {
    let db = test_db().await;
    let _a = migrated(&db).await;
    let c = db.client().await;
    let rows = c
        .query(
            "SELECT o_key, o_state, o_error FROM rc_force_many('ns', ARRAY['a','b','c','d'],
                 ARRAY['OPEN','OPEN','BOGUS','OPEN'], ARRAY[1000, 9223372036854775807, 1000, NULL]::bigint[])",
            &[],
        )
        .await
        .expect("the batch runs");
    let got: Vec<(String, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got[0].1.as_deref(), Some("OPEN"));
    assert_eq!(
        got[1].1.as_deref(),
        Some("OPEN"),
        "a huge cooldown is clamped"
    );
    assert!(
        got[2]
            .2
            .as_deref()
            .is_some_and(|e| e.contains("must be OPEN or CLOSED")),
        "{got:?}"
    );
    assert!(
        got[3]
            .2
            .as_deref()
            .is_some_and(|e| e.contains("cooldown must not be NULL")),
        "{got:?}"
    );
    let open: i64 = c
        .query_one(
            "SELECT count(*) FROM rc_circuit_breakers WHERE state = 'OPEN'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(open, 2);
    // Short arrays: the missing cooldown is NULL, refused for that key alone.
    let rows = c
        .query(
            "SELECT o_key, o_state, o_error FROM rc_trip_many('ns', ARRAY['e','f'], ARRAY[1000]::bigint[],
                 ARRAY[1,1], ARRAY['[]'::jsonb, '[]'::jsonb], NULL)",
            &[],
        )
        .await
        .expect("the batch runs");
    assert_eq!(rows[0].get::<_, Option<String>>(1).as_deref(), Some("OPEN"));
    assert!(rows[1]
        .get::<_, Option<String>>(2)
        .is_some_and(|e| e.contains("cooldown must not be NULL")));
}

/// Bad arguments get the function's own message, never a silent wrong answer.
#[tokio::test]
async fn functions_refuse_bad_arguments() {
    let db = test_db().await;
    let _a = migrated(&db).await;
    let c = db.client().await;
    let long = format!("{}  ", "k".repeat(255));
    let cases = [
        (
            "SELECT * FROM rc_trip('ns', '', 1000, 1, '[]')",
            "1 to 255 characters",
        ),
        (
            "SELECT * FROM rc_trip('ns', NULL, 1000, 1, '[]')",
            "1 to 255 characters",
        ),
        (
            "SELECT * FROM rc_trip('ns', 'k', NULL, 1, '[]')",
            "cooldown must not be NULL",
        ),
        (
            "SELECT * FROM rc_force('ns', 'k', NULL, 1000)",
            "must be OPEN or CLOSED, not NULL",
        ),
        (
            "SELECT * FROM rc_force('ns', 'k', 'OPEN', NULL)",
            "cooldown must not be NULL",
        ),
        (
            "SELECT * FROM rc_trip('', 'k', 1000, 1, '[]')",
            "namespace must have",
        ),
    ];
    for (sql, expected) in cases {
        let e = c.query(sql, &[]).await.expect_err(sql);
        assert!(message(&e).contains(expected), "{sql}: {}", message(&e));
    }
    let e = c
        .query("SELECT * FROM rc_trip('ns', $1, 1000, 1, '[]')", &[&long])
        .await
        .expect_err("a 257-character key is refused, not cut");
    assert!(
        message(&e).contains("1 to 255 characters"),
        "{}",
        message(&e)
    );
    let n: i64 = c
        .query_one("SELECT count(*) FROM rc_circuit_breakers", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing was written");
}

/// TRUNCATE is announced (instances reload and see every key CLOSED), and a
/// notification carries the cooldown left when it commits, not when the row was written.
#[tokio::test]
async fn truncate_is_announced_and_cooldowns_count_from_commit() {
    let db = test_db().await;
    let a = migrated(&db).await;
    let key = unique_key("trunc");
    let mut w = Watched::new(&a, &key, |b| b);
    let c = db.client().await;
    c.execute(
        "SELECT * FROM rc_force('default', $1, 'OPEN', 600000)",
        &[&key],
    )
    .await
    .expect("open");
    assert!(w.reaches(State::Open).await);
    c.batch_execute("TRUNCATE rc_circuit_breakers")
        .await
        .expect("truncate");
    assert!(
        w.reaches(State::Closed).await,
        "a TRUNCATE reaches the instance"
    );

    let late = unique_key("late");
    let mut l = Watched::new(&a, &late, |b| b);
    c.batch_execute(&format!(
        "BEGIN; SELECT * FROM rc_force('default', '{late}', 'OPEN', 3000); SELECT pg_sleep(1.5); COMMIT;"
    ))
    .await
    .expect("a slow transaction");
    assert!(l.reaches(State::Open).await);
    let left = l.cb.cooldown_remaining();
    assert!(
        left <= Duration::from_millis(1600),
        "{left:?} left of a 3 s cooldown committed 1.5 s late"
    );
}

/// The functions the code calls exist in the catalog with the argument types it sends (as
/// `check` reports them), and a function dropped is reported missing.
#[tokio::test]
async fn statements_match_the_catalog() {
    let db = test_db().await;
    let _a = migrated(&db).await;
    let session = db.admin_session().await;
    let health = session.check().await.expect("checks");
    assert_eq!(health.missing_functions, Vec::<String>::new());
    db.client()
        .await
        .batch_execute("DROP FUNCTION public.rc_vote(text, text, text, integer, integer, integer, bigint, bigint, bigint)")
        .await
        .expect("drops a function the code calls");
    let health = session.check().await.expect("checks");
    assert_eq!(
        health.missing_functions.len(),
        1,
        "{:?}",
        health.missing_functions
    );
    assert!(
        health.missing_functions[0].starts_with("rc_vote("),
        "{:?}",
        health.missing_functions
    );
}

/// The files of `sql/<dir>`, sorted.
fn sql_files(dir: &str) -> Vec<String> {
    let path = format!("{}/sql/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    files
}

/// The migration list compiled into the crate is exactly the files of `sql/migrations/`, in
/// order, and the object list exactly those of `sql/objects/`, each once.
#[test]
fn migration_and_object_lists_match_the_sql_folders() {
    use resilient_circuit::admin::{MIGRATIONS, OBJECTS};
    let listed: Vec<String> = MIGRATIONS
        .iter()
        .map(|m| format!("{:04}_{}.sql", m.version, m.name))
        .collect();
    assert_eq!(sql_files("migrations"), listed);
    let mut objects: Vec<String> = OBJECTS.iter().map(|o| format!("{}.sql", o.name)).collect();
    objects.sort();
    assert_eq!(sql_files("objects"), objects);
}

/// A statement the server refuses keeps the driver's error as its source, SQLSTATE and all.
#[tokio::test]
async fn database_errors_keep_their_source() {
    let db = test_db().await;
    let storage = Storage::connect(&db.conninfo()).await;
    let err = storage.expect_err("no schema, no auto_create");
    assert!(err.to_string().contains("schema is not ready"), "{err}");
    let e = db
        .admin_session()
        .await
        .migrate(Duration::from_secs(60))
        .await;
    assert!(e.is_ok(), "{e:?}");
    let c = db.client().await;
    // As PostgreSQL 15 and later have it by default: 13 and 14 let every role create in
    // `public`, so the reader's `CREATE TABLE IF NOT EXISTS` would pass and a migration with
    // nothing left to apply would have nothing to refuse.
    c.batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        .await
        .expect("revoke");
    let role = db.role_of(&[RoleKind::Reader]).await;
    let opts =
        resilient_circuit::storage::postgres::PostgresOptions::from_dsn(&db.conninfo_as(&role))
            .expect("dsn");
    let err = resilient_circuit::admin::AdminSession::connect(&opts)
        .await
        .expect("a reader connects")
        .migrate(Duration::from_secs(60))
        .await
        .expect_err("a reader may not migrate");
    assert!(err.sqlstate().is_some(), "{err:?}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the driver's error is the source: {err:?}"
    );
}

/// A migration waits for another instance's migration however short the statement timeout of the
/// pool's sessions is (they carry it so that an abandoned call frees its row lock): it retries
/// while the lock migrations take turns under (`rc_schema_objects`) is held, and succeeds once it
/// is released.
#[tokio::test]
async fn migration_is_not_cut_by_the_statement_timeout() {
    let db = test_db().await;
    let mut holder = db.client().await;
    // The bookkeeping tables as a migration makes them, empty: nothing is applied yet.
    holder
        .batch_execute(
            "CREATE TABLE public.rc_schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE public.rc_schema_objects (
                 name       text PRIMARY KEY,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await
        .expect("the bookkeeping tables");
    let tx = holder.transaction().await.expect("tx");
    // What another migration holds until it commits.
    tx.batch_execute("LOCK TABLE public.rc_schema_objects IN SHARE ROW EXCLUSIVE MODE")
        .await
        .expect("lock");
    let connecting = tokio::spawn({
        let opts = PostgresOptions::from_dsn(&db.conninfo())
            .expect("dsn")
            .auto_create(true)
            .strict(true)
            .statement_timeout(Duration::from_millis(300));
        async move { Storage::connect_with(opts).await }
    });
    let admin = db.client().await;
    // When the instance's current attempt started waiting for the lock, if it waits.
    let waiting_since = || async {
        admin
            .query_opt(
                "SELECT a.query_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                 WHERE NOT l.granted AND l.locktype = 'relation'
                   AND l.relation = 'public.rc_schema_objects'::regclass
                   AND a.datname = current_database()",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, std::time::SystemTime>(0))
    };
    let first = std::cell::Cell::new(None);
    assert!(
        eventually(WAIT, || async {
            first.set(waiting_since().await);
            first.get().is_some()
        })
        .await,
        "the instance waits for the lock"
    );
    let first = first.get().expect("a wait");
    // Its attempt gives up after the lock timeout (longer than the statement timeout) and it
    // tries again: a wait that started later.
    assert!(
        eventually(WAIT, || async {
            waiting_since().await.is_some_and(|t| t > first)
        })
        .await,
        "the instance tries again while the lock is held"
    );
    assert!(!connecting.is_finished(), "still waiting, not failed");
    tx.commit().await.expect("release");
    let storage = connecting
        .await
        .expect("task")
        .expect("migrated once the other migration is done");
    assert!(!storage.is_degraded());
}

/// No function calls a SQL-language function that has a `SET` clause: such a function is never
/// inlined and plans its query on every call (about 60 µs for `rc_view`, more than the rest of
/// a trip's statements together), where PL/pgSQL keeps its plans for the session. Called from
/// a client, once a request, the plan is made once either way.
#[tokio::test]
async fn no_function_calls_one_that_plans_on_every_call() {
    let db = test_db().await;
    let _ = db.app().await; // the schema, set up as an operator would
    let rows = db
        .client()
        .await
        .query(
            "SELECT p.proname::text, p.prosrc, l.lanname::text, p.proconfig IS NOT NULL
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             JOIN pg_language l ON l.oid = p.prolang
             WHERE n.nspname = 'public' AND p.proname LIKE 'rc%'",
            &[],
        )
        .await
        .expect("reads the catalog");
    let planned_each_call: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, String>(2) == "sql" && r.get::<_, bool>(3))
        .map(|r| r.get(0))
        .collect();
    assert!(
        planned_each_call.iter().any(|f| f == "rc_snapshot"),
        "the rule is checked against the functions there are: {planned_each_call:?}"
    );
    for row in &rows {
        let (caller, source): (String, String) = (row.get(0), row.get(1));
        for callee in &planned_each_call {
            assert!(
                !source.contains(&format!("public.{callee}(")),
                "{caller} calls {callee}, a SQL function with a SET clause: make {callee} \
                 PL/pgSQL"
            );
        }
    }
}

/// Every function of ours pins its `search_path` (`pg_catalog, pg_temp`) but the two on the
/// polling hot path (`rc_remaining_ms`, `rc_changes_since`), which name everything with its
/// schema instead; exactly the functions that need more than the calling role holds (the
/// triggers, the notification secret, and the transition functions that write the table, leases,
/// votes, reports and group memberships) run as the schema's owner.
#[tokio::test]
async fn only_what_needs_it_is_security_definer_with_a_pinned_search_path() {
    let db = test_db().await;
    let _ = db.app().await; // the schema, set up as an operator would
    let rows = db
        .client()
        .await
        .query(
            "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .expect("reads the catalog");
    let unpinned = [
        "rc_changes_since(text,text)",
        "rc_remaining_ms(timestamp with time zone)",
    ];
    let mut definers = Vec::new();
    for row in &rows {
        let (name, definer, config): (String, bool, Option<Vec<String>>) =
            (row.get(0), row.get(1), row.get(2));
        if unpinned.contains(&name.as_str()) {
            assert!(!definer, "{name} runs with the caller's rights");
            assert_eq!(config, None, "{name} is written fully schema-qualified");
        } else {
            assert_eq!(
                config.as_deref(),
                Some(&["search_path=pg_catalog, pg_temp".to_owned()][..]),
                "{name} pins its search_path"
            );
        }
        if definer {
            definers.push(name);
        }
    }
    assert_eq!(
        definers,
        [
            "rc_acquire_probe(text,text,text,bigint,integer,integer)",
            "rc_announce()",
            "rc_bump_version()",
            "rc_config_mode()",
            "rc_config_stamp()",
            "rc_configure(text,text,text,bigint,integer,integer,integer,integer,boolean,text,text,integer,bigint,integer,integer,integer,bigint)",
            "rc_delete(text,text)",
            "rc_force(text,text,text,bigint)",
            "rc_force_many(text,text[],text[],bigint[])",
            "rc_group_configure(text,text,integer,integer,integer,integer,boolean,text)",
        "rc_group_join(text,text,text[],integer,integer,integer,integer)",
        "rc_group_states(text,text[])",
            "rc_judged(text)",
            "rc_notify_secret()",
            "rc_report_probe(text,text,bigint,boolean,integer,integer,bigint,bigint)",
            "rc_report_rates(text,text,bigint,text[],bigint[],bigint[],integer[],integer[],integer[],bigint[],bigint[])",
            "rc_trip_many(text,text[],bigint[],integer[],jsonb[],bigint[])",
            "rc_vote(text,text,text,integer,integer,integer,bigint,bigint,bigint)",
        ]
    );
}

/// The cooldown the last write of `key` (namespace `ns`) set, from its transaction's start, and
/// its reopen count.
async fn set_cooldown(admin: &Client, key: &str) -> (i64, i32) {
    let row = admin
        .query_one(
            "SELECT (extract(epoch FROM open_until - updated_at) * 1000)::bigint, reopens
             FROM rc_circuit_breakers WHERE namespace = 'ns' AND resource_key = $1",
            &[&key],
        )
        .await
        .unwrap_or_else(|e| panic!("reading {key}: {e}"));
    (row.get::<_, Option<i64>>(0).unwrap_or(-1), row.get(1))
}

/// Ends `key`'s cooldown (an operator's plain write, instead of sleeping through it), leases its
/// one probe as the application role, and reports it with `report` (`{lease}` replaced).
async fn probe_round(admin: &Client, app: &Client, key: &str, report: &str) -> String {
    admin
        .execute(
            "UPDATE rc_circuit_breakers SET open_until = clock_timestamp()
             WHERE namespace = 'ns' AND resource_key = $1",
            &[&key],
        )
        .await
        .expect("ends the cooldown");
    let lease: i64 = app
        .query_one(
            "SELECT o_lease_id FROM rc_acquire_probe('ns', $1, 'h', 10000, 1, 1)",
            &[&key],
        )
        .await
        .expect("asks for a lease")
        .get::<_, Option<i64>>(0)
        .expect("a lease once the cooldown is over");
    let sql = report.replace("{lease}", &lease.to_string());
    app.query_one(&sql, &[&key])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", message(&e)))
        .get("o_state")
}

/// Growing cooldowns in SQL (`0011`), called directly as the application role (trips through
/// `rc_trip_many`, as instances send them): each failed round reopens for `min(max, base × 2^n)`
/// less at most 10%, counted in `reopens`; a NULL maximum rests a fixed cooldown, still counted;
/// a round that closes, `rc_force` and `rc_force_many` CLOSED, the Python package's plain UPDATE and a
/// DELETE all leave the next trip at the base; a maximum below the cooldown is refused with a
/// clear error.
#[tokio::test]
async fn report_probe_grows_the_cooldown_in_sql() {
    let db = test_db().await;
    let _owner = migrated(&db).await;
    let admin = db.client().await;
    let app = connect_as(&db.app_conninfo().await).await;
    let key = unique_key("grow");
    let trip = "SELECT o_state FROM rc_trip_many('ns', ARRAY[$1::text], ARRAY[100::bigint], \
                ARRAY[1], ARRAY['[]'::jsonb])";
    let grow = "SELECT * FROM rc_report_probe('ns', $1, {lease}, false, 1, 1, 100, 1000)";
    app.query_one(trip, &[&key]).await.expect("trips");
    let (set, reopens) = set_cooldown(&admin, &key).await;
    assert_eq!(reopens, 0);
    assert!((100..150).contains(&set), "a trip rests the base: {set} ms");

    for (n, grown) in [(1, 200), (2, 400), (3, 800), (4, 1000), (5, 1000)] {
        assert_eq!(probe_round(&admin, &app, &key, grow).await, "OPEN");
        let (set, reopens) = set_cooldown(&admin, &key).await;
        assert_eq!(reopens, n);
        assert!(
            (grown - grown / 10..grown + 50).contains(&set),
            "reopen {n}: {set} ms, expected {grown} ms less at most 10%"
        );
    }
    // NULL maximum: growth off, a fixed cooldown, but the reopen is counted.
    let fixed = "SELECT * FROM rc_report_probe('ns', $1, {lease}, false, 1, 1, 100, NULL)";
    assert_eq!(probe_round(&admin, &app, &key, fixed).await, "OPEN");
    let (set, reopens) = set_cooldown(&admin, &key).await;
    assert_eq!(reopens, 6, "a fixed cooldown counts the reopen too");
    assert!(
        (100..150).contains(&set),
        "and rests the cooldown it asks: {set} ms"
    );

    // Every way of closing the row leaves the next trip at the base and restarts the count.
    let closes = [
        "SELECT * FROM rc_report_probe('ns', $1, {lease}, true, 1, 1, 100, 1000)",
        "SELECT * FROM rc_force('ns', $1, 'CLOSED', 0)",
        "SELECT * FROM rc_force_many('ns', ARRAY[$1::text], ARRAY['CLOSED'], ARRAY[0::bigint])",
        "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL
         WHERE namespace = 'ns' AND resource_key = $1",
        "DELETE FROM rc_circuit_breakers WHERE namespace = 'ns' AND resource_key = $1",
    ];
    for close in closes {
        if close.contains("{lease}") {
            assert_eq!(probe_round(&admin, &app, &key, close).await, "CLOSED");
        } else {
            app.execute(close, &[&key])
                .await
                .unwrap_or_else(|e| panic!("{close}: {}", message(&e)));
        }
        app.query_one(trip, &[&key]).await.expect("trips again");
        let (set, reopens) = set_cooldown(&admin, &key).await;
        assert_eq!(reopens, 0, "after {close}");
        assert!(
            (100..150).contains(&set),
            "after {close}: a trip rests {set} ms"
        );
        assert_eq!(probe_round(&admin, &app, &key, grow).await, "OPEN");
        let (set, reopens) = set_cooldown(&admin, &key).await;
        assert_eq!(reopens, 1, "after {close}");
        assert!(
            (180..250).contains(&set),
            "after {close}: the first reopen rests {set} ms"
        );
    }

    // A maximum below the cooldown is refused before anything is read or written.
    for (max, given) in [("50", "50"), ("-1", "-1")] {
        let sql = format!("SELECT * FROM rc_report_probe('ns', $1, 1, false, 1, 1, 100, {max})");
        let e = app.query(&sql, &[&key]).await.expect_err("refused");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
            "{e:?}"
        );
        let text = message(&e);
        assert!(
            text.contains(&format!(
                "max cooldown of {given} ms is shorter than the cooldown of 100 ms"
            )),
            "{text}"
        );
    }
    assert_eq!(
        set_cooldown(&admin, &key).await.1,
        1,
        "the refused calls changed nothing"
    );
}

/// `rc_rows`, how an instance confirms the notifications it does not take on trust, answers
/// each asked key of the namespace that has a row once, however often it is asked, and nothing
/// for a key without a row or with a row only in another namespace; the app role may call it.
/// (A join with the asked keys: `faults::burst_of_ten_thousand_keys_converges` is what it costs
/// on a table not yet analyzed.)
#[tokio::test]
async fn rc_rows_answers_each_asked_key_once() {
    let db = test_db().await;
    let _owner = migrated(&db).await;
    let admin = db.client().await;
    let app = connect_as(&db.app_conninfo().await).await;
    let (open, closed, absent) = (
        unique_key("rows-open"),
        unique_key("rows-closed"),
        unique_key("rows-absent"),
    );
    admin
        .execute(
            "INSERT INTO rc_circuit_breakers (namespace, resource_key, state, open_until)
             VALUES ('ns', $1, 'OPEN', now() + interval '1 hour'), ('ns', $2, 'CLOSED', NULL),
                    ('other', $3, 'OPEN', now() + interval '1 hour')",
            &[&open, &closed, &absent],
        )
        .await
        .expect("rows");
    let asked = vec![open.clone(), closed.clone(), open.clone(), absent.clone()];
    let rows = app
        .query(
            "SELECT o_key, o_state, o_remaining_ms > 0 FROM rc_rows('ns', $1)",
            &[&asked],
        )
        .await
        .expect("the app role reads rows");
    let mut got: Vec<(String, String, Option<bool>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    got.sort();
    let mut want = vec![
        (open.clone(), "OPEN".to_owned(), Some(true)),
        (closed.clone(), "CLOSED".to_owned(), Some(false)),
    ];
    want.sort();
    assert_eq!(got, want);
    let none: Vec<String> = Vec::new();
    for keys in [None, Some(none)] {
        let rows = app
            .query("SELECT * FROM rc_rows('ns', $1)", &[&keys])
            .await
            .expect("no keys");
        assert!(rows.is_empty(), "{keys:?}: {} rows", rows.len());
    }
}
