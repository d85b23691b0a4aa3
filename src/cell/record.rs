//! Recording an outcome off the clean fast path: on a plain count window without the lock
//! (`ring.rs`), anything else under it (half-open rounds, time and slow-call windows, fleet
//! rates, the live configuration's modes); the closed state's verdict; and the word's clean bit,
//! which lets [`KeyCell::record`] skip all of this.

use std::sync::atomic::Ordering;

use super::{KeyCell, Lease, Locked, Recorded, Rule, StateWord};
use crate::live_config::Mode;
use crate::State;

impl KeyCell {
    /// [`record`](Self::record) off the clean fast path: a closed outcome on a plain count
    /// window is recorded without the lock, anything else under it. Out of line, so that the
    /// fast path inlined into every caller stays a load and a compare.
    #[inline(never)]
    pub(super) fn record_in_window(
        &self,
        admitted: StateWord,
        probe: Option<Lease>,
        success: bool,
    ) -> Recorded {
        if probe.is_none() && admitted.is_closed() {
            // Relaxed: see `refresh_rule`.
            let rule = Rule::from_bits(self.rule.load(Ordering::Relaxed));
            if rule.lock_free() {
                return self.record_closed(admitted, success, rule);
            }
            if success && self.time_window().is_some() {
                return self.record_timed_success(admitted);
            }
        }
        self.record_slow(admitted, probe, success, false)
    }

    /// A closed success on a time window, without the lock: the count window's slot (for
    /// `execution_log` and the clean bit), then the period's calls (`tally.rs`). The lock is
    /// taken when the period may have reached its limit, or in a mode that counts differently.
    fn record_timed_success(&self, admitted: StateWord) -> Recorded {
        if self.mode() == Mode::Disabled {
            return self.record_slow(admitted, None, true, false);
        }
        let Some(p) = self.ring.push(admitted.generation(), false) else {
            return Recorded::Nothing; // the window was cleared since: counts as neither
        };
        self.count(true);
        let recorded = self.count_timed_success_if_timed(admitted);
        if recorded == Recorded::Nothing
            && p.full()
            && (p.flipped || p.filled || self.ring.failures_at_most() == 0)
        {
            self.mark_clean(admitted);
        }
        recorded
    }

    #[cold]
    pub(super) fn record_slow(
        &self,
        admitted: StateWord,
        probe: Option<Lease>,
        success: bool,
        slow_call: bool,
    ) -> Recorded {
        if !admitted.is_closed() || probe.is_some() {
            self.metrics.probe_ended(); // started in `CircuitBreaker::admission_slow`
        }
        if let Some(lease) = probe {
            // A leased probe's result belongs to the database's round, even if we went offline
            // meanwhile (it then fails to report and the lease expires).
            return Recorded::Report(lease, success);
        }
        let mode = self.mode();
        if mode == Mode::Disabled {
            return Recorded::Nothing; // admitted, not counted
        }
        let mut locked = self.lock();
        let cur = self.load(Ordering::Relaxed);
        if !cur.same_epoch(admitted) {
            return Recorded::Nothing; // admitted under an earlier state: counts as neither
        }
        match cur.state() {
            State::Closed => {
                if self.ring.push(cur.generation(), !success).is_none() {
                    return Recorded::Nothing;
                }
                // One reading of the time window's clock for the outcome and its verdict.
                let timed = self.time_window().map(|t| (t, t.now(&*self.clock)));
                let now = timed.map(|(_, now)| now);
                locked.push_extra(success, slow_call, now);
                if let Some((t, now)) = timed {
                    t.locked_call(cur.generation(), now);
                }
                if cur.is_counted() {
                    self.count(success);
                }
                self.judge_closed(&mut locked, cur, mode, now)
            }
            State::HalfOpen => {
                locked.half_open.push(success);
                match locked.policy.half_open_verdict(&locked.half_open) {
                    None => Recorded::Nothing,
                    Some(State::Open) => {
                        locked.reopens = locked.reopens.saturating_add(1);
                        locked.tripped_at = (locked.half_open.failures(), locked.half_open.len());
                        let cooldown = locked
                            .policy
                            .cooldown_after(locked.reopens, crate::jitter::fraction());
                        let deadline = self.deadline_after(cooldown);
                        Recorded::Changed(self.open_on_own_judgement(&mut locked, deadline))
                    }
                    Some(to) => Recorded::Changed(self.set_state(&mut locked, to, None)),
                }
            }
            State::Open => Recorded::Nothing,
        }
    }

    /// A closed outcome on a plain count window, without the lock: one compare-and-swap on the
    /// ring's head, and a write of the outcome's bit when it changes. The lock is taken only
    /// when the window may trip (to count exactly and decide), and the word's clean bit changes
    /// when the window's last failure leaves it or a failure enters it.
    #[inline]
    fn record_closed(&self, admitted: StateWord, success: bool, rule: Rule) -> Recorded {
        let Some(p) = self.ring.push(admitted.generation(), !success) else {
            return Recorded::Nothing; // the window was cleared since: counts as neither
        };
        if admitted.is_counted() {
            self.count(success);
        }
        // A success can raise the rate only while the window fills (it reaches minimum calls),
        // up to the success that fills it.
        if (!success || !p.full() || p.filled) && rule.may_trip(self.ring.failures_at_most(), p.len)
        {
            return self.judge_closed_unlocked(admitted);
        }
        if !success {
            self.unmark_clean();
        } else if p.full() && (p.flipped || p.filled || self.ring.failures_at_most() == 0) {
            self.mark_clean(admitted);
        }
        Recorded::Nothing
    }

    /// [`judge_closed`](Self::judge_closed) from the lock-free path: the window may trip.
    #[cold]
    pub(super) fn judge_closed_unlocked(&self, admitted: StateWord) -> Recorded {
        let mut locked = self.lock();
        let cur = self.load(Ordering::Relaxed);
        if !cur.same_epoch(admitted) {
            return Recorded::Nothing;
        }
        self.judge_closed(&mut locked, cur, self.mode(), None)
    }

    /// The closed state's verdict after an outcome, under the lock: trip, or (metrics-only)
    /// count what would have tripped and start the window over, and keep the clean bit true.
    /// `now` is the time window's reading of the outcome, if taken (`None`: read it).
    fn judge_closed(
        &self,
        locked: &mut Locked,
        cur: StateWord,
        mode: Mode,
        now: Option<u64>,
    ) -> Recorded {
        let counts = self.ring.counts();
        let timed = self.timed_counts(locked, cur, now);
        let trips = locked.closed_trips(counts, timed);
        // A fleet rate is the database's to judge while it is reachable (the reporter sends it
        // the counts); alone, or as the fleet's outlier (its reports no longer count), the
        // window judges by the same rule.
        let fleet_rate = trips
            && locked.policy.trip.fleet_rate().is_some()
            && self.is_fleet()
            && mode == Mode::Normal
            && !self.outlier();
        if trips && !fleet_rate && mode == Mode::Normal && !self.refused(locked) {
            let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
            locked.tripped_at = timed.map_or((counts.0, counts.1), |t| {
                (clamp(t.failures), clamp(t.calls))
            });
            let deadline = self.deadline_after(locked.policy.cooldown);
            return Recorded::Changed(self.open_on_own_judgement(locked, deadline));
        }
        // Metrics-only: the window counts and never trips; reaching the limit is counted and
        // the window starts over, as it would after the trip and the close.
        if trips && mode == Mode::MetricsOnly {
            self.metrics.would_trip();
            tracing::info!(key = %self.key, "metrics-only: the window reached its limit (a normal breaker would have opened)");
            self.ring.clear(cur.generation());
            locked.clear_extra();
            if let Some(t) = self.tally.get() {
                t.clear();
            }
            self.unmark_clean(); // an empty window is not clean
            return Recorded::Nothing;
        }
        if locked.closed_clean(counts) {
            self.mark_clean(cur);
        } else {
            self.unmark_clean();
        }
        Recorded::Nothing
    }

    /// True while the fleet holds this instance an outlier of the key (`rate.rs`).
    fn outlier(&self) -> bool {
        self.rate()
            .is_some_and(|r| r.outlier(self.clock.now_nanos()))
    }

    /// True while the database's last answer to a trip of ours keeps the window from tripping
    /// again (`Locked::refused_until`).
    fn refused(&self, locked: &Locked) -> bool {
        locked.refused_until != 0 && locked.refused_until > self.clock.now_nanos()
    }

    /// Sets the word's clean bit if the window is full of successes, in `admitted`'s epoch.
    #[cold]
    ///
    /// Racing a failure: the failure sets its bit, then clears the clean bit if it sees it set;
    /// this sets the clean bit, then counts again. In the one order of these SeqCst operations,
    /// either the failure sees the bit set or the count sees the failure, so a failure never
    /// stays behind a clean bit.
    fn mark_clean(&self, admitted: StateWord) {
        let (failures, len, cap) = self.ring.counts();
        if failures != 0 || len != cap {
            return;
        }
        let w = self.load(Ordering::SeqCst);
        if !w.same_epoch(admitted) || !w.is_closed() || w.is_closed_and_clean() {
            return;
        }
        let clean = w.with_clean(true);
        if self
            .word
            .compare_exchange(w.0, clean.0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
            && self.ring.counts().0 != 0
        {
            self.unmark_clean();
        }
    }

    /// Clears the word's clean bit: the window holds a failure.
    #[inline]
    fn unmark_clean(&self) {
        if self.load(Ordering::SeqCst).is_closed_and_clean() {
            self.word.fetch_and(!StateWord::CLEAN_BIT, Ordering::SeqCst);
        }
    }
}
