//! Manual overrides: forcing open and closed.

use super::*;

/// `force_open` opens for the given cooldown (not the policy's), notifies, is shared by every
/// handle of the key, and its cooldown ends in a normal half-open round.
#[test]
fn force_open() {
    let rig = Rig::new("force-open", r(5, 10), None, 60_000);
    let twin = CircuitBreaker::builder("force-open")
        .storage(rig.storage.clone())
        .failure_limit(r(5, 10))
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    twin.force_open(Duration::from_millis(50));
    assert_eq!(rig.cb.state(), Open);
    assert_eq!(
        rig.reject("forced").retry_after(),
        Some(Duration::from_millis(50))
    );
    rig.advance_ms(50);
    let probes: Vec<_> = (0..10).map(|i| rig.admit(&format!("probe {i}"))).collect();
    rig.reject("ten probes out");
    for p in probes {
        p.success();
    }
    assert_eq!(rig.cb.state(), Closed);
    // OPEN -> HALF_OPEN is left out here: `callback_fires_on_open_to_half_open` covers it.
    assert_eq!(rig.changes_except_open_to_half_open(), vec![C_O, H_C]);
}

/// `force_closed` closes from open and from half-open, empties the window, notifies, and makes
/// outstanding probes stale.
#[test]
fn force_closed() {
    let rig = Rig::new("force-closed", r(2, 3), None, 10);
    rig.admit("f").failure();
    rig.admit("s").success();
    rig.cb.force_closed(); // already closed: empties the window, no callback
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    assert!(rig.changes().is_empty());

    for _ in 0..3 {
        rig.admit("f").failure();
    }
    rig.cb.force_closed();
    assert_eq!(rig.cb.state(), Closed);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    rig.admit("f").failure();
    rig.admit("f").failure();
    assert_eq!(rig.cb.state(), Closed, "window of 3 not full after closing");
    rig.admit("f").failure();
    assert_eq!(rig.cb.state(), Open);

    rig.advance_ms(10);
    let probe = rig.admit("probe");
    assert_eq!(rig.cb.state(), HalfOpen);
    rig.cb.force_closed();
    probe.failure(); // stale: the round ended
    assert_eq!(rig.cb.state(), Closed);
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    // OPEN -> HALF_OPEN is left out here: `callback_fires_on_open_to_half_open` covers it.
    assert_eq!(
        rig.changes_except_open_to_half_open(),
        vec![C_O, (Open, Closed), C_O, H_C]
    );
}

/// `force_open` on an open breaker restarts its cooldown with the new duration.
#[test]
fn force_open_while_open_resets_cooldown() {
    let rig = Rig::new("re-force", r(1, 1), None, 100);
    rig.trip(1);
    rig.advance_ms(90);
    rig.cb.force_open(Duration::from_millis(500));
    assert_eq!(rig.cb.cooldown_remaining(), Duration::from_millis(500));
    assert_eq!(rig.changes(), vec![C_O], "Open -> Open is no transition");
}
