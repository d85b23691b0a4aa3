use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::super::{Admission, KeyCell, Lease, Recorded};
use crate::changes::Feed;
use crate::fleet::precedence::{Hold, Remote, Source};
use crate::fleet::Link;
use crate::policy::Policy;
use crate::{ManualClock, Ratio, State, TripPolicy};

/// A cell of a connected shared store that has seen versions up to `newest_seen`.
fn linked_cell(policy: Policy, newest_seen: i64) -> KeyCell {
    linked_cell_on(policy, newest_seen, true, Arc::new(ManualClock::new()))
}

/// A cell of a shared store, connected or not, on `clock`.
fn linked_cell_on(
    policy: Policy,
    newest_seen: i64,
    online: bool,
    clock: Arc<ManualClock>,
) -> KeyCell {
    KeyCell::new(
        "leased".into(),
        policy,
        clock,
        Some(Arc::new(Link {
            online: AtomicBool::new(online),
            newest_seen: AtomicI64::new(newest_seen),
        })),
        "default",
        Feed::new("default"),
    )
}

fn fleet_cell() -> KeyCell {
    linked_cell(Policy::default(), 0)
}

/// One failed call on `cell`; the transition it made, if any.
fn fail_once(cell: &KeyCell) -> Option<crate::cell::Transition> {
    let Admission::Closed(word) = cell.admit() else {
        panic!("a closed cell admits");
    };
    match cell.record(word, None, false) {
        Recorded::Changed(t) => Some(t),
        _ => None,
    }
}

/// The step that opens the cell on its own judgement also holds the decision, with the newest
/// version seen as its basis: a row the listener applies before the store takes the decision up
/// (here, a reload of the CLOSED row this instance has seen) does not undo it, whatever the
/// trip policy; a row newer than the basis ends it, and the store then finds nothing to send.
#[test]
fn a_decision_is_held_from_the_step_that_opens_the_cell() {
    let within = Duration::from_secs(60);
    for (trip, hold) in [
        (TripPolicy::AnyInstance, Hold::Trip),
        (
            TripPolicy::Quorum {
                instances: 2,
                within,
            },
            Hold::Vote,
        ),
    ] {
        let policy = Policy {
            failure_limit: Ratio::new(1, 1),
            trip,
            ..Policy::default()
        };
        let cell = linked_cell(policy, 7);
        let closed = |version| Remote {
            state: State::Closed,
            version,
            remaining: Duration::ZERO,
        };
        let t = fail_once(&cell).expect("one failure of one trips");
        assert_eq!(t.to, State::Open);
        let held = cell.pending_trip().expect("held from the opening step");
        assert_eq!((held.basis, held.hold), (7, hold), "{trip:?}");

        assert_eq!(
            cell.apply_remote(closed(7), Source::Reload { read_at: 0 }),
            None
        );
        assert_eq!(cell.apply_remote(closed(5), Source::Notification), None);
        assert_eq!(
            cell.state(),
            State::Open,
            "{trip:?}: rows not newer than the basis"
        );
        assert_eq!(cell.pending_trip(), Some(held));

        assert!(cell.apply_remote(closed(8), Source::Notification).is_some());
        assert_eq!(cell.state(), State::Closed, "{trip:?}: a newer row wins");
        assert_eq!(cell.pending_trip(), None, "{trip:?}: nothing left to send");
    }
}

/// A caller that looked before a lease arrived and asks after its request ended still waits:
/// the lease is there to take. Once it is taken, nobody waits for nothing.
#[test]
fn a_probe_may_come_while_asked_and_while_a_lease_lies_untaken() {
    let cell = fleet_cell();
    assert!(cell.is_fleet());
    assert!(!cell.probe_may_come(), "nothing asked, nothing held");
    assert!(cell.begin_lease_request());
    assert!(cell.probe_may_come(), "a request in flight");
    cell.add_leases([Lease {
        id: 7,
        expires_at: u64::MAX,
    }]);
    cell.end_lease_request();
    assert!(
        cell.probe_may_come(),
        "the request ended with a lease nobody took yet"
    );
    assert!(cell.take_probe().is_some(), "the lease is taken");
    assert!(!cell.probe_may_come(), "nothing left to wait for");
}

/// Every success is counted once for the fleet's rate and, with a time window, once in the
/// period's calls: on the window's slow path and on the clean fast path, where a fleet rate
/// alone is counted inline and one with a time window by the call beside it.
#[test]
fn a_fleet_rates_successes_are_counted_once_with_or_without_a_time_window() {
    let period = Duration::from_secs(60);
    for time_window in [None, Some(period)] {
        let policy = Policy {
            failure_limit: Ratio::new(1, 2),
            trip: TripPolicy::FleetRate {
                limit: Ratio::new(1, 2),
                min_calls: 1_000,
                period,
            },
            time_window,
            ..Policy::default()
        };
        let cell = linked_cell(policy, 0);
        let rate = cell.rate().expect("a fleet rate counts");
        assert_eq!(rate.sample(0, 1).calls, 0);
        for _ in 0..10 {
            let Admission::Closed(word) = cell.admit() else {
                panic!("a healthy cell admits");
            };
            assert!(matches!(cell.record(word, None, true), Recorded::Nothing));
        }
        assert_eq!(
            rate.sample(1, 1).calls,
            10,
            "{time_window:?}: the fleet's rate"
        );
        if let Some(period) = time_window {
            let generation = cell.load(Ordering::Relaxed).generation();
            let tally = cell.time_window().expect("a time window");
            let now = tally.now(&*cell.clock);
            assert_eq!(
                tally.period_calls(generation, now),
                10,
                "{period:?}: the period's"
            );
        }
    }
}

/// A quorum vote reports the window that tripped: with a time window, the period's failures
/// and all its calls, the successes counted without the lock included.
#[test]
fn a_vote_reports_the_calls_of_the_period_that_tripped() {
    let policy = Policy {
        failure_limit: Ratio::new(1, 2),
        trip: TripPolicy::Quorum {
            instances: 2,
            within: Duration::from_secs(60),
        },
        time_window: Some(Duration::from_secs(60)),
        minimum_calls: Some(2),
        ..Policy::default()
    };
    let cell = linked_cell(policy, 0);
    for _ in 0..6 {
        let Admission::Closed(word) = cell.admit() else {
            panic!("a healthy cell admits");
        };
        assert!(matches!(cell.record(word, None, true), Recorded::Nothing));
    }
    let mut failures = 0;
    while fail_once(&cell).is_none() {
        failures += 1;
        assert!(failures < 10, "six failures of twelve calls trip it");
    }
    assert_eq!(cell.tripped_counts(), (6, 12));
}

/// While the database is away the cell runs its own half-open rounds; one that fails opens it on
/// this instance's judgement again, and a vote then reports that round, not the earlier trip.
#[test]
fn a_failed_local_round_is_what_a_vote_reports() {
    let policy = Policy {
        failure_limit: Ratio::new(2, 2),
        success_limit: Some(Ratio::new(1, 1)),
        trip: TripPolicy::Quorum {
            instances: 2,
            within: Duration::from_secs(60),
        },
        ..Policy::default()
    };
    let clock = Arc::new(ManualClock::new());
    let cell = linked_cell_on(policy, 0, false, clock.clone());
    assert!(fail_once(&cell).is_none(), "one failure of two");
    assert!(fail_once(&cell).is_some(), "two of two trip");
    assert_eq!(cell.tripped_counts(), (2, 2));
    clock.advance(policy.cooldown + Duration::from_secs(1));
    let Admission::Probe(word, None) = cell.admit() else {
        panic!("a local probe once the cooldown is over");
    };
    let Recorded::Changed(t) = cell.record(word, None, false) else {
        panic!("the failed probe opens the cell again");
    };
    assert_eq!(t.to, State::Open);
    assert_eq!(
        cell.tripped_counts(),
        (1, 1),
        "the round's one failed probe"
    );
    assert!(cell.pending_trip().is_some(), "held again");
}
