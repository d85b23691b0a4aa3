//! Unit tests of `time_window.rs`, on a `ManualClock`.

use super::*;
use crate::{Clock, ManualClock};

const SEC: Duration = Duration::from_secs(1);

fn counts(calls: u64, failures: u64, slow: u64) -> Counts {
    Counts {
        calls,
        failures,
        slow,
    }
}

/// Outcomes count for one period and are forgotten slice by slice after it.
#[test]
fn outcomes_expire_slice_by_slice() {
    let clock = ManualClock::new();
    let mut w = TimeWindow::new(10 * SEC); // slices of 1 s
    w.push(clock.now_nanos(), false, false); // t = 0
    clock.advance(SEC);
    w.push(clock.now_nanos(), true, true); // t = 1
    w.push(clock.now_nanos(), false, true);
    assert_eq!(w.counts(), counts(3, 2, 2));
    clock.advance(8 * SEC); // t = 9: all still inside
    assert_eq!(w.counts_at(clock.now_nanos()), counts(3, 2, 2));
    clock.advance(SEC); // t = 10: the slice of t = 0 is gone
    assert_eq!(w.counts_at(clock.now_nanos()), counts(2, 1, 2));
    clock.advance(SEC); // t = 11: the slice of t = 1 too
    assert_eq!(w.counts_at(clock.now_nanos()), Counts::default());
}

/// A gap longer than the period empties the window at once; so does `clear`.
#[test]
fn long_gap_and_clear_empty_it() {
    let clock = ManualClock::new();
    let mut w = TimeWindow::new(10 * SEC);
    for _ in 0..5 {
        w.push(clock.now_nanos(), false, false);
    }
    clock.advance(3600 * SEC);
    w.push(clock.now_nanos(), true, false);
    assert_eq!(w.counts(), counts(1, 0, 0));
    w.clear();
    assert_eq!(w.counts_at(clock.now_nanos()), Counts::default());
    w.push(clock.now_nanos(), false, false);
    assert_eq!(w.counts(), counts(1, 1, 0));
}

/// Within a slice everything adds up; a time from the past counts in the newest slice.
#[test]
fn same_slice_and_earlier_time() {
    let mut w = TimeWindow::new(Duration::from_millis(100)); // slices of 10 ms
    let ms = 1_000_000;
    w.push(25 * ms, true, false);
    w.push(29 * ms, false, false);
    w.push(5 * ms, false, true); // earlier than the head: kept, not lost
    assert_eq!(w.counts(), counts(3, 2, 1));
    // Slice 2 (20..30 ms) leaves at 120 ms.
    assert_eq!(w.counts_at(119 * ms), counts(3, 2, 1));
    assert_eq!(w.counts_at(120 * ms), Counts::default());
}

/// Degenerate periods do not panic: zero (refused by the builder) and ten years.
#[test]
fn extreme_periods() {
    let mut zero = TimeWindow::new(Duration::ZERO);
    zero.push(0, false, false);
    zero.push(u64::MAX, false, false);
    assert_eq!(zero.counts(), counts(1, 1, 0));
    let mut huge = TimeWindow::new(crate::MAX_DURATION);
    huge.push(0, false, false);
    huge.push(u64::MAX, true, false);
    assert_eq!(
        huge.counts().calls,
        1,
        "u64::MAX is centuries past a ten-year window"
    );
}
