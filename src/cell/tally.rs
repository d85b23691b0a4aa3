//! [`Tally`]: the calls of a time window (`Builder::time_window`), counted without the lock, so
//! that a success costs a clock reading and one compare-and-swap.
//!
//! The period is cut into [`SLICES`] slices as in `time_window.rs`; each slice's calls are one
//! atomic word, `tag (16) | slice (24) | calls (24)`:
//!
//! * `tag` names the window the calls belong to: the cell's epoch (low bits of its generation)
//!   plus the window's clears. A word of another tag is an earlier window's and counts for
//!   nothing; an outcome admitted in an earlier epoch finds a newer tag and counts as neither.
//!   Every clear empties the slots, so the tags in use are never far apart.
//! * `slice` is the slice number (time / slice length), modulo 2^24; a word of a slice that left
//!   the period is reused by the next slice that maps to it, so nothing ever has to be swept.
//!   Only a slot untouched for 2^24 slices (19 days at a one-second period) could pass for
//!   current; its calls would then count for one period.
//! * `calls` saturates at 2^24 − 1 a slice.
//!
//! Failures and slow calls stay under the key's lock (`TimeWindow`): they are few, and a
//! failure is judged anyway. The lock publishes an upper bound of the period's failures and slow
//! calls (`hint`). A success adds its call, then reads the hint: while it is zero nothing can
//! trip; otherwise the success counts the period's calls and takes the lock only when the bound
//! says the limit may be reached (see [`Tally::success`] for why no trip is missed).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{duration_nanos, Clock};
use crate::policy::Policy;
use crate::time_window::{Counts, SLICES};

const CALLS_BITS: u32 = 24;
const SLICE_BITS: u32 = 24;
const CALLS_MASK: u64 = (1 << CALLS_BITS) - 1;
const SLICE_MASK: u64 = (1 << SLICE_BITS) - 1;
const TAG_SHIFT: u32 = CALLS_BITS + SLICE_BITS;

/// How many coarse ticks a slice must span to be timed on the coarse clock (as slow calls are,
/// `breaker/timing.rs`): an outcome then leaves the period within 1/25 of a slice of its time.
const COARSE_FACTOR: u32 = 25;

/// The calls of a time window, without the lock. All zero (no slice length) while the policy
/// has no time window.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Nanoseconds a slice; 0: the policy has no time window.
    slice_nanos: AtomicU64,
    /// `u64::MAX / slice_nanos`: a slice number is a multiplication, not a division (which
    /// alone costs about a third of a success).
    inverse: AtomicU64,
    /// 1 when timed on the clock's coarse reading.
    coarse: AtomicU32,
    /// How often the window was cleared, part of the tag.
    clears: AtomicU32,
    /// Failure limit, for the lock-free bound: `num (16) | den (16) | minimum calls (32)`.
    limit: AtomicU64,
    /// Slow-call limit as `num (16) | den (16)`; 0 without one.
    slow_limit: AtomicU64,
    /// Upper bound of the period's failures (high 32 bits) and slow calls (low 32), written
    /// under the lock.
    hint: AtomicU64,
    slots: [AtomicU64; SLICES],
}

/// What a success found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// Counted; the window cannot have reached its limit.
    Done,
    /// Counted; the window may have reached its limit: judge it under the lock.
    Judge,
    /// Not counted: the window was restarted since the call was admitted, or there is none.
    Neither,
}

impl Tally {
    /// Takes `policy`'s time window and limits (under the key's lock). The caller clears the
    /// window when its period changed.
    pub(crate) fn configure(&self, policy: &Policy, clock: &dyn Clock) {
        let Some(period) = policy.time_window else {
            self.slice_nanos.store(0, Ordering::Relaxed);
            return;
        };
        let slice = (duration_nanos(period) / SLICES as u64).max(1);
        let tick = clock.coarse_resolution();
        let coarse =
            !tick.is_zero() && Duration::from_nanos(slice) >= tick.saturating_mul(COARSE_FACTOR);
        let ratio = |r: crate::Ratio| {
            (u64::from(r.numerator()) & 0xFFFF) << 16 | (u64::from(r.denominator()) & 0xFFFF)
        };
        self.limit.store(
            ratio(policy.failure_limit) << 32 | u64::from(policy.minimum_calls()),
            Ordering::Relaxed,
        );
        self.slow_limit
            .store(policy.slow_rate().map_or(0, ratio), Ordering::Relaxed);
        self.coarse.store(u32::from(coarse), Ordering::Relaxed);
        self.inverse.store(u64::MAX / slice, Ordering::Relaxed);
        self.slice_nanos.store(slice, Ordering::Release);
    }

    /// True while the policy has a time window.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.slice_nanos.load(Ordering::Relaxed) != 0
    }

    /// The window's time now, on the reading it is timed on.
    #[inline]
    pub(crate) fn now(&self, clock: &dyn Clock) -> u64 {
        if self.coarse.load(Ordering::Relaxed) != 0 {
            clock.coarse_nanos()
        } else {
            clock.now_nanos()
        }
    }

    /// Starts the window over (under the lock, before a new epoch's word is stored): a new tag,
    /// and every slot emptied, so that the tags in use stay within a few of each other.
    pub(crate) fn clear(&self) {
        self.clears.fetch_add(1, Ordering::SeqCst);
        for slot in &self.slots {
            slot.store(0, Ordering::SeqCst);
        }
        self.hint.store(0, Ordering::SeqCst);
    }

    /// The upper bound of the period's failures and slow calls, after the lock judged.
    pub(crate) fn set_hint(&self, c: Counts) {
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let bits = u64::from(clamp(c.failures)) << 32 | u64::from(clamp(c.slow));
        self.hint.store(bits, Ordering::SeqCst);
    }

    /// `now / slice_nanos`. The product with the inverse is the quotient or one less; checked,
    /// and divided only when it is not (rarely, or when a new period was half seen).
    #[inline]
    fn slice_at(&self, now: u64, slice_nanos: u64) -> u64 {
        let inverse = self.inverse.load(Ordering::Relaxed);
        let q = ((u128::from(now) * u128::from(inverse)) >> 64) as u64;
        match q.checked_mul(slice_nanos) {
            Some(p) if p <= now && now - p < slice_nanos => q,
            _ => now / slice_nanos,
        }
    }

    fn tag(&self, generation: u32) -> u64 {
        u64::from(generation.wrapping_add(self.clears.load(Ordering::SeqCst)) & 0xFFFF)
    }

    /// Adds one call at `now` to the window of epoch `generation`; the slot's word after it, or
    /// `None` when that window was replaced (counts as neither).
    fn add(&self, generation: u32, now: u64) -> Option<(usize, u64)> {
        let slice_nanos = self.slice_nanos.load(Ordering::Acquire);
        if slice_nanos == 0 {
            return None;
        }
        let slice = self.slice_at(now, slice_nanos);
        let index = (slice % SLICES as u64) as usize;
        let (tag, slice) = (self.tag(generation), slice & SLICE_MASK);
        let slot = &self.slots[index];
        let mut w = slot.load(Ordering::Relaxed);
        loop {
            let (w_tag, w_slice) = (w >> TAG_SHIFT, (w >> CALLS_BITS) & SLICE_MASK);
            let next = if w_tag == tag {
                // This slice, or a later one a thread with a newer reading already started:
                // counted there rather than wiping it.
                let ahead = w_slice.wrapping_sub(slice) & SLICE_MASK;
                if w_slice == slice || (ahead != 0 && ahead < SLICES as u64) {
                    if w & CALLS_MASK == CALLS_MASK {
                        return Some((index, w));
                    }
                    w + 1
                } else {
                    tag << TAG_SHIFT | slice << CALLS_BITS | 1
                }
            } else if (w_tag.wrapping_sub(tag) & 0xFFFF) < 0x8000 && w != 0 {
                return None; // a newer window: admitted before it started
            } else {
                tag << TAG_SHIFT | slice << CALLS_BITS | 1
            };
            match slot.compare_exchange_weak(w, next, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => return Some((index, next)),
                Err(seen) => w = seen,
            }
        }
    }

    /// The calls of epoch `generation`'s window in the period ending at `now`, with slot `own`
    /// read as given (the word a success just wrote, so that two successes racing in one slice
    /// see different counts, as they would one after the other).
    fn calls(&self, generation: u32, now: u64, own: Option<(usize, u64)>) -> u64 {
        let slice_nanos = self.slice_nanos.load(Ordering::Acquire).max(1);
        let slice = self.slice_at(now, slice_nanos) & SLICE_MASK;
        let tag = self.tag(generation);
        (0..SLICES)
            .map(|i| match own {
                Some((index, w)) if index == i => w,
                _ => self.slots[i].load(Ordering::SeqCst),
            })
            .filter(|w| {
                let age = slice.wrapping_sub((w >> CALLS_BITS) & SLICE_MASK) & SLICE_MASK;
                w >> TAG_SHIFT == tag && (age < SLICES as u64 || age > SLICE_MASK - SLICES as u64)
            })
            .map(|w| w & CALLS_MASK)
            .sum()
    }

    /// Counts a call recorded under the lock (a failure or a slow call; the lock judges).
    pub(crate) fn locked_call(&self, generation: u32, now: u64) {
        self.add(generation, now);
    }

    /// The period's calls as the lock judges them.
    pub(crate) fn period_calls(&self, generation: u32, now: u64) -> u64 {
        self.calls(generation, now, None)
    }

    /// Counts a closed success of epoch `generation` without the lock.
    ///
    /// A failure recorded at the same time writes the hint, then counts the calls (under the
    /// lock); this success adds its call, then reads the hint, all `SeqCst`. In their one order
    /// either the failure's count includes this call, or this success sees the failure's hint
    /// and looks for itself: no verdict is made without the other.
    #[inline]
    pub(crate) fn success(&self, generation: u32, clock: &dyn Clock) -> Counted {
        let now = self.now(clock);
        let Some(own) = self.add(generation, now) else {
            return Counted::Neither;
        };
        let hint = self.hint.load(Ordering::SeqCst);
        if hint == 0 {
            return Counted::Done;
        }
        self.may_trip(hint, self.calls(generation, now, Some(own)))
    }

    #[cold]
    fn may_trip(&self, hint: u64, calls: u64) -> Counted {
        let limit = self.limit.load(Ordering::Relaxed);
        let slow_limit = self.slow_limit.load(Ordering::Relaxed);
        let (failures, slow) = (hint >> 32, hint & 0xFFFF_FFFF);
        let at = |n: u64, ratio: u64| {
            let (num, den) = ((ratio >> 16) & 0xFFFF, ratio & 0xFFFF);
            den != 0 && u128::from(n) * u128::from(den) >= u128::from(num) * u128::from(calls)
        };
        let enough = calls >= limit & 0xFFFF_FFFF;
        if enough && (at(failures, limit >> 32) || (slow_limit != 0 && at(slow, slow_limit))) {
            Counted::Judge
        } else {
            Counted::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The slice number is the quotient, for any time and slice length, also while the
        /// inverse is another length's (a new period half seen).
        #[test]
        fn a_slice_number_is_the_quotient(
            now in any::<u64>(),
            slice in 1u64..=u64::MAX,
            other in 1u64..=u64::MAX,
            small in 0u64..10_000_000_000_000,
        ) {
            let tally = Tally::default();
            for (now, slice) in [(now, slice), (small, slice % 1_000_000_000 + 1)] {
                tally.inverse.store(u64::MAX / slice, Ordering::Relaxed);
                prop_assert_eq!(tally.slice_at(now, slice), now / slice);
                tally.inverse.store(u64::MAX / other, Ordering::Relaxed);
                prop_assert_eq!(tally.slice_at(now, slice), now / slice);
            }
        }
    }
}
