use std::sync::atomic::{AtomicBool, AtomicI64};
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
    KeyCell::new(
        "leased".into(),
        policy,
        Arc::new(ManualClock::new()),
        Some(Arc::new(Link {
            online: AtomicBool::new(true),
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
