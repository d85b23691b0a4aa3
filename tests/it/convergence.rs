//! No held state outlives its reason, and a fleet doing everything at once converges on the
//! table: every instance agrees with every row after a close of every key and after an open of
//! every key.

use std::time::Duration;

use resilient_circuit::{Ratio, State, Storage, TripPolicy};

use crate::cli::ok;
use crate::support::breakers::{fail, options, Watched};
use crate::support::{test_db, unique_key};

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

/// Every test the precedence rule table (`src/storage/postgres/precedence.rs`) cites exists, so
/// the table never points a reader at a claim nobody checks.
#[test]
fn every_test_the_rule_table_cites_exists() {
    let root = env!("CARGO_MANIFEST_DIR");
    let table = std::fs::read_to_string(format!("{root}/src/storage/postgres/precedence.rs"))
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
            "precedence::tests" => format!("{root}/src/storage/postgres/precedence_tests.rs"),
            m => format!("{root}/tests/it/{m}.rs"),
        };
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
        assert!(
            text.contains(&format!("fn {test}(")),
            "{name}, cited by the rule table, is not a test in {file}"
        );
    }
}
