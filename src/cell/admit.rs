//! Admission off the fast path: a breaker that is not closed (rejections with their reason and
//! retry time, half-open probes, starting a round once the cooldown is over), and the live
//! configuration's modes. [`KeyCell::admit`] reads one word and comes here only when it must.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Admission, KeyCell, StateWord};
use crate::live_config::Mode;
use crate::State;

impl KeyCell {
    #[cold]
    pub(super) fn admit_slow(&self, mut w: StateWord) -> Admission {
        // Relaxed: a configuration arriving a moment late admits or rejects one call more.
        if Mode::from_u8(self.mode.load(Ordering::Relaxed)).admits_all() {
            return Admission::Closed(StateWord::UNTRACKED);
        }
        // Other threads may move the breaker while we look (start a round, finish it, reopen):
        // look again a few times rather than reject with a state that no longer holds.
        for _ in 0..4 {
            match w.state() {
                State::Closed => return Admission::Closed(w),
                State::HalfOpen => {
                    if let Some(p) = self.take_probe() {
                        return p;
                    }
                    let now = self.load(Ordering::Acquire);
                    if now.state() == State::HalfOpen {
                        return Admission::Rejected {
                            state: State::HalfOpen,
                            retry_after: None,
                            wants_lease: self.is_fleet() && self.may_ask_lease(),
                        };
                    }
                    w = now;
                }
                State::Open => {
                    let deadline = self.open_deadline.load(Ordering::Relaxed);
                    // Usually answered from a coarse clock reading (see `SystemClock`).
                    if let Some(left) = self.clock.until(deadline) {
                        return Admission::Rejected {
                            state: State::Open,
                            retry_after: Some(left),
                            wants_lease: false,
                        };
                    }
                    if self.mode() == Mode::ForcedOpen {
                        // Held open by the live configuration: no round starts, whatever
                        // cooldown the cell was given last.
                        return Admission::Rejected {
                            state: State::Open,
                            retry_after: None,
                            wants_lease: false,
                        };
                    }
                    if self.is_fleet() {
                        // The database starts the half-open round, not us.
                        return self.take_probe().unwrap_or_else(|| Admission::Rejected {
                            state: State::Open,
                            retry_after: None,
                            wants_lease: self.may_ask_lease(),
                        });
                    }
                    let mut locked = self.lock();
                    let started = if self.load(Ordering::Relaxed) == w {
                        locked.probes_free = locked.policy.probe_count();
                        Some(self.set_state(&mut locked, State::HalfOpen, None))
                    } else {
                        None
                    };
                    drop(locked);
                    if let Some(t) = started {
                        // Outside the lock: callbacks may call back into this breaker.
                        self.notify(t);
                    }
                    w = self.load(Ordering::Acquire);
                }
            }
        }
        // Still churning after four looks (a zero cooldown under heavy contention): reject with
        // what holds now.
        let state = w.state();
        if state == State::Closed {
            return Admission::Closed(w);
        }
        let retry_after = (state == State::Open).then(|| {
            let deadline = self.open_deadline.load(Ordering::Relaxed);
            Duration::from_nanos(deadline.saturating_sub(self.clock.now_nanos()))
        });
        Admission::Rejected {
            state,
            retry_after,
            wants_lease: false,
        }
    }

    /// Takes one probe permit if the breaker is half-open and one is free.
    pub(super) fn take_probe(&self) -> Option<Admission> {
        if self.probes_hint.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut locked = self.lock();
        let cur = self.load(Ordering::Relaxed);
        if self.is_fleet() {
            let now = self.clock.now_nanos();
            // A lease may outlive a round that ended elsewhere; the database ignores its result.
            while let Some(lease) = locked.leases.pop_front() {
                if lease.expires_at > now {
                    self.probes_hint
                        .store(locked.leases.len() as u32, Ordering::Relaxed);
                    return Some(Admission::Probe(cur, Some(lease)));
                }
            }
            self.probes_hint.store(0, Ordering::Relaxed);
            None
        } else {
            if cur.state() != State::HalfOpen || locked.probes_free == 0 {
                return None;
            }
            locked.probes_free -= 1;
            self.probes_hint
                .store(locked.probes_free, Ordering::Relaxed);
            Some(Admission::Probe(cur, None))
        }
    }
}
