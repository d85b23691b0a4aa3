//! [`StateWord`]: the packed state word of a cell (see the `cell` module doc for its layout),
//! the only place its bits are read or written, and the packing of a rejection.

use std::time::Duration;

use crate::clock::duration_nanos;
use crate::State;

const STATE_MASK: u64 = 0b0011;
const CLEAN: u64 = 0b0100;
const COUNTED: u64 = 0b1000;
const EPOCH_SHIFT: u32 = 4;

/// The packed state word (see the module doc); the only place its bits are read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StateWord(pub(super) u64);

impl StateWord {
    /// The clean bit, for clearing it with one atomic `fetch_and`.
    pub(super) const CLEAN_BIT: u64 = CLEAN;

    /// Epoch 0, closed, not clean: a new cell.
    pub(super) const INITIAL: StateWord = StateWord(0);

    /// Closed, in an epoch no cell reaches (2^60 − 1 transitions): the admission of a call that
    /// must not count (a `Mode::Disabled` or `MetricsOnly` breaker admitting while not closed).
    /// Its outcome is that of a call admitted under an earlier state: neither.
    pub(super) const UNTRACKED: StateWord = StateWord(u64::MAX << EPOCH_SHIFT);

    /// The state.
    #[inline]
    pub(crate) const fn state(self) -> State {
        state_from_bits(self.0)
    }

    /// Closed (tested without decoding: the hot path's one compare).
    #[inline]
    pub(crate) const fn is_closed(self) -> bool {
        self.0 & STATE_MASK == 0
    }

    /// Closed with a window full of successes: a success changes nothing.
    #[inline]
    pub(super) const fn is_closed_and_clean(self) -> bool {
        self.0 & (STATE_MASK | CLEAN) == CLEAN
    }

    /// Every call is counted for a fleet rate (`TripPolicy::FleetRate`): a clean success adds one
    /// to the key's counter as well.
    #[inline]
    pub(super) const fn is_counted(self) -> bool {
        self.0 & COUNTED != 0
    }

    /// This word with the counted bit set or cleared.
    #[inline]
    pub(super) const fn with_counted(self, counted: bool) -> StateWord {
        if counted {
            StateWord(self.0 | COUNTED)
        } else {
            StateWord(self.0 & !COUNTED)
        }
    }

    /// The epoch's low 32 bits: the generation of the count window it cleared (`ring.rs`).
    #[inline]
    pub(super) const fn generation(self) -> u32 {
        (self.0 >> EPOCH_SHIFT) as u32
    }

    /// Same epoch: no transition happened between the two words.
    #[inline]
    pub(super) const fn same_epoch(self, other: StateWord) -> bool {
        self.0 >> EPOCH_SHIFT == other.0 >> EPOCH_SHIFT
    }

    /// This word with the clean bit set or cleared.
    #[inline]
    pub(super) const fn with_clean(self, clean: bool) -> StateWord {
        if clean {
            StateWord(self.0 | CLEAN)
        } else {
            StateWord(self.0 & !CLEAN)
        }
    }

    /// The word after a transition to `to`: the next epoch, not clean, still counted if it was
    /// (counting follows the policy, not the state).
    #[inline]
    pub(super) const fn next(self, to: State) -> StateWord {
        let epoch = (self.0 >> EPOCH_SHIFT).wrapping_add(1);
        StateWord((epoch << EPOCH_SHIFT) | (self.0 & COUNTED) | state_to_bits(to))
    }
}

const fn state_to_bits(s: State) -> u64 {
    match s {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
    }
}

const fn state_from_bits(bits: u64) -> State {
    match bits & STATE_MASK {
        0 => State::Closed,
        1 => State::Open,
        _ => State::HalfOpen,
    }
}

/// A state and an optional duration in one word, for [`Rejected`](crate::Rejected): bits 62–63
/// the state, bits 0–61 the duration in nanoseconds plus one (0: none).
pub(crate) fn pack_rejection(state: State, retry_after: Option<Duration>) -> u64 {
    const RETRY_BITS: u64 = (1 << 62) - 1;
    let retry = retry_after.map_or(0, |d| duration_nanos(d).min(RETRY_BITS - 1) + 1);
    (state_to_bits(state) << 62) | retry
}

/// State bits that no state uses, marking a packed rejection OPEN on purpose (a force, or the
/// forced-open mode): see [`RejectReason::Forced`](crate::RejectReason::Forced).
const FORCED_BITS: u64 = 3;

/// `packed`, an OPEN rejection, marked as open on purpose; other states unchanged.
pub(crate) fn mark_forced(packed: u64) -> u64 {
    if packed >> 62 == state_to_bits(State::Open) {
        packed | (FORCED_BITS << 62)
    } else {
        packed
    }
}

/// The inverse of [`pack_rejection`], and whether [`mark_forced`] marked it.
pub(crate) fn unpack_rejection(packed: u64) -> (State, Option<Duration>, bool) {
    let retry = match packed & ((1 << 62) - 1) {
        0 => None,
        n => Some(Duration::from_nanos(n - 1)),
    };
    match packed >> 62 {
        FORCED_BITS => (State::Open, retry, true),
        bits => (state_from_bits(bits), retry, false),
    }
}

#[cfg(test)]
#[path = "word_tests.rs"]
mod tests;
