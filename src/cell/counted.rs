//! Counting a closed call without the key's lock, for the policies that count every call: a
//! fleet rate (each thread on a counter of its own, `rate.rs`) and a time window (the period's
//! calls, `tally.rs`, which may then have to be judged). [`KeyCell::record`]'s fast path calls
//! [`KeyCell::count_success_on_own_stripe`] for a success on a `COUNTED` word, which counts a
//! fleet rate's success alone; the rest is [`KeyCell::count_success`], out of its way.

use super::tally::{Counted, Tally};
use super::{thread_slot, KeyCell, Recorded, StateWord};
use crate::live_config::Mode;
use crate::policy::Policy;

/// True when a closed success under `policy` needs only the fleet rate's count (a fleet rate
/// without a time window): [`KeyCell::count_success_on_own_stripe`] counts it alone.
pub(super) fn rate_alone(policy: &Policy) -> bool {
    policy.trip.fleet_rate().is_some() && policy.time_window.is_none()
}

impl KeyCell {
    /// Counts a closed success of a `COUNTED` word for a fleet rate without a time window, on
    /// this thread's own stripe; false when it did not ([`count_success`](Self::count_success)
    /// then counts it). Inline, behind the word's `COUNTED` bit, which a plain breaker's fast
    /// path tests anyway: a flag, the thread's number and a load and a store, with no call of
    /// its own (a call and its saved register cost as much again as the count).
    #[inline]
    pub(super) fn count_success_on_own_stripe(&self) -> bool {
        // Relaxed: see `set_policy`.
        if !self.rate_alone.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        // The thread's number first: reading it may be a call to the linker's TLS helper, across
        // which nothing else is then held.
        let thread = thread_slot::raw();
        self.rate.get().is_some_and(|r| r.call_on_stripe(thread))
    }

    /// Counts a closed success of a `COUNTED` word without the lock, when
    /// [`count_success_on_own_stripe`](Self::count_success_on_own_stripe) did not: for the
    /// fleet's rate (on this thread's stripe, or elsewhere for a thread without one), and in the
    /// time window's calls, which may then have to be judged.
    #[inline(never)]
    pub(super) fn count_success(&self, admitted: StateWord) -> Recorded {
        if let Some(r) = self.rate.get() {
            if !r.call_on_own_stripe() {
                r.call_elsewhere();
            }
        }
        self.count_timed_success_if_timed(admitted)
    }

    /// Counts a closed success in the time window's calls, when the policy has one.
    #[inline]
    pub(super) fn count_timed_success_if_timed(&self, admitted: StateWord) -> Recorded {
        match self.time_window() {
            Some(t) => self.count_timed_success(admitted, t),
            None => Recorded::Nothing,
        }
    }

    /// Counts a closed success in the time window's calls, without the lock; they may then have
    /// to be judged.
    #[inline]
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
