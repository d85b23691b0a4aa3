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

/// Table of half-open verdicts, with and without a success limit.
#[test]
fn half_open_table() {
    let with = policy(Ratio::new(1, 1), Some(Ratio::new(2, 3)));
    let without = policy(Ratio::new(2, 4), None);
    let cases: &[(&Policy, &[bool], Option<State>)] = &[
        (&with, &[true, true], None),
        (&with, &[true, false, true], Some(State::Closed)),
        (&with, &[false, false, true], Some(State::Open)),
        (&without, &[true, false, true], None),
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
