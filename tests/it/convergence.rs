//! Who wins, and convergence: a stale decision never replays over a later one (a trip decided
//! while cut off, a notification overtaking an override's answer), overrides are retried until
//! the table has them, no held state outlives its reason, and a fleet doing everything at once
//! converges on the table: every instance agrees with every row after a close of every key and
//! after an open of every key.

use std::time::Duration;

use resilient_circuit::{Ratio, State, Storage, TripPolicy};

use crate::cli::ok;
use crate::support::breakers::{
    behind, caught_up, fail, instance, options, pool_behind, row_state, trip_fast, Watched, REACH,
};
use crate::support::{eventually, test_db, unique_key, Mode, Proxy, WAIT};

/// A quorum of two within a minute, tripping on every failure, resting `cooldown`.
fn quorum(b: resilient_circuit::Builder, cooldown: Duration) -> resilient_circuit::Builder {
    b.failure_limit(Ratio::new(1, 1))
        .cooldown(cooldown)
        .trip_policy(TripPolicy::Quorum {
            instances: 2,
            within: Duration::from_secs(60),
        })
}

async fn named(db: &crate::support::TestDb) -> Storage {
    Storage::connect_with(options(db).await.instance_name(unique_key("pod")))
        .await
        .expect("connects")
}

/// The interleaving of issue 28: an instance whose vote fell short of its quorum holds the key
/// OPEN for its cooldown while the row stays CLOSED. An operator's `close` of that key changes
/// nothing in the row (it is CLOSED already), and used to change no version, so no instance
/// heard it and the voter stayed OPEN until a call of its own asked the database. A decree now
/// always takes a new version: every instance hears it and ends its hold at once.
#[tokio::test]
async fn an_operators_close_ends_a_vote_held_short_of_its_quorum() {
    let db = test_db().await;
    let voter = named(&db).await;
    let key = unique_key("held");
    let operator = db.app_conninfo().await;
    // The key has a CLOSED row (an earlier close), which the voter heard.
    ok(&operator, &["close", &key]).await;
    let admin = db.client().await;
    assert!(crate::support::breakers::caught_up(&admin, &[&voter], Duration::from_secs(10)).await);
    let mut watched = Watched::new(&voter, &key, |b| quorum(b, Duration::from_secs(600)));
    fail(&watched.cb).await;
    assert!(
        watched.reaches(State::Open).await,
        "the voter stops its own calls"
    );
    assert!(
        voter.flush(Duration::from_secs(10)).await,
        "its vote was counted"
    );
    assert_eq!(
        crate::support::breakers::row_state(&admin, &key)
            .await
            .as_deref(),
        Some("CLOSED"),
        "one vote of two: the row stays CLOSED"
    );
    ok(&operator, &["close", &key]).await;
    assert!(
        watched.reaches(State::Closed).await,
        "the operator's close reached the voter"
    );
    assert!(watched.cb.try_acquire().is_ok(), "and its calls run again");
}

/// A hold that ends with no new row (a vote short of its quorum, whose cooldown passes) shows the
/// table's state again by itself: the cell closes at the end of its cooldown, before any call.
#[tokio::test]
async fn a_hold_ends_with_its_cooldown_without_waiting_for_a_call() {
    let db = test_db().await;
    let voter = named(&db).await;
    let key = unique_key("expiring");
    let mut watched = Watched::new(&voter, &key, |b| quorum(b, Duration::from_millis(300)));
    fail(&watched.cb).await;
    assert!(watched.reaches(State::Open).await);
    let started = std::time::Instant::now();
    assert!(
        watched
            .reaches_within(State::Closed, Duration::from_secs(3))
            .await,
        "the hold ended with its cooldown"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before its cooldown: {:?}",
        started.elapsed()
    );
}

/// Every test the precedence rule table (`src/fleet/precedence.rs`) cites exists, so
/// the table never points a reader at a claim nobody checks.
#[test]
fn every_test_the_rule_table_cites_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let table = std::fs::read_to_string(format!("{root}/src/fleet/precedence.rs"))
        .expect("reads precedence.rs");
    let mut cited = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("//! |")) {
        let last = line.rsplit('|').nth(1).unwrap_or("");
        for name in last.split('`').skip(1).step_by(2) {
            cited.push(name.to_owned());
        }
    }
    assert!(cited.len() >= 10, "the table cites {cited:?}");
    for name in &cited {
        let (module, test) = name.rsplit_once("::").expect("module::test");
        let file = match module {
            "precedence::tests" => format!("{root}/src/fleet/precedence_tests.rs"),
            "cell::fleet::tests" => format!("{root}/src/cell/fleet_tests.rs"),
            m => format!("{root}/tests/it/{m}.rs"),
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
        assert!(
            text.contains(&format!("fn {test}(")),
            "{name}, cited by the rule table, is not a test in {file}"
        );
    }
}

fn bound_wait() -> Duration {
    Duration::from_secs(10)
}

/// How long the traffic of [`everything_at_once_converges`] runs: `RC_CONVERGENCE_SECS`, else
/// 25 s.
fn convergence_secs() -> u64 {
    std::env::var("RC_CONVERGENCE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}

/// A small random number generator (xorshift), seeded per task: reproducible enough to print.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// What every instance believes of every key, against the table, until they agree (at most
/// `within`): the keys on which some instance still disagrees, with what it believes.
async fn disagreements(
    admin: &tokio_postgres::Client,
    instances: &[Storage],
    keys: &[String],
    within: Duration,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let rows = admin
            .query(
                "SELECT resource_key, state FROM rc_circuit_breakers WHERE resource_key = ANY($1)",
                &[&keys],
            )
            .await
            .expect("reads the table");
        let table: std::collections::HashMap<String, String> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut wrong = Vec::new();
        for key in keys {
            let want = table.get(key).map_or("CLOSED", String::as_str);
            for (i, s) in instances.iter().enumerate() {
                let got = s.state_of(key).unwrap_or(State::Closed);
                if got.as_str() != want {
                    wrong.push(format!(
                        "{key}: instance {i} believes {got}, the row says {want}"
                    ));
                }
            }
        }
        if wrong.is_empty() || std::time::Instant::now() >= deadline {
            return wrong;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Four instances, thirty keys (ten of each trip policy), random outcomes whose failure rate
/// changes every few seconds, an operator changing live configurations and forcing states every
/// 150 ms, and plain SQL writers setting rows OPEN or CLOSED and deleting CLOSED rows, all at
/// once for `RC_CONVERGENCE_SECS` (25 s). Then the traffic stops, every configuration is reset and
/// every key closed: within five seconds every instance agrees with the table on every key, and
/// nothing is pending; the same after every key is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_at_once_converges() {
    let db = test_db().await;
    let operator = db.app_conninfo().await;
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(named(&db).await);
    }
    let prefix = unique_key("mix");
    let keys: Vec<String> = (0..30).map(|i| format!("{prefix}-{i}")).collect();
    let policy = |i: usize| match i / 10 {
        0 => TripPolicy::AnyInstance,
        1 => TripPolicy::Quorum {
            instances: 2,
            within: Duration::from_secs(10),
        },
        _ => TripPolicy::FleetRate {
            limit: Ratio::new(1, 2),
            min_calls: 20,
            period: Duration::from_secs(10),
        },
    };
    let mut breakers = Vec::new();
    for s in &instances {
        let mine: Vec<resilient_circuit::CircuitBreaker> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                resilient_circuit::CircuitBreaker::builder(k)
                    .storage(s.clone())
                    .failure_limit(Ratio::new(3, 5))
                    .cooldown(Duration::from_millis(300))
                    .trip_policy(policy(i))
                    .build()
                    .expect("valid")
            })
            .collect();
        breakers.push(mine);
    }
    let secs = convergence_secs();
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (n, mine) in breakers.iter().enumerate() {
        let mine = mine.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
            let mut calls = 0u64;
            while std::time::Instant::now() < until {
                // 80%, 30% and 2% failures in turn, three seconds each, counted back from the
                // end, so that the last seconds fail most and leave fresh holds and votes behind.
                let left = until
                    .saturating_duration_since(std::time::Instant::now())
                    .as_secs();
                let percent = [80, 30, 2][((left / 3) % 3) as usize];
                for cb in &mine {
                    let fails = rng.below(100) < percent;
                    let _ = cb
                        .call(|| async move {
                            if fails {
                                Err("down")
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                    calls += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            calls
        }));
    }
    let op_keys = keys.clone();
    let op_dsn = operator.clone();
    tasks.push(tokio::spawn(async move {
        let c = crate::support::connect_to(&op_dsn).await;
        let mut rng = Rng(0xdead_beef);
        let mut done = 0u64;
        while std::time::Instant::now() < until {
            let key = &op_keys[rng.below(op_keys.len() as u64) as usize];
            let sql = match rng.below(6) {
                0 => "SELECT 1 FROM rc_configure('default', $1, p_cooldown_ms => 500)",
                1 => "SELECT 1 FROM rc_configure('default', $1, 'metrics_only')",
                2 => "SELECT 1 FROM rc_configure('default', $1, 'disabled')",
                3 => "SELECT 1 FROM rc_configure('default', $1, p_reset => true)",
                4 => "SELECT 1 FROM rc_force('default', $1, 'OPEN', 1000)",
                _ => "SELECT 1 FROM rc_force('default', $1, 'CLOSED', 0)",
            };
            // A refusal (a key forced open) is an answer too.
            let _ = c.execute(sql, &[key]).await;
            done += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        done
    }));
    let sql_keys = keys.clone();
    let sql_dsn = db.app_conninfo().await;
    tasks.push(tokio::spawn(async move {
        let c = crate::support::connect_to(&sql_dsn).await;
        let mut rng = Rng(0x1234_5678);
        let mut done = 0u64;
        while std::time::Instant::now() < until {
            let key = &sql_keys[rng.below(sql_keys.len() as u64) as usize];
            let sql = match rng.below(3) {
                0 => {
                    "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) \
                      VALUES ($1, 'OPEN', now() + interval '1 second') \
                      ON CONFLICT (resource_key, namespace) DO UPDATE \
                      SET state = 'OPEN', open_until = EXCLUDED.open_until"
                }
                1 => {
                    "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL \
                      WHERE resource_key = $1"
                }
                _ => "DELETE FROM rc_circuit_breakers WHERE state = 'CLOSED' AND resource_key = $1",
            };
            let _ = c.execute(sql, &[key]).await;
            done += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done
    }));
    let mut totals = Vec::new();
    for t in tasks {
        totals.push(t.await.expect("task"));
    }
    eprintln!(
        "{secs} s: calls per instance and writes by the operator and SQL writers: {totals:?}"
    );

    let c = crate::support::connect_to(&operator).await;
    for key in &keys {
        c.execute(
            "SELECT 1 FROM rc_configure('default', $1, p_reset => true)",
            &[key],
        )
        .await
        .expect("resets");
    }
    // The live configurations are gone everywhere before the breakers are judged again.
    assert!(
        crate::support::breakers::caught_up(
            &db.client().await,
            &instances.iter().collect::<Vec<_>>(),
            bound_wait()
        )
        .await
    );
    let bound = Duration::from_secs(5);
    let admin = db.client().await;
    let force_all = |state: &'static str, cooldown: i64| {
        let c = &c;
        let keys = &keys;
        async move {
            for key in keys {
                c.execute(
                    "SELECT 1 FROM rc_force('default', $1, $2, $3)",
                    &[key, &state, &cooldown],
                )
                .await
                .expect("forces");
            }
        }
    };
    let agree = |after: &'static str| {
        let (admin, instances, keys) = (&admin, &instances, &keys);
        async move {
            let wrong = disagreements(admin, instances, keys, bound).await;
            assert!(
                wrong.is_empty(),
                "after {after}, {} disagreements remain after {bound:?}: {wrong:#?}",
                wrong.len()
            );
            for s in instances {
                assert!(
                    s.flush(bound).await,
                    "publications pending: {}",
                    s.pending_publications()
                );
            }
        }
    };
    force_all("CLOSED", 0).await;
    agree("a close of every key").await;
    // Votes short of their quorum, on rows that are CLOSED: one instance fails each quorum key
    // alone, holds it OPEN, and the operator closes every key again.
    for (j, key) in keys.iter().enumerate().skip(10).take(10) {
        let cb = &breakers[j % instances.len()][j];
        for _ in 0..5 {
            let _ = cb.call(|| async { Err::<(), _>("down") }).await;
        }
        assert_eq!(cb.state(), State::Open, "{key}: the lone voter holds it");
    }
    force_all("CLOSED", 0).await;
    agree("a close of every key, with votes held short of their quorum").await;
    force_all("OPEN", 600_000).await;
    agree("an open of every key").await;
}

/// A trips K while cut off; B trips K and then closes it (two newer versions);
/// When A's path heals, A's stale trip must lose to the close: K stays CLOSED on A, on B and in
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

/// While A's override is on its way (A's pool is slow), B trips the key after
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

/// Overrides are retried until the database takes them (a cut path does not lose
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

/// The versions of a key follow commit order even when a row arrives under a key another
/// transaction has inserted and not committed: the upsert waits out that transaction, which
/// deletes the key, and must take its version after the delete's. A version taken before the
/// wait would be older than the delete's while committing after it, and every follower would
/// drop the newer row as stale (a polling one for good).
#[tokio::test]
async fn an_upsert_that_waits_out_an_uncommitted_insert_is_versioned_after_it() {
    let db = test_db().await;
    let listener = instance(&db).await;
    let poller = Storage::connect_with(
        options(&db)
            .await
            .follow(resilient_circuit::storage::postgres::Follow::Poll)
            .poll_interval(Duration::from_millis(20)),
    )
    .await
    .expect("connects");
    let key = unique_key("waits-out");
    let on_listener = Watched::new(&listener, &key, |b| b);
    let on_poller = Watched::new(&poller, &key, |b| b);
    let insert = "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) \
                  VALUES ($1, 'OPEN', now() + interval '1 hour')";
    let mut first = db.client().await;
    let first = first.transaction().await.expect("a transaction");
    first
        .execute(insert, &[&key])
        .await
        .expect("the first insert");
    let upserter = db.client().await;
    let pid: i32 = upserter
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let k = key.clone();
    let upsert = tokio::spawn(async move {
        upserter
            .query_one(
                &format!(
                    "{insert} ON CONFLICT (resource_key, namespace) DO UPDATE \
                     SET state = 'OPEN', open_until = EXCLUDED.open_until RETURNING version"
                ),
                &[&k],
            )
            .await
            .expect("the upsert")
            .get::<_, i64>(0)
    });
    let admin = db.client().await;
    let waiting = eventually(WAIT, || async {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&pid],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
    assert!(waiting, "the upsert waits for the first transaction");
    first
        .execute(
            "DELETE FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("the delete");
    first.commit().await.expect("commit");
    let upserted = upsert.await.expect("the upsert's task");
    let logged: Vec<(i64, String)> = admin
        .query(
            "SELECT version, state::text FROM rc_changes WHERE resource_key = $1 ORDER BY at",
            &[&key],
        )
        .await
        .expect("the change log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let versions: Vec<i64> = logged.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]) && versions.last() == Some(&upserted),
        "the log, in commit order, has rising versions ending with the upsert's ({upserted}): {logged:?}"
    );
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert!(caught_up(&admin, &[&listener, &poller], WAIT).await);
    assert_eq!(
        on_listener.cb.state(),
        State::Open,
        "the listening instance"
    );
    assert_eq!(on_poller.cb.state(), State::Open, "the polling instance");
}
