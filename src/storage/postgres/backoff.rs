//! Capped exponential backoff with jitter, for everything that tries the database again: the
//! listener's reconnects and the outbox's retries. Instances that lost the database together
//! spread out instead of coming back in step.

use std::time::Duration;

/// 50 ms doubling to `cap`, each delay drawn in [ceiling/2, ceiling].
#[derive(Debug)]
pub(crate) struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(50);

    pub(crate) fn new(cap: Duration) -> Backoff {
        Backoff { attempt: 0, cap }
    }

    /// The next pause.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos / 2 + crate::jitter::below(nanos / 2 + 1))
    }

    /// Starts over from the base (it worked).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::postgres::PostgresOptions;

    /// Backoff grows, is capped (5 s by default, or `reconnect_backoff_max`), never goes below
    /// half its ceiling, and starts over when reset.
    #[test]
    fn backoff_is_capped_jittered_and_reset() {
        let cap = PostgresOptions::new().reconnect_backoff_max;
        assert_eq!(cap, Duration::from_secs(5));
        let mut b = Backoff::new(cap);
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(25) && first <= Duration::from_millis(50));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= cap));
        assert!(delays[15] >= cap / 2);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(50));
        let mut short = Backoff::new(Duration::from_millis(400));
        let delays: Vec<Duration> = (0..20).map(|_| short.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays[10] >= Duration::from_millis(200));
    }
}
