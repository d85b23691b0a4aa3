//! The cell's side of a shared store: probe-lease requests, the row's state as the fleet reports
//! it (judged by `fleet::precedence`), our own trips and overrides on their way, and
//! the switch to local half-open rounds when the database goes away. Nothing here is on the path
//! of a call on a closed breaker.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{KeyCell, Lease, Locked, Transition};
use crate::clock::duration_nanos;
use crate::fleet::precedence::{Call, Hold, PendingTrip, Remote, Source, Verdict};
use crate::State;

/// After the database left a trip's row CLOSED (a group at its cap), how long the window does
/// not trip again, at most (the cooldown, if shorter): a member failing on sends a trip a second,
/// not one a failure, and trips within a second of its group having room again.
pub(crate) const REFUSED_TRIP_HOLD: Duration = Duration::from_secs(1);

impl KeyCell {
    /// Fleet mode: claims the right to ask the database for a lease; false when a request is
    /// already in flight.
    pub(crate) fn begin_lease_request(&self) -> bool {
        // A plain load first: rejected callers arrive in crowds, and an unconditional swap would
        // write to this line on every one of them. AcqRel on the swap: one claimant wins.
        !self.lease_requested.load(Ordering::Relaxed)
            && !self.lease_requested.swap(true, Ordering::AcqRel)
    }

    /// The lease request ended (answered, failed, or dropped unrun); wakes waiting callers.
    pub(crate) fn end_lease_request(&self) {
        // Release: the leases added before are visible to whoever sees the flag clear.
        self.lease_requested.store(false, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Fleet mode: true while a rejected caller may still become a probe: a lease request is in
    /// flight, or one has ended with a lease nobody took yet. The second case is a caller that
    /// looked before the lease arrived and asks after the request ended; without it that caller
    /// would give up beside a free lease.
    pub(crate) fn probe_may_come(&self) -> bool {
        // Acquire pairs with `end_lease_request`'s Release: once the flag reads clear, the hint
        // stored by `add_leases` before it is visible.
        self.lease_requested.load(Ordering::Acquire) || self.probes_hint.load(Ordering::Relaxed) > 0
    }

    /// Numbers this instance's next own decision for the key (a trip or an override).
    pub(crate) fn next_decision(&self) -> u64 {
        // AcqRel: an override's answer compares against the latest number (`answered`).
        self.local_decisions.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Fleet mode: false while the database said every probe slot is leased (until the first
    /// lease expires or the state changes).
    pub(super) fn may_ask_lease(&self) -> bool {
        // Relaxed: a hint; asking once too often or too late is harmless.
        let at = self.lease_retry_at.load(Ordering::Relaxed);
        at == 0 || self.clock.now_nanos() >= at
    }

    /// Fleet mode: the database granted no lease; do not ask again for `wait` (unless the state
    /// changes first).
    pub(crate) fn lease_refused_for(&self, wait: Duration) {
        let at = self
            .clock
            .now_nanos()
            .saturating_add(duration_nanos(wait))
            .max(1);
        self.lease_retry_at.store(at, Ordering::Relaxed);
    }

    /// Judges a state of the shared row from `source` (see `precedence.rs`) and applies it if it
    /// wins. Returns the transition, if the state changed.
    pub(crate) fn apply_remote(&self, incoming: Remote, source: Source) -> Option<Transition> {
        let mut locked = self.lock();
        let verdict = locked.view.judge(incoming, source, self.clock.now_nanos());
        self.carry_out(&mut locked, verdict)
    }

    fn carry_out(&self, locked: &mut Locked, verdict: Verdict) -> Option<Transition> {
        let Verdict::Apply(r) = verdict else {
            return None;
        };
        if r.state != State::Open && self.mode() == crate::live_config::Mode::ForcedOpen {
            // The database refuses every write that ends the hold, so such a row is older than
            // the configuration (or forged): the cell stays open.
            return None;
        }
        let deadline = self.deadline_after(r.remaining);
        let cur = self.load(Ordering::Relaxed).state();
        if cur == r.state {
            if r.state == State::Open {
                // Release: pairs with admission's Acquire of the word, as for transitions.
                self.open_deadline.store(deadline, Ordering::Release);
                self.metrics.open_until(Some(r.remaining));
            }
            return None;
        }
        if cur == State::HalfOpen && r.state == State::Open {
            // The fleet's round failed: count it as the row does, for rounds run here while
            // the database is away (the row's count itself is not sent to instances).
            locked.reopens = locked.reopens.saturating_add(1);
        }
        if r.state == State::HalfOpen && !self.is_fleet() {
            // A round the fleet began, learned of just as the database went away: run it here.
            locked.probes_free = locked.policy.probe_count();
        }
        Some(self.set_state(
            locked,
            r.state,
            (r.state == State::Open).then_some(deadline),
        ))
    }

    /// Opens the cell on this instance's own judgement (its window tripped, or its own
    /// half-open round failed) until `deadline`. With a shared store, the decision is held
    /// against older rows from this step on (a trip on its way, a vote, a judgement made alone:
    /// see [`Hold`]), with the newest version seen now as its basis: taken under the same lock
    /// as the transition, so that no row the listener applies before the store takes the
    /// decision up can undo it.
    pub(super) fn open_on_own_judgement(&self, locked: &mut Locked, deadline: u64) -> Transition {
        let t = self.set_state(locked, State::Open, Some(deadline));
        if let Some(link) = &self.link {
            locked.view.pending_trip = Some(PendingTrip {
                deadline,
                basis: link.basis(),
                seq: self.next_decision(),
                hold: Hold::of(locked.policy.trip),
            });
        }
        t
    }

    /// The failures and calls of the window when it last opened the cell on this instance's
    /// own judgement, for a quorum vote: those of the time window's period when the breaker has
    /// one (the calls counted without the lock included), else of the count window, or of a
    /// local half-open round that failed.
    pub(crate) fn tripped_counts(&self) -> (u32, u32) {
        self.lock().tripped_at
    }

    /// The hold of local decision `seq` (a trip on its way, a vote, a fleet-rate judgement made
    /// alone) reached its deadline: true when it was still held, and is dropped now (the caller
    /// reads the row); false when something newer ended it first.
    pub(crate) fn hold_ended(&self, seq: u64) -> bool {
        let mut locked = self.lock();
        let held = locked.view.pending_trip.is_some_and(|p| p.seq == seq);
        if held {
            locked.view.pending_trip = None;
        }
        held
    }

    /// The version of the row this cell last applied (0: none).
    pub(crate) fn row_version(&self) -> i64 {
        self.lock().view.version
    }

    /// The local trip not yet accepted, if any.
    pub(crate) fn pending_trip(&self) -> Option<PendingTrip> {
        self.lock().view.pending_trip
    }

    /// Forgets a pending trip whose cooldown is over (not worth publishing any more).
    pub(crate) fn drop_pending_trip(&self, seq: u64) {
        self.lock().view.trip_answered(seq);
    }

    /// The database answered a call of ours about this key with `row`, the row as it is now.
    pub(crate) fn answered(&self, call: Call, row: Remote) -> Option<Transition> {
        let source = match call {
            Call::Other => Source::Answer,
            Call::Trip { seq } => {
                let mut locked = self.lock();
                let basis = locked
                    .view
                    .pending_trip
                    .filter(|p| p.seq == seq)
                    .map(|p| p.basis);
                locked.view.trip_answered(seq);
                let now = self.clock.now_nanos();
                let verdict = locked.view.judge(row, Source::Answer, now);
                let t = self.carry_out(&mut locked, verdict);
                // CLOSED at the version the trip was decided on: the database left the row as
                // it was (a group's cap, a live configuration), and would again at once.
                if row.state == State::Closed && basis.is_some_and(|b| row.version <= b) {
                    let hold = locked.policy.cooldown.min(REFUSED_TRIP_HOLD);
                    locked.refused_until = now.saturating_add(duration_nanos(hold));
                    self.metrics.refused_trip();
                }
                return t;
            }
            Call::Override { seq } => Source::OverrideAnswer {
                superseded: self.local_decisions.load(Ordering::Acquire) != seq,
            },
        };
        self.apply_remote(row, source)
    }

    /// An override of ours will not reach the database.
    pub(crate) fn override_abandoned(&self) -> Option<Transition> {
        let mut locked = self.lock();
        let verdict = locked.view.override_abandoned(self.clock.now_nanos());
        self.carry_out(&mut locked, verdict)
    }

    /// The storage lost the database: a fleet half-open round cannot go on (its leases and
    /// reports need the database), so a half-open cell starts a round of its own, in a new epoch
    /// so that outcomes of fleet probes in flight count as neither. Without this the key would
    /// reject every call until the database is back.
    pub(crate) fn go_local(&self) {
        let mut locked = self.lock();
        if self.state() == State::HalfOpen {
            locked.probes_free = locked.policy.probe_count();
            locked.leases.clear();
            self.set_state(&mut locked, State::HalfOpen, None);
            // set_state sets the fleet hint (0 leases) while `online` may still be read as true.
            self.probes_hint
                .store(locked.probes_free, Ordering::Relaxed);
        }
        drop(locked);
        self.lease_retry_at.store(0, Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    /// Fleet mode: leases the database granted for this key.
    pub(crate) fn add_leases(&self, leases: impl IntoIterator<Item = Lease>) {
        let mut locked = self.lock();
        locked.leases.extend(leases);
        self.probes_hint
            .store(locked.leases.len() as u32, Ordering::Relaxed);
        drop(locked);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
