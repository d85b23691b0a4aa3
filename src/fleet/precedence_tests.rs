//! Unit tests of `precedence.rs`: each row of the module's table.

use super::*;

fn r(state: State, version: i64) -> Remote {
    Remote {
        state,
        version,
        remaining: Duration::from_secs(1),
    }
}

fn applies(v: Verdict, state: State, version: i64) -> bool {
    matches!(v, Verdict::Apply(x) if x.state == state && x.version == version)
}

const NOW: u64 = 1_000;
/// A reload whose query was sent after everything the tests applied at `NOW`.
const RELOAD: Source = Source::Reload { read_at: NOW + 1 };

#[test]
fn notifications_apply_only_when_newer() {
    let mut view = FleetView::default();
    assert!(applies(
        view.judge(r(State::Open, 5), Source::Notification, NOW),
        State::Open,
        5
    ));
    assert_eq!(
        view.judge(r(State::Closed, 5), Source::Notification, NOW),
        Verdict::Ignore
    );
    assert_eq!(
        view.judge(r(State::Closed, 4), Source::Notification, NOW),
        Verdict::Ignore
    );
    assert_eq!(view.version, 5);
}

#[test]
fn answers_never_lower_a_newer_version() {
    let mut view = FleetView {
        version: 9,
        ..FleetView::default()
    };
    assert_eq!(
        view.judge(r(State::Closed, 8), Source::Answer, NOW),
        Verdict::Ignore
    );
    assert!(applies(
        view.judge(r(State::Open, 9), Source::Answer, NOW),
        State::Open,
        9
    ));
    assert_eq!(view.version, 9);
}

#[test]
fn notification_during_override_is_kept_and_applied_after_an_older_answer() {
    let mut view = FleetView {
        version: 10,
        overrides_in_flight: 1,
        ..FleetView::default()
    };
    // B trips (v21) while our close (v20) is in flight; its NOTIFY arrives first.
    assert_eq!(
        view.judge(r(State::Open, 21), Source::Notification, NOW),
        Verdict::Ignore
    );
    assert_eq!(
        view.judge(r(State::Closed, 15), Source::Notification, NOW),
        Verdict::Ignore
    );
    let v = view.judge(
        r(State::Closed, 20),
        Source::OverrideAnswer { superseded: false },
        NOW,
    );
    assert!(applies(v, State::Open, 21), "{v:?}");
    assert_eq!((view.version, view.overrides_in_flight), (21, 0));
    assert!(view.deferred.is_none());
}

#[test]
fn override_answer_newer_than_what_arrived_meanwhile_wins() {
    let mut view = FleetView {
        version: 10,
        overrides_in_flight: 1,
        ..FleetView::default()
    };
    assert_eq!(
        view.judge(r(State::Open, 19), Source::Notification, NOW),
        Verdict::Ignore
    );
    let v = view.judge(
        r(State::Closed, 20),
        Source::OverrideAnswer { superseded: false },
        NOW,
    );
    assert!(applies(v, State::Closed, 20));
}

#[test]
fn superseded_override_raises_version_and_the_trips_basis() {
    let mut view = FleetView {
        version: 10,
        overrides_in_flight: 1,
        pending_trip: Some(PendingTrip {
            deadline: NOW * 10,
            basis: 12,
            seq: 2,
            hold: Hold::Trip,
        }),
        ..FleetView::default()
    };
    let v = view.judge(
        r(State::Closed, 20),
        Source::OverrideAnswer { superseded: true },
        NOW,
    );
    assert_eq!(v, Verdict::Ignore);
    assert_eq!(view.version, 20);
    assert_eq!(view.pending_trip.map(|p| p.basis), Some(20));
}

#[test]
fn reload_is_authoritative_except_over_a_trip_ahead_of_it() {
    let mut view = FleetView {
        version: 50,
        ..FleetView::default()
    };
    // Lower version: the table is the truth (a forged or lost version).
    assert!(applies(
        view.judge(r(State::Closed, 3), RELOAD, NOW),
        State::Closed,
        3
    ));
    view.pending_trip = Some(PendingTrip {
        deadline: NOW * 10,
        basis: 7,
        seq: 1,
        hold: Hold::Trip,
    });
    assert_eq!(
        view.judge(r(State::Closed, 7), RELOAD, NOW),
        Verdict::Ignore
    );
    // A row newer than the trip's basis: a later decision; the trip is dropped.
    assert!(applies(
        view.judge(r(State::Closed, 8), RELOAD, NOW),
        State::Closed,
        8
    ));
    assert!(view.pending_trip.is_none());
}

#[test]
fn reload_drops_an_expired_trip() {
    let mut view = FleetView {
        pending_trip: Some(PendingTrip {
            deadline: NOW,
            basis: 7,
            seq: 1,
            hold: Hold::Trip,
        }),
        ..FleetView::default()
    };
    assert!(applies(
        view.judge(r(State::Closed, 2), RELOAD, NOW),
        State::Closed,
        2
    ));
    assert!(view.pending_trip.is_none());
}

#[test]
fn reload_waits_for_an_override_in_flight() {
    let mut view = FleetView {
        overrides_in_flight: 1,
        ..FleetView::default()
    };
    assert_eq!(view.judge(r(State::Open, 2), RELOAD, NOW), Verdict::Ignore);
}

#[test]
fn notification_older_than_a_pending_trips_basis_keeps_the_trip() {
    let mut view = FleetView {
        version: 40,
        pending_trip: Some(PendingTrip {
            deadline: NOW * 10,
            basis: 99,
            seq: 1,
            hold: Hold::Trip,
        }),
        ..FleetView::default()
    };
    // A close committed before we decided: our trip wins in the database too.
    assert_eq!(
        view.judge(r(State::Closed, 50), Source::Notification, NOW),
        Verdict::Ignore
    );
    assert_eq!(view.version, 50);
    assert!(view.pending_trip.is_some());
    // A close after our decision: follow it, the trip is dropped.
    assert!(applies(
        view.judge(r(State::Closed, 100), Source::Notification, NOW),
        State::Closed,
        100
    ));
    assert!(view.pending_trip.is_none());
}

#[test]
fn abandoned_override_releases_what_arrived_meanwhile() {
    let mut view = FleetView {
        version: 5,
        overrides_in_flight: 1,
        ..FleetView::default()
    };
    assert_eq!(
        view.judge(r(State::Open, 6), Source::Notification, NOW),
        Verdict::Ignore
    );
    assert!(applies(view.override_abandoned(NOW), State::Open, 6));
}

#[test]
fn answered_trip_is_no_longer_pending_unless_a_later_one() {
    let mut view = FleetView {
        pending_trip: Some(PendingTrip {
            deadline: NOW * 10,
            basis: 1,
            seq: 2,
            hold: Hold::Trip,
        }),
        ..FleetView::default()
    };
    view.trip_answered(1);
    assert!(view.pending_trip.is_some());
    view.trip_answered(2);
    assert!(view.pending_trip.is_none());
}

/// An answer applied while a reload's query was on its way (an override retried as the listener
/// reconnects) is newer than that snapshot: the snapshot's older row does not undo it. A reload
/// sent after the answer is the table, and applies.
#[test]
fn a_reload_read_before_an_answer_does_not_undo_it() {
    let mut view = FleetView::default();
    assert!(applies(
        view.judge(r(State::Open, 10), Source::Answer, NOW),
        State::Open,
        10
    ));
    assert_eq!(
        view.judge(
            r(State::Closed, 0),
            Source::Reload { read_at: NOW - 1 },
            NOW
        ),
        Verdict::Ignore,
        "read before the answer"
    );
    assert!(applies(
        view.judge(
            r(State::Closed, 0),
            Source::Reload { read_at: NOW + 1 },
            NOW + 2
        ),
        State::Closed,
        0
    ));
}
