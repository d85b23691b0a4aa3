//! Unit tests of `window.rs`.

use super::*;

/// The window keeps exactly the last `capacity` outcomes and counts their failures.
#[test]
fn keeps_last_n() {
    let mut w = OutcomeWindow::new(3);
    for s in [false, false, true, true] {
        w.push(s);
    }
    assert_eq!(w.outcomes(), vec![false, true, true]);
    assert_eq!(w.failures(), 1);
    assert!(w.is_full());
    w.push(true);
    assert_eq!(w.failures(), 0);
    w.clear();
    assert_eq!((w.len(), w.failures()), (0, 0));
}

/// Windows wider than one machine word wrap correctly.
#[test]
fn wide_window() {
    let mut w = OutcomeWindow::new(130);
    for i in 0..400 {
        w.push(i % 3 != 0);
    }
    let expect: Vec<bool> = (270..400).map(|i| i % 3 != 0).collect();
    assert_eq!(w.outcomes(), expect);
    assert_eq!(
        w.failures() as usize,
        expect.iter().filter(|s| !**s).count()
    );
}
