//! [`Ring`]: the closed state's count window, recorded without the key's lock.
//!
//! The last `capacity` outcomes are one bit each (1 = failure) in a ring of `AtomicU64`s. A
//! *head* word packs the window's generation, its capacity and its position, so one
//! compare-and-swap claims a slot and refuses an outcome of an earlier generation (a call
//! admitted before the breaker last closed); the caller then sets or clears its bit. A success
//! whose bit is already clear writes nothing but the head.
//!
//! The failure count is the population count of the bits in use, so it cannot drift from them.
//! Counting 16 words on every call of a 1,000-call window would cost more than the lock it
//! replaces, so a running count (`hint`) follows every bit that flips: each flip is an atomic
//! read-modify-write whose old value says whether the bit changed, and the count moves with it.
//! Stray bits (see below) can only raise it, so `hint` is never below the true count, and the
//! exact count is taken only when `hint` says the window may trip or may be clean again.
//!
//! Generations are the state word's epoch (its low 32 bits): under the key's lock and before the
//! new word is published, the window is cleared as the breaker enters CLOSED and sealed (kept,
//! with the new generation) as it leaves, so an outcome admitted before a transition counts as
//! neither, decided by the same compare-and-swap that claims its slot. A thread paused
//! between claiming its slot and writing its bit for as long as the breaker takes to open, wait
//! out its cooldown and close again writes one stray outcome into the new window; it is
//! overwritten within one window's worth of calls, and can only count as a failure, never hide
//! one.
//!
//! **Under concurrency the count is the slots', not a sequence's.** A slot claimed and not yet
//! written still holds the outcome it replaces, one lap older. A count taken meanwhile (to judge
//! the window) reads that older outcome in place of the one in flight, so with `t` threads
//! recording at once it may differ by up to `t` from every `capacity` consecutive outcomes: two
//! threads failing every second call, whose any ten consecutive outcomes hold at most six
//! failures, can be counted at seven. A thread paused (preempted) between claiming its slot and
//! writing it, while the others record a whole window's worth, writes its outcome a lap late
//! over the slot's newer one, off by one until the slot comes round again. `recloser`'s ring of
//! atomic booleans behaves alike. Recording from one thread is exact (the proptest below).
//!
//! A policy with another window size swaps the bits for a larger allocation; the old one is
//! kept until the ring is dropped, since a thread may still be writing to it. Allocations are
//! rounded up to a power of two of words, so a key keeps at most eight.

use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

/// `generation: 32 | capacity: 16 | position: 16`. The position runs over `0..2 × capacity`:
/// below `capacity` it is the number of outcomes (the window is filling), from `capacity` on the
/// window is full and `position − capacity` is the slot the next outcome overwrites.
const POS_BITS: u32 = 16;
const CAP_SHIFT: u32 = POS_BITS;
const GEN_SHIFT: u32 = 32;
const LOW16: u64 = 0xFFFF;

#[inline]
const fn head(generation: u32, capacity: u32, position: u32) -> u64 {
    ((generation as u64) << GEN_SHIFT)
        | ((capacity as u64 & LOW16) << CAP_SHIFT)
        | (position as u64 & LOW16)
}

#[inline]
const fn generation_of(h: u64) -> u32 {
    (h >> GEN_SHIFT) as u32
}

#[inline]
const fn capacity_of(h: u64) -> u32 {
    ((h >> CAP_SHIFT) & LOW16) as u32
}

#[inline]
const fn position_of(h: u64) -> u32 {
    (h & LOW16) as u32
}

/// The number of outcomes in the window at head `h`.
#[inline]
const fn len_of(h: u64) -> u32 {
    let (cap, pos) = (capacity_of(h), position_of(h));
    if pos < cap {
        pos
    } else {
        cap
    }
}

/// One bit per slot; never shrinks (see the module doc).
#[derive(Debug)]
struct Bits(Box<[AtomicU64]>);

impl Bits {
    fn for_capacity(capacity: u32) -> Box<Bits> {
        let words = capacity.div_ceil(64).max(1).next_power_of_two() as usize;
        Box::new(Bits((0..words).map(|_| AtomicU64::new(0)).collect()))
    }

    fn holds(&self, capacity: u32) -> bool {
        self.0.len() * 64 >= capacity as usize
    }
}

/// What a push found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Outcomes in the window after this one.
    pub(crate) len: u32,
    /// The window's capacity.
    pub(crate) capacity: u32,
    /// This outcome changed a bit: a failure over a success, or a success over a failure.
    pub(crate) flipped: bool,
    /// This outcome filled the window.
    pub(crate) filled: bool,
}

impl Pushed {
    /// The window is full (a success can then no longer raise its failure rate).
    pub(crate) fn full(&self) -> bool {
        self.len == self.capacity
    }
}

/// The closed state's count window; see the module doc.
#[derive(Debug)]
pub(crate) struct Ring {
    head: AtomicU64,
    /// Never null: made from a `Box<Bits>`, freed in `Drop`.
    bits: AtomicPtr<Bits>,
    /// At least the number of set bits (see the module doc).
    hint: AtomicI64,
    /// Allocations replaced by a larger one, kept until the ring is dropped. Boxed: threads may
    /// still hold a reference to the `Bits` itself, which must not move.
    #[allow(clippy::vec_box)]
    retired: Mutex<Vec<Box<Bits>>>,
}

// SAFETY of every dereference of `bits`: the pointer comes from `Box::into_raw`, is replaced only
// by `resize`, which moves the old box into `retired` rather than freeing it, and is freed only
// in `drop`, when no reference to the ring is left.

impl Ring {
    /// An empty window of `capacity` outcomes (at most `Ratio::MAX_DENOMINATOR`) in
    /// `generation`.
    pub(crate) fn new(capacity: u32, generation: u32) -> Ring {
        let capacity = capacity.clamp(1, 1 << 14);
        Ring {
            head: AtomicU64::new(head(generation, capacity, 0)),
            bits: AtomicPtr::new(Box::into_raw(Bits::for_capacity(capacity))),
            hint: AtomicI64::new(0),
            retired: Mutex::new(Vec::new()),
        }
    }

    #[inline]
    fn bits(&self) -> &Bits {
        // SAFETY: see above. Acquire pairs with the Release store of `resize`, so the words of a
        // new allocation are seen initialised.
        unsafe { &*self.bits.load(Ordering::Acquire) }
    }

    /// Records an outcome admitted in `generation`; `None` when the window is of another
    /// generation (the outcome counts as neither).
    #[inline]
    pub(crate) fn push(&self, generation: u32, failure: bool) -> Option<Pushed> {
        let mut h = self.head.load(Ordering::Acquire);
        let slot = loop {
            if generation_of(h) != generation {
                return None;
            }
            let (cap, pos) = (capacity_of(h), position_of(h));
            let next = if pos + 1 == 2 * cap { cap } else { pos + 1 };
            match self.head.compare_exchange_weak(
                h,
                head(generation, cap, next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break if pos < cap { pos } else { pos - cap },
                Err(now) => h = now,
            }
        };
        let bits = self.bits();
        // A head of a new capacity is stored after its allocation (`resize`), so the slot is in
        // range; `None` rather than a panic if that ever failed.
        let word = bits.0.get((slot / 64) as usize)?;
        let mask = 1u64 << (slot % 64);
        // SeqCst on the bits and the hint: `mark_clean` relies on one order of these writes
        // and its own re-reading (see `KeyCell::mark_clean`).
        let flipped = if failure {
            let old = word.fetch_or(mask, Ordering::SeqCst);
            let flipped = old & mask == 0;
            if flipped {
                self.hint.fetch_add(1, Ordering::SeqCst);
            }
            flipped
        } else if word.load(Ordering::SeqCst) & mask != 0 {
            let old = word.fetch_and(!mask, Ordering::SeqCst);
            let flipped = old & mask != 0;
            if flipped {
                self.hint.fetch_sub(1, Ordering::SeqCst);
            }
            flipped
        } else {
            false
        };
        let cap = capacity_of(h);
        let pos = position_of(h);
        Some(Pushed {
            len: if pos < cap { pos + 1 } else { cap },
            capacity: cap,
            flipped,
            filled: pos + 1 == cap,
        })
    }

    /// An upper bound of the failures in the window, read without counting.
    #[inline]
    pub(crate) fn failures_at_most(&self) -> u32 {
        u32::try_from(self.hint.load(Ordering::SeqCst).max(0)).unwrap_or(u32::MAX)
    }

    /// The window now: `(failures, outcomes, capacity)`, counted.
    pub(crate) fn counts(&self) -> (u32, u32, u32) {
        let h = self.head.load(Ordering::SeqCst);
        let (len, cap) = (len_of(h), capacity_of(h));
        let bits = self.bits();
        let mut failures = 0u32;
        for (i, w) in bits.0.iter().enumerate() {
            let first = i as u32 * 64;
            if first >= len {
                break;
            }
            let mut v = w.load(Ordering::SeqCst);
            let used = len - first;
            if used < 64 {
                v &= (1u64 << used) - 1;
            }
            failures += v.count_ones();
        }
        (failures, len, cap)
    }

    /// The outcomes, oldest first (true = success).
    pub(crate) fn outcomes(&self) -> Vec<bool> {
        let h = self.head.load(Ordering::SeqCst);
        let (cap, pos) = (capacity_of(h), position_of(h));
        let (start, len) = if pos < cap {
            (0, pos)
        } else {
            (pos - cap, cap)
        };
        let bits = self.bits();
        (0..len)
            .map(|i| {
                let slot = (start + i) % cap;
                bits.0
                    .get((slot / 64) as usize)
                    .map_or(true, |w| w.load(Ordering::SeqCst) & (1 << (slot % 64)) == 0)
            })
            .collect()
    }

    /// Keeps the window as it is but refuses every outcome not of `generation`: the breaker
    /// left CLOSED, and the calls admitted before count as neither. Called under the key's lock.
    pub(crate) fn seal(&self, generation: u32) {
        let mut h = self.head.load(Ordering::Acquire);
        loop {
            let sealed = head(generation, capacity_of(h), position_of(h));
            match self
                .head
                .compare_exchange_weak(h, sealed, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    /// Empties the window and starts `generation`. Called under the key's lock.
    pub(crate) fn clear(&self, generation: u32) {
        let cap = capacity_of(self.head.load(Ordering::Acquire));
        self.reset(cap, generation);
    }

    /// Empties the window with room for `capacity` outcomes. Called under the key's lock.
    pub(crate) fn resize(&self, capacity: u32, generation: u32) {
        let capacity = capacity.clamp(1, 1 << 14);
        if !self.bits().holds(capacity) {
            self.zero();
            let fresh = Box::into_raw(Bits::for_capacity(capacity));
            // Release: the new words are initialised before anyone can load the pointer.
            let old = self.bits.swap(fresh, Ordering::AcqRel);
            // SAFETY: `old` came from `Box::into_raw` and is no longer reachable from `bits`;
            // threads that loaded it before the swap still may write to it, so it is kept.
            let old = unsafe { Box::from_raw(old) };
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
        self.reset(capacity, generation);
    }

    fn reset(&self, capacity: u32, generation: u32) {
        self.zero();
        // Release: pairs with the Acquire load of `push`, after the zeroing.
        self.head
            .store(head(generation, capacity, 0), Ordering::Release);
    }

    /// Clears every bit, lowering the hint by what each word held, so that it stays at least the
    /// true count whatever pushes run meanwhile.
    fn zero(&self) {
        for w in self.bits().0.iter() {
            let old = w.swap(0, Ordering::SeqCst);
            if old != 0 {
                self.hint
                    .fetch_sub(i64::from(old.count_ones()), Ordering::SeqCst);
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: see above; `&mut self` means no one else holds the ring.
        drop(unsafe { Box::from_raw(*self.bits.get_mut()) });
    }
}

/// The count window's trip rule, packed so the lock-free path reads it in one load: whether
/// that path may judge at all (a plain count window: no time window, no slow-call rate, not a
/// fleet rate), and the failure limit and minimum calls it judges by. Written under the key's
/// lock whenever the policy in force changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule(u64);

const LOCK_FREE: u64 = 1 << 63;

impl Rule {
    /// Every outcome is recorded and judged under the lock.
    pub(crate) const LOCKED: Rule = Rule(0);

    /// The rule of `policy`.
    pub(crate) fn of(policy: &crate::policy::Policy) -> Rule {
        if policy.time_window.is_some()
            || policy.slow_rate().is_some()
            || policy.trip.fleet_rate().is_some()
        {
            return Rule::LOCKED;
        }
        let num = u64::from(policy.failure_limit.numerator()) & LOW16;
        let den = u64::from(policy.failure_limit.denominator()) & LOW16;
        let min = u64::from(policy.minimum_calls().min(0xFFFF));
        Rule(LOCK_FREE | (min << 32) | (den << 16) | num)
    }

    /// The packed form, for an atomic.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    /// From [`bits`](Self::bits).
    pub(crate) fn from_bits(bits: u64) -> Rule {
        Rule(bits)
    }

    /// True when outcomes may be recorded and judged without the key's lock.
    #[inline]
    pub(crate) fn lock_free(self) -> bool {
        self.0 & LOCK_FREE != 0
    }

    /// True when a window of `len` outcomes with at most `failures` failures may meet the
    /// limit: the lock is then taken to count exactly and decide.
    #[inline]
    pub(crate) fn may_trip(self, failures: u32, len: u32) -> bool {
        let num = self.0 & LOW16;
        let den = (self.0 >> 16) & LOW16;
        let min = (self.0 >> 32) & LOW16;
        u64::from(len) >= min && u64::from(failures) * den >= num * u64::from(len)
    }
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
