//! `TripPolicy::FleetRate` on real PostgreSQL, through the public API, as the application role:
//! the database opens the key when the fleet's reports reach the minimum number of calls at the
//! limit, and not before; no instance opens it alone; a healthy fleet sends no statement (counted
//! in the server's own statement log); a failing instance reports at most once per interval.

use std::time::Duration;

use resilient_circuit::{Builder, CircuitBreaker, Ratio, State, Storage, TripPolicy};

use crate::support::breakers::{fail, instance, options, row_state, Watched};
use crate::support::cluster::Cluster;
use crate::support::{test_db, unique_key};

const WAIT: Duration = Duration::from_secs(10);

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
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
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
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert!(on_b.reaches(State::Open).await);
}

/// Reports under the limit do not open the key, however many calls they add up to; a report at
/// the limit does. Read from the database directly, as the application role.
#[tokio::test]
async fn the_rate_must_reach_the_limit() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let app = db.app_client().await;
    let key = unique_key("limit");
    let report = |instance: &'static str, failures: i32| {
        let (app, key) = (&app, key.clone());
        async move {
            let row = app
                .query_one(
                    "SELECT o_state, o_fleet_failures, o_fleet_calls, o_error FROM rc_report_rates(
                         'default', $1, ARRAY[$2], ARRAY[$3::int], ARRAY[10], ARRAY[1], ARRAY[2],
                         ARRAY[20], ARRAY[60000::bigint], ARRAY[60000::bigint])",
                    &[&instance, &key, &failures],
                )
                .await
                .expect("a report");
            let error: Option<String> = row.get(3);
            assert_eq!(error, None);
            (
                row.get::<_, String>(0),
                row.get::<_, i64>(1),
                row.get::<_, i64>(2),
            )
        }
    };
    assert_eq!(report("a", 4).await, ("CLOSED".to_owned(), 4, 10));
    assert_eq!(
        report("b", 5).await,
        ("CLOSED".to_owned(), 9, 20),
        "9/20 < 1/2"
    );
    assert_eq!(
        report("c", 2).await,
        ("CLOSED".to_owned(), 11, 30),
        "11/30 < 1/2"
    );
    assert_eq!(
        report("c", 6).await,
        ("CLOSED".to_owned(), 17, 40),
        "c's next report adds its new calls: 17/40 < 1/2"
    );
    assert_eq!(
        report("d", 10).await,
        ("OPEN".to_owned(), 27, 50),
        "27/50 >= 1/2"
    );
    // Bad reports: each answered with its error, as the batch does for one bad element.
    for (failures, calls, says) in [(3, 2, "failures <= calls"), (0, 0, "at least 1 call")] {
        let error = app
            .query_one(
                "SELECT o_error FROM rc_report_rates('default', 'i', ARRAY['k'], ARRAY[$1::int],
                     ARRAY[$2::int], ARRAY[1], ARRAY[2], ARRAY[20], ARRAY[60000::bigint],
                     ARRAY[60000::bigint])",
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

/// A healthy fleet sends no statement: the server's own log (`log_statement = all`) shows no
/// report while three instances call successfully. One failing instance then reports, at most
/// once per interval.
#[tokio::test]
async fn a_healthy_fleet_sends_no_statement() {
    let cluster = Cluster::start_with(&[("log_statement".to_owned(), "all".to_owned())]).await;
    let db = cluster.test_db().await;
    let key = unique_key("quiet");
    let interval = Duration::from_millis(500);
    let mut storages = Vec::new();
    for _ in 0..3 {
        storages.push(
            Storage::connect_with(options(&db).await.fleet_rate_interval(interval))
                .await
                .expect("connects"),
        );
    }
    let fleet: Vec<CircuitBreaker> = storages
        .iter()
        .map(|s| {
            fleet_rate(20)(CircuitBreaker::builder(&key).storage(s.clone()))
                .build()
                .expect("valid")
        })
        .collect();
    let reports = || {
        cluster
            .log()
            .matches("FROM public.rc_report_rates($1")
            .count()
    };
    let started = std::time::Instant::now();
    while started.elapsed() < interval * 4 {
        for cb in &fleet {
            let r = cb.call(|| async { Ok::<_, ()>(()) }).await;
            assert!(r.is_ok());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for s in &storages {
        assert!(s.flush(WAIT).await);
    }
    assert_eq!(reports(), 0, "healthy calls sent no report");

    // One instance fails one call in two for four intervals.
    let started = std::time::Instant::now();
    let mut n = 0u32;
    while started.elapsed() < interval * 4 {
        n += 1;
        let _ = fleet[0]
            .call(|| async move {
                if n % 2 == 0 {
                    Err(())
                } else {
                    Ok(())
                }
            })
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failing_for = started.elapsed();
    assert!(storages[0].flush(WAIT).await);
    let sent = reports();
    eprintln!(
        "one failing instance sent {sent} reports in {failing_for:?} (interval {interval:?})"
    );
    let at_most = (failing_for.as_millis() / interval.as_millis()) as usize + 2;
    assert!(
        (1..=at_most).contains(&sent),
        "{sent} reports in {failing_for:?} at one per {interval:?} at most"
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
