//! Unit tests of `listener.rs`.

use super::*;

/// Backoff grows, is capped at 5 s, and never goes below half its ceiling.
#[test]
fn backoff_is_capped_and_jittered() {
    let mut b = Backoff::default();
    let first = b.next_delay();
    assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
    let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
    assert!(delays.iter().all(|d| *d <= Backoff::CAP));
    assert!(delays[15] >= Backoff::CAP / 2);
}
