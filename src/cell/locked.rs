//! [`Locked`]: what one key keeps behind its private lock, taken only when something changes
//! (an outcome on a window that is not clean, a transition, a lease, a row from the fleet): the
//! policy in force, the closed state's windows beyond the count window (`ring.rs`, kept outside
//! the lock), the half-open round, and the fleet's view.

use std::collections::VecDeque;

use super::Lease;
use crate::fleet::precedence::FleetView;
use crate::policy::Policy;
use crate::time_window::{Counts, TimeWindow};
use crate::window::OutcomeWindow;

/// Mutable state behind the key's private lock.
#[derive(Debug)]
pub(super) struct Locked {
    /// The policy in force: the code's, with the live configuration's overrides.
    pub(super) policy: Policy,
    /// The policy the breakers were built with (what a second builder must agree with).
    pub(super) code_policy: Policy,
    pub(super) half_open: OutcomeWindow,
    /// Local mode: probe permits not yet handed out in this half-open round.
    pub(super) probes_free: u32,
    /// Fleet mode: leases granted by the database and not yet taken by a caller.
    pub(super) leases: VecDeque<Lease>,
    /// Shared stores: what this cell knows of the row, and who wins (`precedence.rs`).
    pub(super) view: FleetView,
    /// Live breaker handles using this cell; while any exist, the policy is fixed.
    pub(super) handles: u32,
    /// Half-open rounds that failed since the breaker last closed: the `n` of a growing
    /// cooldown (`Policy::cooldown_after`). Reset by every transition to CLOSED. With a shared
    /// store the row counts them (`reopens`, `sql/objects/rc_report_probe.sql`); this count
    /// follows the reopens this instance sees, for local rounds while the database is away.
    pub(super) reopens: u32,
    /// With a slow-call rate on the count window: one bit per outcome of the count window, in
    /// step with it, set ("failure") for a slow call.
    pub(super) slow_calls: Option<OutcomeWindow>,
    /// With [`Builder::time_window`](crate::Builder::time_window): the window that is judged;
    /// the count window then only keeps the last outcomes for `execution_log`.
    pub(super) timed: Option<TimeWindow>,
    /// Shared stores: clock nanoseconds before which the window does not trip again, because
    /// the database left the row CLOSED when it last did (a group's cap, a live configuration):
    /// a member held CLOSED by its group, failing on, trips again a cooldown (at most a second,
    /// `fleet::REFUSED_TRIP_HOLD`) later, not at every failure.
    pub(super) refused_until: u64,
    /// The failures and calls of the window when it last opened the cell on this instance's
    /// own judgement (the closed window's, those of the time window's period with one: the
    /// lock's failures and the tally's calls; or a local half-open round's), what a quorum vote
    /// reports.
    pub(super) tripped_at: (u32, u32),
}

impl Locked {
    /// The closed state's windows beyond `closed` that `policy` asks for, empty.
    pub(super) fn extra_windows(policy: &Policy) -> (Option<OutcomeWindow>, Option<TimeWindow>) {
        let timed = policy.time_window.map(TimeWindow::new);
        let slow_calls = (timed.is_none() && policy.slow_rate().is_some())
            .then(|| OutcomeWindow::new(policy.failure_limit.denominator()));
        (slow_calls, timed)
    }

    /// Records a closed-state outcome in the windows kept here (the count window has been
    /// pushed to already); `now` is the time window's reading, with one.
    pub(super) fn push_extra(&mut self, success: bool, slow_call: bool, now: Option<u64>) {
        if let Some(s) = &mut self.slow_calls {
            s.push(!slow_call);
        }
        if let (Some(t), Some(now)) = (&mut self.timed, now) {
            t.push(now, success, slow_call);
        }
    }

    /// The closed state's verdict, the count window holding `counts` (failures, outcomes,
    /// capacity) and the time window, with one, `timed`.
    pub(super) fn closed_trips(
        &self,
        (failures, len, cap): (u32, u32, u32),
        timed: Option<Counts>,
    ) -> bool {
        match (timed, &self.slow_calls) {
            (Some(t), _) => self.policy.timed_trips(t),
            (None, Some(s)) => {
                self.policy.closed_trips_at(failures, len, cap) || self.policy.slow_trips_at(len, s)
            }
            (None, None) => self.policy.closed_trips_at(failures, len, cap),
        }
    }

    /// True when a fast success leaves the count window as it is: full, with no failure and no
    /// slow call. With a time window such a success still counts toward the period's calls
    /// (the word is `COUNTED`, `tally.rs`).
    pub(super) fn closed_clean(&self, (failures, len, cap): (u32, u32, u32)) -> bool {
        len == cap && failures == 0 && self.slow_calls.as_ref().map_or(true, |s| s.failures() == 0)
    }

    /// Empties the windows kept here.
    pub(super) fn clear_extra(&mut self) {
        if let Some(s) = &mut self.slow_calls {
            s.clear();
        }
        if let Some(t) = &mut self.timed {
            t.clear();
        }
    }
}
