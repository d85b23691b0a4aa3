//! Unit tests of `listener.rs`.

use super::*;
use crate::storage::postgres::PostgresOptions;

/// Backoff grows, is capped (5 s by default, or `reconnect_backoff_max`), and never goes below
/// half its ceiling.
#[test]
fn backoff_is_capped_and_jittered() {
    let cap = PostgresOptions::new().reconnect_backoff_max;
    assert_eq!(cap, Duration::from_secs(5));
    let mut b = Backoff::new(cap);
    let first = b.next_delay();
    assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
    let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
    assert!(delays.iter().all(|d| *d <= cap));
    assert!(delays[15] >= cap / 2);
    let mut short = Backoff::new(Duration::from_millis(400));
    let delays: Vec<Duration> = (0..20).map(|_| short.next_delay()).collect();
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
    assert!(delays[10] >= Duration::from_millis(200));
}
