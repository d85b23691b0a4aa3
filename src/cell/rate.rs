//! [`RateCounter`]: what one key's calls were, for a fleet rate (`TripPolicy::FleetRate`).
//!
//! The database judges the rate of every call of the fleet, so every call is counted, the
//! healthy ones on the one-load fast path too. Each thread counts on a cache line no other
//! thread writes (its number from `thread_slot.rs`), with a plain load and store: no locked
//! add, which alone would cost more than the rest of a healthy call, and no line bouncing
//! between cores. Threads without a number of their own share one counter and add atomically.
//! Failures are counted under the key's lock, where they already are. The instance's
//! reporter (`storage::postgres::rates`) samples the totals every interval and sends, for the
//! keys it reports, the calls and failures of the last period: the difference between the
//! totals now and a sample taken a period ago.
//!
//! Memory ordering: the counters are relaxed. A sample that misses an add still in flight counts
//! it in the next one; nothing else is published with them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::thread_slot;

/// How many threads count on a stripe of their own: twice the cores, from 8 to
/// [`thread_slot::EXCLUSIVE`], so that a key costs 0.5 to 4 KiB. Threads numbered past it share
/// one more.
fn own_stripes() -> usize {
    static OWN: OnceLock<usize> = OnceLock::new();
    *OWN.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        (2 * cores).clamp(8, thread_slot::EXCLUSIVE)
    })
}

/// One thread's calls, on its own cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Stripe(AtomicU64);

impl Stripe {
    /// One more, by the one thread that writes this stripe: a load and a store, not a locked
    /// add.
    #[inline]
    fn add_own(&self) {
        let n = self.0.load(Ordering::Relaxed);
        self.0.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

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
    /// Calls by thread number.
    calls: Box<[Stripe]>,
    /// Calls of threads numbered past `calls` (or without a number), added atomically.
    shared: Stripe,
    failures: AtomicU64,
    /// Totals sampled by the reporter, oldest first, back to a period ago.
    samples: Mutex<VecDeque<Sample>>,
    /// Clock nanoseconds until which the fleet judges this key: the instance reports its counts
    /// every interval until then, whatever its own rate (0: not judged).
    judged_until: AtomicU64,
    /// Clock nanoseconds until which the fleet holds this instance an outlier of the key
    /// (`docs::outliers`): its own window judges it meanwhile (0: not one).
    outlier_until: AtomicU64,
}

impl RateCounter {
    /// Counting from `now` (clock nanoseconds): the first sample is zero then.
    pub(crate) fn new(now: u64) -> RateCounter {
        RateCounter {
            calls: (0..own_stripes()).map(|_| Stripe::default()).collect(),
            shared: Stripe::default(),
            failures: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::from([Sample {
                at: now,
                calls: 0,
                failures: 0,
            }])),
            judged_until: AtomicU64::new(0),
            outlier_until: AtomicU64::new(0),
        }
    }

    /// One call (of any outcome).
    #[inline]
    pub(crate) fn call(&self) {
        if !self.call_on_own_stripe() {
            self.call_elsewhere();
        }
    }

    /// One call, counted on this thread's own stripe if it has one already; false if it has
    /// none yet, or none at all. One bounds check covers both: a number not asked for yet, or
    /// none to be had, is past every stripe.
    #[inline]
    pub(crate) fn call_on_own_stripe(&self) -> bool {
        self.call_on_stripe(thread_slot::raw())
    }

    /// [`call_on_own_stripe`](Self::call_on_own_stripe) with the thread's number read already
    /// ([`thread_slot::raw`]).
    #[inline]
    pub(crate) fn call_on_stripe(&self, thread: usize) -> bool {
        match self.calls.get(thread) {
            Some(stripe) => {
                stripe.add_own();
                true
            }
            None => false,
        }
    }

    /// One call by a thread without a stripe of its own yet: it takes its number, and counts on
    /// its stripe or the shared one.
    #[cold]
    pub(crate) fn call_elsewhere(&self) {
        match self.calls.get(thread_slot::index()) {
            Some(stripe) => stripe.add_own(),
            None => {
                self.shared.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One failure (counted as a call too, by [`call`](Self::call)).
    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn totals(&self) -> (u64, u64) {
        let calls = self
            .calls
            .iter()
            .chain([&self.shared])
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum();
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

    /// The database's answer to a report at `now`: this instance is an outlier of the key
    /// until `until` (0: it is not one). True when that changes what [`outlier`](Self::outlier)
    /// said at `now`.
    pub(crate) fn outlier_until(&self, now: u64, until: u64) -> bool {
        let was = self.outlier_until.swap(until, Ordering::Relaxed) > now;
        was != (until > now)
    }

    /// True while the fleet holds this instance an outlier of the key.
    pub(crate) fn outlier(&self, now: u64) -> bool {
        self.outlier_until.load(Ordering::Relaxed) > now
    }

    /// True once, when the last answer's outlier time ran out by `now` without a new answer
    /// (the instance stopped reporting: its rate fell under the limit).
    pub(crate) fn outlier_lapsed(&self, now: u64) -> bool {
        let until = self.outlier_until.load(Ordering::Relaxed);
        until != 0
            && until <= now
            && self
                .outlier_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
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
        // Outliers: each answer replaces the last, and says whether it changed anything.
        assert!(!r.outlier(0));
        assert!(r.outlier_until(1, 9));
        assert!(!r.outlier_until(2, 12), "still one");
        assert!(
            r.outlier(11) && !r.outlier(12),
            "until the last answer's end"
        );
        assert!(r.outlier_until(3, 0), "no longer one");
        assert!(!r.outlier(3));
        assert!(
            !r.outlier_until(20, 15),
            "an answer already past changes nothing"
        );
        assert!(
            r.outlier_lapsed(20) && !r.outlier_lapsed(21),
            "its end is told once"
        );
        r.outlier_until(30, 40);
        assert!(!r.outlier_lapsed(39), "not before its end");
    }

    /// More threads than own stripes, counting at once: none of their calls is lost, neither
    /// on the stripes of their own (a lost update if two threads shared one) nor on the shared.
    #[test]
    fn threads_counting_at_once_lose_no_call() {
        let r = std::sync::Arc::new(RateCounter::new(0));
        let threads = own_stripes() + 8;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (r, barrier) = (r.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..1_000_000).for_each(|_| r.call());
                })
            })
            .collect();
        for w in workers {
            // `join` fails only if the thread panicked; counting does not panic.
            w.join().expect("the thread counts");
        }
        assert_eq!(r.sample(SECOND, SECOND).calls, threads as u64 * 1_000_000);
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
