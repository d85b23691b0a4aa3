//! Outlier instances (`docs::outliers`) on real PostgreSQL, as the application role: while a
//! key's fleet rate is judged, an instance failing far more than the rest of the fleet is named
//! (change log, its own change stream), its reports no longer open the key for the fleet, and
//! its own breaker judges its own window; the whole fleet failing still opens the key for
//! everyone; an instance that recovers stops being an outlier.

use std::time::Duration;

use resilient_circuit::{Change, ChangeKind, Changes, Ratio, State, Storage, TripPolicy};
use tokio_stream::StreamExt;

use crate::fleet_rate::run;
use crate::support::breakers::{caught_up, options, row_state, Watched};
use crate::support::{test_db, unique_key, TestDb, WAIT};

/// How often each instance reports.
const INTERVAL: Duration = Duration::from_millis(200);

/// A cooldown longer than any test.
const MINUTE: Duration = Duration::from_secs(60);

/// `n` instances of `key` on `db`, named `{prefix}-{i}`, reporting every [`INTERVAL`]; the
/// fleet opens the key at a failure rate of 1 in 20 over at least 100 calls in a minute, and
/// each instance's own window is 10 calls, half of them failures, resting `cooldown`.
async fn fleet(
    db: &TestDb,
    n: usize,
    key: &str,
    prefix: &str,
    cooldown: Duration,
) -> (Vec<Storage>, Vec<Watched>) {
    let mut storages = Vec::new();
    let mut breakers = Vec::new();
    for i in 0..n {
        let s = Storage::connect_with(
            options(db)
                .await
                .fleet_rate_interval(INTERVAL)
                .instance_name(format!("{prefix}-{i}")),
        )
        .await
        .expect("connects");
        breakers.push(Watched::new(&s, key, |b| {
            b.failure_limit(Ratio::new(5, 10))
                .cooldown(cooldown)
                .trip_policy(TripPolicy::FleetRate {
                    limit: Ratio::new(1, 20),
                    min_calls: 100,
                    period: Duration::from_secs(60),
                })
        }));
        storages.push(s);
    }
    (storages, breakers)
}

/// Waits, at most [`WAIT`], for `news` to say that this instance is (`outlier`) or no longer is
/// an outlier of `key`; the change that said it.
async fn outlier_news(news: &mut Changes, key: &str, outlier: bool) -> Option<Change> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, news.next()).await {
            Ok(Some(Ok(c))) if c.key == key && c.kind == (ChangeKind::Outlier { outlier }) => {
                return Some(c)
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Waits, at most [`WAIT`], until a report of `key` was made two intervals into its judgement:
/// past the first interval, in which the key cannot open, each report judges the fleet's rate.
async fn judged_past_the_first_interval(admin: &tokio_postgres::Client, key: &str) -> bool {
    crate::support::eventually(WAIT, || async {
        admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM rc_rate_reports q JOIN rc_judgements j
                    ON j.namespace = q.namespace AND j.resource_key = q.resource_key
                 WHERE q.resource_key = $1
                   AND q.reported_at >= j.judging_since + $2 * interval '1 millisecond')",
                &[&key, &(2.0 * INTERVAL.as_secs_f64() * 1e3)],
            )
            .await
            .is_ok_and(|r| r.get(0))
    })
    .await
}

/// Every news item `news` holds now (none is awaited).
fn pending_news(news: &mut Changes) -> Vec<Change> {
    let mut out = Vec::new();
    while let Some(Some(Ok(c))) = futures_util::FutureExt::now_or_never(news.next()) {
        out.push(c);
    }
    out
}

/// The change log's outlier records of `key`, oldest first: each one's `why.outlier`.
async fn outlier_records(admin: &tokio_postgres::Client, key: &str) -> Vec<serde_json::Value> {
    admin
        .query(
            "SELECT why -> 'outlier' FROM rc_changes
             WHERE resource_key = $1 AND kind = 'outlier' ORDER BY at",
            &[&key],
        )
        .await
        .expect("reads the change log")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// One instance failing every call and nine healthy ones, under a limit of 1 in 20: the fleet
/// counting every report would be at 10% and open the key for all ten. The sick one is named an
/// outlier instead: the change log and its own change stream say so, the key stays CLOSED for
/// the nine, and the sick one's own breaker opens on its next failure.
#[tokio::test]
async fn one_sick_instance_of_ten_is_named_and_opens_alone() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("outlier");
    let (storages, mut fleet) = fleet(&db, 10, &key, "pod", MINUTE).await;
    let mut news = storages[0].changes();
    for w in &fleet[1..] {
        assert_eq!(run(&w.cb, 100, 0).await, 0);
    }
    assert_eq!(run(&fleet[0].cb, 100, 1000).await, 100);
    let named = outlier_news(&mut news, &key, true).await;
    let named = named.expect("the sick instance hears it is the fleet's outlier");
    assert_eq!(named.from, State::Closed);
    assert_eq!(named.to, State::Closed);

    let records = outlier_records(&admin, &key).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert!(
        r["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("pod-0:")),
        "{r}"
    );
    assert_eq!(r["outlier"], true, "{r}");
    assert_eq!(
        (r["failures"].as_i64(), r["calls"].as_i64()),
        (Some(100), Some(100)),
        "{r}"
    );
    // The others as reported when it was named: at least the minimum, every one healthy.
    assert_eq!(r["others_failures"], 0, "{r}");
    let others = r["others_calls"].as_i64().unwrap_or(0);
    assert!((100..=900).contains(&others) && others % 100 == 0, "{r}");

    // Its reports no longer count: once the fleet's rate is judged, and every instance has
    // reported what it has, the key stays CLOSED for the fleet.
    assert!(judged_past_the_first_interval(&admin, &key).await);
    for s in &storages {
        assert!(s.flush(WAIT).await);
    }
    let all: Vec<&Storage> = storages.iter().collect();
    assert!(caught_up(&admin, &all, WAIT).await);
    assert_ne!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));

    // It keeps protecting its own callers: its window (all failures) opens its breaker alone.
    assert_eq!(run(&fleet[0].cb, 1, 1000).await, 1);
    assert!(
        fleet[0].reaches(State::Open).await,
        "the outlier opens alone"
    );
    assert!(fleet[0].cb.try_acquire().is_err());
    assert!(storages[0].flush(WAIT).await);
    assert!(caught_up(&admin, &all, WAIT).await);
    assert_ne!(
        row_state(&admin, &key).await.as_deref(),
        Some("OPEN"),
        "its own opening is its own"
    );
    for (i, w) in fleet.iter().enumerate().skip(1) {
        assert_eq!(w.cb.state(), State::Closed, "instance {i}");
        assert!(w.cb.try_acquire().is_ok(), "instance {i} keeps calling");
    }
}

/// Every instance failing: no one is far above the rest, nobody is an outlier, and the fleet's
/// rate opens the key for everyone.
#[tokio::test]
async fn the_whole_fleet_failing_opens_the_key_for_everyone() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("all-sick");
    let (storages, mut fleet) = fleet(&db, 5, &key, "pod", MINUTE).await;
    let mut news: Vec<Changes> = storages.iter().map(Storage::changes).collect();
    for w in &fleet {
        assert_eq!(run(&w.cb, 40, 1000).await, 40);
    }
    for (i, w) in fleet.iter_mut().enumerate() {
        assert!(
            w.reaches(State::Open).await,
            "instance {i} follows the fleet"
        );
    }
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert_eq!(
        outlier_records(&admin, &key).await,
        Vec::<serde_json::Value>::new()
    );
    for (i, n) in news.iter_mut().enumerate() {
        let outliers: Vec<Change> = pending_news(n)
            .into_iter()
            .filter(|c| matches!(c.kind, ChangeKind::Outlier { .. }))
            .collect();
        assert!(outliers.is_empty(), "instance {i}: {outliers:?}");
    }
}

/// An outlier whose calls succeed again, until its own rate is under the limit, is no longer
/// one: its change stream and the change log say so.
#[tokio::test]
async fn an_instance_that_recovers_stops_being_an_outlier() {
    let db = test_db().await;
    let admin = db.client().await;
    let key = unique_key("recovers");
    let (storages, mut fleet) = fleet(&db, 4, &key, "node", Duration::from_millis(300)).await;
    let mut news = storages[3].changes();
    for w in &fleet[..3] {
        assert_eq!(run(&w.cb, 100, 0).await, 0);
    }
    assert_eq!(run(&fleet[3].cb, 20, 1000).await, 20);
    assert!(outlier_news(&mut news, &key, true).await.is_some());
    // Its window is all failures: its next outcome opens it alone, for 300 ms; it reports on
    // meanwhile (still an outlier), then comes back through its probe.
    assert_eq!(run(&fleet[3].cb, 1, 1000).await, 1);
    assert!(fleet[3].reaches(State::Open).await);
    let back = crate::support::eventually(WAIT, || async {
        run(&fleet[3].cb, 1, 0).await;
        fleet[3].cb.state() == State::Closed
    })
    .await;
    assert!(back, "the outlier's probe closes its breaker");
    // 21 failures in 1,021 calls or so: under 1 in 20.
    assert_eq!(run(&fleet[3].cb, 1000, 0).await, 0);
    let healed = outlier_news(&mut news, &key, false).await;
    assert!(healed.is_some(), "the recovered instance hears it");
    let records = outlier_records(&admin, &key).await;
    let flags: Vec<&serde_json::Value> = records.iter().map(|r| &r["outlier"]).collect();
    assert_eq!(flags, [true, false], "{records:?}");
    assert!(
        records[1]["instance"]
            .as_str()
            .is_some_and(|i| i.starts_with("node-3:")),
        "{records:?}"
    );
    let calls = records[1]["calls"].as_i64().unwrap_or(0);
    assert!(calls > 1020, "{records:?}");
    assert_eq!(records[1]["failures"], 21, "{records:?}");
    assert_ne!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert_eq!(fleet[3].cb.state(), State::Closed);
}
