//! [`Tally`]: the calls of a time window (`Builder::time_window`), counted without the lock, so
//! that a success costs a clock reading (usually one load) and one compare-and-swap.
//!
//! The period is cut into [`SLICES`] slices as in `time_window.rs`; each slice's calls are one
//! atomic word, `tag (16) | slice (24) | calls (24)`, in the slot its slice number's low bits
//! name (of [`SLOTS`], a power of two, so that the slot is a mask, not a division):
//!
//! * `tag` names the window the calls belong to: the cell's epoch (low bits of its generation)
//!   plus the window's clears. A word of another tag is an earlier window's and counts for
//!   nothing; an outcome admitted in an earlier epoch finds a newer tag and counts as neither.
//!   Every clear empties the slots, so the tags in use are never far apart.
//! * `slice` is the slice number (time / slice length), modulo 2^24; a word of a slice that left
//!   the period is reused by the next slice that maps to it, so nothing ever has to be swept;
//!   a reading that finds a later slice there (held a whole cycle of slots) counts for nothing.
//!   Only a slot untouched for 2^24 slices (19 days at a one-second period) could pass for
//!   current; its calls would then count for one period.
//! * `calls` saturates at 2^24 − 1 a slice.
//!
//! The window's time is the cheapest reading that keeps an outcome within 1/25 of a slice of
//! its time: the kept reading of the system clock (`clock/recent.rs`, one load) for slices
//! from half a second, else the coarse clock for slices of 25 ticks, else the precise one. Every
//! outcome and every judgement of a window reads the same one.
//!
//! Failures and slow calls stay under the key's lock (`TimeWindow`): they are few, and a
//! failure is judged anyway. The lock publishes an upper bound of the period's failures and slow
//! calls (`hint`). A success adds its call, then reads the hint: while it is zero nothing can
//! trip; otherwise the success counts the period's calls and takes the lock only when the bound
//! says the limit may be reached (see [`Tally::success`] for why no trip is missed).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{duration_nanos, recent, Clock};
use crate::policy::Policy;
use crate::time_window::{Counts, SLICES};

const CALLS_BITS: u32 = 24;
const SLICE_BITS: u32 = 24;
const CALLS_MASK: u64 = (1 << CALLS_BITS) - 1;
const SLICE_MASK: u64 = (1 << SLICE_BITS) - 1;
const TAG_SHIFT: u32 = CALLS_BITS + SLICE_BITS;

/// Slots for the period's slices: the least power of two that holds [`SLICES`] (slices older
/// than the period stay in the others until their slot is reused, and count for nothing). It
/// divides 2^24, so a slice number's slot is the same before and after it wraps.
const SLOTS: usize = SLICES.next_power_of_two();

/// How far ahead (in slices) a slot's slice may be of a reading for the reading to be the
/// stale one: a thread stalled for up to 400 periods. A slot untouched for nearly 2^24 slices
/// (19 days at a one-second period) could pass for ahead; its slice's calls then go uncounted
/// until the period moves past it, as the module doc says of one passing for current.
const AHEAD: u64 = 1 << 12;

/// How many times its lag a slice must span to be timed on a lagging reading (as slow calls
/// are on the coarse clock, `breaker/timing.rs`): an outcome then leaves the period within
/// 1/25 of a slice of its time.
const LAG_FACTOR: u32 = 25;

/// The readings a window may be timed on, cheapest first.
const RECENT: u32 = 2;
const COARSE: u32 = 1;
const PRECISE: u32 = 0;

/// The calls of a time window, without the lock. All zero (no slice length) while the policy
/// has no time window.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Nanoseconds a slice; 0: the policy has no time window.
    slice_nanos: AtomicU64,
    /// `now / slice_nanos` as a multiplication and a shift ([`divisor`]), not a division
    /// (which alone costs about a third of a success); 0: divide.
    divisor: AtomicU64,
    /// The reading the window is timed on: [`RECENT`], [`COARSE`] or [`PRECISE`].
    reading: AtomicU32,
    /// How often the window was cleared, part of the tag.
    clears: AtomicU32,
    /// Failure limit, for the lock-free bound: `num (16) | den (16) | minimum calls (32)`.
    limit: AtomicU64,
    /// Slow-call limit as `num (16) | den (16)`; 0 without one.
    slow_limit: AtomicU64,
    /// Upper bound of the period's failures (high 32 bits) and slow calls (low 32), written
    /// under the lock.
    hint: AtomicU64,
    slots: [AtomicU64; SLOTS],
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
            self.divisor.store(0, Ordering::Relaxed);
            self.slice_nanos.store(0, Ordering::Relaxed);
            return;
        };
        let slice = (duration_nanos(period) / SLICES as u64).max(1);
        let lag = Duration::from_nanos(slice) / LAG_FACTOR;
        let tick = clock.coarse_resolution();
        let reading = if lag >= recent::MIN_LAG && recent::is_system(clock) && recent::keep(lag) {
            RECENT
        } else if !tick.is_zero() && lag >= tick {
            COARSE
        } else {
            PRECISE
        };
        let ratio = |r: crate::Ratio| {
            (u64::from(r.numerator()) & 0xFFFF) << 16 | (u64::from(r.denominator()) & 0xFFFF)
        };
        self.limit.store(
            ratio(policy.failure_limit) << 32 | u64::from(policy.minimum_calls()),
            Ordering::Relaxed,
        );
        self.slow_limit
            .store(policy.slow_rate().map_or(0, ratio), Ordering::Relaxed);
        self.reading.store(reading, Ordering::Relaxed);
        self.divisor.store(divisor(slice), Ordering::Relaxed);
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
        match self.reading.load(Ordering::Relaxed) {
            RECENT => recent::now(),
            COARSE => clock.coarse_nanos(),
            _ => clock.now_nanos(),
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

    /// The slice number of `now` (`now / slice_nanos`), or `None` without a time window: the
    /// product with [`divisor`]'s multiplier, shifted, where that is exact; a division
    /// otherwise (a slice of 128 ns or less, or a reading past 2^56 ns).
    #[inline]
    fn slice_at(&self, now: u64) -> Option<u64> {
        let d = self.divisor.load(Ordering::Relaxed);
        if d != 0 && now >> DIVISOR_EXACT_BITS == 0 {
            let (multiplier, shift) = (d >> 6, (d & 63) as u32);
            return Some((((u128::from(now) * u128::from(multiplier)) >> 64) as u64) >> shift);
        }
        match self.slice_nanos.load(Ordering::Relaxed) {
            0 => None,
            slice_nanos => Some(now / slice_nanos),
        }
    }

    fn tag(&self, generation: u32) -> u64 {
        u64::from(generation.wrapping_add(self.clears.load(Ordering::SeqCst)) & 0xFFFF)
    }

    /// Adds one call at `now` to the window of epoch `generation`; the slot's word after it, or
    /// `None` when that window was replaced (counts as neither).
    fn add(&self, generation: u32, now: u64) -> Option<(usize, u64)> {
        // The tag first: a current tag (SeqCst, after the clear that started its window) shows
        // the slice length and divisor configured before that clear, never half of another's.
        let tag = self.tag(generation);
        let slice = self.slice_at(now)?;
        let index = (slice % SLOTS as u64) as usize;
        let slice = slice & SLICE_MASK;
        let slot = &self.slots[index];
        let mut w = slot.load(Ordering::Relaxed);
        loop {
            let (w_tag, w_slice) = (w >> TAG_SHIFT, (w >> CALLS_BITS) & SLICE_MASK);
            let next = if w_tag == tag && w_slice == slice {
                if w & CALLS_MASK == CALLS_MASK {
                    return Some((index, w));
                }
                w + 1
            } else if w_tag != tag && (w_tag.wrapping_sub(tag) & 0xFFFF) < 0x8000 && w != 0 {
                return None; // a newer window: admitted before it started
            } else if w_tag == tag && (w_slice.wrapping_sub(slice) & SLICE_MASK) < AHEAD {
                // A later slice of this slot: the reading was held across a whole cycle of
                // slots (a thread stalled between its reading and its count), so its call left
                // the period long ago. Counting it would wipe the later slice's calls.
                return None;
            } else {
                // An empty slot, an earlier window's word, or an earlier slice of this slot (a
                // multiple of SLOTS apart, so one that left the period). Restarted.
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
        let Some(slice) = self.slice_at(now) else {
            return 0;
        };
        let slice = slice & SLICE_MASK;
        let tag = self.tag(generation);
        (0..SLOTS)
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

/// Readings below 2^56 ns (2.28 years of a clock's time) are divided exactly by [`divisor`].
const DIVISOR_EXACT_BITS: u32 = 56;

/// `slice` as a multiplier and a shift, packed `multiplier (57) | shift (6)`, such that
/// `((now × multiplier) >> 64) >> shift == now / slice` for every `now` below 2^56; 0 when
/// `slice` is too short (128 ns or less) or too long (over 2^56 ns) for that.
///
/// With `2^s < slice ≤ 2^(s+1)` and `k = 57 + s`, the multiplier is `m = ⌈2^k / slice⌉`, below
/// 2^57, and `m = 2^k / slice + e` with `0 ≤ e < 1`. Then `now × m / 2^k = now / slice +
/// now × e / 2^k`, and the second term is under `1 / slice` while `now < 2^k / slice`, which is
/// at least 2^56: it cannot carry the quotient past the next whole number.
fn divisor(slice: u64) -> u64 {
    if slice <= 128 || slice > 1 << DIVISOR_EXACT_BITS {
        return 0;
    }
    let s = 63 - (slice - 1).leading_zeros(); // 2^s < slice ≤ 2^(s+1), s ≥ 7
    let k = 57 + s;
    let m = (1u128 << k).div_ceil(u128::from(slice));
    // m < 2^57: slice ≥ 2^s + 1, so 2^k / slice ≤ 2^57 − 2^57 / (2^s + 1) ≤ 2^57 − 1.
    (m as u64) << 6 | u64::from(k - 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tally_of(slice: u64) -> Tally {
        let tally = Tally::default();
        tally.divisor.store(divisor(slice), Ordering::Relaxed);
        tally.slice_nanos.store(slice, Ordering::Relaxed);
        tally
    }

    proptest! {
        /// The slice number is the quotient, for any time and slice length: multiplied below
        /// 2^56 ns, divided above.
        #[test]
        fn a_slice_number_is_the_quotient(
            now in any::<u64>(),
            below in 0u64..1 << DIVISOR_EXACT_BITS,
            slice in 1u64..=u64::MAX,
            short in 1u64..=10_000_000_000,
        ) {
            for slice in [slice, short] {
                let tally = tally_of(slice);
                for now in [now, below, below / slice * slice, (below / slice * slice).saturating_sub(1)] {
                    prop_assert_eq!(tally.slice_at(now), Some(now / slice), "{} / {}", now, slice);
                }
            }
        }
    }

    /// A thread stalled between its reading and its count for a whole cycle of slots finds a
    /// later slice in its slot: its call left the period, and the later slice keeps its calls.
    /// A slot's earlier slice is restarted, and so is one that only seems ahead because it was
    /// untouched for nearly 2^24 slices.
    #[test]
    fn a_stale_reading_leaves_a_later_slice_alone() {
        let slice = 1_000;
        let tally = tally_of(slice);
        let at = |n: u64| n * slice + 7;
        let later = 5 + 3 * SLOTS as u64;
        assert!(tally.add(0, at(later)).is_some());
        assert!(tally.add(0, at(later)).is_some());
        assert_eq!(tally.add(0, at(5)), None, "a reading a cycle of slots old");
        assert_eq!(tally.add(0, at(5 + SLOTS as u64)), None);
        assert_eq!(tally.calls(0, at(later), None), 2);
        assert_eq!(
            tally
                .add(0, at(later + SLOTS as u64))
                .map(|(_, w)| w & CALLS_MASK),
            Some(1)
        );
        assert_eq!(tally.calls(0, at(later + SLOTS as u64), None), 1);
        // Untouched for 2^24 − 16 slices: its slice looks 16 ahead of the reading's.
        let wrapped = later + SLOTS as u64 + (1 << SLICE_BITS) - SLOTS as u64;
        assert_eq!(tally.add(0, at(wrapped)), None);
        // Past the bound it is an earlier slice again, and restarted.
        let far = wrapped + AHEAD;
        assert_eq!(tally.add(0, at(far)).map(|(_, w)| w & CALLS_MASK), Some(1));
        assert_eq!(tally.calls(0, at(far), None), 1);
    }

    /// The reading a window is timed on: the kept one for the shared system clock's windows
    /// with slices of half a second and more, the coarse clock for shorter ones of 25 ticks, the
    /// precise one below that and for any other clock.
    #[test]
    fn a_window_is_timed_on_the_cheapest_reading_precise_enough() {
        let reading = |period: Duration, clock: &dyn Clock| {
            let tally = Tally::default();
            let policy = Policy {
                time_window: Some(period),
                ..Policy::default()
            };
            tally.configure(&policy, clock);
            tally.reading.load(Ordering::Relaxed)
        };
        let system = recent::system();
        assert_eq!(reading(Duration::from_secs(60), &*system), RECENT);
        assert_eq!(reading(Duration::from_secs(5), &*system), RECENT);
        let tick = system.coarse_resolution();
        let coarse = if tick.is_zero() { PRECISE } else { COARSE };
        let short = (tick * LAG_FACTOR * SLICES as u32).max(Duration::from_millis(100));
        if short < recent::MIN_LAG * LAG_FACTOR * SLICES as u32 {
            assert_eq!(reading(short, &*system), coarse, "{short:?}");
        }
        assert_eq!(reading(Duration::from_millis(10), &*system), PRECISE);
        let other = crate::clock::SystemClock;
        assert_eq!(reading(Duration::from_secs(60), &other), coarse);
        let manual = crate::clock::ManualClock::new();
        assert_eq!(reading(Duration::from_secs(60), &manual), PRECISE);
    }

    /// The edges of the proof: slices at and beside powers of two, the longest and shortest
    /// multiplied, and readings at the last exact nanosecond and either side of a slice's end.
    #[test]
    fn the_divisor_is_exact_at_its_edges() {
        let mut slices = vec![129, 130, 1_000_000, 100_000_000, 6_000_000_000];
        slices.extend([(1 << 56) - 1, 1 << 56]);
        for p in 8..56u32 {
            slices.extend([(1u64 << p) - 1, 1 << p, (1 << p) + 1]);
        }
        let last = (1u64 << DIVISOR_EXACT_BITS) - 1;
        for slice in slices {
            let d = divisor(slice);
            assert_ne!(d, 0, "{slice} is multiplied");
            let tally = tally_of(slice);
            for now in [
                0,
                1,
                slice - 1,
                slice,
                slice + 1,
                last,
                last - last % slice,
                (last - last % slice).saturating_sub(1),
            ] {
                assert_eq!(tally.slice_at(now), Some(now / slice), "{now} / {slice}");
            }
        }
        assert_eq!(divisor(128), 0);
        assert_eq!(divisor((1 << 56) + 1), 0);
    }
}
