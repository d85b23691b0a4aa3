//! Following the table by polling its change log (`Follow::Poll`): the race a version cursor
//! would lose, concurrent writers with no change missed, through pgbouncer in transaction mode,
//! and against a streaming replica that falls behind or goes away.
//!
//! A polling instance never reloads on a timer, so whatever it ends up holding it learned from
//! the change log: a missed change would stay missed, and these tests would see it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use resilient_circuit::changes::Lagged;
use resilient_circuit::storage::postgres::{Follow, PostgresOptions};
use resilient_circuit::{Change, ChangeOrigin, Changes, CircuitBreaker, State, Storage};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_stream::StreamExt;

use crate::support::breakers::{
    fail, insert_open, options, published, row_state, trip_fast, Watched,
};
use crate::support::pgbouncer::{PgBouncer, PoolMode};
use crate::support::{eventually, test_db, unique_key, version_of, Cluster};

use crate::support::WAIT;
const EVERY: Duration = Duration::from_millis(50);

/// `opts` following by polling every [`EVERY`], with the periodic full load pushed out of reach
/// (a polling instance has none anyway; this makes sure of it).
fn polling(opts: PostgresOptions) -> PostgresOptions {
    opts.follow(Follow::Poll)
        .poll_interval(EVERY)
        .reconcile_interval(Duration::from_secs(3600))
}

/// A plain session as the application role (a role that owns nothing), as a Python service or
/// an operator's script would write the table.
async fn as_app(conninfo: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting as the application role: {e}"));
    tokio::spawn(connection);
    client
}

/// A row written first and committed last has the lower version: a follower that had moved past
/// the higher one must still get it.
#[tokio::test]
async fn a_change_committed_late_with_a_lower_version_is_not_missed() {
    let db = test_db().await;
    let follower = Storage::connect_with(polling(options(&db).await))
        .await
        .expect("connects");
    let (early, late) = (unique_key("written-first"), unique_key("committed-first"));
    let mut on_early = Watched::new(&follower, &early, |b| b);
    let mut on_late = Watched::new(&follower, &late, |b| b);

    // Transaction A writes `early` and stays open.
    let mut writer = db.client().await;
    let a = writer.transaction().await.expect("begins");
    a.execute(
        "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) VALUES ($1, 'OPEN', now() + interval '1 hour')",
        &[&early],
    )
    .await
    .expect("writes");
    let early_version: i64 = a
        .query_one(
            "SELECT version FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&early],
        )
        .await
        .expect("reads its version")
        .get(0);
    // B writes `late` after it and commits first; the follower sees it.
    let other = db.client().await;
    insert_open(&other, &late).await;
    let late_version = version_of(&other, &late).await;
    assert!(
        early_version < late_version,
        "the race: {early_version} < {late_version}"
    );
    assert!(
        on_late.reaches(State::Open).await,
        "the follower polls B's change"
    );
    assert_eq!(
        follower.state_of(&early),
        Some(State::Closed),
        "A is not committed yet"
    );

    a.commit().await.expect("commits");
    assert!(
        on_early.reaches_within(State::Open, WAIT).await,
        "the change with the lower version, committed later, reaches the follower"
    );

    // A TRUNCATE is logged as a reset: the follower reloads, and both keys are CLOSED.
    other
        .batch_execute("TRUNCATE rc_circuit_breakers")
        .await
        .expect("truncates");
    assert!(
        on_early.reaches_within(State::Closed, WAIT).await,
        "reset reaches the follower"
    );
    assert!(
        on_late.reaches_within(State::Closed, WAIT).await,
        "reset reaches the follower"
    );
}

/// One transition as a change stream shows it: from, to, and the row version that made it.
type Transition = (String, String, i64);

/// The transitions a follower must stream for a key whose committed history is `history`
/// (`(version, state)` in commit order): one for each version whose state differs from the one
/// before, starting from CLOSED (no row).
fn transitions(history: &[(i64, String)]) -> Vec<Transition> {
    let mut before = State::Closed.to_string();
    let mut out = Vec::new();
    for (version, state) in history {
        if *state != before {
            out.push((before.clone(), state.clone(), *version));
            before = state.clone();
        }
    }
    out
}

/// Collects what `changes` streams until the change of `marker`; `Err` if the stream lost
/// some on the way (which would make the comparison meaningless, not the follower wrong).
fn record(mut changes: Changes, marker: String) -> JoinHandle<Result<Vec<Change>, Lagged>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(next) = changes.next().await {
            let change = next?;
            if change.key == marker {
                return Ok(seen);
            }
            seen.push(change);
        }
        panic!("the change stream ended while its storage is alive");
    })
}

/// Eight writers change 24 keys in overlapping transactions of random length (inserts, updates,
/// deletes), each as the application role with plain SQL (as a Python service writes), while
/// two followers poll: every 10 ms (each poll catches a few commits, and the writers' open
/// transactions straddle many polls) and every 250 ms, the default (one poll brings several
/// changes of one key). A polling follower reads every change of the log (`poll.rs`), so its
/// change stream must show, for every key, every change of state the table went through, in
/// commit order, with the version that made it: a change missed and overwritten later leaves the
/// final state right and this sequence wrong. A version that keeps the state (a
/// cooldown moved, a CLOSED row deleted) is no transition, and is not streamed. The reference is
/// the change log, checked against what the writers committed, and the final states are checked
/// against the table itself. (With the in-progress list left out of the poll, or with a poll
/// applying only the newest change of each key, this fails.)
///
/// It found a version inversion about once in ten runs (a DELETE's version committed before an
/// upsert's older one on one key, seen as `(138, CLOSED)` then `(137, OPEN)`), which
/// `rc_bump_version` now prevents.
#[tokio::test]
async fn concurrent_writers_miss_nothing() {
    let db = test_db().await;
    let intervals = [Duration::from_millis(10), Duration::from_millis(250)];
    let mut followers = Vec::new();
    for every in intervals {
        let opts = polling(options(&db).await).poll_interval(every);
        followers.push(Storage::connect_with(opts).await.expect("connects"));
    }
    let keys: Vec<String> = (0..24).map(|i| unique_key(&format!("k{i}"))).collect();
    // A follower streams the transitions of the keys it holds a breaker for.
    let breakers: Vec<Vec<CircuitBreaker>> = followers
        .iter()
        .map(|f| {
            keys.iter()
                .map(|k| {
                    CircuitBreaker::builder(k)
                        .storage(f.clone())
                        .build()
                        .expect("valid")
                })
                .collect()
        })
        .collect();
    // Written once the writers are done: a poll that sees it sees everything committed before
    // it, and applies its batch in version order, the marker's last; so a follower that streams
    // the marker has streamed everything the writers committed.
    let marker = unique_key("marker");
    let recorders: Vec<_> = followers
        .iter()
        .map(|f| record(f.changes(), marker.clone()))
        .collect();

    let until = Instant::now() + Duration::from_secs(3);
    let mut writers = Vec::new();
    let app = db.app_conninfo().await;
    for w in 0..8u64 {
        let client = as_app(&app).await;
        let keys = keys.clone();
        writers.push(tokio::spawn(async move {
            // (key, version, state) of each insert or update committed.
            let mut committed: Vec<(String, i64, String)> = Vec::new();
            let mut n = w;
            while Instant::now() < until {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = &keys[(n >> 33) as usize % keys.len()];
                let pause_ms = (n >> 20) % 150;
                let kind = (n >> 10) % 3;
                let sql = match kind {
                    0 => "DELETE FROM rc_circuit_breakers WHERE resource_key = $1 RETURNING version, state",
                    1 => "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) VALUES ($1, 'OPEN', now() + interval '1 hour') ON CONFLICT (resource_key, namespace) DO UPDATE SET state = 'OPEN', open_until = EXCLUDED.open_until RETURNING version, state",
                    _ => "INSERT INTO rc_circuit_breakers (resource_key, state) VALUES ($1, 'CLOSED') ON CONFLICT (resource_key, namespace) DO UPDATE SET state = 'CLOSED', open_until = NULL RETURNING version, state",
                };
                // Write, then hold the transaction open a while: commits land out of version order.
                let begin = "BEGIN; SET LOCAL lock_timeout = '2s'";
                if client.batch_execute(begin).await.is_err() {
                    continue;
                }
                let wrote = client.query(sql, &[key]).await;
                let slept = client
                    .execute("SELECT pg_sleep($1::float8 / 1000)", &[&(pause_ms as f64)])
                    .await
                    .is_ok();
                let keep = wrote.is_ok() && slept;
                let ended = client
                    .batch_execute(if keep { "COMMIT" } else { "ROLLBACK" })
                    .await
                    .is_ok();
                if let (Ok(rows), true, true, false) = (wrote, keep, ended, kind == 0) {
                    committed.extend(rows.iter().map(|r| (key.clone(), r.get(0), r.get(1))));
                }
            }
            committed
        }));
    }
    let mut committed = Vec::new();
    for w in writers {
        committed.extend(w.await.expect("a writer panicked"));
    }
    let admin = db.client().await;
    insert_open(&admin, &marker).await;
    let mut streamed = Vec::new();
    for (i, r) in recorders.into_iter().enumerate() {
        let changes = tokio::time::timeout(WAIT, r)
            .await
            .unwrap_or_else(|_| panic!("follower {i} streamed no marker within {WAIT:?}"))
            .expect("a recorder panicked")
            .unwrap_or_else(|e| panic!("follower {i}'s stream: {e}"));
        streamed.push(changes);
    }

    // What the table went through, key by key, in commit order: `at` is stamped at commit, and
    // of two writes of one key the later waits for the earlier to end (a row lock, or the key's
    // entry in the unique index).
    let mut logged: BTreeMap<String, Vec<(i64, String)>> =
        keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    for r in admin
        .query(
            "SELECT resource_key::text, version, state::text FROM rc_changes
             WHERE resource_key::text = ANY($1) ORDER BY at, version",
            &[&keys],
        )
        .await
        .expect("reads the change log")
    {
        let key: String = r.get(0);
        if let Some(history) = logged.get_mut(&key) {
            history.push((r.get(1), r.get(2)));
        }
    }
    for (key, version, state) in &committed {
        assert!(
            logged[key].contains(&(*version, state.clone())),
            "a committed write of {key} (version {version}, {state}) is missing from the change log: {:?}",
            logged[key]
        );
    }
    let expected: BTreeMap<&String, Vec<Transition>> =
        logged.iter().map(|(k, h)| (k, transitions(h))).collect();
    // A key that changed state twice or more went through a state that a later change overwrote.
    let changed_again = expected.values().filter(|t| t.len() >= 2).count();
    assert!(
        changed_again >= keys.len() / 2,
        "half the keys or more changed state twice or more: \
         {changed_again} of {}; {} inserts and updates committed",
        keys.len(),
        committed.len()
    );

    eprintln!(
        "MEASURED concurrent_writers_miss_nothing: {} inserts and updates committed, {} transitions \
         expected of each follower, {changed_again} of {} keys changed state twice or more",
        committed.len(),
        expected.values().map(Vec::len).sum::<usize>(),
        keys.len()
    );
    for (i, (changes, every)) in streamed.iter().zip(intervals).enumerate() {
        let mut seen: BTreeMap<&String, Vec<Transition>> =
            keys.iter().map(|k| (k, Vec::new())).collect();
        for c in changes {
            assert_eq!(
                c.origin,
                ChangeOrigin::Remote,
                "follower {i} decided nothing itself: {c:?}"
            );
            let version = c
                .version
                .unwrap_or_else(|| panic!("a remote change has its version: {c:?}"));
            seen.get_mut(&c.key)
                .unwrap_or_else(|| panic!("follower {i} streamed a key no one wrote: {c:?}"))
                .push((c.from.to_string(), c.to.to_string(), version));
        }
        let wrong: Vec<_> = keys
            .iter()
            .filter(|k| seen[k] != expected[k])
            .map(|k| (k, &seen[k], &expected[k], &logged[k]))
            .collect();
        assert!(
            wrong.is_empty(),
            "follower {i} (polling every {every:?}) streamed other transitions than the table went through \
             (key, streamed, committed, the log as (version, state) in commit order):\n{wrong:?}"
        );
    }
    // The final states, from the table itself.
    let mut table = Vec::new();
    for k in &keys {
        let state = row_state(&admin, k).await;
        table.push(state.unwrap_or_else(|| State::Closed.to_string()));
    }
    assert!(
        table.iter().any(|s| s == "OPEN") && table.iter().any(|s| s == "CLOSED"),
        "the writers left both states: {table:?}"
    );
    for (i, held) in breakers.iter().enumerate() {
        let held: Vec<String> = held.iter().map(|b| b.state().to_string()).collect();
        assert_eq!(held, table, "follower {i} holds the table's final states");
    }
}

/// Through pgbouncer in transaction mode with nothing direct, six polling instances on a pool
/// of two server connections: a trip made by any of them reaches all of them within a few poll
/// intervals, and none falls back to local state. What makes that work is the instances'
/// doing: between their statements they hold no server connection (two transactions of the
/// test, as the same role, get both of the pool's while the six keep polling), and they leave
/// no session state behind, no LISTEN above all (asked in each of those two server sessions,
/// which are every server session of the role).
#[tokio::test]
async fn a_polling_fleet_works_through_pgbouncer_in_transaction_mode() {
    let cluster = Cluster::start().await;
    let db = cluster.create_db().await;
    let app = cluster.app_role(&db).await;
    let bouncer = PgBouncer::start(cluster.addr(), PoolMode::Transaction, &[app.name()], 2).await;
    let through_bouncer = app.conninfo_via(bouncer.addr());
    let opts = polling(
        PostgresOptions::from_dsn(&through_bouncer)
            .expect("parses")
            .transaction_pooler(true),
    );
    let mut fleet = Vec::new();
    for _ in 0..6 {
        fleet.push(Storage::connect_with(opts.clone()).await.expect("connects"));
    }
    let key = unique_key("bounced-poll");
    let mut watched: Vec<Watched> = fleet
        .iter()
        .map(|s| Watched::new(s, &key, trip_fast))
        .collect();
    let tripped = Instant::now();
    fail(&watched[3].cb).await;
    for (i, w) in watched.iter_mut().enumerate() {
        assert!(
            w.reaches_within(State::Open, WAIT).await,
            "instance {i} sees the trip"
        );
    }
    let took = tripped.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the whole fleet followed in {took:?}"
    );
    assert!(
        fleet.iter().all(|s| !s.is_degraded()),
        "no instance fell back to local state"
    );

    // Each of two clients of the pool holds a transaction: both server connections, which the
    // six instances (still polling every 50 ms) must not be holding.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(as_app(&through_bouncer).await);
    }
    let mut pinned = Vec::new();
    for c in &mut sessions {
        let tx = tokio::time::timeout(WAIT, c.transaction())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no server connection free within {WAIT:?}: an instance holds one between statements\n{}",
                    bouncer.log()
                )
            })
            .expect("begins through the pooler");
        pinned.push(tx);
    }
    let mut asked = Vec::new();
    for tx in &pinned {
        let row = tx
            .query_one(
                "SELECT pg_backend_pid(), array(SELECT pg_listening_channels())::text[]",
                &[],
            )
            .await
            .expect("asks the server session");
        let (pid, channels): (i32, Vec<String>) = (row.get(0), row.get(1));
        assert!(
            channels.is_empty(),
            "the server session {pid} LISTENs on {channels:?}: an instance left it there"
        );
        asked.push(pid);
    }
    let admin = cluster.client(&db).await;
    let mut servers: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
            &[&app.name()],
        )
        .await
        .expect("reads pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect();
    servers.sort_unstable();
    asked.sort_unstable();
    assert_eq!(
        servers, asked,
        "the two server sessions asked are every server session of the role"
    );
    for tx in pinned {
        tx.rollback().await.expect("gives the connection back");
    }
}

/// A follower polling a streaming replica sends its trips to the primary and sees the primary's
/// changes; when the replica stops replaying it falls behind and then catches up with everything;
/// when the replica goes away it runs on local state and resumes, missing nothing.
#[tokio::test]
async fn a_follower_on_a_replica_falls_behind_and_loses_it_and_misses_nothing() {
    let primary = Cluster::start().await;
    let db = primary.create_db().await;
    let app = primary.app_role(&db).await;
    let standby = Cluster::standby_of(&primary).await;
    let on_primary = primary.client(&db).await;
    let follower = Storage::connect_with(polling(
        PostgresOptions::from_dsn(&app.conninfo())
            .expect("parses")
            .listener_dsn(&format!("host=127.0.0.1 port={}", standby.port()))
            .expect("parses")
            .reconnect_backoff_max(Duration::from_millis(200)),
    ))
    .await
    .expect("connects");
    let lister = Storage::connect_with(PostgresOptions::from_dsn(&app.conninfo()).expect("parses"))
        .await
        .expect("connects");

    // The follower's own trip goes to the primary.
    let own = unique_key("own");
    let on_own = Watched::new(&follower, &own, trip_fast);
    fail(&on_own.cb).await;
    published(&follower).await;
    assert_eq!(row_state(&on_primary, &own).await.as_deref(), Some("OPEN"));

    // A trip on the primary reaches it through the replica.
    let first = unique_key("first");
    let mut seen_first = Watched::new(&follower, &first, trip_fast);
    let tripped = Instant::now();
    fail(&Watched::new(&lister, &first, trip_fast).cb).await;
    assert!(
        seen_first.reaches_within(State::Open, WAIT).await,
        "the replicated trip arrives"
    );
    let took = tripped.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the replicated trip took {took:?}"
    );

    // The replica stops replaying: the follower cannot see the next trip, and is not fooled
    // into thinking it is cut off (it still answers).
    standby.stop_receiving().await;
    let behind = unique_key("behind");
    let mut seen_behind = Watched::new(&follower, &behind, trip_fast);
    fail(&Watched::new(&lister, &behind, trip_fast).cb).await;
    published(&lister).await;
    assert!(
        !seen_behind.reaches_within(State::Open, EVERY * 10).await,
        "a replica that replays nothing shows nothing new"
    );
    standby.resume_receiving(&primary).await;
    assert!(
        seen_behind.reaches_within(State::Open, WAIT).await,
        "once the replica catches up, the change comes through"
    );

    // The replica goes away: the follower runs on local state, and a trip made meanwhile is
    // there when the replica is back.
    standby.stop().await;
    assert!(
        eventually(WAIT, || async { follower.is_degraded() }).await,
        "the follower notices the replica is gone"
    );
    let meanwhile = unique_key("meanwhile");
    let mut seen_meanwhile = Watched::new(&follower, &meanwhile, trip_fast);
    fail(&Watched::new(&lister, &meanwhile, trip_fast).cb).await;
    published(&lister).await;
    standby.start_again().await;
    assert!(
        seen_meanwhile.reaches_within(State::Open, WAIT).await,
        "the trip made while the replica was away arrives after it is back"
    );
    assert!(
        eventually(WAIT, || async { !follower.is_degraded() }).await,
        "the follower follows the replica again"
    );
}

/// Live configuration travels in the change log too: a polling instance (no reload for an hour)
/// gets a change, and its reset, within a few poll intervals of the commit.
#[tokio::test]
async fn live_configuration_reaches_a_polling_instance_through_the_change_log() {
    let db = test_db().await;
    let follower = Storage::connect_with(polling(options(&db).await))
        .await
        .expect("connects");
    let key = unique_key("configured");
    let w = Watched::new(&follower, &key, |b| b.cooldown(Duration::from_secs(60)));
    let app = as_app(&db.app_conninfo().await).await;
    let committed = Instant::now();
    app.execute(
        "SELECT FROM rc_configure('default', $1, p_cooldown_ms => 4000)",
        &[&key],
    )
    .await
    .expect("configures");
    assert!(
        eventually(WAIT, || async {
            w.cb.live_config()
                .is_some_and(|c| c.cooldown == Some(Duration::from_secs(4)))
        })
        .await,
        "the polling instance got the change"
    );
    let reached = committed.elapsed();
    eprintln!("MEASURED a live change reached a polling instance (every {EVERY:?}) {reached:?} after its commit");
    app.execute(
        "SELECT FROM rc_configure('default', $1, p_reset => true)",
        &[&key],
    )
    .await
    .expect("resets");
    assert!(
        eventually(WAIT, || async { w.cb.live_config().is_none() }).await,
        "the polling instance got the reset"
    );
}
