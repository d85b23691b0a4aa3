//! Timing calls for the slow-call threshold ([`Builder::slow_call`](crate::Builder::slow_call)):
//! the threshold as a call needs it, which reading of the clock times it, and the two readings.

use std::time::Duration;

use super::CircuitBreaker;
use crate::clock::Clock;
use crate::SlowCalls;

/// [`Builder::slow_call`](crate::Builder::slow_call) as a call needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowCall {
    pub(crate) threshold: Duration,
    pub(crate) as_failure: bool,
    /// Timed on the clock's coarse reading: the threshold is at least [`COARSE_FACTOR`] of its
    /// resolution, so a duration is known to within 1/25 of the threshold for a fraction of the
    /// precise reading's cost.
    coarse: bool,
}

/// How many coarse ticks a slow-call threshold must span to be timed on the coarse clock
/// (4 ms ticks: thresholds from 100 ms).
const COARSE_FACTOR: u32 = 25;

impl SlowCall {
    /// The threshold `threshold`, counted as `counts_as`, timed on `clock`.
    pub(crate) fn new(threshold: Duration, counts_as: SlowCalls, clock: &dyn Clock) -> SlowCall {
        let tick = clock.coarse_resolution();
        SlowCall {
            threshold,
            as_failure: counts_as == SlowCalls::AsFailure,
            coarse: !tick.is_zero() && threshold >= tick.saturating_mul(COARSE_FACTOR),
        }
    }
}

impl CircuitBreaker {
    /// The clock reading a call starts at, only when the breaker has a slow-call threshold.
    #[inline]
    pub(crate) fn timing_started(&self) -> Option<u64> {
        self.inner.slow_call.map(|s| self.clock_reading(s))
    }

    /// How long since `started` (from [`timing_started`](Self::timing_started)).
    pub(crate) fn elapsed_since(&self, started: u64) -> Duration {
        let now = self.inner.slow_call.map_or_else(
            || self.inner.cell.clock.now_nanos(),
            |s| self.clock_reading(s),
        );
        Duration::from_nanos(now.saturating_sub(started))
    }

    /// The clock as `slow` times calls: coarse or precise.
    #[inline]
    fn clock_reading(&self, slow: SlowCall) -> u64 {
        let clock = &self.inner.cell.clock;
        if slow.coarse {
            clock.coarse_nanos()
        } else {
            clock.now_nanos()
        }
    }
}
