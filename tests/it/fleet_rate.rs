//! `TripPolicy::FleetRate` on real PostgreSQL, through the public API, as the application role:
//! the rate the database judges is the whole fleet's (every instance holding the key reports
//! once one reaches the limit, its healthy calls too), the shapes of fleets users meet open or
//! stay closed as their true rate says, the database opens the key at the minimum calls and not
//! before, no instance opens it alone, and a fleet under the limit sends no statement at all
//! (counted in the server's own log).

use std::time::Duration;

use resilient_circuit::{Builder, CircuitBreaker, Ratio, State, Storage, TripPolicy};

use crate::support::breakers::{fail, instance, options, row_state, Watched};
use crate::support::cluster::Cluster;
use crate::support::{test_db, unique_key};

use crate::support::WAIT;

/// Windows of 10 calls; the fleet opens at a 50% failure rate over at least `min_calls` calls.
fn fleet_rate(min_calls: u32) -> impl Fn(Builder) -> Builder {
    move |b| {
        b.failure_limit(Ratio::new(5, 10))
            .cooldown(Duration::from_secs(60))
            .trip_policy(TripPolicy::FleetRate {
                limit: Ratio::new(1, 2),
                min_calls,
                period: Duration::from_secs(60),
            })
    }
}

/// Ten failed calls on `w`, and its report answered.
async fn fail_ten(w: &Watched, storage: &Storage) {
    for _ in 0..10 {
        fail(&w.cb).await;
    }
    assert!(storage.flush(WAIT).await, "the report is answered");
}

/// Three instances whose windows are all failures, 30 calls needed: each instance keeps calling
/// (no instance opens the key alone), two reports (20 calls) leave it closed, the third opens it
/// everywhere, and the change log says the fleet's counts.
#[tokio::test]
async fn the_fleet_rate_trips_at_the_minimum_calls_and_not_before() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("rate");
    let mut storages = Vec::new();
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let s = instance(&db).await;
        fleet.push(Watched::new(&s, &key, fleet_rate(30)));
        storages.push(s);
    }
    for reporter in 0..2 {
        fail_ten(&fleet[reporter], &storages[reporter]).await;
        assert_eq!(
            row_state(&admin, &key).await,
            None,
            "{} calls: not yet",
            (reporter + 1) * 10
        );
        for (i, w) in fleet.iter().enumerate() {
            assert_eq!(w.cb.state(), State::Closed, "instance {i}");
        }
        assert!(
            fleet[reporter].cb.try_acquire().is_ok(),
            "a failing instance does not open the key alone"
        );
    }
    fail_ten(&fleet[2], &storages[2]).await;
    // The judgement began with the first report: the key opens on the next one due once a
    // reporting interval has passed (every instance told of the judgement has reported).
    assert!(
        crate::support::eventually(WAIT, || async {
            row_state(&admin, &key).await.as_deref() == Some("OPEN")
        })
        .await
    );
    for (i, w) in fleet.iter_mut().enumerate() {
        assert!(
            w.reaches(State::Open).await,
            "instance {i} follows the fleet"
        );
    }
    let why: serde_json::Value = admin
        .query_one(
            "SELECT why FROM rc_changes WHERE resource_key = $1 AND state = 'OPEN'",
            &[&key],
        )
        .await
        .expect("one change to OPEN")
        .get(0);
    let rate = &why["fleet_rate"];
    assert_eq!(rate["calls"], 30, "{why}");
    assert_eq!(rate["failures"], 30, "{why}");
    assert_eq!(rate["instances"], 3, "{why}");
    assert_eq!(rate["limit"], "1/2", "{why}");
    assert_eq!(rate["min_calls"], 30, "{why}");
}

/// One instance's calls count over the period, not only its last window: with windows of 10 and
/// 20 calls needed, 19 failed calls leave the key closed and the 20th opens it.
#[tokio::test]
async fn one_instance_reaches_the_minimum_over_the_period() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("alone-rate");
    let (a, b) = (instance(&db).await, instance(&db).await);
    let on_a = Watched::new(&a, &key, fleet_rate(20));
    let mut on_b = Watched::new(&b, &key, fleet_rate(20));
    for _ in 0..19 {
        fail(&on_a.cb).await;
    }
    assert!(a.flush(WAIT).await);
    assert_eq!(row_state(&admin, &key).await, None, "19 calls: not yet");
    assert!(on_a.cb.try_acquire().is_ok(), "still calling");
    fail(&on_a.cb).await;
    assert!(a.flush(WAIT).await);
    assert!(on_b.reaches(State::Open).await);
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
}

/// Each reporter's latest report counts (its calls and failures over its last period): reports
/// under the limit do not open the key, however many calls they add up to; a reporter's new
/// report replaces its old one; and the key opens once the fleet's rate reaches the limit, one
/// reporting interval after the judgement began. Read from the database directly, as the
/// application role.
#[tokio::test]
async fn the_rate_must_reach_the_limit() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let app = db.app_client().await;
    let key = unique_key("limit");
    let report = |reporter: &'static str, failures: i64| {
        let (app, key) = (&app, key.clone());
        async move {
            let row = app
                .query_one(
                    "SELECT o_state, o_fleet_failures, o_fleet_calls, o_judged_ms, o_error
                     FROM rc_report_rates('default', $1, 100, ARRAY[$2], ARRAY[$3::bigint],
                         ARRAY[10::bigint], ARRAY[1], ARRAY[2], ARRAY[20], ARRAY[60000::bigint],
                         ARRAY[60000::bigint])",
                    &[&reporter, &key, &failures],
                )
                .await
                .expect("a report");
            let error: Option<String> = row.get(4);
            assert_eq!(error, None);
            (
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
                row.get::<_, i64>(3),
            )
        }
    };
    let (state, failures, calls, judged) = report("a", 4).await;
    assert_eq!((state.as_str(), failures, calls), ("CLOSED", 4, 10));
    assert_eq!(judged, 0, "4/10 is under the limit: no judgement");
    let (state, failures, calls, judged) = report("b", 6).await;
    assert_eq!(
        (state.as_str(), failures, calls),
        ("CLOSED", 10, 20),
        "10/20, but the judgement just began"
    );
    assert!(
        judged > 59_000,
        "6/10 began a judgement of a period: {judged} ms left"
    );
    let (state, failures, calls, _) = report("c", 1).await;
    assert_eq!(
        (state.as_str(), failures, calls),
        ("CLOSED", 11, 30),
        "11/30 < 1/2"
    );
    let (state, failures, calls, _) = report("c", 2).await;
    assert_eq!(
        (state.as_str(), failures, calls),
        ("CLOSED", 12, 30),
        "c's new report replaces its old one: 12/30 < 1/2"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // past the reporting interval (100 ms)
    let (state, failures, calls, _) = report("d", 10).await;
    assert_eq!(
        (state.as_str(), failures, calls),
        ("OPEN", 22, 40),
        "22/40 >= 1/2"
    );
    // Bad reports: each answered with its error, as the batch does for one bad element.
    for (failures, calls, says) in [(3i64, 2i64, "failures <= calls"), (0, 0, "at least 1 call")] {
        let error = app
            .query_one(
                "SELECT o_error FROM rc_report_rates('default', 'i', 100, ARRAY['k'],
                     ARRAY[$1::bigint], ARRAY[$2::bigint], ARRAY[1], ARRAY[2], ARRAY[20],
                     ARRAY[60000::bigint], ARRAY[60000::bigint])",
                &[&failures, &calls],
            )
            .await
            .expect("answers")
            .get::<_, Option<String>>(0);
        assert!(
            error.as_deref().is_some_and(|e| e.contains(says)),
            "{failures} of {calls}: {error:?}"
        );
    }
}

/// Calls on `cb`, `calls` of them, failing `per_mille` in a thousand evenly (no prefix of the
/// run fails at a higher rate than the whole).
pub(crate) async fn run(cb: &CircuitBreaker, calls: u64, per_mille: u64) -> u64 {
    let mut failures = 0;
    for j in 1..=calls {
        let fails = (j * per_mille) / 1000 > ((j - 1) * per_mille) / 1000;
        failures += u64::from(fails);
        let _ = cb
            .call(|| async move {
                if fails {
                    Err(())
                } else {
                    Ok(())
                }
            })
            .await;
    }
    failures
}

/// A fleet whose every instance stays under the limit sends nothing at all: the server's own
/// log of every statement, by application, shows none from any instance while three of them
/// call and fail at 2% under a 5% limit (heartbeats and periodic reloads, which are not about
/// keys, set an hour apart). One instance failing at 50% then reports at most once per interval
/// (and once at once when told of the judgement), and the two others, told the fleet judges the
/// key, report their healthy calls too.
#[tokio::test]
async fn a_fleet_under_the_limit_sends_no_statement() {
    let cluster = Cluster::start_with(&[
        ("log_statement".to_owned(), "all".to_owned()),
        ("log_line_prefix".to_owned(), "%a|".to_owned()),
    ])
    .await;
    let db = cluster.test_db().await;
    let key = unique_key("quiet");
    let interval = Duration::from_millis(500);
    let hour = Duration::from_secs(3600);
    let mut storages = Vec::new();
    for i in 0..3 {
        let dsn = format!("{} application_name=rc-fleet-{i}", db.app_conninfo().await);
        storages.push(
            Storage::connect_with(
                resilient_circuit::storage::postgres::PostgresOptions::from_dsn(&dsn)
                    .expect("dsn")
                    .instance_name(unique_key("pod"))
                    .fleet_rate_interval(interval)
                    .heartbeat_interval(hour)
                    .reconcile_interval(hour),
            )
            .await
            .expect("connects"),
        );
    }
    let fleet: Vec<CircuitBreaker> = storages
        .iter()
        .map(|s| {
            CircuitBreaker::builder(&key)
                .storage(s.clone())
                .failure_limit(Ratio::new(5, 10))
                .trip_policy(TripPolicy::FleetRate {
                    limit: Ratio::new(1, 20),
                    min_calls: 100,
                    period: Duration::from_secs(60),
                })
                .build()
                .expect("valid")
        })
        .collect();
    let from = cluster.log().len();
    let statements_of = |app: &str| {
        cluster.log()[from..]
            .lines()
            .filter(|l| l.starts_with(&format!("{app}|")))
            .filter(|l| l.contains("statement: ") || l.contains("execute "))
            .count()
    };
    let started = std::time::Instant::now();
    let mut failed = 0;
    while started.elapsed() < interval * 4 {
        for cb in &fleet {
            failed += run(cb, 50, 20).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in &storages {
        assert!(s.flush(WAIT).await);
    }
    assert!(failed > 0, "the fleet failed some calls");
    let sent: Vec<usize> = (0..3)
        .map(|i| statements_of(&format!("rc-fleet-{i}")))
        .collect();
    assert_eq!(
        sent,
        [0, 0, 0],
        "statements sent by a fleet at 2% under a 5% limit"
    );

    let started = std::time::Instant::now();
    while started.elapsed() < interval * 4 {
        run(&fleet[0], 20, 500).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failing_for = started.elapsed();
    assert!(storages[0].flush(WAIT).await);
    let reports = |i: usize| {
        cluster.log()[from..]
            .lines()
            .filter(|l| l.starts_with(&format!("rc-fleet-{i}|")))
            .filter(|l| l.contains("rc_report_rates("))
            .count()
    };
    let by_failing = reports(0);
    eprintln!(
        "the failing instance sent {by_failing} reports in {failing_for:?} (interval {interval:?})"
    );
    let at_most = (failing_for.as_millis() / interval.as_millis()) as usize + 3;
    assert!(
        (1..=at_most).contains(&by_failing),
        "{by_failing} reports in {failing_for:?} at one per {interval:?} (and one when told) at most"
    );
    assert!(
        crate::support::eventually(WAIT, || async { reports(1) > 0 && reports(2) > 0 }).await,
        "the healthy instances, told the fleet judges the key, report their calls too"
    );
}

/// Alone (in memory, as while the database is unreachable), a fleet rate breaker judges its own
/// window by the same rule: the rate over at least `min_calls` calls.
#[test]
fn alone_the_window_is_the_fleet() {
    let cb = fleet_rate(4)(CircuitBreaker::builder("alone").storage(Storage::in_memory()))
        .build()
        .expect("valid");
    let fail = || cb.try_acquire().expect("closed").failure();
    cb.try_acquire().expect("closed").success();
    fail();
    fail();
    assert_eq!(cb.state(), State::Closed, "3 calls < min_calls");
    fail();
    assert_eq!(cb.state(), State::Open, "3 failures of 4 calls >= 1/2");
}

/// Cut off from the database, a fleet-rate breaker judges its own window and stops its own
/// calls; back online, it does not publish that judgement as a trip: only the fleet's rate opens
/// the key for everyone.
#[tokio::test]
async fn an_instance_alone_does_not_open_the_key_when_it_is_back() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("offline-rate");
    let proxy = crate::support::Proxy::start(db.addr()).await;
    let behind = Storage::connect_with(
        resilient_circuit::storage::postgres::PostgresOptions::from_dsn(
            &db.app_conninfo_via(proxy.addr()).await,
        )
        .expect("dsn")
        .instance_name(unique_key("instance")),
    )
    .await
    .expect("connects through the proxy");
    let other = instance(&db).await;
    let cut_off = Watched::new(&behind, &key, fleet_rate(4));
    let on_other = Watched::new(&other, &key, fleet_rate(4));
    proxy.set_mode(crate::support::Mode::Cut);
    assert!(crate::support::eventually(WAIT, || async { behind.is_degraded() }).await);
    for _ in 0..4 {
        fail(&cut_off.cb).await;
    }
    assert_eq!(
        cut_off.cb.state(),
        State::Open,
        "alone, its own window decides"
    );
    proxy.set_mode(crate::support::Mode::Pass);
    assert!(crate::support::eventually(WAIT, || async { !behind.is_degraded() }).await);
    assert!(behind.flush(WAIT).await);
    assert_eq!(row_state(&admin, &key).await, None, "nothing was published");
    assert_eq!(on_other.cb.state(), State::Closed);
    assert!(on_other.cb.try_acquire().is_ok());
}

/// `n` instances on `db`, each reporting every `interval`, with a breaker of `key` (watched) that
/// judges the fleet's rate against `limit` over at least `min_calls` calls in a minute.
async fn fleet_of(
    db: &crate::support::TestDb,
    n: usize,
    key: &str,
    limit: Ratio,
    min_calls: u32,
    interval: Duration,
) -> (Vec<Storage>, Vec<Watched>) {
    let mut storages = Vec::new();
    let mut breakers = Vec::new();
    for _ in 0..n {
        let s = Storage::connect_with(options(db).await.fleet_rate_interval(interval))
            .await
            .expect("connects");
        breakers.push(Watched::new(&s, key, |b| {
            b.failure_limit(Ratio::new(5, 10))
                .cooldown(Duration::from_secs(60))
                .trip_policy(TripPolicy::FleetRate {
                    limit,
                    min_calls,
                    period: Duration::from_secs(60),
                })
        }));
        storages.push(s);
    }
    (storages, breakers)
}

/// The live reports of `key` as the database holds them: (reporters, failures, calls).
async fn judged_counts(admin: &tokio_postgres::Client, key: &str) -> (i64, i64, i64) {
    let r = admin
        .query_one(
            "SELECT count(*), coalesce(sum(failures), 0)::bigint, coalesce(sum(calls), 0)::bigint
             FROM rc_rate_reports WHERE resource_key = $1 AND expires_at > now()",
            &[&key],
        )
        .await
        .expect("reads the reports");
    (r.get(0), r.get(1), r.get(2))
}

/// Every instance of `storages` reports what is due now, after every one has heard of a
/// judgement that began (a commit-order barrier on the notifications), and again.
async fn all_report(admin: &tokio_postgres::Client, storages: &[Storage]) {
    for s in storages {
        assert!(s.flush(WAIT).await);
    }
    let all: Vec<&Storage> = storages.iter().collect();
    assert!(crate::support::breakers::caught_up(admin, &all, WAIT).await);
    for s in storages {
        assert!(s.flush(WAIT).await);
    }
}

/// Ten instances with the same traffic, one failing half its calls and nine healthy, under a
/// limit of one in ten: the fleet's rate is 5%, and the key stays CLOSED. Every instance
/// reported once the failing one began the judgement, and the database's sums are the fleet's
/// calls and failures exactly. (Judging only the instances that fail, it saw 50% and opened.)
#[tokio::test]
async fn nine_healthy_instances_keep_one_failing_half_under_a_tenth() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("one-sick");
    let interval = Duration::from_millis(200);
    let (storages, fleet) = fleet_of(&db, 10, &key, Ratio::new(1, 10), 50, interval).await;
    for w in &fleet[1..] {
        run(&w.cb, 100, 0).await;
    }
    let failures = run(&fleet[0].cb, 100, 500).await;
    assert_eq!(failures, 50);
    all_report(&admin, &storages).await;
    assert_eq!(
        judged_counts(&admin, &key).await,
        (10, 50, 1000),
        "the whole fleet, exactly"
    );
    // Past the judgement's first interval, the failing instance's next reports judge the fleet.
    tokio::time::sleep(interval * 3).await; // reports due at the interval: time, not an event
    assert!(storages[0].flush(WAIT).await);
    assert_eq!(
        row_state(&admin, &key).await,
        None,
        "5% of the fleet is under 10%"
    );
    for w in &fleet {
        assert_eq!(w.cb.state(), State::Closed);
    }
}

/// Three instances failing 2% of their calls under a 5% limit: none reaches the limit, none
/// reports, and the key stays CLOSED; three failing 8% open it on every instance within two
/// reporting intervals (one to begin the judgement and hear the fleet, one to judge), plus
/// propagation.
#[tokio::test]
async fn three_at_two_percent_stay_closed_and_three_at_eight_open_everywhere() {
    let db = test_db().await;
    let admin = db.client().await;
    let interval = Duration::from_millis(300);
    let calm = unique_key("two-percent");
    let (storages, fleet) = fleet_of(&db, 3, &calm, Ratio::new(1, 20), 100, interval).await;
    for w in &fleet {
        assert_eq!(run(&w.cb, 200, 20).await, 4);
    }
    all_report(&admin, &storages).await;
    assert_eq!(
        judged_counts(&admin, &calm).await,
        (0, 0, 0),
        "nobody reported"
    );
    assert_eq!(row_state(&admin, &calm).await, None);

    let sick = unique_key("eight-percent");
    let (_storages, mut fleet) = fleet_of(&db, 3, &sick, Ratio::new(1, 20), 100, interval).await;
    for w in &fleet {
        assert_eq!(run(&w.cb, 100, 80).await, 8);
    }
    let done = std::time::Instant::now();
    for (i, w) in fleet.iter_mut().enumerate() {
        assert!(
            w.reaches(State::Open).await,
            "instance {i} follows the fleet"
        );
    }
    let took = done.elapsed();
    eprintln!(
        "8% under 5%: open on every instance {took:?} after the last call (interval {interval:?})"
    );
    assert!(
        took < interval * 2 + Duration::from_secs(1),
        "{took:?} for two intervals of {interval:?} and propagation"
    );
    let why: serde_json::Value = admin
        .query_one(
            "SELECT why FROM rc_changes WHERE resource_key = $1 AND state = 'OPEN'",
            &[&sick],
        )
        .await
        .expect("the opening")
        .get(0);
    assert_eq!(why["fleet_rate"]["instances"], 3, "{why}");
}

/// One instance with all the traffic and the others idle: the idle ones have nothing to report,
/// and the busy one's rate is the fleet's: it opens the key once past the minimum.
#[tokio::test]
async fn one_instance_with_all_the_traffic_is_the_fleet() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("busy");
    let interval = Duration::from_millis(200);
    let (storages, mut fleet) = fleet_of(&db, 4, &key, Ratio::new(1, 10), 50, interval).await;
    run(&fleet[0].cb, 100, 200).await;
    all_report(&admin, &storages).await;
    assert_eq!(
        judged_counts(&admin, &key).await,
        (1, 20, 100),
        "only the busy one reports"
    );
    assert!(
        fleet[3].reaches(State::Open).await,
        "20% of 100 calls opens the key for everyone"
    );
}

/// An instance that joins mid-period counts from its start, even when the judgement began
/// before its breaker was built, and instances with different windows and reporting intervals
/// add up: the fleet's rate is the sum of what each saw.
#[tokio::test]
async fn instances_joining_late_or_configured_apart_add_up() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("mixed");
    let limit = Ratio::new(1, 4);
    let policy = |s: &Storage, window: u32| {
        CircuitBreaker::builder(&key)
            .storage(s.clone())
            .failure_limit(Ratio::new(1, window))
            .trip_policy(TripPolicy::FleetRate {
                limit,
                min_calls: 1000,
                period: Duration::from_secs(60),
            })
            .build()
            .expect("valid")
    };
    let mut storages = Vec::new();
    for interval in [150, 400] {
        storages.push(
            Storage::connect_with(
                options(&db)
                    .await
                    .fleet_rate_interval(Duration::from_millis(interval)),
            )
            .await
            .expect("connects"),
        );
    }
    let a = policy(&storages[0], 10);
    let b = policy(&storages[1], 100);
    run(&a, 100, 500).await;
    run(&b, 300, 100).await;
    // The judgement has begun before the late instance connects: it learns of it in its load,
    // before its breaker exists, and that breaker reports all the same.
    assert!(
        crate::support::eventually(WAIT, || async {
            admin
                .query(
                    "SELECT 1 FROM rc_judgements WHERE resource_key = $1 \
                     AND judged_until > clock_timestamp()",
                    &[&key],
                )
                .await
                .is_ok_and(|rows| !rows.is_empty())
        })
        .await,
        "a's window began the fleet's judgement"
    );
    let late = Storage::connect_with(
        options(&db)
            .await
            .fleet_rate_interval(Duration::from_millis(250)),
    )
    .await
    .expect("joins");
    let c = policy(&late, 1000);
    run(&c, 50, 0).await;
    storages.push(late);
    all_report(&admin, &storages).await;
    assert_eq!(
        judged_counts(&admin, &key).await,
        (3, 50 + 30, 100 + 300 + 50),
        "every instance's calls, whatever its window, interval or start"
    );
}

/// Fleets of two to six instances with random call volumes and failure rates (seeded, printed):
/// the database's sums are the fleet's calls and failures exactly once every instance reported,
/// and its verdict is the true rate's: the key opens if and only if the fleet's rate reaches
/// the limit over the minimum calls. (With no instance at the limit nobody reports, and the
/// fleet, whose rate is an average of theirs, is under it.)
#[tokio::test]
async fn the_judged_rate_is_the_fleets_rate() {
    let db = test_db().await;
    let admin = db.client().await;
    // Long enough that every call of a case is made before an instance's first periodic report,
    // and the sums are read before the judgement's first interval ends.
    let interval = Duration::from_secs(1);
    let mut seed: u64 = std::env::var("RC_FLEET_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f1ee7);
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for case in 0..6 {
        let n = 2 + next(5) as usize;
        let shapes: Vec<(u64, u64)> = (0..n).map(|_| (20 + next(180), next(600))).collect();
        let key = unique_key(&format!("model-{case}"));
        let (storages, mut fleet) = fleet_of(&db, n, &key, Ratio::new(1, 4), 150, interval).await;
        let (mut calls, mut failures) = (0u64, 0u64);
        for (w, (c, per_mille)) in fleet.iter().zip(&shapes) {
            failures += run(&w.cb, *c, *per_mille).await;
            calls += c;
        }
        let any_at_limit = shapes.iter().any(|(c, pm)| {
            let f = (c * pm) / 1000;
            f > 0 && f * 4 >= *c
        });
        let opens = failures * 4 >= calls && calls >= 150;
        eprintln!("case {case}: {shapes:?} -> {failures}/{calls}, opens: {opens}");
        all_report(&admin, &storages).await;
        if any_at_limit {
            let (_, f, c) = judged_counts(&admin, &key).await;
            assert_eq!(
                (f as u64, c as u64),
                (failures, calls),
                "case {case}: the fleet's sums"
            );
        } else {
            assert!(
                !opens,
                "case {case}: no instance at the limit, so neither is the fleet"
            );
            assert_eq!(judged_counts(&admin, &key).await, (0, 0, 0), "case {case}");
        }
        if opens {
            assert!(fleet[0].reaches(State::Open).await, "case {case} opens");
        } else {
            tokio::time::sleep(interval * 3).await; // reports due at the interval: time, not an event
            for s in &storages {
                assert!(s.flush(WAIT).await);
            }
            assert_eq!(
                row_state(&admin, &key).await,
                None,
                "case {case} stays closed"
            );
        }
    }
}

/// A report counts for three of its reporter's intervals (a reporter that stopped, or died,
/// drops out of the sum), and every report of a key is spent by a close or a delete of it.
#[tokio::test]
async fn reports_expire_and_are_spent_by_a_close_or_a_delete() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let app = db.app_client().await;
    let admin = db.client().await;
    let report = |reporter: &'static str, key: String| {
        let app = &app;
        async move {
            app.query_one(
                "SELECT o_fleet_calls FROM rc_report_rates('default', $1, 100, ARRAY[$2],
                     ARRAY[5::bigint], ARRAY[10::bigint], ARRAY[1], ARRAY[2], ARRAY[1000],
                     ARRAY[60000::bigint], ARRAY[60000::bigint])",
                &[&reporter, &key],
            )
            .await
            .expect("a report")
            .get::<_, i64>(0)
        }
    };
    let key = unique_key("expiring");
    assert_eq!(report("a", key.clone()).await, 10);
    assert_eq!(report("b", key.clone()).await, 20, "two live reports");
    tokio::time::sleep(Duration::from_millis(350)).await; // three intervals of 100 ms: a time
    assert_eq!(
        report("c", key.clone()).await,
        10,
        "a's and b's reports expired"
    );
    for spend in [
        "SELECT 1 FROM rc_force('default', $1, 'CLOSED', 0)",
        "SELECT 1 FROM rc_delete('default', $1)",
    ] {
        let key = unique_key("spent");
        report("a", key.clone()).await;
        report("b", key.clone()).await;
        app.execute(spend, &[&key]).await.expect("spends");
        let (reporters, _, _) = judged_counts(&admin, &key).await;
        assert_eq!(reporters, 0, "{spend} spent the reports");
        assert_eq!(report("c", key).await, 10, "after {spend}, c is alone");
    }
}
