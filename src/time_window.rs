//! [`TimeWindow`]: the outcomes of the last `period` as a ring of per-slice counters, for
//! [`Builder::time_window`](crate::Builder::time_window).
//!
//! Pure data, like `window.rs`: the caller passes the time (the cell's [`Clock`](crate::Clock))
//! and keeps it behind the key's private lock.

use std::time::Duration;

use crate::clock::duration_nanos;

/// How many slices a period is cut into, as Resilience4j does: an outcome stops counting between
/// 0.9 and 1 period after it was recorded.
pub(crate) const SLICES: usize = 10;

/// Calls, failures and slow calls counted over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
    }

    fn sub(&mut self, other: Counts) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

/// The last `period` of outcomes in [`SLICES`] counters of `period / SLICES` each, aligned on
/// multiples of the slice since the clock's origin, with running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeWindow {
    slice_nanos: u64,
    buckets: [Counts; SLICES],
    /// The slice number (`now / slice_nanos`) of the newest bucket.
    head: u64,
    totals: Counts,
}

impl TimeWindow {
    /// A window of `period`; a period shorter than [`SLICES`] nanoseconds (refused by the
    /// builder) is treated as one nanosecond per slice.
    pub(crate) fn new(period: Duration) -> Self {
        TimeWindow {
            slice_nanos: (duration_nanos(period) / SLICES as u64).max(1),
            buckets: [Counts::default(); SLICES],
            head: 0,
            totals: Counts::default(),
        }
    }

    /// Moves the window to `now`, forgetting the slices that fell out of it.
    fn advance(&mut self, now: u64) {
        let slice = now / self.slice_nanos;
        if slice <= self.head {
            // The same slice, or a clock that went back (never for a monotonic one): count it in
            // the newest slice rather than rewrite history.
            return;
        }
        let gone = slice - self.head;
        if gone >= SLICES as u64 {
            self.buckets = [Counts::default(); SLICES];
            self.totals = Counts::default();
        } else {
            for s in self.head + 1..=slice {
                let b = &mut self.buckets[(s % SLICES as u64) as usize];
                self.totals.sub(*b);
                *b = Counts::default();
            }
        }
        self.head = slice;
    }

    /// Records one outcome at `now` (clock nanoseconds).
    pub(crate) fn push(&mut self, now: u64, success: bool, slow: bool) {
        self.advance(now);
        let one = Counts {
            calls: 1,
            failures: u64::from(!success),
            slow: u64::from(slow),
        };
        self.buckets[(self.head % SLICES as u64) as usize].add(one);
        self.totals.add(one);
    }

    /// What the window holds as of the last [`push`](Self::push).
    #[cfg(test)]
    pub(crate) fn counts(&self) -> Counts {
        self.totals
    }

    /// What the window holds at `now`, without recording anything.
    pub(crate) fn counts_at(&mut self, now: u64) -> Counts {
        self.advance(now);
        self.totals
    }

    pub(crate) fn clear(&mut self) {
        self.buckets = [Counts::default(); SLICES];
        self.totals = Counts::default();
    }
}

#[cfg(test)]
#[path = "time_window_tests.rs"]
mod tests;
