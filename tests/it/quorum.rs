//! `TripPolicy::Quorum` on real PostgreSQL, through the public API, as the application role: the
//! fleet opens on the quorum's last vote and not before, a voter stops its own calls meanwhile,
//! votes expire, one instance voting twice is one vote, a close spends the votes, and the change
//! log says who voted.

use std::time::Duration;

use resilient_circuit::{Builder, CircuitBreaker, ConfigError, Ratio, State, Storage, TripPolicy};
use tokio_postgres::Client;

use crate::support::breakers::{caught_up, fail, instance, options, row_state, Watched};
use crate::support::{connect_to, eventually, test_db, unique_key};
use resilient_circuit::admin::RoleKind;

use crate::support::WAIT;

/// Trips on one failure; the fleet opens when `instances` voted within `within`.
fn quorum(instances: u32, within: Duration, cooldown: Duration) -> impl Fn(Builder) -> Builder {
    move |b| {
        b.failure_limit(Ratio::new(1, 1))
            .cooldown(cooldown)
            .trip_policy(TripPolicy::Quorum { instances, within })
    }
}

/// The live votes the database holds for `key` (read as the admin: the table is closed to
/// applications).
async fn votes(admin: &Client, key: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM rc_votes WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("counts votes")
        .get(0)
}

/// One failed call on `w`, and its vote answered.
async fn vote(w: &Watched, storage: &Storage) {
    fail(&w.cb).await;
    assert_eq!(
        w.cb.state(),
        State::Open,
        "the voter stops its own calls at once"
    );
    assert!(storage.flush(WAIT).await, "the vote is answered");
}

/// Five instances, a quorum of three: two votes leave the key closed for the fleet (the voters
/// alone reject), the third opens it everywhere, and the change log names the three voters.
#[tokio::test]
async fn a_quorum_of_three_among_five_opens_only_with_the_third_vote() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("quorum");
    let mut storages = Vec::new();
    let mut fleet = Vec::new();
    for _ in 0..5 {
        let s = instance(&db).await;
        fleet.push(Watched::new(
            &s,
            &key,
            quorum(3, Duration::from_secs(60), Duration::from_secs(60)),
        ));
        storages.push(s);
    }
    for voter in 0..2 {
        vote(&fleet[voter], &storages[voter]).await;
        assert_eq!(votes(&admin, &key).await, voter as i64 + 1);
        assert_eq!(
            row_state(&admin, &key).await,
            None,
            "no row: CLOSED for the fleet"
        );
        let rejected = fleet[voter]
            .cb
            .try_acquire()
            .expect_err("the voter rejects its own calls");
        assert!(rejected
            .retry_after()
            .is_some_and(|left| left <= Duration::from_secs(60)));
        for other in &fleet[2..] {
            assert_eq!(other.cb.state(), State::Closed);
            assert!(other.cb.try_acquire().is_ok(), "the others still call");
        }
    }
    vote(&fleet[2], &storages[2]).await;
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    for (i, w) in fleet.iter_mut().enumerate() {
        assert!(
            w.reaches(State::Open).await,
            "instance {i} follows the quorum"
        );
    }
    assert_eq!(
        votes(&admin, &key).await,
        0,
        "the votes that opened it are spent"
    );

    let why: serde_json::Value = admin
        .query_one(
            "SELECT why FROM rc_changes WHERE resource_key = $1 AND state = 'OPEN'",
            &[&key],
        )
        .await
        .expect("one change to OPEN")
        .get(0);
    let q = &why["quorum"];
    assert_eq!(q["votes"], 3, "{why}");
    assert_eq!(q["needed"], 3, "{why}");
    assert_eq!(q["within_ms"], 60_000, "{why}");
    let voters = q["voters"].as_array().expect("voters listed");
    let mut ids: Vec<&str> = voters
        .iter()
        .map(|v| v["instance"].as_str().expect("an instance id"))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three distinct instances: {why}");
    assert_eq!(why["failures"], 3, "one failure each: {why}");
}

/// A vote older than the period does not count: the second vote finds itself alone. The first
/// voter, back in service after its cooldown, votes again within the period and opens the key.
#[tokio::test]
async fn votes_expire() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("expiring");
    // Long enough that the first voter's second vote (its cooldown's end, a lease request, a
    // call) lands within it on a loaded machine.
    let within = Duration::from_secs(3);
    let (a, b, c) = (
        instance(&db).await,
        instance(&db).await,
        instance(&db).await,
    );
    // A cooldown far longer than the moment between a vote and its assertion, even on a
    // loaded machine, and far shorter than `within`.
    let policy = quorum(2, within, Duration::from_secs(1));
    let mut on_a = Watched::new(&a, &key, &policy);
    let on_b = Watched::new(&b, &key, &policy);
    let mut on_c = Watched::new(&c, &key, &policy);

    vote(&on_a, &a).await;
    tokio::time::sleep(within + Duration::from_millis(100)).await; // the period itself: time
    vote(&on_b, &b).await;
    assert_eq!(
        row_state(&admin, &key).await,
        None,
        "the first vote expired"
    );
    assert_eq!(votes(&admin, &key).await, 1);
    assert_eq!(on_c.cb.state(), State::Closed);

    // a's cooldown is long over: its next call asks the database, finds the key CLOSED and runs.
    assert!(
        eventually(WAIT, || async { on_a.cb.try_acquire().is_ok() }).await,
        "the first voter calls again once its cooldown ended"
    );
    assert!(on_a.reaches(State::Closed).await);
    vote(&on_a, &a).await;
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert!(on_c.reaches(State::Open).await, "two live votes open it");
}

/// A voter rejects its own calls until its cooldown ends (a reload of the CLOSED table does not
/// undo that), then calls again; voting twice it is still one instance of the quorum.
#[tokio::test]
async fn a_voter_stops_its_own_calls_until_its_cooldown_ends() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("held");
    let cooldown = Duration::from_secs(2);
    // `a` reloads the namespace every 50 ms: dozens of reloads of the CLOSED row during its hold.
    let a = Storage::connect_with(
        options(&db)
            .await
            .reconcile_interval(Duration::from_millis(50)),
    )
    .await
    .expect("connects");
    let b = instance(&db).await;
    let policy = quorum(2, Duration::from_secs(60), cooldown);
    let mut on_a = Watched::new(&a, &key, &policy);
    let mut on_b = Watched::new(&b, &key, &policy);

    // A CLOSED row that `a` has seen, so that its reloads read a row, not an absent key.
    on_a.cb
        .force_closed_confirmed()
        .await
        .expect("the row exists");
    vote(&on_a, &a).await;
    assert!(on_b.cb.try_acquire().is_ok());
    // Looked at every 10 ms until the hold's last 100 ms: never admitted.
    let mut looks = 0;
    while on_a.cb.cooldown_remaining() > Duration::from_millis(100) {
        assert!(
            on_a.cb.try_acquire().is_err(),
            "neither the vote's answer nor the reloads of the CLOSED row end the vote's hold"
        );
        looks += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(looks > 5, "looked {looks} times");

    assert!(
        eventually(WAIT, || async { on_a.cb.try_acquire().is_ok() }).await,
        "calls again after its cooldown"
    );
    assert!(on_a.reaches(State::Closed).await);
    vote(&on_a, &a).await;
    assert_eq!(votes(&admin, &key).await, 1, "one instance, one vote");
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("CLOSED"));

    vote(&on_b, &b).await;
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert!(on_a.reaches(State::Open).await);
    assert!(on_b.reaches(State::Open).await);
}

/// An operator's close, made after a vote, ends the voter's hold at once (a later decision
/// wins) and spends the vote: the next voter is alone.
#[tokio::test]
async fn an_operator_close_ends_a_vote_hold() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("overruled");
    let (a, b) = (instance(&db).await, instance(&db).await);
    let policy = quorum(2, Duration::from_secs(60), Duration::from_secs(60));
    let mut on_a = Watched::new(&a, &key, &policy);
    let on_b = Watched::new(&b, &key, &policy);

    vote(&on_a, &a).await;
    on_b.cb
        .force_closed_confirmed()
        .await
        .expect("the operator closes");
    assert!(
        on_a.reaches(State::Closed).await,
        "the close reaches the voter"
    );
    assert!(on_a.cb.try_acquire().is_ok());

    vote(&on_b, &b).await;
    assert_eq!(
        row_state(&admin, &key).await.as_deref(),
        Some("CLOSED"),
        "the vote cast before the close does not count"
    );
}

/// Deleting the row (CLOSED for everyone) spends the votes gathered for the key, as a close does.
#[tokio::test]
async fn a_deleted_row_spends_the_votes() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("deleted");
    let (a, b) = (instance(&db).await, instance(&db).await);
    let policy = quorum(2, Duration::from_secs(60), Duration::from_secs(60));
    let on_a = Watched::new(&a, &key, &policy);
    let on_b = Watched::new(&b, &key, &policy);
    // Made by the voter itself, so that its vote's basis is that row (a vote decided before a
    // change it has not seen yet is refused, by design).
    on_a.cb
        .force_closed_confirmed()
        .await
        .expect("a CLOSED row to delete");
    vote(&on_a, &a).await;
    assert_eq!(votes(&admin, &key).await, 1);
    let app = db.app_client().await;
    let deleted = app
        .execute(
            "DELETE FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("the app role deletes the row");
    assert_eq!(deleted, 1);
    assert_eq!(votes(&admin, &key).await, 0, "the delete spent the vote");
    // b's call must not be in flight while b applies the delete (an outcome admitted before a
    // change of the row counts as neither): wait until b has applied it.
    assert!(caught_up(&admin, &[&b], WAIT).await);
    vote(&on_b, &b).await;
    assert_eq!(row_state(&admin, &key).await, None, "b is alone: no quorum");
}

/// A write the database refuses, or that changes nothing, leaves the key's votes alone: a trip
/// decided on an older version of the row, sent by a role with an instance's rights only, and
/// the Python package's kind of upsert that finds the row and does nothing. (The insert's
/// trigger, which spends a key's votes and fleet-rate reports when a key gets its first row,
/// ran before the row was found: any instance could erase a quorum's votes, again and again,
/// without changing the key.)
#[tokio::test]
async fn a_refused_write_spends_no_vote() {
    let db = test_db().await;
    let admin = db.client().await;
    let role = db.role_of(&[RoleKind::Instance]).await;
    let app = connect_to(&role.conninfo()).await;
    let key = unique_key("refused");
    admin
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, namespace, state) \
             VALUES ($1, 'default', 'CLOSED')",
            &[&key],
        )
        .await
        .expect("a CLOSED row");
    let counted: i32 = app
        .query_one(
            "SELECT o_votes FROM rc_vote('default', $1, 'voter', 1, 1, 3, 60000, 60000)",
            &[&key],
        )
        .await
        .expect("a vote")
        .get(0);
    assert_eq!(counted, 1);
    let trip = "SELECT o_state, o_error FROM rc_trip_many('default', ARRAY[$1], \
                ARRAY[60000::bigint], ARRAY[1], ARRAY[NULL::jsonb], ARRAY[0::bigint])";
    for _ in 0..3 {
        let row = app.query_one(trip, &[&key]).await.expect("a trip call");
        assert_eq!(row.get::<_, Option<String>>("o_error"), None);
        assert_eq!(
            row.get::<_, Option<String>>("o_state").as_deref(),
            Some("CLOSED"),
            "a trip on an older version is refused"
        );
    }
    assert_eq!(
        votes(&admin, &key).await,
        1,
        "the refused trips spent the vote"
    );
    let python = db.role_of(&[RoleKind::Python]).await;
    let py = connect_to(&python.conninfo()).await;
    let inserted = py
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, namespace, state) \
             VALUES ($1, 'default', 'OPEN') ON CONFLICT (resource_key, namespace) DO NOTHING",
            &[&key],
        )
        .await
        .expect("an upsert that finds the row");
    assert_eq!(inserted, 0);
    assert_eq!(
        votes(&admin, &key).await,
        1,
        "an upsert that did nothing spent the vote"
    );
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("CLOSED"));
}

/// Three instances voting at once for a key with no row: the third vote opens it, once.
#[tokio::test]
async fn concurrent_votes_open_exactly_once() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("racing");
    let mut storages = Vec::new();
    for _ in 0..3 {
        storages.push(instance(&db).await);
    }
    let fleet: Vec<Watched> = storages
        .iter()
        .map(|s| {
            Watched::new(
                s,
                &key,
                quorum(3, Duration::from_secs(60), Duration::from_secs(60)),
            )
        })
        .collect();
    futures_util::future::join_all(fleet.iter().map(|w| fail(&w.cb))).await;
    for s in &storages {
        assert!(s.flush(WAIT).await);
    }
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    let opened: i64 = admin
        .query_one(
            "SELECT count(*) FROM rc_changes WHERE resource_key = $1 AND state = 'OPEN'",
            &[&key],
        )
        .await
        .expect("counts")
        .get(0);
    assert_eq!(opened, 1, "one transition for three racing votes");
}

/// `rc_vote` refuses nonsense with a clear error, as the application role; the votes table is
/// written only through it.
#[tokio::test]
async fn rc_vote_refuses_nonsense_and_its_table_is_closed() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let app = db.app_client().await;
    let call = "SELECT o_votes FROM rc_vote('default', 'k', $1, $2, $3, $4, $5, 1000)";
    let refused = |instance: &'static str, failures: i32, calls: i32, quorum: i32, within: i64| {
        let app = &app;
        async move {
            let e = app
                .query_one(call, &[&instance, &failures, &calls, &quorum, &within])
                .await
                .expect_err("refused");
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default()
        }
    };
    assert!(refused("i", 1, 1, 0, 1000)
        .await
        .contains("quorum must be 1 to 10000 instances"));
    assert!(refused("", 1, 1, 2, 1000)
        .await
        .contains("a voter's name must have 1 to 255 characters"));
    assert!(refused("i", 3, 2, 2, 1000)
        .await
        .contains("failures <= calls"));
    assert!(refused("i", 1, 1, 2, 0).await.contains("vote period"));
    let counted: i32 = app
        .query_one(call, &[&"i", &1i32, &1i32, &2i32, &1000i64])
        .await
        .expect("a good vote")
        .get(0);
    assert_eq!(counted, 1);
    let forged = app
        .execute(
            "INSERT INTO rc_votes (namespace, resource_key, voter, role, cast_at, expires_at, failures, calls)
             VALUES ('default', 'k', 'forged', current_user, now(), now() + interval '1 hour', 1, 1)",
            &[],
        )
        .await
        .expect_err("no privilege on the votes table");
    let message = forged.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("permission denied")),
        "{message:?}"
    );
}

/// Breakers sharing a key must agree on the trip policy, and the error says which they hold.
#[test]
fn a_second_breaker_with_another_trip_policy_is_refused() {
    let storage = Storage::in_memory();
    let q = TripPolicy::Quorum {
        instances: 2,
        within: Duration::from_secs(5),
    };
    let _first = CircuitBreaker::builder("agreed")
        .storage(storage.clone())
        .trip_policy(q)
        .build()
        .expect("valid");
    let e = CircuitBreaker::builder("agreed")
        .storage(storage)
        .build()
        .expect_err("another policy");
    assert!(matches!(e, ConfigError::ConflictingPolicy { .. }));
    assert!(e.to_string().contains("quorum of 2 instances"), "{e}");
}

/// The explanation a session may set by hand (`resilient_circuit.why`) never fails a write: not
/// JSON, JSON that is no object, an entry that is no object. The change is logged all the same.
#[tokio::test]
async fn a_garbled_explanation_never_fails_a_write() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let app = db.app_client().await;
    let key = unique_key("garbled");
    let not_an_object = format!(r#"{{"{key}": "a string", "{key}-vote-2": [1]}}"#);
    for (i, garbage) in ["not json", "[1, 2]", &not_an_object]
        .into_iter()
        .enumerate()
    {
        app.execute(
            "SELECT pg_catalog.set_config('resilient_circuit.why', $1, false)",
            &[&garbage],
        )
        .await
        .expect("sets it");
        let state = if i % 2 == 0 { "OPEN" } else { "CLOSED" };
        app.query_one(
            "SELECT o_state FROM rc_force('default', $1, $2, 60000)",
            &[&key, &state],
        )
        .await
        .unwrap_or_else(|e| panic!("the write goes through with why = {garbage:?}: {e}"));
        // A quorum of one: the vote opens its key, and rc_explain merges into the garbage.
        let opened: String = app
            .query_one(
                "SELECT o_state FROM rc_vote('default', $1, 'i', 1, 1, 1, 1000, 1000)",
                &[&format!("{key}-vote-{i}")],
            )
            .await
            .unwrap_or_else(|e| panic!("a vote goes through with why = {garbage:?}: {e}"))
            .get(0);
        assert_eq!(opened, "OPEN");
    }
    let logged: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM rc_changes WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("counts")
        .get(0);
    assert_eq!(logged, 3, "every write was logged");
    let explained: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM rc_changes WHERE resource_key LIKE $1 || '-vote-%'
             AND why -> 'quorum' ->> 'votes' = '1'",
            &[&key],
        )
        .await
        .expect("counts")
        .get(0);
    assert_eq!(explained, 3, "every vote's opening says why");
}

/// A TRUNCATE of the breaker table spends every vote, as a close does: the next voter is alone.
/// And once a quorum opened the key, its votes are spent: after the round closes, one new vote
/// does not reopen it (the next opening needs a new quorum).
#[tokio::test]
async fn votes_are_spent_by_a_truncate_and_by_the_opening_they_caused() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("truncated");
    let (a, b) = (instance(&db).await, instance(&db).await);
    // Holds end with the cooldown, which must outlast the moment between a vote and its
    // assertion even on a loaded machine.
    let policy = quorum(2, Duration::from_secs(60), Duration::from_secs(1));
    let mut on_a = Watched::new(&a, &key, &policy);
    let mut on_b = Watched::new(&b, &key, &policy);
    vote(&on_a, &a).await;
    assert_eq!(votes(&admin, &key).await, 1);
    admin
        .batch_execute("TRUNCATE rc_circuit_breakers")
        .await
        .expect("truncates");
    assert_eq!(votes(&admin, &key).await, 0, "the TRUNCATE spent the vote");
    assert!(
        on_a.reaches(State::Closed).await,
        "the voter's hold ends with the reset"
    );
    // Every instance has applied the reset before the next call (see `a_deleted_row_…`).
    assert!(caught_up(&admin, &[&a, &b], WAIT).await);
    vote(&on_b, &b).await;
    assert_eq!(row_state(&admin, &key).await, None, "b is alone: no quorum");
    assert!(
        on_b.reaches(State::Closed).await,
        "b's hold ends with its cooldown"
    );

    vote(&on_a, &a).await;
    vote(&on_b, &b).await;
    assert_eq!(
        row_state(&admin, &key).await.as_deref(),
        Some("OPEN"),
        "a quorum"
    );
    assert_eq!(votes(&admin, &key).await, 0, "the opening spent its votes");
    let probe = crate::support::breakers::fleet_probe(&on_a.cb).await;
    probe.success();
    assert!(a.flush(WAIT).await, "the probe's report is answered");
    for w in [&mut on_a, &mut on_b] {
        assert!(w.reaches(State::Closed).await, "the round closed the key");
    }
    assert!(caught_up(&admin, &[&a, &b], WAIT).await);
    vote(&on_a, &a).await;
    assert_eq!(
        row_state(&admin, &key).await.as_deref(),
        Some("CLOSED"),
        "one vote after the round: no quorum"
    );
}

/// A vote is a judgement of its moment: cut off from the database, the voter stops its own calls
/// for its cooldown, but does not send its vote when the database is back; the next voter is
/// alone.
#[tokio::test]
async fn a_vote_is_never_replayed_after_an_outage() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("unsent");
    let proxy = crate::support::Proxy::start(db.addr()).await;
    let behind = Storage::connect_with(
        resilient_circuit::storage::postgres::PostgresOptions::from_dsn(
            &db.app_conninfo_via(proxy.addr()).await,
        )
        .expect("dsn")
        .instance_name(unique_key("pod")),
    )
    .await
    .expect("connects through the proxy");
    let b = instance(&db).await;
    let policy = quorum(2, Duration::from_secs(60), Duration::from_secs(60));
    let cut_off = Watched::new(&behind, &key, &policy);
    let on_b = Watched::new(&b, &key, &policy);
    proxy.set_mode(crate::support::Mode::Cut);
    assert!(crate::support::eventually(WAIT, || async { behind.is_degraded() }).await);
    fail(&cut_off.cb).await;
    assert_eq!(
        cut_off.cb.state(),
        State::Open,
        "alone, it stops its own calls"
    );
    proxy.set_mode(crate::support::Mode::Pass);
    assert!(crate::support::eventually(WAIT, || async { !behind.is_degraded() }).await);
    assert!(behind.flush(WAIT).await);
    assert_eq!(
        votes(&admin, &key).await,
        0,
        "the vote was not sent when the database came back"
    );
    vote(&on_b, &b).await;
    assert_eq!(row_state(&admin, &key).await, None, "b is alone: no quorum");
}
