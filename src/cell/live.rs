//! The cell's side of live configuration (`live_config.rs`, `storage::postgres::configs`): the
//! policy in force is the code's with the table's overrides, and the mode is read by the slow
//! paths only, so a closed breaker still admits on one load.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::counted::rate_alone;
use super::{KeyCell, Locked, RateCounter, Rule, Transition};
use crate::live_config::{LiveConfig, Mode};
use crate::policy::Policy;
use crate::window::OutcomeWindow;
use crate::State;

/// What applying a live configuration did to a cell ([`KeyCell::set_live`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an opened cell's transition is announced; a released one reads its row again"]
pub(crate) struct LiveApplied {
    /// It entered `ForcedOpen` and opened.
    pub(crate) opened: Option<Transition>,
    /// It left `ForcedOpen`: its state is the row's again, which must be read.
    pub(crate) released: bool,
}

impl KeyCell {
    /// Puts `policy` in force; windows of another size start empty.
    pub(super) fn set_policy(&self, locked: &mut Locked, policy: Policy) {
        // Even for the same policy: the mode it is judged in may have changed (`set_live`).
        self.refresh_rule(&policy);
        if locked.policy == policy {
            return;
        }
        let resized = locked.policy.failure_limit.denominator()
            != policy.failure_limit.denominator()
            || locked.policy.time_window != policy.time_window
            || locked.policy.slow_call != policy.slow_call;
        let probes_changed = locked.policy.probe_count() != policy.probe_count();
        locked.policy = policy;
        if policy.time_window.is_some() || self.tally.get().is_some() {
            let tally = self.tally.get_or_init(Box::default);
            tally.configure(&policy, &*self.clock);
            if resized {
                tally.clear();
            }
        }
        if resized {
            let generation = self.load(Ordering::Relaxed).generation();
            self.ring
                .resize(policy.failure_limit.denominator(), generation);
            (locked.slow_calls, locked.timed) = Locked::extra_windows(&policy);
        }
        if probes_changed {
            locked.half_open = OutcomeWindow::new(policy.probe_count());
            // A local half-open round restarts with the new probe count (a probe out at the
            // change still reports into the new round).
            let cur = self.load(Ordering::Relaxed);
            if cur.state() == State::HalfOpen && !self.is_fleet() {
                locked.probes_free = policy.probe_count();
                self.probes_hint
                    .store(locked.probes_free, Ordering::Relaxed);
            }
        }
        // A fleet rate and a time window count every call from now on (`rate.rs`, `tally.rs`).
        let counted = policy.counts_every_call();
        if policy.trip.fleet_rate().is_some() {
            self.rate
                .get_or_init(|| Box::new(RateCounter::new(self.clock.now_nanos())));
        }
        // Relaxed: a success that reads the old value counts as the old policy did.
        self.rate_alone
            .store(rate_alone(&policy), Ordering::Relaxed);
        // The window may now trip sooner (or be empty): a success must look again.
        let cur = self.load(Ordering::Relaxed);
        self.store(
            cur.with_clean(false).with_counted(counted),
            Ordering::Release,
        );
    }

    /// Applies the key's live configuration (`None`: back to the code's values, mode normal).
    /// The caller has checked it (`LiveConfig::validate`). Entering `ForcedOpen` opens the cell
    /// at once, whatever the table's row said last (the transition is returned for the caller to
    /// announce); leaving it says so, since the cell then holds a state no reason backs: the
    /// caller reads the row again.
    pub(crate) fn set_live(&self, live: Option<Arc<LiveConfig>>) -> LiveApplied {
        let mut locked = self.lock();
        let was_forced = self.mode() == Mode::ForcedOpen;
        let effective = live
            .as_deref()
            .map_or(locked.code_policy, |l| l.over(locked.code_policy));
        let mode = live.as_deref().map_or(Mode::Normal, |l| l.mode);
        self.live.store(live);
        // Relaxed: the slow paths read it as a hint; the lock orders it with the policy.
        self.mode.store(mode.to_u8(), Ordering::Relaxed);
        self.set_policy(&mut locked, effective);
        let opened = (mode == Mode::ForcedOpen
            && self.load(Ordering::Relaxed).state() != State::Open)
            .then(|| {
                let deadline = self.deadline_after(crate::MAX_DURATION);
                self.set_state(&mut locked, State::Open, Some(deadline))
            });
        LiveApplied {
            opened,
            released: was_forced && mode != Mode::ForcedOpen,
        }
    }

    /// Publishes the rule the lock-free path judges by: `policy`'s in the normal mode, none in
    /// the others (they count differently, under the lock).
    pub(super) fn refresh_rule(&self, policy: &Policy) {
        let rule = if self.mode() == Mode::Normal {
            Rule::of(policy)
        } else {
            Rule::LOCKED
        };
        // Relaxed: a policy or mode arriving a moment late judges one outcome by the older rule.
        self.rule.store(rule.bits(), Ordering::Relaxed);
    }

    /// The key's live configuration, if the table holds one.
    pub(crate) fn live_config(&self) -> Option<Arc<LiveConfig>> {
        self.live.load_full()
    }

    /// The live configuration's mode (`Normal` without one).
    pub(crate) fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Relaxed))
    }
}
