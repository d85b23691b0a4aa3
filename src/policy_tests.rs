//! Unit tests of `policy.rs`.

use super::*;

fn policy(f: Ratio, s: Option<Ratio>) -> Policy {
    Policy {
        failure_limit: f,
        success_limit: s,
        cooldown: Duration::ZERO,
        ..Policy::default()
    }
}

/// Table of closed-window verdicts: trips only on a full window at or above the limit.
#[test]
fn closed_table() {
    let p = policy(Ratio::new(3, 5), None);
    let cases: &[(&[bool], bool)] = &[
        (&[false, false, false], false),              // not full
        (&[true, true, false, false, true], false),   // 2/5
        (&[true, false, false, false, true], true),   // 3/5
        (&[false, false, false, false, false], true), // 5/5
    ];
    for (outcomes, trips) in cases {
        let mut w = OutcomeWindow::new(5);
        outcomes.iter().for_each(|s| w.push(*s));
        assert_eq!(p.closed_trips(&w), *trips, "{outcomes:?}");
    }
}

/// A fleet rate judged alone (in memory, offline): the rate over at least `min_calls` outcomes
/// (capped at the window), whether or not the window is full.
#[test]
fn fleet_rate_alone_table() {
    let rate = |min_calls| Policy {
        failure_limit: Ratio::new(5, 10),
        trip: crate::TripPolicy::FleetRate {
            limit: Ratio::new(1, 2),
            min_calls,
            period: Duration::from_secs(60),
        },
        ..Policy::default()
    };
    let cases: &[(u32, &[bool], bool)] = &[
        (4, &[false, false, false], false),     // 3 calls < 4
        (4, &[false, true, false, true], true), // 2/4 >= 1/2
        (4, &[true, true, true, false], false), // 1/4
        (4, &[true; 4], false),                 // no failure
        (100, &[false; 9], false),              // 9 < min(100, 10)
        (
            100,
            &[
                false, true, false, true, false, true, false, true, false, true,
            ],
            true,
        ), // 5/10
    ];
    for (min_calls, outcomes, trips) in cases {
        let mut w = OutcomeWindow::new(10);
        outcomes.iter().for_each(|s| w.push(*s));
        assert_eq!(
            rate(*min_calls).closed_trips(&w),
            *trips,
            "min {min_calls}: {outcomes:?}"
        );
    }
}

/// Table of half-open verdicts, with and without a success limit.
#[test]
fn half_open_table() {
    let with = policy(Ratio::new(1, 1), Some(Ratio::new(2, 3)));
    let without = policy(Ratio::new(2, 4), None);
    let cases: &[(&Policy, &[bool], Option<State>)] = &[
        (&with, &[true, true], None),
        (&with, &[true, false, true], Some(State::Closed)),
        (&with, &[false, false, true], Some(State::Open)),
        (&with, &[false], None),
        (&with, &[false, false], Some(State::Open)), // closing needs 2 of 3: ends early
        (&without, &[true, false, true], None),
        (&without, &[false, false], Some(State::Open)), // 2 failures of 4 reopen: ends early
        (&without, &[true, false, true, true], Some(State::Closed)),
        (&without, &[true, false, false, true], Some(State::Open)),
    ];
    for (p, outcomes, verdict) in cases {
        let mut w = OutcomeWindow::new(p.probe_count());
        outcomes.iter().for_each(|s| w.push(*s));
        assert_eq!(p.half_open_verdict(&w), *verdict, "{outcomes:?}");
    }
}

/// The close threshold the database is given agrees with the local verdict, for every window
/// and outcome count up to 12.
#[test]
fn close_threshold_agrees_with_the_verdict() {
    for den in 1..=12u32 {
        for num in 1..=den {
            for success in [None, Some(Ratio::new(num, den))] {
                let p = policy(Ratio::new(num, den), success);
                let n = p.probe_count();
                for successes in 0..=n {
                    let mut w = OutcomeWindow::new(n);
                    for i in 0..n {
                        w.push(i < successes);
                    }
                    let closes = p.half_open_verdict(&w) == Some(State::Closed);
                    assert_eq!(
                        closes,
                        successes >= p.probe_close_threshold(),
                        "{p:?} with {successes} of {n} successes"
                    );
                }
            }
        }
    }
}

/// A round ends early exactly when closing has become impossible, by the rule the database
/// applies to fleet rounds (`rc_report_probe`: more failures than the round can spare).
#[test]
fn a_round_ends_early_only_when_closing_is_impossible() {
    for den in 1..=12u32 {
        for num in 1..=den {
            for success in [None, Some(Ratio::new(num, den))] {
                let p = policy(Ratio::new(num, den), success);
                let n = p.probe_count();
                for failures in 0..n {
                    let mut w = OutcomeWindow::new(n);
                    (0..failures).for_each(|_| w.push(false));
                    let spare = n - p.probe_close_threshold();
                    let early = p.half_open_verdict(&w) == Some(State::Open);
                    assert_eq!(early, failures > spare, "{p:?} after {failures} failures");
                }
            }
        }
    }
}

/// Growing cooldowns: base for a trip from CLOSED, ×2 per reopen, capped at the maximum, cut by
/// at most 10% of the grown value by jitter; without a maximum, always the base.
#[test]
fn cooldown_grows_doubles_caps_and_jitters() {
    let ms = Duration::from_millis;
    let mut p = policy(Ratio::new(1, 1), None);
    p.cooldown = ms(100);
    for n in [0, 1, 5, u32::MAX] {
        assert_eq!(p.cooldown_after(n, 0.5), ms(100), "growth off, reopen {n}");
    }
    p.max_cooldown = Some(ms(1000));
    let table = [
        (0, 100),
        (1, 200),
        (2, 400),
        (3, 800),
        (4, 1000),
        (40, 1000),
    ];
    for (n, want) in table {
        assert_eq!(p.cooldown_after(n, 0.0), ms(want), "reopen {n}, no jitter");
        let jittered = p.cooldown_after(n, 0.999_999);
        if n == 0 {
            assert_eq!(jittered, ms(100), "a trip from CLOSED is never jittered");
        } else {
            assert!(
                jittered <= ms(want) && jittered >= ms(want) - ms(want) / 10,
                "reopen {n}: {jittered:?} within 10% below {want} ms"
            );
        }
    }
    assert_eq!(
        p.cooldown_after(u32::MAX, 2.0),
        ms(900),
        "jitter is clamped to 10%"
    );
    // A zero base stays zero, however often it reopens (and the loop ends at once).
    p.cooldown = Duration::ZERO;
    assert_eq!(p.cooldown_after(u32::MAX, 0.0), Duration::ZERO);
    // A maximum near MAX_DURATION does not overflow.
    p.cooldown = Duration::from_secs(1);
    p.max_cooldown = Some(MAX_DURATION);
    assert_eq!(p.cooldown_after(u32::MAX, 0.0), MAX_DURATION);
}

/// Minimum calls: a count window that is not full is judged at the limit's rate from its
/// `minimum_calls`th outcome; the slow-call rate over the same window; the time window's counts.
#[test]
fn minimum_calls_and_rates() {
    let p = Policy {
        minimum_calls: Some(4),
        ..policy(Ratio::new(5, 10), None)
    };
    let window = |outcomes: &[bool]| {
        let mut w = OutcomeWindow::new(10);
        outcomes.iter().for_each(|s| w.push(*s));
        w
    };
    assert!(
        !p.closed_trips(&window(&[false, false, false])),
        "3 < 4 calls"
    );
    assert!(
        p.closed_trips(&window(&[false, false, true, true])),
        "2/4 = 50%"
    );
    assert!(
        !p.closed_trips(&window(&[false, true, true, true, true])),
        "1/5"
    );

    let slow = Policy {
        slow_call: Some((Duration::from_secs(1), SlowCalls::Rate(Ratio::new(3, 4)))),
        ..p
    };
    let calls = window(&[true; 4]);
    assert!(
        slow.slow_trips(&calls, &window(&[false, false, false, true])),
        "3/4 slow"
    );
    assert!(
        !slow.slow_trips(&calls, &window(&[false, false, true, true])),
        "2/4 slow"
    );
    assert!(
        !p.slow_trips(&calls, &window(&[false; 4])),
        "no rate configured"
    );

    let c = |calls, failures, slow| Counts {
        calls,
        failures,
        slow,
    };
    assert!(!slow.timed_trips(c(3, 3, 3)), "under the minimum");
    assert!(slow.timed_trips(c(4, 2, 0)), "failures at 50%");
    assert!(slow.timed_trips(c(4, 0, 3)), "slow at 75%");
    assert!(!slow.timed_trips(c(4, 1, 2)), "neither");
    // No overflow at the extremes.
    assert!(slow.timed_trips(c(u64::MAX, u64::MAX, 0)));
    assert!(!slow.timed_trips(c(u64::MAX, u64::MAX / 2 - 1, 0)));
}
