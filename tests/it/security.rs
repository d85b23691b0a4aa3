//! The threat model (`docs::security`), line by line, tried as each role would: a stranger with
//! no grant, a reader, an instance, a Python service, an operator, and a role that owns its
//! database. Every test connects as the role it is about.

use std::time::Duration;

use resilient_circuit::admin::{Rights, RoleKind};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Mode, Ratio, State, Storage, TripPolicy};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::cli::{ok, run};
use crate::support::breakers::{caught_up, fail, trip_fast, Watched};
use crate::support::{eventually, listening, test_db, test_db_with, unique_key, TestRole};

use crate::support::WAIT;

async fn connect(conninfo: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connects: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Options for an instance logging in as `role`, named apart from every other instance.
fn options_as(role: &TestRole) -> PostgresOptions {
    PostgresOptions::from_dsn(&role.conninfo())
        .expect("dsn")
        .instance_name(unique_key("pod"))
}

async fn instance_as(role: &TestRole) -> Storage {
    Storage::connect_with(options_as(role))
        .await
        .expect("connects")
}

/// The SQLSTATE and message of a failed statement.
fn refusal(e: &tokio_postgres::Error) -> (String, String) {
    let db = e.as_db_error().expect("a database error");
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Runs `sql` and expects "permission denied".
async fn denied(client: &Client, sql: &str) {
    let e = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("{sql} must be refused"));
    assert_eq!(
        e.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{sql}: {e:?}"
    );
}

/// A breaker of `key` on `storage` that trips on its first failure.
fn breaker(storage: &Storage, key: &str) -> CircuitBreaker {
    trip_fast(CircuitBreaker::builder(key).storage(storage.clone()))
        .build()
        .expect("valid")
}

/// Every function of ours with NULL arguments, as a statement.
async fn every_function_call(admin: &Client) -> Vec<String> {
    admin
        .query(
            "SELECT 'SELECT public.' || p.proname || '(' || \
                    coalesce(string_agg('NULL::' || format_type(t, NULL), ', ' ORDER BY n), '') || ')' \
             FROM pg_proc p \
             LEFT JOIN LATERAL unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, n) ON true \
             WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'rc\\_%' \
               AND p.prorettype <> 'trigger'::regtype \
             GROUP BY p.oid, p.proname",
            &[],
        )
        .await
        .expect("the catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Each kind of role holds exactly the rights `setup` grants it, by PostgreSQL's own checks on
/// every table and function of ours: nothing missing, nothing more.
#[tokio::test]
async fn each_kind_holds_exactly_its_rights() {
    let db = test_db().await;
    let admin = db.admin_session().await;
    for kind in RoleKind::ALL {
        let role = db.role_of(&[kind]).await;
        let held = admin
            .rights_of(role.name())
            .await
            .expect("reads rights")
            .expect("the role exists");
        let expected = Rights::of(&[kind]);
        assert!(
            expected.beyond(&held).is_empty(),
            "{kind} lacks {}",
            expected.beyond(&held).describe()
        );
        let extra = held.beyond(&expected).beyond(&Rights::public());
        assert!(extra.is_empty(), "{kind} holds more: {}", extra.describe());
    }
    let stranger = db.role_of(&[]).await;
    let held = admin
        .rights_of(stranger.name())
        .await
        .expect("reads rights")
        .expect("exists");
    assert!(
        held.beyond(&Rights::public()).is_empty(),
        "a stranger holds {}",
        held.describe()
    );
}

/// A login with no grant calls no function of ours, reads no row, no key and no secret, and
/// cannot run an instance: every attempt is refused by PostgreSQL.
#[tokio::test]
async fn a_stranger_can_do_nothing_of_ours() {
    let db = test_db().await;
    let stranger = db.role_of(&[]).await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state) VALUES ('secret-key', 'OPEN')",
        )
        .await
        .expect("a row");
    let s = connect(&stranger.conninfo()).await;
    let calls = every_function_call(&admin).await;
    assert!(calls.len() >= 20, "{calls:?}");
    for sql in &calls {
        denied(&s, sql).await;
    }
    for table in [
        "rc_circuit_breakers",
        "rc_notify_key",
        "rc_votes",
        "rc_rate_reports",
        "rc_probe_leases",
        "rc_judgements",
        "rc_key_locks",
        "rc_role_grants",
        "rc_schema_migrations",
    ] {
        denied(&s, &format!("SELECT * FROM public.{table}")).await;
    }
    // Readable by every login, and empty for this one: row security.
    for table in ["rc_changes", "rc_breaker_config"] {
        let n: i64 = s
            .query_one(&format!("SELECT count(*) FROM public.{table}"), &[])
            .await
            .expect("counts")
            .get(0);
        assert_eq!(n, 0, "{table} shows a stranger {n} rows");
    }
    denied(&s, "UPDATE public.rc_circuit_breakers SET state = 'CLOSED'").await;
    let err = Storage::connect_with(options_as(&stranger).strict(true))
        .await
        .expect_err("a stranger runs no instance");
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
}

/// A reader reads rows, the log and the live configuration (and an instance on it follows the
/// fleet by polling), and every function that changes anything refuses it.
#[tokio::test]
async fn a_reader_reads_and_changes_nothing() {
    let db = test_db().await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let app = db.app().await;
    let writer = instance_as(app).await;
    let r = connect(&reader.conninfo()).await;
    for sql in [
        "SELECT * FROM rc_trip_many('default', ARRAY['k'], ARRAY[1000::bigint], ARRAY[1], ARRAY['[]'::jsonb], NULL)",
        "SELECT * FROM rc_force('default', 'k', 'OPEN', 1000)",
        "SELECT * FROM rc_configure('default', 'k', 'forced_open')",
        "SELECT * FROM rc_delete('default', 'k')",
        "SELECT * FROM rc_notify_secret()",
        "SELECT * FROM rc_vote('default', 'k', 'me', 1, 1, 1, 1000, 1000, NULL)",
        "SELECT * FROM rc_acquire_probe('default', 'k', 'me', 1000, 1, 1)",
        "INSERT INTO rc_circuit_breakers (resource_key, state) VALUES ('k', 'OPEN')",
    ] {
        denied(&r, sql).await;
    }
    let key = unique_key("read");
    let follower = Storage::connect_with(options_as(&reader))
        .await
        .expect("a reader runs an instance that follows");
    let mut seen = Watched::new(&follower, &key, |b| b);
    fail(&breaker(&writer, &key)).await;
    assert!(seen.reaches(State::Open).await, "followed by polling");
    for sql in [
        "SELECT * FROM rc_snapshot('default')",
        "SELECT * FROM rc_status('default')",
        "SELECT * FROM rc_configs('default', NULL)",
        "SELECT * FROM rc_server_status()",
    ] {
        r.query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    let history = r
        .query("SELECT o_to FROM rc_history('default', $1, NULL)", &[&key])
        .await
        .expect("reads the log");
    assert_eq!(history.len(), 1);
    let err = seen
        .cb
        .force_closed_confirmed()
        .await
        .expect_err("a reader's override is refused");
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
}

/// An instance trips keys and runs probe rounds, but decrees nothing: no override, no live
/// configuration, no deletion, no table write.
#[tokio::test]
async fn an_instance_trips_but_does_not_decree() {
    let db = test_db().await;
    let role = db.role_of(&[RoleKind::Instance]).await;
    let a = instance_as(&role).await;
    let b = instance_as(&role).await;
    assert!(!a.is_degraded() && !b.is_degraded());
    let key = unique_key("tripped");
    let mut on_b = Watched::new(&b, &key, |b| {
        b.failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(100))
    });
    let on_a = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_millis(100))
        .build()
        .expect("valid");
    fail(&on_a).await;
    assert!(
        on_b.reaches(State::Open).await,
        "its trip reached the fleet"
    );
    let probe = crate::support::breakers::fleet_probe(&on_a).await;
    probe.success();
    assert!(
        on_b.reaches(State::Closed).await,
        "its probe closed the round"
    );
    let err = on_a
        .force_open_confirmed(Duration::from_secs(60))
        .await
        .expect_err("an instance does not decree");
    assert_eq!(err.sqlstate(), Some("42501"), "{err}");
    let c = connect(&role.conninfo()).await;
    for sql in [
        "SELECT * FROM rc_force('default', 'k', 'CLOSED', 0)",
        "SELECT * FROM rc_configure('default', 'k', 'disabled')",
        "SELECT * FROM rc_delete('default', 'k')",
        "UPDATE rc_circuit_breakers SET state = 'CLOSED'",
        "DELETE FROM rc_circuit_breakers",
        "INSERT INTO rc_circuit_breakers (resource_key, state) VALUES ('k', 'CLOSED')",
    ] {
        denied(&c, sql).await;
    }
}

/// An operator opens, closes, configures and deletes, through the functions only.
#[tokio::test]
async fn an_operator_decrees() {
    let db = test_db().await;
    let operator = db.role_of(&[RoleKind::Operator]).await;
    let key = unique_key("decreed");
    let dsn = operator.conninfo();
    ok(&dsn, &["open", &key, "--for", "1h"]).await;
    ok(&dsn, &["config", &key, "--cooldown", "5s"]).await;
    ok(&dsn, &["close", &key]).await;
    let r = ok(&dsn, &["delete", &key]).await;
    assert!(r.stdout.contains("deleted"), "{}", r.stdout);
    let c = connect(&dsn).await;
    denied(&c, "UPDATE rc_circuit_breakers SET state = 'CLOSED'").await;
}

/// A Python service writes rows as the Python package does; its writes still get versions and
/// reach every instance, and it may not decree through the functions.
#[tokio::test]
async fn a_python_role_writes_through_the_triggers() {
    let db = test_db().await;
    let python = db.role_of(&[RoleKind::Python]).await;
    let instance = instance_as(&python).await;
    let key = unique_key("py");
    let mut seen = Watched::new(&instance, &key, |b| b);
    let py = connect(&python.conninfo()).await;
    py.execute(
        "INSERT INTO rc_circuit_breakers (resource_key, namespace, state, failure_count, open_until, execution_log)
         VALUES ($1, 'default', 'OPEN', 3, now() + interval '1 hour', '[false,false,false]')
         ON CONFLICT (resource_key, namespace) DO UPDATE
         SET state = EXCLUDED.state, failure_count = EXCLUDED.failure_count,
             open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log",
        &[&key],
    )
    .await
    .expect("the Python package's upsert");
    assert!(seen.reaches(State::Open).await);
    py.execute(
        "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL WHERE resource_key = $1",
        &[&key],
    )
    .await
    .expect("its update");
    assert!(seen.reaches(State::Closed).await);
    denied(&py, "SELECT * FROM rc_force('default', 'k', 'OPEN', 1000)").await;
    let versions: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(DISTINCT version) FROM rc_changes WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("the log")
        .get(0);
    assert_eq!(versions, 2, "each write a version of its own, logged");
}

/// Rights are those of `current_user`: an operator's login that `SET ROLE`s to a reader may
/// not decree, and a `NOINHERIT` login with no right of its own may once it `SET ROLE`s to an
/// operator.
#[tokio::test]
async fn rights_follow_set_role_not_the_login() {
    let db = test_db().await;
    let operator = db.role_of(&[RoleKind::Operator]).await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let login = db.role_of(&[]).await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "GRANT \"{r}\" TO \"{o}\"; ALTER ROLE \"{l}\" NOINHERIT; GRANT \"{o}\" TO \"{l}\"",
            r = reader.name(),
            o = operator.name(),
            l = login.name()
        ))
        .await
        .expect("memberships");
    let op = connect(&operator.conninfo()).await;
    op.batch_execute(&format!("SET ROLE \"{}\"", reader.name()))
        .await
        .expect("set role");
    denied(&op, "SELECT * FROM rc_force('default', 'k', 'OPEN', 1000)").await;
    denied(
        &op,
        "SELECT * FROM rc_configure('default', 'k', 'disabled')",
    )
    .await;
    denied(&op, "SELECT * FROM rc_notify_secret()").await;

    let l = connect(&login.conninfo()).await;
    denied(&l, "SELECT * FROM rc_force('default', 'k', 'OPEN', 1000)").await;
    l.batch_execute(&format!("SET ROLE \"{}\"", operator.name()))
        .await
        .expect("set role");
    l.batch_execute("SELECT * FROM rc_force('default', 'k', 'OPEN', 1000)")
        .await
        .expect("as the operator it may");
}

/// The secret channel's name (read as the owner).
async fn channel(admin: &Client) -> String {
    admin
        .query_one("SELECT channel FROM public.rc_notify_key", &[])
        .await
        .expect("the key table")
        .get(0)
}

/// A payload signed as `rc_announce` signs it (the owner holds the key), committed at `at_us`
/// (NULL: now).
#[allow(clippy::too_many_arguments)]
async fn signed(
    admin: &Client,
    op: &str,
    key: &str,
    state: &str,
    version: i64,
    remaining_ms: i64,
    at_us: Option<i64>,
) -> String {
    admin
        .query_one(
            "WITH t AS (SELECT coalesce($6::bigint, floor(date_part('epoch', clock_timestamp()) * 1000000)::bigint) AS at),
                  m AS (SELECT t.at, concat_ws('|', '3', $1::text, char_length('default') || ':default',
                               char_length($2::text) || ':' || $2::text, $3::text, $4::bigint::text,
                               $5::bigint::text, t.at::text) AS msg FROM t)
             SELECT json_build_object('v', 3, 'op', $1::text, 'ns', 'default', 'key', $2::text,
                        'state', $3::text, 'version', $4::bigint, 'remaining_ms', $5::bigint,
                        'at_us', m.at,
                        'mac', encode(sha256(k.opad || sha256(k.ipad || convert_to(m.msg, 'UTF8'))), 'hex'))::text
             FROM m, public.rc_notify_key k",
            &[&op, &key, &state, &version, &remaining_ms, &at_us],
        )
        .await
        .expect("signs")
        .get(0)
}

async fn notify(client: &Client, channel: &str, payload: &str) {
    client
        .execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &payload])
        .await
        .expect("notifies");
}

/// Operators, and functions that shadow catalog functions, planted in `public` by an
/// application role that owns its database run nowhere: not in `setup`, not in the triggers
/// (the Python package's upsert, a superuser's plain UPDATE), not in the functions instances
/// and the command call, not in the instances' or the command's own statements.
#[tokio::test]
async fn operators_planted_in_public_run_nowhere() {
    let db = test_db().await;
    let attacker = db.role(&[]).await;
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{d}\" OWNER TO \"{a}\"; GRANT CREATE ON SCHEMA public TO \"{a}\"",
            d = db.name(),
            a = attacker.name()
        ))
        .await
        .expect("the app role owns its database");
    let evil = connect(&attacker.conninfo()).await;
    evil.batch_execute(
        "CREATE TABLE public.hijacked (who text, via text);
         GRANT INSERT, SELECT ON public.hijacked TO PUBLIC;
         CREATE FUNCTION public.spy(via text) RETURNS void LANGUAGE sql AS
             $$ INSERT INTO public.hijacked VALUES (current_user, via) $$;
         CREATE FUNCTION public.eq_vt(a varchar, b text) RETURNS boolean LANGUAGE plpgsql AS
             $$ BEGIN PERFORM public.spy('=(varchar,text)'); RETURN a::text OPERATOR(pg_catalog.=) b; END $$;
         CREATE FUNCTION public.eq_vv(a varchar, b varchar) RETURNS boolean LANGUAGE plpgsql AS
             $$ BEGIN PERFORM public.spy('=(varchar,varchar)'); RETURN a::text OPERATOR(pg_catalog.=) b::text; END $$;
         CREATE FUNCTION public.eq_tv(a text, b varchar) RETURNS boolean LANGUAGE plpgsql AS
             $$ BEGIN PERFORM public.spy('=(text,varchar)'); RETURN a OPERATOR(pg_catalog.=) b::text; END $$;
         CREATE FUNCTION public.ne_vt(a varchar, b text) RETURNS boolean LANGUAGE plpgsql AS
             $$ BEGIN PERFORM public.spy('<>(varchar,text)'); RETURN a::text OPERATOR(pg_catalog.<>) b; END $$;
         CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = text, FUNCTION = public.eq_vt);
         CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.eq_vv);
         CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = varchar, FUNCTION = public.eq_tv);
         CREATE OPERATOR public.<> (LEFTARG = varchar, RIGHTARG = text, FUNCTION = public.ne_vt);
         CREATE FUNCTION public.nextval(text) RETURNS bigint LANGUAGE plpgsql AS
             $$ BEGIN PERFORM public.spy('nextval(text)'); RETURN 1; END $$;
         CREATE FUNCTION public.char_length(varchar) RETURNS integer LANGUAGE plpgsql AS
             $$ BEGIN PERFORM public.spy('char_length(varchar)'); RETURN 1; END $$;",
    )
    .await
    .expect("plants its operators");
    // The trap works on SQL that resolves through `public`: proof that the test can catch.
    evil.batch_execute("SELECT 'x'::varchar = 'x'::text")
        .await
        .expect("a naive comparison");
    let caught: i64 = evil
        .query_one("SELECT count(*) FROM public.hijacked", &[])
        .await
        .expect("counts")
        .get(0);
    assert_eq!(caught, 1, "the planted operator catches naive SQL");
    evil.batch_execute("DELETE FROM public.hijacked")
        .await
        .expect("reset");

    // The superuser sets the database up and grants the application role.
    let name = attacker.name().to_owned();
    ok(
        &db.conninfo(),
        &[
            "setup",
            "--yes",
            "--grant-operator",
            &name,
            "--grant-python",
            &name,
        ],
    )
    .await;
    // Instances of the application role: trips, a probe round, a quorum, a fleet rate.
    let opts = PostgresOptions::from_dsn(&attacker.conninfo()).expect("dsn");
    let a = Storage::connect_with(opts.clone().instance_name("a"))
        .await
        .expect("connects");
    let b = Storage::connect_with(opts.instance_name("b"))
        .await
        .expect("connects");
    let key = unique_key("trap");
    let mut on_b = Watched::new(&b, &key, |x| {
        x.failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(50))
    });
    let on_a = CircuitBreaker::builder(&key)
        .storage(a.clone())
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_millis(50))
        .build()
        .expect("valid");
    fail(&on_a).await;
    assert!(on_b.reaches(State::Open).await);
    crate::support::breakers::fleet_probe(&on_a).await.success();
    assert!(on_b.reaches(State::Closed).await);
    let quorum = unique_key("trap-quorum");
    for s in [&a, &b] {
        let cb = CircuitBreaker::builder(&quorum)
            .storage(s.clone())
            .failure_limit(Ratio::new(1, 1))
            .trip_policy(TripPolicy::Quorum {
                instances: 2,
                within: Duration::from_secs(60),
            })
            .build()
            .expect("valid");
        fail(&cb).await;
    }
    let rate = unique_key("trap-rate");
    let rated = CircuitBreaker::builder(&rate)
        .storage(a.clone())
        .failure_limit(Ratio::new(1, 2))
        .trip_policy(TripPolicy::FleetRate {
            limit: Ratio::new(1, 2),
            min_calls: 2,
            period: Duration::from_secs(60),
        })
        .build()
        .expect("valid");
    fail(&rated).await;
    fail(&rated).await;
    // (The test's own statements compare without a planted operator too.)
    let quorum_opened = eventually(WAIT, || async {
        admin
            .query_opt(
                "SELECT 1 FROM public.rc_circuit_breakers WHERE state::text OPERATOR(pg_catalog.=) 'OPEN' \
                 AND resource_key::text OPERATOR(pg_catalog.=) $1::text",
                &[&quorum],
            )
            .await
            .is_ok_and(|r| r.is_some())
    })
    .await;
    assert!(quorum_opened, "the quorum opened the key");
    assert!(a.flush(WAIT).await && b.flush(WAIT).await);
    // The command, run by the superuser and by the application role.
    for dsn in [db.conninfo(), attacker.conninfo()] {
        ok(&dsn, &["open", &key, "--for", "1h", "--note", "trap"]).await;
        ok(&dsn, &["close", &key]).await;
        ok(&dsn, &["config", &key, "--cooldown", "5s"]).await;
        ok(&dsn, &["config", &key]).await;
        ok(&dsn, &["status"]).await;
        ok(&dsn, &["status", "--json"]).await;
        ok(&dsn, &["history", &key]).await;
        ok(&dsn, &["delete", &key]).await;
    }
    let check = run(&db.conninfo(), &["check", "--role", &name]).await;
    assert!(
        check.stdout.contains("WARN") && check.stdout.contains("schema public"),
        "check names the writable schema: {}",
        check.stdout
    );
    // The Python package's writes, and a superuser's plain UPDATE (written without a mixed
    // comparison of its own), fire every trigger.
    evil.execute(
        "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state, failure_count, open_until, execution_log)
         VALUES ($1::text, 'default', 'OPEN', 3, now() + interval '1 hour', '[false]')
         ON CONFLICT (resource_key, namespace) DO UPDATE SET state = EXCLUDED.state,
             open_until = EXCLUDED.open_until",
        &[&key],
    )
    .await
    .expect("the Python upsert");
    admin
        .execute(
            "UPDATE public.rc_circuit_breakers SET state = 'CLOSED', open_until = NULL \
             WHERE resource_key::text OPERATOR(pg_catalog.=) $1::text",
            &[&key],
        )
        .await
        .expect("a plain update");
    admin
        .execute(
            "DELETE FROM public.rc_circuit_breakers WHERE resource_key::text OPERATOR(pg_catalog.=) $1::text",
            &[&key],
        )
        .await
        .expect("a plain delete");
    drop((a, b));
    let rows = admin
        .query("SELECT who, via FROM public.hijacked", &[])
        .await
        .expect("reads the trap");
    let ran: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(ran.is_empty(), "planted code ran: {ran:?}");
}

/// A login with no grant that LISTENs on the channels an attacker would guess hears nothing,
/// and payloads it sends on the real channel (its name leaked) change nothing: a bad MAC is
/// ignored.
#[tokio::test]
async fn a_stranger_hears_nothing_and_its_notifications_change_nothing() {
    let db = test_db().await;
    let stranger = db.role_of(&[]).await;
    let app = db.app().await;
    let a = instance_as(app).await;
    let admin = db.client().await;
    let (_s, mut heard) = listening(
        &stranger.conninfo(),
        &["rc_circuit_breakers", "rc_breaker_config", "rc_changes"],
    )
    .await;
    let key = unique_key("unheard");
    let mut watched = Watched::new(&a, &key, trip_fast);
    fail(&watched.cb).await;
    assert!(watched.reaches(State::Open).await);
    ok(&app.conninfo(), &["config", &key, "--cooldown", "5s"]).await;
    assert!(caught_up(&admin, &[&a], WAIT).await);
    assert!(heard.try_recv().is_err(), "a stranger heard the fleet");

    let s = connect(&stranger.conninfo()).await;
    let secret = channel(&admin).await;
    let other = unique_key("forged");
    let mut target = Watched::new(&a, &other, |b| b);
    let forged = format!(
        r#"{{"v":3,"op":"row","ns":"default","key":"{other}","state":"OPEN","version":999999999,"remaining_ms":600000,"at_us":1,"mac":"{}"}}"#,
        "0".repeat(64)
    );
    notify(&s, &secret, &forged).await;
    notify(&s, &secret, "not even json").await;
    assert!(caught_up(&admin, &[&a], WAIT).await);
    assert_eq!(
        target.cb.state(),
        State::Closed,
        "a forged OPEN was applied"
    );
    assert!(target.changes.try_recv().is_err());
}

/// A login with no grant holding advisory locks on every id the crate once used (a key's
/// judgement, migrations) blocks no vote, no rate report and no migration.
#[tokio::test]
async fn a_strangers_advisory_locks_block_nothing() {
    let db = test_db().await;
    let stranger = db.role_of(&[]).await;
    let instance = db.role_of(&[RoleKind::Instance]).await;
    let key = unique_key("locked");
    let mut s = connect(&stranger.conninfo()).await;
    let tx = s.transaction().await.expect("tx");
    tx.execute(
        "SELECT pg_advisory_lock(hashtextextended('rc_votes|default|' || $1::text, 0))",
        &[&key],
    )
    .await
    .expect("the old judgement lock");
    tx.execute("SELECT pg_advisory_lock(32197408853682034)", &[])
        .await
        .expect("the old migration lock");
    let e = tx
        .batch_execute("LOCK TABLE public.rc_schema_objects IN SHARE ROW EXCLUSIVE MODE")
        .await
        .expect_err("the migrations' lock is the owner's");
    assert_eq!(e.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{e:?}");
    drop(tx);
    let tx = s.transaction().await.expect("tx");
    tx.execute(
        "SELECT pg_advisory_lock(hashtextextended('rc_votes|default|' || $1::text, 0))",
        &[&key],
    )
    .await
    .expect("the old judgement lock");
    tx.execute("SELECT pg_advisory_lock(32197408853682034)", &[])
        .await
        .expect("the old migration lock");

    let i = connect(&instance.conninfo()).await;
    i.batch_execute("SET statement_timeout = 2000")
        .await
        .expect("set");
    let votes: i32 = i
        .query_one(
            "SELECT o_votes FROM rc_vote('default', $1, 'a', 1, 1, 2, 60000, 60000, NULL)",
            &[&key],
        )
        .await
        .expect("a vote is counted within 2 s")
        .get(0);
    assert_eq!(votes, 1);
    let state: String = i
        .query_one(
            "SELECT o_state FROM rc_vote('default', $1, 'b', 1, 1, 2, 60000, 60000, NULL)",
            &[&key],
        )
        .await
        .expect("the second vote too")
        .get(0);
    assert_eq!(state, "OPEN", "the quorum opened the key");
    let calls: i64 = i
        .query_one(
            "SELECT o_fleet_calls FROM rc_report_rates('default', 'a', 1000, ARRAY[$1::text],
                 ARRAY[0::bigint], ARRAY[5::bigint], ARRAY[1], ARRAY[2], ARRAY[100],
                 ARRAY[60000::bigint], ARRAY[1000::bigint])",
            &[&unique_key("rated")],
        )
        .await
        .expect("a rate report within 2 s")
        .get(0);
    assert_eq!(calls, 5);
    let admin = db.client().await;
    admin
        .execute(
            "UPDATE public.rc_schema_objects SET checksum = 'stale' WHERE name = 'rc_vote'",
            &[],
        )
        .await
        .expect("marks an object stale");
    let mut session = db.admin_session().await;
    let applied = tokio::time::timeout(WAIT, session.migrate(Duration::from_secs(5)))
        .await
        .expect("the migration is not blocked")
        .expect("migrates");
    assert_eq!(
        applied.objects.iter().map(|o| o.name).collect::<Vec<_>>(),
        ["rc_vote"]
    );
    tx.rollback().await.expect("done");
}

/// A session that LISTENs and sits in an open transaction pins the notification queue: `status`
/// and `check` show its usage, and it drains once the session ends its transaction.
#[tokio::test]
async fn a_pinned_notification_queue_is_reported() {
    let db = test_db().await;
    let app = db.app().await;
    let quiet = unique_key("pin").replace('-', "_");
    let (mut pinner, _heard) = listening(&db.conninfo(), &[&quiet]).await;
    let tx = pinner.transaction().await.expect("tx");
    tx.batch_execute("SELECT 1")
        .await
        .expect("in a transaction");
    db.client()
        .await
        .execute(
            "SELECT pg_notify($1, repeat('x', 4000) || i) FROM generate_series(1, 3000) AS i",
            &[&quiet],
        )
        .await
        .expect("fills the queue a little");
    let usage = |dsn: String| async move {
        let r = ok(&dsn, &["status", "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
        v["notification_queue_usage"].as_f64().expect("a number")
    };
    let pinned = usage(app.conninfo()).await;
    assert!(pinned > 0.0, "status shows the queue in use: {pinned}");
    let check = run(&app.conninfo(), &["check"]).await;
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains("notification queue"))
        .unwrap_or_else(|| panic!("check reports the queue: {}", check.stdout));
    assert!(!line.contains(" 0.0000%"), "{line}");
    tx.rollback().await.expect("ends the transaction");
    let drained = eventually(WAIT, || {
        let dsn = app.conninfo();
        async move { usage(dsn).await < pinned }
    })
    .await;
    assert!(
        drained,
        "the queue drains once the listener is out of its transaction"
    );
}

/// A genuine payload captured once and sent again after the row was deleted changes nothing:
/// at once (its version is older than the deletion's), after the replay window (read from the
/// table), and on an instance started since (which holds no version of the key).
#[tokio::test]
async fn a_replayed_open_after_a_delete_changes_nothing() {
    let db = test_db().await;
    let app = db.app().await;
    let stranger = db.role_of(&[]).await;
    let admin = db.client().await;
    let secret = channel(&admin).await;
    let (_capture, mut captured) = listening(&db.conninfo(), &[&secret]).await;
    let a = instance_as(app).await;
    let key = unique_key("replayed");
    let mut watched = Watched::new(&a, &key, trip_fast);
    fail(&watched.cb).await;
    assert!(watched.reaches(State::Open).await);
    let payload = loop {
        let n = tokio::time::timeout(WAIT, captured.recv())
            .await
            .expect("the OPEN is announced")
            .expect("open channel");
        if n.payload().contains(&key) && n.payload().contains("\"OPEN\"") {
            break n.payload().to_owned();
        }
    };
    let sent_at = std::time::Instant::now();
    ok(&app.conninfo(), &["delete", &key]).await;
    assert!(watched.reaches(State::Closed).await);
    let s = connect(&stranger.conninfo()).await;
    notify(&s, &secret, &payload).await;
    assert!(caught_up(&admin, &[&a], WAIT).await);
    assert_eq!(watched.cb.state(), State::Closed, "replayed at once");
    // Past the window of trust: the row is read instead.
    let window = Duration::from_millis(2500);
    tokio::time::sleep(window.saturating_sub(sent_at.elapsed())).await;
    let b = instance_as(app).await;
    notify(&s, &secret, &payload).await;
    assert!(caught_up(&admin, &[&a, &b], WAIT).await);
    assert_eq!(watched.cb.state(), State::Closed, "replayed later");
    assert_ne!(
        b.state_of(&key),
        Some(State::Open),
        "replayed to a new instance"
    );
    // (The trip's own transitions may still be queued: only a remote reopening would be wrong.)
    let after: Vec<_> = std::iter::from_fn(|| watched.changes.try_recv().ok()).collect();
    assert!(
        !after
            .iter()
            .any(|c| c.to == State::Open && c.origin == resilient_circuit::ChangeOrigin::Remote),
        "a replay reopened the key: {after:?}"
    );
}

/// A close signed with the key (as an instance's role could sign one, though it may not close a
/// breaker) is read from the table before it counts: the breaker stays open.
#[tokio::test]
async fn a_forged_close_is_read_from_the_table() {
    let db = test_db().await;
    let app = db.app().await;
    let admin = db.client().await;
    let a = instance_as(app).await;
    let key = unique_key("forged-close");
    let mut watched = Watched::new(&a, &key, trip_fast);
    fail(&watched.cb).await;
    assert!(watched.reaches(State::Open).await);
    crate::support::breakers::published(&a).await;
    let forged = signed(&admin, "row", &key, "CLOSED", i64::MAX / 2, 0, None).await;
    notify(&admin, &channel(&admin).await, &forged).await;
    assert!(caught_up(&admin, &[&a], WAIT).await);
    assert_eq!(
        watched.cb.state(),
        State::Open,
        "a forged close was believed"
    );
    // And the same payload genuine in spirit (the row closed): read, and applied.
    ok(&app.conninfo(), &["close", &key]).await;
    assert!(watched.reaches(State::Closed).await);
}

/// Notifications of a key outside ASCII verify in a database whose encoding is not UTF-8: the
/// MAC counts characters, as the listener does.
#[tokio::test]
async fn macs_verify_in_a_latin1_database() {
    let db = test_db_with("TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'").await;
    let app = db.app().await;
    let a = instance_as(app).await;
    let b = Storage::connect_with(options_as(app).reconcile_interval(Duration::from_secs(600)))
        .await
        .expect("connects");
    let key = format!("café-{}", unique_key("latin1"));
    let mut on_b = Watched::new(&b, &key, trip_fast);
    fail(&breaker(&a, &key)).await;
    assert!(
        on_b.reaches(State::Open).await,
        "the notification verified (b reloads only every ten minutes)"
    );
}

/// The state of `key`'s row, and whether its hold reaches past nine years, as the owner reads it.
async fn row(admin: &Client, key: &str) -> (Option<String>, bool) {
    match admin
        .query_opt(
            "SELECT state, open_until > now() + interval '9 years' FROM rc_circuit_breakers \
             WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("reads")
    {
        Some(r) => (Some(r.get(0)), r.get::<_, Option<bool>>(1).unwrap_or(false)),
        None => (None, false),
    }
}

/// A key forced open by its live configuration stays open against every writer: the command's
/// `close` and `delete`, the library's override, the Python package's plain UPDATE and DELETE,
/// a shorter cooldown, a rename, a TRUNCATE; a `close` racing the configuration, in either
/// order; and an instance refuses its calls.
#[tokio::test]
async fn forced_open_holds_against_every_writer() {
    let db = test_db().await;
    let app = db.app().await;
    let dsn = app.conninfo();
    let admin = db.client().await;
    let a = instance_as(app).await;
    let key = unique_key("forced");
    let mut watched = Watched::new(&a, &key, |b| b);
    ok(&dsn, &["config", &key, "--mode", "forced-open"]).await;
    assert!(watched.reaches(State::Open).await);
    assert_eq!(row(&admin, &key).await, (Some("OPEN".into()), true));
    for args in [vec!["close", key.as_str()], vec!["delete", key.as_str()]] {
        let r = run(&dsn, &args).await;
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("forced open"), "{args:?}: {}", r.stderr);
    }
    let err = watched
        .cb
        .force_closed_confirmed()
        .await
        .expect_err("the override is refused");
    assert!(err.to_string().contains("forced open"), "{err}");
    assert_eq!(watched.cb.state(), State::Open);
    assert!(
        watched.cb.try_acquire().is_err(),
        "the instance refuses calls"
    );
    let py = connect(&dsn).await;
    for sql in [
        "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL WHERE resource_key = $1",
        "DELETE FROM rc_circuit_breakers WHERE resource_key = $1",
        "UPDATE rc_circuit_breakers SET resource_key = resource_key || '-moved' WHERE resource_key = $1",
    ] {
        let e = py.execute(sql, &[&key]).await.expect_err(sql);
        assert_eq!(refusal(&e).0, "55006", "{sql}: {e:?}");
    }
    py.execute(
        "UPDATE rc_circuit_breakers SET open_until = now() WHERE resource_key = $1",
        &[&key],
    )
    .await
    .expect("a shorter cooldown is not an error");
    assert_eq!(
        row(&admin, &key).await,
        (Some("OPEN".into()), true),
        "but it is not taken"
    );
    admin
        .batch_execute("TRUNCATE rc_circuit_breakers")
        .await
        .expect("truncates");
    assert_eq!(
        row(&admin, &key).await,
        (Some("OPEN".into()), true),
        "back after TRUNCATE"
    );
    assert!(caught_up(&admin, &[&a], WAIT).await);
    assert_eq!(watched.cb.state(), State::Open);
    ok(&dsn, &["config", &key, "--mode", "normal"]).await;
    assert!(
        watched.reaches(State::Closed).await,
        "leaving the mode closes it"
    );

    // A close racing the configuration: the close holds the row first, then commits.
    let raced = unique_key("raced");
    let mut closer = connect(&dsn).await;
    let tx = closer.transaction().await.expect("tx");
    tx.execute(
        "SELECT * FROM rc_force('default', $1, 'CLOSED', 0)",
        &[&raced],
    )
    .await
    .expect("closes");
    let configuring = tokio::spawn({
        let dsn = dsn.clone();
        let raced = raced.clone();
        async move {
            let c = connect(&dsn).await;
            c.execute(
                "SELECT * FROM rc_configure('default', $1, 'forced_open')",
                &[&raced],
            )
            .await
        }
    });
    wait_for_a_lock_wait(&admin).await;
    tx.commit().await.expect("commits");
    configuring.await.expect("task").expect("configures");
    assert_eq!(row(&admin, &raced).await, (Some("OPEN".into()), true));
    // And the other way: the configuration holds the row first, the close waits and is refused.
    let raced = unique_key("raced");
    let mut configurer = connect(&dsn).await;
    let tx = configurer.transaction().await.expect("tx");
    tx.execute(
        "SELECT * FROM rc_configure('default', $1, 'forced_open')",
        &[&raced],
    )
    .await
    .expect("configures");
    let closing = tokio::spawn({
        let dsn = dsn.clone();
        let raced = raced.clone();
        async move {
            let c = connect(&dsn).await;
            c.execute(
                "SELECT * FROM rc_force('default', $1, 'CLOSED', 0)",
                &[&raced],
            )
            .await
        }
    });
    wait_for_a_lock_wait(&admin).await;
    tx.commit().await.expect("commits");
    let e = closing
        .await
        .expect("task")
        .expect_err("the close is refused");
    assert_eq!(refusal(&e).0, "55006", "{e:?}");
    assert_eq!(row(&admin, &raced).await, (Some("OPEN".into()), true));
}

/// Waits until some session of this database waits for a lock.
async fn wait_for_a_lock_wait(admin: &Client) {
    let waiting = eventually(WAIT, || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE NOT l.granted AND a.datname = current_database()",
                &[],
            )
            .await
            .map(|r| r.get::<_, i64>(0) > 0)
            .unwrap_or(false)
    })
    .await;
    assert!(waiting, "a session waits for the lock");
}

/// The Python package's bookkeeping writes, and a writer that sets `updated_at` to infinity,
/// spend no quorum vote and no fleet-rate report: only a change of state does.
#[tokio::test]
async fn bookkeeping_writes_spend_no_judgement() {
    let db = test_db().await;
    let instance = db.role_of(&[RoleKind::Instance]).await;
    let python = db.role_of(&[RoleKind::Python]).await;
    let i = connect(&instance.conninfo()).await;
    let py = connect(&python.conninfo()).await;
    let admin = db.client().await;
    let (voted, rated) = (unique_key("voted"), unique_key("rated"));
    let vote = |voter: &'static str| {
        let voted = voted.clone();
        let i = &i;
        async move {
            let r = i
                .query_one(
                    "SELECT o_state, o_votes FROM rc_vote('default', $1, $2, 1, 1, 2, 60000, 60000, NULL)",
                    &[&voted, &voter],
                )
                .await
                .expect("votes");
            (r.get::<_, String>(0), r.get::<_, i32>(1))
        }
    };
    let report = |reporter: &'static str| {
        let rated = rated.clone();
        let i = &i;
        async move {
            i.query_one(
                "SELECT o_state, o_fleet_calls FROM rc_report_rates('default', $2, 1000,
                     ARRAY[$1::text], ARRAY[5::bigint], ARRAY[5::bigint], ARRAY[1], ARRAY[2],
                     ARRAY[10], ARRAY[60000::bigint], ARRAY[60000::bigint])",
                &[&rated, &reporter],
            )
            .await
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .expect("reports")
        }
    };
    assert_eq!(vote("a").await, ("CLOSED".to_owned(), 1));
    assert_eq!(report("a").await, ("CLOSED".to_owned(), 5));
    for key in [&voted, &rated] {
        py.execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state, failure_count, execution_log)
             VALUES ($1, 'CLOSED', 1, '[false]')",
            &[key],
        )
        .await
        .expect("the Python package's first write of a key");
        py.execute(
            "UPDATE rc_circuit_breakers SET failure_count = 2, execution_log = '[false,false]'
             WHERE resource_key = $1",
            &[key],
        )
        .await
        .expect("its bookkeeping");
        py.execute(
            "UPDATE rc_circuit_breakers SET updated_at = 'infinity' WHERE resource_key = $1",
            &[key],
        )
        .await
        .expect("a writer's nonsense");
    }
    let live: i64 = admin
        .query_one(
            "SELECT count(*) FROM rc_votes WHERE resource_key = $1",
            &[&voted],
        )
        .await
        .expect("counts")
        .get(0);
    assert_eq!(live, 1, "the vote survived");
    // The judgement began over a reporting interval ago (the fleet had its time to answer).
    admin
        .execute(
            "UPDATE rc_judgements SET judging_since = judging_since - interval '2 seconds'
             WHERE resource_key = $1",
            &[&rated],
        )
        .await
        .expect("ages the judgement");
    assert_eq!(vote("b").await.0, "OPEN", "the second vote opened the key");
    assert_eq!(
        report("b").await.0,
        "OPEN",
        "the second report opened the key"
    );
}

/// What a caller reports is believed within bounds: a fleet-rate report up to
/// `max_report_calls_per_second` for each second it covers, a round of at most 8192 probes, a
/// quorum of at most 10,000.
#[tokio::test]
async fn self_reported_numbers_are_bounded() {
    let db = test_db().await;
    let instance = db.role_of(&[RoleKind::Instance]).await;
    let i = connect(&instance.conninfo()).await;
    let diluted = unique_key("diluted");
    let calls: i64 = i
        .query_one(
            "SELECT o_fleet_calls FROM rc_report_rates('default', 'liar', 1000, ARRAY[$1::text],
                 ARRAY[0::bigint], ARRAY[9223372036854775807::bigint], ARRAY[1], ARRAY[2],
                 ARRAY[1], ARRAY[60000::bigint], ARRAY[1000::bigint])",
            &[&diluted],
        )
        .await
        .expect("reports")
        .get(0);
    assert_eq!(calls, 10_000 * 60, "cut to 10,000 calls a second over 60 s");
    let alone = unique_key("alone");
    let r = i
        .query_one(
            "SELECT o_state, o_fleet_calls FROM rc_report_rates('default', 'liar', 1000,
                 ARRAY[$1::text], ARRAY[2147483647::bigint], ARRAY[2147483647::bigint], ARRAY[1],
                 ARRAY[2], ARRAY[1000000], ARRAY[60000::bigint], ARRAY[1000::bigint])",
            &[&alone],
        )
        .await
        .expect("reports");
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, i64>(1)),
        ("CLOSED".to_owned(), 600_000),
        "one report does not meet a million calls alone"
    );
    for (sql, says) in [
        (
            "SELECT * FROM rc_acquire_probe('default', 'k', 'me', 1000, 2147483647, 1)",
            "probe count must be 1 to 8192",
        ),
        (
            "SELECT * FROM rc_report_probe('default', 'k', 1, true, 2147483647, 1, 1000, NULL)",
            "probe count must be 1 to 8192",
        ),
        (
            "SELECT * FROM rc_vote('default', 'k', 'me', 1, 1, 2147483647, 1000, 1000, NULL)",
            "quorum must be 1 to 10000",
        ),
    ] {
        let e = i.query(sql, &[]).await.expect_err(sql);
        assert!(refusal(&e).1.contains(says), "{sql}: {e:?}");
    }
}

/// A pod that votes again under the same name, from a new session each time (a crash loop),
/// is one voter: a quorum of two needs a second name.
#[tokio::test]
async fn a_crash_looping_pod_is_one_voter() {
    let db = test_db().await;
    let instance = db.role_of(&[RoleKind::Instance]).await;
    let key = unique_key("looping");
    let vote = |voter: &'static str| {
        let key = key.clone();
        let dsn = instance.conninfo();
        async move {
            let c = connect(&dsn).await;
            let r = c
                .query_one(
                    "SELECT o_state, o_votes FROM rc_vote('default', $1, $2, 3, 3, 2, 60000, 60000, NULL)",
                    &[&key, &voter],
                )
                .await
                .expect("votes");
            (r.get::<_, String>(0), r.get::<_, i32>(1))
        }
    };
    for _ in 0..3 {
        assert_eq!(vote("pod-a").await, ("CLOSED".to_owned(), 1));
    }
    assert_eq!(vote("pod-b").await, ("OPEN".to_owned(), 2));

    // Through the library: instances are named by `instance_name`.
    let key = unique_key("looping-lib");
    let quorum = |b: resilient_circuit::Builder| {
        b.failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_secs(60))
            .trip_policy(TripPolicy::Quorum {
                instances: 2,
                within: Duration::from_secs(60),
            })
    };
    for _ in 0..2 {
        let same = Storage::connect_with(options_as(&instance).instance_name("pod-a"))
            .await
            .expect("connects");
        fail(
            &quorum(CircuitBreaker::builder(&key).storage(same.clone()))
                .build()
                .expect("valid"),
        )
        .await;
        assert!(same.flush(WAIT).await);
    }
    let admin = db.client().await;
    assert_eq!(
        crate::support::breakers::row_state(&admin, &key).await,
        None
    );
}

/// The key's live configuration decides the quorum, the trip policy and the round's size,
/// whatever a caller asks for.
#[tokio::test]
async fn the_live_policy_wins_over_the_callers() {
    let db = test_db().await;
    let instance = db.role_of(&[RoleKind::Instance]).await;
    let app = db.app().await;
    let i = connect(&instance.conninfo()).await;
    let admin = db.client().await;
    let voted = unique_key("live-quorum");
    ok(
        &app.conninfo(),
        &[
            "config",
            &voted,
            "--trip-policy",
            "quorum",
            "--quorum",
            "3",
            "--within",
            "60s",
        ],
    )
    .await;
    for (voter, state) in [("a", "CLOSED"), ("b", "CLOSED"), ("c", "OPEN")] {
        let got: String = i
            .query_one(
                "SELECT o_state FROM rc_vote('default', $1, $2, 1, 1, 1, 60000, 60000, NULL)",
                &[&voted, &voter],
            )
            .await
            .expect("votes")
            .get(0);
        assert_eq!(got, state, "vote of {voter} with a quorum of 1 asked");
    }
    let rated = unique_key("live-rate");
    ok(
        &app.conninfo(),
        &[
            "config",
            &rated,
            "--trip-policy",
            "fleet-rate",
            "--rate",
            "1/2",
            "--min-calls",
            "10",
            "--period",
            "60s",
        ],
    )
    .await;
    let got: String = i
        .query_one(
            "SELECT o_state FROM rc_trip_many('default', ARRAY[$1::text], ARRAY[60000::bigint],
                 ARRAY[5], ARRAY['[]'::jsonb], NULL)",
            &[&rated],
        )
        .await
        .expect("trips")
        .get(0);
    assert_eq!(got, "CLOSED", "one instance does not open a fleet-rate key");
    let probed = unique_key("live-probes");
    ok(
        &app.conninfo(),
        &["config", &probed, "--success-limit", "2/3"],
    )
    .await;
    admin
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) VALUES ($1, 'OPEN', now())",
            &[&probed],
        )
        .await
        .expect("an OPEN row whose cooldown is over");
    i.execute(
        "SELECT * FROM rc_acquire_probe('default', $1, 'me', 10000, 8192, 8192)",
        &[&probed],
    )
    .await
    .expect("leases");
    let size: (i32, i32) = admin
        .query_one(
            "SELECT round_probes, round_close_at FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&probed],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("reads");
    assert_eq!(size, (3, 2), "the round is the live configuration's");
}

/// Rows every pruning deletes: a log entry past its retention, and the expired judgements,
/// lock and lease of a key never heard of again.
async fn plant_old_rows(admin: &Client) {
    admin
        .batch_execute(
            "INSERT INTO rc_changes (txid, version, namespace, resource_key, state, at)
                 VALUES (1, 1, 'default', 'ancient', 'OPEN', now() - interval '2 hours');
             INSERT INTO rc_votes VALUES ('default', 'never-again', 'pod', 'r', now() - interval '2 hours',
                 now() - interval '1 hour', 1, 1);
             INSERT INTO rc_rate_reports (namespace, resource_key, reporter, reported_at, expires_at, failures, calls)
                 VALUES ('default', 'never-again', 'pod', now() - interval '2 hours', now() - interval '1 hour', 1, 1);
             INSERT INTO rc_judgements (namespace, resource_key, touched_at) VALUES ('default', 'never-again', now() - interval '2 hours');
             INSERT INTO rc_probe_leases (namespace, resource_key, holder, expires_at)
                 VALUES ('default', 'never-again', 'pod', now() - interval '1 hour');",
        )
        .await
        .expect("plants old rows");
}

/// How many of [`plant_old_rows`]' rows are left.
async fn old_rows_left(admin: &Client) -> i64 {
    admin
        .query_one(
            "SELECT (SELECT count(*) FROM rc_changes WHERE resource_key = 'ancient')
                  + (SELECT count(*) FROM rc_votes WHERE resource_key = 'never-again')
                  + (SELECT count(*) FROM rc_rate_reports WHERE resource_key = 'never-again')
                  + (SELECT count(*) FROM rc_judgements WHERE resource_key = 'never-again')
                  + (SELECT count(*) FROM rc_probe_leases WHERE resource_key = 'never-again')",
            &[],
        )
        .await
        .expect("counts")
        .get(0)
}

/// Every text a caller sends is bounded and refused with its length; every table is pruned by
/// time (at most once a minute, by whoever writes next), keys never heard of again included.
#[tokio::test]
async fn texts_are_bounded_and_tables_pruned_by_time() {
    let db = test_db().await;
    let app = db.app().await;
    let c = connect(&app.conninfo()).await;
    let huge = "x".repeat(5 * 1024 * 1024);
    for (sql, says) in [
        (
            "SELECT * FROM rc_vote('default', 'k', $1, 1, 1, 2, 1000, 1000, NULL)",
            "a voter's name must have 1 to 255 characters, got 5242880",
        ),
        (
            "SELECT * FROM rc_acquire_probe('default', 'k', $1, 1000, 1, 1)",
            "a probe holder must have 1 to 255 characters",
        ),
        (
            "SELECT * FROM rc_configure('default', 'k', p_note => $1)",
            "a note must have 1 to 1000 characters",
        ),
        (
            "SELECT * FROM rc_report_rates('default', $1, 1000, ARRAY['k'], ARRAY[0::bigint], ARRAY[1::bigint], ARRAY[1], ARRAY[2], ARRAY[1], ARRAY[1000::bigint], ARRAY[1000::bigint])",
            "a reporter's name must have 1 to 255 characters",
        ),
    ] {
        let e = c.query(sql, &[&huge]).await.expect_err(sql);
        assert!(refusal(&e).1.contains(says), "{sql}: {e:?}");
    }
    let e = Storage::connect_with(options_as(app).instance_name("n".repeat(256)))
        .await
        .expect_err("refused before connecting");
    assert!(e.to_string().contains("instance_name"), "{e}");

    let admin = db.client().await;
    let force = |n: usize| {
        let c = &c;
        async move {
            for _ in 0..n {
                c.batch_execute("SELECT * FROM rc_force('default', 'busy', 'OPEN', 1000)")
                    .await
                    .expect("forces");
            }
        }
    };
    admin
        .batch_execute("UPDATE rc_change_log_settings SET pruned_at = '-infinity'")
        .await
        .expect("due");
    plant_old_rows(&admin).await;
    assert_eq!(old_rows_left(&admin).await, 5);
    force(1).await;
    assert_eq!(old_rows_left(&admin).await, 0, "pruned by the next write");
    plant_old_rows(&admin).await;
    force(300).await;
    assert_eq!(
        old_rows_left(&admin).await,
        5,
        "not again within the minute"
    );
    admin
        .batch_execute(
            "UPDATE rc_change_log_settings SET pruned_at = now() - interval '61 seconds'",
        )
        .await
        .expect("a minute later");
    force(1).await;
    assert_eq!(
        old_rows_left(&admin).await,
        0,
        "a minute later, the next write prunes"
    );
}

/// A migration behind a long transaction on the table does not stall the fleet: it waits at
/// most half a second for each lock and tries again, so the instances' trips keep reaching the
/// fleet meanwhile; it completes once the transaction ends, and gives up with the reason when
/// told not to wait that long.
#[tokio::test]
async fn a_migration_behind_a_long_reader_does_not_stall_the_fleet() {
    let db = test_db().await;
    let app = db.app().await;
    let a = instance_as(app).await;
    let b = instance_as(app).await;
    let mut reader = connect(&db.conninfo()).await;
    let long = reader.transaction().await.expect("tx");
    long.batch_execute("SELECT count(*) FROM rc_circuit_breakers")
        .await
        .expect("holds the table");
    let admin = db.client().await;
    // Re-applying this object drops and makes a trigger on the table: it needs the table alone.
    admin
        .batch_execute(
            "UPDATE rc_schema_objects SET checksum = 'stale' WHERE name = 'rc_bump_version'",
        )
        .await
        .expect("an object to apply");
    let mut session = db.admin_session().await;
    let migrating = tokio::spawn(async move {
        let r = session.migrate(Duration::from_secs(60)).await;
        (session, r)
    });
    let watcher = db.client().await;
    wait_for_a_lock_wait(&watcher).await;
    for _ in 0..3 {
        let key = unique_key("live");
        let mut on_b = Watched::new(&b, &key, trip_fast);
        let started = std::time::Instant::now();
        fail(&breaker(&a, &key)).await;
        assert!(
            on_b.reaches_within(State::Open, Duration::from_secs(2))
                .await,
            "a trip reached the fleet within the statement timeout, during the migration"
        );
        eprintln!("trip seen after {:?}", started.elapsed());
    }
    assert!(
        !migrating.is_finished(),
        "the migration waits for the reader"
    );
    long.rollback().await.expect("the reader ends");
    let (mut session, applied) = migrating.await.expect("task");
    let applied = applied.expect("migrated once the reader ended");
    assert_eq!(
        applied.objects.iter().map(|o| o.name).collect::<Vec<_>>(),
        ["rc_bump_version"]
    );

    let long = reader.transaction().await.expect("tx");
    long.batch_execute("SELECT count(*) FROM rc_circuit_breakers")
        .await
        .expect("holds the table");
    admin
        .batch_execute(
            "UPDATE rc_schema_objects SET checksum = 'stale' WHERE name = 'rc_bump_version'",
        )
        .await
        .expect("an object to apply");
    let e = session
        .migrate(Duration::from_secs(1))
        .await
        .expect_err("gives up after a second");
    assert_eq!(e.sqlstate(), Some("55P03"), "lock_not_available: {e}");
}

/// Keys, notes and names that clients chose are printed with their terminal controls and
/// bidirectional overrides escaped: `status`, `history` and `config` show them, never obey them.
#[tokio::test]
async fn hostile_text_is_shown_not_obeyed() {
    let db = test_db().await;
    let app = db.app().await;
    let dsn = app.conninfo();
    let key = format!("evil\u{1b}[2J\u{202e}{}", unique_key("k"));
    ok(
        &dsn,
        &[
            "open",
            &key,
            "--for",
            "1h",
            "--note",
            "wipe\u{1b}]0;pwned\u{7}",
        ],
    )
    .await;
    for args in [
        vec!["status"],
        vec!["history", key.as_str()],
        vec!["config", key.as_str()],
    ] {
        let r = ok(&dsn, &args).await;
        assert!(
            !r.stdout.contains('\u{1b}')
                && !r.stdout.contains('\u{202e}')
                && !r.stdout.contains('\u{7}'),
            "{args:?} printed a control character: {:?}",
            r.stdout
        );
        if args[0] != "history" {
            // (history names the key only on the command line)
            assert!(
                r.stdout.contains("\\u{1b}[2J\\u{202e}"),
                "{args:?}: {}",
                r.stdout
            );
        }
    }
    let history = ok(&dsn, &["history", &key]).await;
    assert!(
        history.stdout.contains("wipe\\u{1b}]0;pwned\\u{7}"),
        "{}",
        history.stdout
    );
}

/// `check` reports what `setup` cannot see to: a role holding more than its kind (the table
/// writes an older setup granted), a function every role may run, and a schema on the search
/// path that others may create in; and `setup` takes the function's grant back.
#[tokio::test]
async fn check_reports_excess_rights_public_functions_and_open_schemas() {
    let db = test_db().await;
    let role = db.role_of(&[RoleKind::Instance]).await;
    let dsn = db.conninfo();
    let name = role.name().to_owned();
    let clean = ok(&dsn, &["check", "--role", &name]).await;
    assert!(
        clean.stdout.contains("holds nothing more"),
        "{}",
        clean.stdout
    );
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "GRANT INSERT, UPDATE, DELETE ON public.rc_circuit_breakers TO \"{name}\";
             GRANT EXECUTE ON FUNCTION public.rc_force(text, text, text, bigint) TO PUBLIC;
             GRANT CREATE ON SCHEMA public TO PUBLIC;"
        ))
        .await
        .expect("grants too much");
    let r = run(&dsn, &["check", "--role", &name]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    for says in [
        "holds more than it needs",
        "INSERT on rc_circuit_breakers",
        "EXECUTE on rc_force(text,text,text,bigint)",
        "every role may run (PUBLIC holds EXECUTE): rc_force",
        "WARN    schema public",
    ] {
        assert!(r.stdout.contains(says), "{says:?} not in {}", r.stdout);
    }
    ok(&dsn, &["setup", "--yes"]).await;
    let r = run(&dsn, &["check"]).await;
    assert!(!r.stdout.contains("every role may run"), "{}", r.stdout);
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let as_reader = ok(&dsn, &["check", "--role", reader.name(), "--as", "reader"]).await;
    assert!(
        as_reader.stdout.contains("holds what a reader needs"),
        "{}",
        as_reader.stdout
    );
    let _ = Mode::Normal; // (the live modes are tried in `forced_open_holds_against_every_writer`)
}
