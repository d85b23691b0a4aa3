//! Live configuration on real PostgreSQL (`rc_breaker_config`, migration `0013`), through the
//! public API and the command line, instances as the application role: a change reaches every
//! instance within the propagation time and takes effect; a new instance starts with it; reset
//! returns to the code's values; the modes (forced open, disabled, metrics-only); bad values
//! refused by the command and the database; an instance never applies a row it cannot use.

use std::time::{Duration, Instant};

use resilient_circuit::{CircuitBreaker, Mode, Ratio, State};

use crate::cli::{ok, run};
use crate::support::breakers::{fail, instance, Watched};
use crate::support::{eventually, test_db, unique_key};

use crate::support::WAIT;

/// The code's values: 5 failures in 10 calls, a minute's cooldown.
fn coded(b: resilient_circuit::Builder) -> resilient_circuit::Builder {
    b.failure_limit(Ratio::new(5, 10))
        .cooldown(Duration::from_secs(60))
}

/// Three instances; `config KEY --failure-limit 1/1 --cooldown 5s` from the command line reaches
/// all of them (measured), one failure then trips an instance for 5 s; `--reset` brings the
/// code's values back everywhere.
#[tokio::test]
async fn a_live_change_reaches_every_instance_and_takes_effect() {
    let db = test_db().await;
    let key = unique_key("live");
    let mut storages = Vec::new();
    for _ in 0..3 {
        storages.push(instance(&db).await);
    }
    let fleet: Vec<Watched> = storages
        .iter()
        .map(|s| Watched::new(s, &key, coded))
        .collect();
    assert!(fleet.iter().all(|w| w.cb.live_config().is_none()));

    let printed = ok(
        &db.app_conninfo().await,
        &["config", &key, "--failure-limit", "1/1", "--cooldown", "5s"],
    )
    .await;
    assert!(
        printed.stdout.contains("failure limit 1/1"),
        "{}",
        printed.stdout
    );
    for (i, w) in fleet.iter().enumerate() {
        assert!(
            eventually(WAIT, || async {
                w.cb.live_config()
                    .is_some_and(|c| c.failure_limit == Some(Ratio::new(1, 1)))
            })
            .await,
            "instance {i} got the configuration"
        );
    }
    // Propagation, timed from the change's commit (as an application sends it) to the last
    // instance holding it: a NOTIFY, then one read of the row on each.
    let app = db.app_client().await;
    let committed = Instant::now();
    app.execute(
        "SELECT FROM rc_configure('default', $1, p_cooldown_ms => 4000)",
        &[&key],
    )
    .await
    .expect("configures");
    for (i, w) in fleet.iter().enumerate() {
        assert!(
            eventually(WAIT, || async {
                w.cb.live_config()
                    .is_some_and(|c| c.cooldown == Some(Duration::from_secs(4)))
            })
            .await,
            "instance {i} got the change"
        );
    }
    let reached = committed.elapsed();
    eprintln!("a live change reached 3 instances {reached:?} after its commit");
    assert!(
        reached < Duration::from_secs(2),
        "propagation within a reload's time: {reached:?}"
    );

    let mut first = Watched::new(&storages[0], &key, coded);
    fail(&first.cb).await;
    assert!(first.reaches(State::Open).await, "1 failure of 1 trips now");
    let left = first.cb.cooldown_remaining();
    assert!(
        left <= Duration::from_secs(5),
        "the live cooldown: {left:?}"
    );

    ok(&db.app_conninfo().await, &["close", &key]).await;
    ok(&db.app_conninfo().await, &["config", &key, "--reset"]).await;
    for (i, w) in fleet.iter().enumerate() {
        assert!(
            eventually(WAIT, || async { w.cb.live_config().is_none() }).await,
            "instance {i} is back to the code's values"
        );
        assert!(
            eventually(WAIT, || async { w.cb.state() == State::Closed }).await,
            "instance {i} closed"
        );
    }
    fail(&fleet[1].cb).await;
    assert_eq!(
        fleet[1].cb.state(),
        State::Closed,
        "one failure in a window of 10 trips nothing"
    );
}

/// An instance started after the change has it as soon as its breaker is built.
#[tokio::test]
async fn a_new_instance_starts_with_the_live_configuration() {
    let db = test_db().await;
    let key = unique_key("late");
    ok(
        &db.app_conninfo().await,
        &[
            "config",
            &key,
            "--success-limit",
            "2/3",
            "--mode",
            "metrics-only",
        ],
    )
    .await;
    let storage = instance(&db).await;
    let cb = coded(CircuitBreaker::builder(&key).storage(storage.clone()))
        .build()
        .expect("valid");
    let live = cb.live_config().expect("configured at start");
    assert_eq!(live.success_limit, Some(Ratio::new(2, 3)));
    assert_eq!(cb.mode(), Mode::MetricsOnly);
}

/// `--mode forced-open` holds every instance OPEN (the row itself), refuses overrides meanwhile
/// with the way out, and `--mode normal` closes it everywhere. The change log says why.
#[tokio::test]
async fn forced_open_holds_every_instance_open_until_the_mode_changes() {
    let db = test_db().await;
    let dsn = db.app_conninfo().await;
    let key = unique_key("forced");
    let (a, b) = (instance(&db).await, instance(&db).await);
    let mut on_a = Watched::new(&a, &key, coded);
    let mut on_b = Watched::new(&b, &key, coded);
    ok(
        &dsn,
        &[
            "config",
            &key,
            "--mode",
            "forced-open",
            "--note",
            "vendor maintenance",
        ],
    )
    .await;
    assert!(on_a.reaches(State::Open).await);
    assert!(on_b.reaches(State::Open).await);
    assert!(on_a.cb.cooldown_remaining() > Duration::from_secs(365 * 24 * 3600));
    assert!(eventually(WAIT, || async { on_b.cb.mode() == Mode::ForcedOpen }).await);
    assert_eq!(
        on_b.cb.try_acquire().map(|_| ()).unwrap_err().reason(),
        resilient_circuit::RejectReason::Forced,
        "rejected on purpose"
    );
    let refused = run(&dsn, &["close", &key]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("forced open by its live configuration")
            && refused.stderr.contains("--mode normal"),
        "{}",
        refused.stderr
    );
    assert_eq!(on_a.cb.state(), State::Open);
    // An `open` is refused as well: it would replace the hold's end with its own cooldown.
    let refused = run(&dsn, &["open", &key, "--for", "1s"]).await;
    assert_eq!(refused.code, 1, "{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("forced open by its live configuration"),
        "{}",
        refused.stderr
    );
    assert!(on_a.cb.cooldown_remaining() > Duration::from_secs(365 * 24 * 3600));

    ok(&dsn, &["config", &key, "--mode", "normal"]).await;
    assert!(on_a.reaches(State::Closed).await);
    assert!(on_b.reaches(State::Closed).await);
    let history = ok(&dsn, &["history", &key]).await;
    assert!(
        history
            .stdout
            .contains("config: mode forced_open (vendor maintenance)"),
        "{}",
        history.stdout
    );
}

/// Disabled: every call admitted although the fleet holds the key OPEN, and nothing counted.
/// Metrics-only: every call admitted, failures counted in the window, never a trip.
#[tokio::test]
async fn disabled_and_metrics_only_admit_every_call() {
    let db = test_db().await;
    let dsn = db.app_conninfo().await;
    let storage = instance(&db).await;
    let key = unique_key("bypassed");
    let mut w = Watched::new(&storage, &key, |b| {
        b.failure_limit(Ratio::new(2, 4))
            .cooldown(Duration::from_secs(60))
    });
    ok(&dsn, &["open", &key]).await;
    assert!(w.reaches(State::Open).await);
    assert!(w.cb.try_acquire().is_err());
    ok(&dsn, &["config", &key, "--mode", "disabled"]).await;
    assert!(eventually(WAIT, || async { w.cb.mode() == Mode::Disabled }).await);
    for _ in 0..3 {
        let permit = w.cb.try_acquire().expect("disabled: admitted while OPEN");
        permit.failure();
    }
    assert_eq!(w.cb.state(), State::Open, "the fleet's state is unchanged");

    ok(&dsn, &["config", &key, "--mode", "metrics-only"]).await;
    assert!(eventually(WAIT, || async { w.cb.mode() == Mode::MetricsOnly }).await);
    assert!(
        w.cb.try_acquire().is_ok(),
        "metrics-only: admitted while OPEN"
    );
    ok(&dsn, &["close", &key]).await;
    assert!(w.reaches(State::Closed).await);
    for _ in 0..11 {
        fail(&w.cb).await;
    }
    assert_eq!(w.cb.state(), State::Closed, "metrics-only never trips");
    assert_eq!(
        w.cb.execution_log(),
        [false; 3],
        "but it counts: each full window at the limit (4 failures, twice) starts it over"
    );

    ok(&dsn, &["config", &key, "--mode", "normal"]).await;
    assert!(eventually(WAIT, || async { w.cb.mode() == Mode::Normal }).await);
    fail(&w.cb).await;
    assert!(
        w.reaches(State::Open).await,
        "normal again: the window trips"
    );
}

/// The trip policy changes live too: with `--trip-policy quorum --quorum 2`, one instance's
/// trip stops only its own calls; the second instance's opens the key for all.
#[tokio::test]
async fn the_trip_policy_changes_live() {
    let db = test_db().await;
    let dsn = db.app_conninfo().await;
    let key = unique_key("policy");
    let (a, b, c) = (
        instance(&db).await,
        instance(&db).await,
        instance(&db).await,
    );
    let trip_fast = |b: resilient_circuit::Builder| {
        b.failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_secs(60))
    };
    let on_a = Watched::new(&a, &key, trip_fast);
    let on_b = Watched::new(&b, &key, trip_fast);
    let mut on_c = Watched::new(&c, &key, trip_fast);
    let printed = ok(
        &dsn,
        &[
            "config",
            &key,
            "--trip-policy",
            "quorum",
            "--quorum",
            "2",
            "--within",
            "1m",
        ],
    )
    .await;
    assert!(
        printed.stdout.contains("trip policy quorum of 2 within 1m"),
        "{}",
        printed.stdout
    );
    let quorum = resilient_circuit::TripPolicy::Quorum {
        instances: 2,
        within: Duration::from_secs(60),
    };
    for w in [&on_a, &on_b, &on_c] {
        assert!(
            eventually(WAIT, || async {
                w.cb.live_config()
                    .is_some_and(|l| l.trip_policy == Some(quorum))
            })
            .await
        );
    }
    fail(&on_a.cb).await;
    assert!(a.flush(WAIT).await);
    assert_eq!(
        on_a.cb.state(),
        State::Open,
        "the voter stops its own calls"
    );
    assert_eq!(
        on_c.cb.state(),
        State::Closed,
        "one vote of two: the others call"
    );
    fail(&on_b.cb).await;
    assert!(b.flush(WAIT).await);
    assert!(
        on_c.reaches(State::Open).await,
        "the second vote opens it for all"
    );

    for (args, says) in [
        (
            &["--trip-policy", "quorum", "--quorum", "2"][..],
            "--within",
        ),
        (
            &[
                "--trip-policy",
                "fleet-rate",
                "--rate",
                "1/2",
                "--min-calls",
                "10",
                "--period",
                "500ms",
            ][..],
            "at least 1s",
        ),
        (&["--quorum", "2"][..], "--trip-policy"),
        (
            &["--trip-policy", "quorum", "--quorum", "0", "--within", "1m"][..],
            "quorum of 0",
        ),
    ] {
        let mut argv = vec!["config", key.as_str()];
        argv.extend_from_slice(args);
        let r = run(&dsn, &argv).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
}

/// Bad values: refused by the command (usage, exit 2) and by the database's constraints
/// whoever writes; an application role cannot write the table directly.
#[tokio::test]
async fn bad_values_are_refused_by_the_command_and_the_database() {
    let db = test_db().await;
    let dsn = db.app_conninfo().await;
    let _setup = instance(&db).await;
    for args in [
        ["--failure-limit", "11/10"],
        ["--failure-limit", "0/3"],
        ["--cooldown", "soon"],
        ["--mode", "sometimes"],
    ] {
        let r = run(&dsn, &["config", "k", args[0], args[1]]).await;
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(args[0]), "{args:?}: {}", r.stderr);
    }
    let admin = db.client().await;
    let checked = admin
        .execute(
            "INSERT INTO rc_breaker_config (namespace, resource_key, failure_num, failure_den)
             VALUES ('default', 'k', 11, 10)",
            &[],
        )
        .await
        .expect_err("the CHECK refuses it");
    let message = checked.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("rc_breaker_config_failure_limit")),
        "{message:?}"
    );
    let half = admin
        .query_one(
            "SELECT * FROM rc_configure('default', 'k', p_failure_num => 3)",
            &[],
        )
        .await
        .expect_err("half a ratio");
    assert!(format!("{half:?}").contains("whole ratio"), "{half:?}");
    let app = db.app_client().await;
    let direct = app
        .execute(
            "INSERT INTO rc_breaker_config (namespace, resource_key) VALUES ('default', 'k')",
            &[],
        )
        .await
        .expect_err("the app role writes only through rc_configure");
    assert!(
        format!("{direct:?}").contains("permission denied"),
        "{direct:?}"
    );
}

/// A row no instance could use (written by an owner who dropped a constraint) is not applied:
/// the configuration in force stays, and later good rows still apply.
#[tokio::test]
async fn an_instance_never_applies_a_configuration_it_cannot_use() {
    let db = test_db().await;
    let dsn = db.app_conninfo().await;
    let storage = instance(&db).await;
    let key = unique_key("kept");
    let other = unique_key("other");
    let cb = coded(CircuitBreaker::builder(&key).storage(storage.clone()))
        .build()
        .expect("valid");
    let later = coded(CircuitBreaker::builder(&other).storage(storage.clone()))
        .build()
        .expect("valid");
    ok(&dsn, &["config", &key, "--failure-limit", "2/4"]).await;
    assert!(
        eventually(WAIT, || async {
            cb.live_config()
                .is_some_and(|c| c.failure_limit == Some(Ratio::new(2, 4)))
        })
        .await
    );
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "ALTER TABLE rc_breaker_config DROP CONSTRAINT rc_breaker_config_failure_limit;
             UPDATE rc_breaker_config SET failure_num = 0, failure_den = 4
             WHERE resource_key = '{key}'"
        ))
        .await
        .expect("an owner writes what no instance can use");
    // Notifications arrive in commit order: once the other key's change is applied, the bad
    // row's notification has been handled.
    ok(&dsn, &["config", &other, "--cooldown", "7s"]).await;
    assert!(
        eventually(WAIT, || async {
            later
                .live_config()
                .is_some_and(|c| c.cooldown == Some(Duration::from_secs(7)))
        })
        .await
    );
    assert_eq!(
        cb.live_config().and_then(|c| c.failure_limit),
        Some(Ratio::new(2, 4)),
        "the unusable row was not applied"
    );
}

/// Disabled counts nothing while CLOSED either: failures made while disabled are not in the
/// window when the mode is normal again, so the next failure alone does not trip.
#[tokio::test]
async fn disabled_counts_nothing_while_closed() {
    let db = test_db().await;
    let dsn = db.app_conninfo().await;
    let storage = instance(&db).await;
    let key = unique_key("uncounted");
    let w = Watched::new(&storage, &key, |b| {
        b.failure_limit(Ratio::new(2, 4))
            .cooldown(Duration::from_secs(60))
    });
    ok(&dsn, &["config", &key, "--mode", "disabled"]).await;
    assert!(eventually(WAIT, || async { w.cb.mode() == Mode::Disabled }).await);
    for _ in 0..5 {
        fail(&w.cb).await;
    }
    assert_eq!(w.cb.state(), State::Closed);
    assert!(
        w.cb.execution_log().is_empty(),
        "{:?}",
        w.cb.execution_log()
    );
    ok(&dsn, &["config", &key, "--mode", "normal"]).await;
    assert!(eventually(WAIT, || async { w.cb.mode() == Mode::Normal }).await);
    fail(&w.cb).await;
    assert_eq!(
        w.cb.execution_log(),
        [false],
        "only the failure made in normal mode"
    );
    assert_eq!(w.cb.state(), State::Closed, "one failure of 2 needed");
}
