use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::super::{KeyCell, Lease};
use crate::changes::Feed;
use crate::policy::Policy;
use crate::ManualClock;

fn fleet_cell() -> KeyCell {
    KeyCell::new(
        "leased".into(),
        Policy::default(),
        Arc::new(ManualClock::new()),
        Some(Arc::new(AtomicBool::new(true))),
        "default",
        Feed::new("default"),
    )
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
