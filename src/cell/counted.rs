//! Counting a closed call without the key's lock, for the policies that count every call: a
//! fleet rate (each thread on a counter of its own, `rate.rs`) and a time window (the period's
//! calls, `tally.rs`, which may then have to be judged). [`KeyCell::record`]'s fast path calls
//! [`KeyCell::count_success_on_own_stripe`] for a success on a `COUNTED` word; the rest is out
//! of its way.

use super::tally::{Counted, Tally};
use super::{thread_slot, KeyCell, Recorded, StateWord};
use crate::live_config::Mode;

/// What [`KeyCell::count_success_on_own_stripe`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counting {
    /// Counted; nothing else.
    Done,
    /// Counted (or nothing to count for the fleet's rate); the time window's count remains.
    Timed,
    /// Not counted: this thread has no stripe of its own yet (or none to have).
    NotCounted,
}

impl KeyCell {
    /// Counts a closed success of a `COUNTED` word for the fleet's rate on this thread's own
    /// stripe, and says what is left. Out of line, so that a plain breaker's fast path stays a
    /// load and a compare; a leaf that saves one register and returns its answer in one, so
    /// that a fleet-rate breaker's success costs the count and little more. The time window's count
    /// (which may have to judge) and a thread's first count are calls of their own.
    #[inline(never)]
    pub(super) fn count_success_on_own_stripe(&self) -> Counting {
        // Only a fleet rate counts here (a time window counts in its own call). The thread's
        // number first: reading it may be a call to the linker's TLS helper, across which
        // nothing else is then held.
        if self.rate.get().is_none() {
            return Counting::Timed;
        }
        let thread = thread_slot::raw();
        if !self.rate.get().is_some_and(|r| r.call_on_stripe(thread)) {
            return Counting::NotCounted;
        }
        match self.tally.get() {
            Some(t) if t.enabled() => Counting::Timed,
            _ => Counting::Done,
        }
    }

    /// Counts a closed success of a `COUNTED` word without the lock, when
    /// [`count_success_on_own_stripe`](Self::count_success_on_own_stripe) could not: for the
    /// fleet's rate, and in the time window's calls, which may then have to be judged.
    #[cold]
    #[inline(never)]
    pub(super) fn count_success(&self, admitted: StateWord) -> Recorded {
        if let Some(r) = self.rate.get() {
            r.call_elsewhere();
        }
        self.count_timed_success_if_timed(admitted)
    }

    #[inline]
    pub(super) fn count_timed_success_if_timed(&self, admitted: StateWord) -> Recorded {
        match self.time_window() {
            Some(t) => self.count_timed_success(admitted, t),
            None => Recorded::Nothing,
        }
    }

    /// Counts a closed success in the time window's calls, without the lock; they may then have
    /// to be judged.
    #[inline(never)]
    fn count_timed_success(&self, admitted: StateWord, tally: &Tally) -> Recorded {
        if self.mode() == Mode::Disabled {
            return Recorded::Nothing;
        }
        match tally.success(admitted.generation(), &*self.clock) {
            Counted::Judge => self.judge_closed_unlocked(admitted),
            Counted::Done | Counted::Neither => Recorded::Nothing,
        }
    }

    /// The time window's calls, when the policy has one.
    pub(super) fn time_window(&self) -> Option<&Tally> {
        self.tally.get().map(|t| &**t).filter(|t| t.enabled())
    }

    /// Counts a closed call for the fleet's rate (`COUNTED` words only).
    #[inline]
    pub(super) fn count(&self, success: bool) {
        if let Some(r) = self.rate.get() {
            r.call();
            if !success {
                r.failure();
            }
        }
    }
}
