//! [`RateCounter`]: what one key's calls were, for a fleet rate (`TripPolicy::FleetRate`).
//!
//! The database judges the rate of every call of the fleet, so every call is counted, the
//! healthy ones on the one-load fast path too: one relaxed add to a counter on a cache line of
//! this thread's stripe, so that threads calling one key at once do not bounce a line between
//! cores. Failures are counted under the key's lock, where they already are. The instance's
//! reporter (`storage::postgres::rates`) samples the totals every interval and sends, for the
//! keys it reports, the calls and failures of the last period: the difference between the
//! totals now and a sample taken a period ago.
//!
//! Memory ordering: the counters are relaxed. A sample that misses an add still in flight counts
//! it in the next one; nothing else is published with them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// How many stripes the call counter has: enough that the threads of a small pool rarely share
/// one.
const STRIPES: usize = 8;

/// One stripe, on its own cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Stripe(AtomicU64);

/// The calls and failures of one key over some span, from two samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    /// Clock nanoseconds the counts cover.
    pub(crate) span: u64,
}

/// Totals at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at: u64,
    calls: u64,
    failures: u64,
}

/// A key's fleet-rate counts (see the module doc).
#[derive(Debug)]
pub(crate) struct RateCounter {
    calls: [Stripe; STRIPES],
    failures: AtomicU64,
    /// Totals sampled by the reporter, oldest first, back to a period ago.
    samples: Mutex<VecDeque<Sample>>,
    /// Clock nanoseconds until which the fleet judges this key: the instance reports its counts
    /// every interval until then, whatever its own rate (0: not judged).
    judged_until: AtomicU64,
}

/// This thread's stripe, handed out round-robin at its first call.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

impl RateCounter {
    /// Counting from `now` (clock nanoseconds): the first sample is zero then.
    pub(crate) fn new(now: u64) -> RateCounter {
        RateCounter {
            calls: Default::default(),
            failures: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::from([Sample {
                at: now,
                calls: 0,
                failures: 0,
            }])),
            judged_until: AtomicU64::new(0),
        }
    }

    /// One call (of any outcome).
    #[inline]
    pub(crate) fn call(&self) {
        self.calls[stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    /// One failure (counted as a call too, by [`call`](Self::call)).
    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> (u64, u64) {
        let calls = self.calls.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        (calls, self.failures.load(Ordering::Relaxed))
    }

    /// Samples the totals at `now` and returns the counts of the last `period`: since the newest
    /// sample at least a period old, or since counting began. The span is then between the
    /// period and the period plus one sampling interval.
    pub(crate) fn sample(&self, now: u64, period: u64) -> Counts {
        let (calls, failures) = self.totals();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let from = now.saturating_sub(period);
        // Keep one sample at or before the start of the period, and everything after it.
        while samples.len() > 1 && samples.get(1).is_some_and(|s| s.at <= from) {
            samples.pop_front();
        }
        let base = samples.front().copied().unwrap_or(Sample {
            at: now,
            calls,
            failures,
        });
        samples.push_back(Sample {
            at: now,
            calls,
            failures,
        });
        Counts {
            calls: calls.saturating_sub(base.calls),
            failures: failures.saturating_sub(base.failures),
            span: now.saturating_sub(base.at),
        }
    }

    /// The fleet judges the key until `until` (clock nanoseconds), if later than known.
    pub(crate) fn judged_until(&self, until: u64) {
        self.judged_until.fetch_max(until, Ordering::Relaxed);
    }

    /// True while the fleet judges the key.
    pub(crate) fn judged(&self, now: u64) -> bool {
        self.judged_until.load(Ordering::Relaxed) > now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_window_is_the_last_period() {
        let r = RateCounter::new(0);
        for t in 1..=10u64 {
            for _ in 0..10 {
                r.call();
            }
            if t % 2 == 0 {
                r.failure();
                r.call();
            }
            let w = r.sample(t * SECOND, 4 * SECOND);
            if t >= 4 {
                assert_eq!((w.calls, w.span), (42, 4 * SECOND), "at {t} s: {w:?}");
                assert_eq!(w.failures, 2);
            }
        }
        assert!(!r.judged(0));
        r.judged_until(5);
        r.judged_until(3);
        assert!(r.judged(4) && !r.judged(5));
    }

    proptest! {
        /// Sampled at any pace, a window counts exactly the calls made since the newest sample
        /// at least a period old (or since the start), and spans less than a period plus the
        /// longest gap between samples.
        #[test]
        fn windows_count_exactly_what_was_called(
            steps in proptest::collection::vec((1u64..5 * SECOND, 0u64..50, 0u64..5), 1..60),
            period in SECOND..20 * SECOND,
        ) {
            let r = RateCounter::new(0);
            let mut now = 0;
            let mut history = vec![(0u64, 0u64, 0u64)];
            let (mut calls, mut failures) = (0, 0);
            let mut gap = 0;
            for (dt, c, f) in steps {
                let f = f.min(c);
                (0..c).for_each(|_| r.call());
                (0..f).for_each(|_| r.failure());
                calls += c;
                failures += f;
                now += dt;
                gap = gap.max(dt);
                let w = r.sample(now, period);
                let base = history
                    .iter()
                    .rev()
                    .find(|(at, _, _)| *at <= now.saturating_sub(period))
                    .copied()
                    .unwrap_or(history[0]);
                prop_assert_eq!((w.calls, w.failures), (calls - base.1, failures - base.2));
                prop_assert!(w.span <= period + gap, "{:?} over {} with gaps up to {}", w, period, gap);
                history.push((now, calls, failures));
            }
        }
    }
}
