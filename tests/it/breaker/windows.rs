//! Windows: minimum calls, time windows that expire old outcomes, and slow calls counted as failures.

use super::*;

/// A breaker on its own store with a manual clock, configured by `f` on top of a failure limit.
fn windowed(key: &str, failure: Ratio, f: impl FnOnce(Builder) -> Builder) -> Rig {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(64, Arc::new(clock.clone()));
    let b = CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(failure)
        .cooldown(Duration::from_millis(100));
    Rig {
        cb: f(b).build().expect("valid config"),
        clock,
        storage,
        log: Log::default(),
    }
}

/// Runs `steps` (S or F; must be admitted), then checks the state.
fn run(rig: &Rig, steps: &[Step], state: State, what: &str) {
    for s in steps {
        match s {
            S => rig.admit(what).success(),
            F => rig.admit(what).failure(),
            Rej => drop(rig.reject(what)),
            Wait(ms) => rig.advance_ms(*ms),
        }
    }
    assert_eq!(rig.cb.state(), state, "{what}");
}

/// With `minimum_calls(n)` a count window that is not full is judged from its `n`th outcome,
/// at the failure limit's rate; never before.
#[test]
fn minimum_calls_no_trip_before_n_trip_at_n() {
    let rig = windowed("min-calls", r(5, 10), |b| b.minimum_calls(4));
    run(
        &rig,
        &[F, F, F],
        Closed,
        "3 failures in 3 calls: under 4 calls",
    );
    run(&rig, &[S], Open, "3 failures in 4 calls: at least 5/10");

    let rig = windowed("min-calls-rate", r(5, 10), |b| b.minimum_calls(4));
    run(&rig, &[S, S, S, F], Closed, "1 in 4 is under 50%");
    run(&rig, &[F], Closed, "2 in 5 is under 50%");
    run(&rig, &[F], Open, "3 in 6 is 50%");

    // The default is the full window: nine failures out of nine do not trip 5/10.
    let rig = windowed("min-calls-default", r(5, 10), |b| b);
    run(&rig, &[F; 9], Closed, "window not full");
    run(&rig, &[S], Open, "full window, 9 failures");
}

/// A time window forgets failures older than its period, and trips at the failure limit read
/// as a rate once it holds `minimum_calls` calls; successes count toward that rate.
#[test]
fn time_window_old_failures_expire() {
    let rig = windowed("tw-expire", r(1, 2), |b| {
        b.time_window(Duration::from_secs(10)).minimum_calls(4)
    });
    run(&rig, &[F, F, F], Closed, "3 calls: under the minimum");
    rig.advance_ms(11_000);
    run(
        &rig,
        &[F],
        Closed,
        "the 3 old failures expired: 1 call in the period",
    );
    run(&rig, &[S, S], Closed, "3 calls in the period");
    run(&rig, &[F], Open, "2 failures in 4 calls: 50%");
}

#[test]
fn time_window_trips_at_the_rate() {
    let rig = windowed("tw-rate", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60)).minimum_calls(10)
    });
    run(&rig, &[S, S, S, S, S, S, F, F, F, F], Closed, "4 in 10");
    run(&rig, &[F], Closed, "5 in 11");
    run(&rig, &[F], Open, "6 in 12: 50%");
    assert_eq!(
        rig.cb.execution_log().len(),
        2,
        "the last `denominator` outcomes"
    );

    // Many successes dilute failures: 10 failures after 100 successes are under 50%.
    let rig = windowed("tw-dilute", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60)).minimum_calls(10)
    });
    run(&rig, &[S; 100], Closed, "successes");
    run(&rig, &[F; 10], Closed, "10 in 110");
    // ...until the successes leave the period: with slices of 6 s, those of t = 0 are gone at
    // 60 s, the failures (at 59 s) stay until 66 s.
    let rig = windowed("tw-slide", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60)).minimum_calls(10)
    });
    run(&rig, &[S; 100], Closed, "successes at t = 0");
    rig.advance_ms(59_000);
    run(&rig, &[F; 9], Closed, "9 in 109");
    rig.advance_ms(1_000);
    run(
        &rig,
        &[F],
        Open,
        "the successes expired: 10 failures in 10 calls",
    );
}

/// After a trip and a good probe, the time window starts empty.
#[test]
fn time_window_starts_empty_after_closing() {
    let rig = windowed("tw-reset", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60))
            .minimum_calls(2)
            .success_limit(r(1, 1))
    });
    run(&rig, &[F, F], Open, "trip");
    run(&rig, &[Wait(100), S], Closed, "a good probe closes");
    run(
        &rig,
        &[F],
        Closed,
        "one call since closing: under the minimum",
    );
    run(&rig, &[S], Open, "1 in 2");
}

/// With `SlowCalls::AsFailure`, `call` times the call on the storage's clock and a call of at
/// least the threshold is a failure, even when it returned `Ok`.
#[tokio::test]
async fn slow_calls_as_failure() {
    let rig = windowed("slow-failure", r(2, 2), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    });
    let clock = rig.clock.clone();
    let takes = |ms: u64| {
        let clock = clock.clone();
        move || async move {
            clock.advance(Duration::from_millis(ms));
            Ok::<_, std::io::Error>(ms)
        }
    };
    assert_eq!(rig.cb.call(takes(99)).await.unwrap(), 99);
    assert_eq!(
        rig.cb.call(takes(100)).await.unwrap(),
        100,
        "still returned"
    );
    assert_eq!(rig.cb.execution_log(), vec![true, false], "100 ms is slow");
    assert_eq!(rig.cb.state(), Closed);
    let classify = |_: &Result<u64, std::io::Error>| Outcome::Success;
    rig.cb.call_with(classify, takes(500)).await.unwrap();
    assert_eq!(rig.cb.state(), Open, "a slow success is a failure");
}

/// With `SlowCalls::Rate`, slow calls keep their outcome and trip on their own rate, over the
/// same window and minimum number of calls.
#[test]
fn slow_call_rate() {
    let slow = Duration::from_millis(300);
    let rig = windowed("slow-rate", r(5, 10), |b| {
        b.slow_call(Duration::from_millis(200), SlowCalls::Rate(r(3, 10)))
    });
    for _ in 0..8 {
        rig.admit("fast").success();
    }
    for _ in 0..2 {
        rig.admit("slow").record_timed(Outcome::Success, slow);
    }
    assert_eq!(rig.cb.state(), Closed, "2 slow in 10");
    assert!(
        rig.cb.execution_log().iter().all(|s| *s),
        "slow calls are not failures"
    );
    rig.admit("slow").record_timed(Outcome::Success, slow);
    assert_eq!(rig.cb.state(), Open, "3 slow in the last 10");

    // The slow calls slide out of the count window like failures do.
    let rig = windowed("slow-rate-slides", r(5, 10), |b| {
        b.slow_call(Duration::from_millis(200), SlowCalls::Rate(r(3, 10)))
    });
    for _ in 0..2 {
        rig.admit("slow").record_timed(Outcome::Success, slow);
    }
    for _ in 0..10 {
        rig.admit("fast").success();
    }
    rig.admit("slow").record_timed(Outcome::Failure, slow);
    assert_eq!(
        rig.cb.state(),
        Closed,
        "1 slow in the last 10: the first two left"
    );

    // And in a time window, with its minimum.
    let rig = windowed("slow-rate-timed", r(1, 2), |b| {
        b.time_window(Duration::from_secs(10))
            .minimum_calls(4)
            .slow_call(Duration::from_millis(200), SlowCalls::Rate(r(1, 2)))
    });
    for _ in 0..3 {
        rig.admit("slow").record_timed(Outcome::Success, slow);
    }
    assert_eq!(rig.cb.state(), Closed, "3 calls: under the minimum");
    rig.admit("fast")
        .record_timed(Outcome::Success, Duration::from_millis(10));
    assert_eq!(rig.cb.state(), Open, "3 slow in 4");
}

/// Permits: `record_timed` judges the duration; plain `success` is a call of unknown duration,
/// never slow; on a breaker without a threshold `record_timed` is `record`. Owned permits too.
#[test]
fn permit_record_timed() {
    let rig = windowed("permit-timed", r(1, 1), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    });
    rig.admit("plain").success();
    rig.admit("fast")
        .record_timed(Outcome::Success, Duration::from_millis(99));
    rig.cb
        .try_acquire_owned()
        .expect("closed")
        .record_timed(Outcome::Success, Duration::from_millis(50));
    assert_eq!(rig.cb.state(), Closed);
    rig.cb
        .try_acquire_owned()
        .expect("closed")
        .record_timed(Outcome::Success, Duration::from_millis(100));
    assert_eq!(rig.cb.state(), Open, "owned, slow: a failure");

    let rig = windowed("permit-untimed", r(1, 1), |b| b);
    rig.admit("no threshold")
        .record_timed(Outcome::Success, Duration::from_secs(3600));
    assert_eq!(rig.cb.state(), Closed, "no threshold: never slow");
}

/// Half-open rounds keep their rules: with `AsFailure` a slow probe is a failed probe; with a
/// rate, a probe is judged by its outcome alone.
#[test]
fn slow_probes() {
    let rig = windowed("slow-probe-failure", r(1, 1), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    });
    run(&rig, &[F, Wait(100)], Open, "tripped, cooldown over");
    let probe = rig.admit("probe");
    assert!(probe.is_probe());
    probe.record_timed(Outcome::Success, Duration::from_millis(150));
    assert_eq!(rig.cb.state(), Open, "a slow probe failed");

    let rig = windowed("slow-probe-rate", r(1, 1), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::Rate(r(1, 1)))
    });
    run(&rig, &[F, Wait(100)], Open, "tripped, cooldown over");
    rig.admit("probe")
        .record_timed(Outcome::Success, Duration::from_millis(150));
    assert_eq!(rig.cb.state(), Closed, "a slow but good probe closes");
    rig.admit("closed")
        .record_timed(Outcome::Success, Duration::from_millis(150));
    assert_eq!(rig.cb.state(), Open, "closed again, 1 slow in 1 trips");
}

/// A threshold long enough to be timed on the coarse clock (a 200 ms threshold spans 50 ticks
/// of 4 ms) still tells slow calls from quick ones, on the real clock: a 20 ms call is quick, a
/// 260 ms one is slow.
#[tokio::test]
async fn slow_calls_are_told_apart_on_the_coarse_clock() {
    let cb = CircuitBreaker::builder("coarse-slow")
        .storage(Storage::in_memory())
        .failure_limit(Ratio::new(1, 1))
        .slow_call(Duration::from_millis(200), SlowCalls::AsFailure)
        .build()
        .expect("valid breaker");
    let quick = cb
        .call(|| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert!(quick.is_ok());
    assert_eq!(cb.state(), Closed, "20 ms is under 200 ms");
    let _ = cb
        .call(|| async {
            tokio::time::sleep(Duration::from_millis(260)).await;
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert_eq!(cb.state(), Open, "260 ms is over 200 ms");
}

/// A time window of the default storage's clock with slices of half a second and more is timed
/// on the kept reading (one load a call, refreshed by a background thread), and still expires
/// outcomes in real time: three successes 5.6 s old no longer count, so two failures of the
/// three calls since trip it, while a failure one second old still counts.
#[test]
fn a_time_window_expires_outcomes_on_the_real_clock() {
    let timed = |key: &str| {
        CircuitBreaker::builder(key)
            .storage(Storage::in_memory())
            .failure_limit(Ratio::new(1, 2))
            .minimum_calls(3)
            .time_window(Duration::from_secs(5))
            .build()
            .expect("valid breaker")
    };
    let expired = timed("kept-reading-expired");
    let kept = timed("kept-reading-kept");
    for _ in 0..3 {
        expired.try_acquire().expect("closed").success();
    }
    kept.try_acquire().expect("closed").failure();
    kept.try_acquire().expect("closed").success();
    std::thread::sleep(Duration::from_secs(1));
    // 1 failure in 3 calls, the first two a second old: under the limit of 1 in 2.
    kept.try_acquire().expect("closed").success();
    assert_eq!(kept.state(), Closed, "1 failure in 3");
    kept.try_acquire().expect("closed").failure();
    assert_eq!(
        kept.state(),
        Open,
        "2 in 4: the second-old failure still counts"
    );
    // Slices of 500 ms: outcomes leave the period 4.5–5 s after they were counted.
    std::thread::sleep(Duration::from_millis(4_600));
    expired.try_acquire().expect("closed").failure();
    expired.try_acquire().expect("closed").success();
    assert_eq!(
        expired.state(),
        Closed,
        "1 failure in 2 calls: under the minimum of 3"
    );
    expired.try_acquire().expect("closed").failure();
    assert_eq!(
        expired.state(),
        Open,
        "2 failures in 3: the three old successes left the period"
    );
}
