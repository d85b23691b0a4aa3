//! Unit tests of `reaper.rs`: when the reaper wakes.

use super::*;

/// The reaper sleeps until the longest-unused idle connection is due, at most half the timeout,
/// and never less than `MIN_PERIOD`.
#[test]
fn wakes_when_the_oldest_is_due_within_bounds() {
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    for (idle, oldest, want) in [
        (s(30), None, s(15)),
        (s(30), Some(s(1)), s(15)),
        (s(30), Some(s(20)), s(10)),
        (s(30), Some(ms(29_950)), MIN_PERIOD),
        (ms(300), None, ms(150)),
        (ms(300), Some(ms(250)), MIN_PERIOD),
        (ms(10), None, MIN_PERIOD),
        (Duration::MAX, None, Duration::MAX / 2),
    ] {
        assert_eq!(
            next_wake(idle, oldest),
            want,
            "idle {idle:?}, oldest {oldest:?}"
        );
    }
}
