//! [`Policy`]: the pure decision rules of a breaker, with no clock, lock or storage.

use std::time::Duration;

use crate::time_window::Counts;
use crate::window::OutcomeWindow;
use crate::{Ratio, SlowCalls, State, TripPolicy};

/// The longest cooldown, lease or override the crate accepts: ten years of 365 days (the SQL
/// functions clamp to the same bound, `rc_max_ms()`). Longer ones are refused when a breaker is
/// built and clamped in overrides made at run time.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a breaker is configured to do; identical for every handle of a key on one storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) failure_limit: Ratio,
    pub(crate) success_limit: Option<Ratio>,
    pub(crate) cooldown: Duration,
    /// Who opens the breaker for the fleet when this instance's window trips.
    pub(crate) trip: TripPolicy,
    /// Growing cooldowns (`Builder::max_cooldown`): the cap of a cooldown after reopens, or
    /// `None` for a fixed cooldown.
    pub(crate) max_cooldown: Option<Duration>,
    /// Outcomes a closed window needs before it may trip; `None`: the failure limit's
    /// denominator (a full count window, as before minimum calls existed).
    pub(crate) minimum_calls: Option<u32>,
    /// Judge the outcomes of this period instead of the last `denominator` ones.
    pub(crate) time_window: Option<Duration>,
    /// Calls at least this long are slow, and count as this says.
    pub(crate) slow_call: Option<(Duration, SlowCalls)>,
}

/// The largest share of a grown cooldown that jitter takes off: 10%.
pub(crate) const JITTER: f64 = 0.1;

impl Default for Policy {
    /// The builder's defaults: 5 failures in 10 calls, 30 s cooldown, no success limit.
    fn default() -> Self {
        Policy {
            failure_limit: Ratio::new(5, 10),
            success_limit: None,
            cooldown: Duration::from_secs(30),
            trip: TripPolicy::AnyInstance,
            max_cooldown: None,
            minimum_calls: None,
            time_window: None,
            slow_call: None,
        }
    }
}

impl Policy {
    /// How many probes a half-open breaker admits (fleet-wide with a shared store).
    pub(crate) fn probe_count(&self) -> u32 {
        self.success_limit
            .unwrap_or(self.failure_limit)
            .denominator()
    }

    /// How many of a half-open round's probes must succeed for it to close: the success
    /// limit's numerator, or, without one, enough that the failures stay under the failure
    /// limit (the rule of [`half_open_verdict`](Self::half_open_verdict), as a count).
    pub(crate) fn probe_close_threshold(&self) -> u32 {
        match self.success_limit {
            Some(s) => s.numerator(),
            None => (self.probe_count() + 1).saturating_sub(self.failure_limit.numerator()),
        }
    }

    /// The cooldown after the `reopens`-th failed half-open round since the breaker last closed
    /// (0: a trip from CLOSED, which always rests the base cooldown).
    ///
    /// With growth on it is `min(max_cooldown, cooldown × 2^reopens)`, shortened by `jitter × 10%`
    /// for `reopens ≥ 1` (`jitter` in `[0, 1)`, drawn by the caller), so it never exceeds the cap
    /// and keys reopened together spread their probes. Without growth, the base cooldown. The
    /// same formula as `rc_report_probe` in `sql/objects/rc_grown_cooldown_ms.sql`.
    pub(crate) fn cooldown_after(&self, reopens: u32, jitter: f64) -> Duration {
        let Some(max) = self.max_cooldown else {
            return self.cooldown;
        };
        if reopens == 0 {
            return self.cooldown;
        }
        let mut grown = self.cooldown;
        for _ in 0..reopens {
            if grown >= max || grown.is_zero() {
                break;
            }
            grown = grown.saturating_mul(2);
        }
        let grown = grown.min(max);
        let cut = grown.mul_f64(JITTER * jitter.clamp(0.0, 1.0));
        grown.saturating_sub(cut)
    }

    /// A closed count window trips once it holds [`minimum_calls`](Self::minimum_calls)
    /// outcomes and at least the failure limit's share of them are failures: on a full window,
    /// at least `num` failures.
    ///
    /// With [`TripPolicy::FleetRate`] the database judges the fleet; this rule is for when the
    /// instance judges alone (in memory, or while the database is unreachable): the window's
    /// failure rate reaches the limit over at least `min_calls` outcomes, capped at the window's
    /// size.
    #[cfg(test)]
    pub(crate) fn closed_trips(&self, w: &OutcomeWindow) -> bool {
        self.closed_trips_at(w.failures(), w.len(), w.capacity())
    }

    /// [`closed_trips`](Self::closed_trips) of a window holding `len` outcomes of which
    /// `failures` failed, out of `capacity`.
    pub(crate) fn closed_trips_at(&self, failures: u32, len: u32, capacity: u32) -> bool {
        if let Some((limit, min_calls, _)) = self.trip.fleet_rate() {
            let (len, failures) = (u64::from(len), u64::from(failures));
            return len >= u64::from(min_calls.min(capacity))
                && failures > 0
                && failures * u64::from(limit.denominator()) >= u64::from(limit.numerator()) * len;
        }
        len >= self.minimum_calls() && at_rate(failures.into(), len.into(), self.failure_limit)
    }

    /// How many outcomes a closed window needs before it may trip.
    pub(crate) fn minimum_calls(&self) -> u32 {
        self.minimum_calls
            .unwrap_or_else(|| self.failure_limit.denominator())
    }

    /// The slow-call rate, when slow calls count toward a rate of their own.
    pub(crate) fn slow_rate(&self) -> Option<Ratio> {
        match self.slow_call {
            Some((_, SlowCalls::Rate(r))) => Some(r),
            _ => None,
        }
    }

    /// The count window's slow-call verdict: `slow` holds one bit per outcome of `w`, set for a
    /// slow call (its "failures" are the slow calls).
    #[cfg(test)]
    pub(crate) fn slow_trips(&self, w: &OutcomeWindow, slow: &OutcomeWindow) -> bool {
        self.slow_trips_at(w.len(), slow)
    }

    /// [`slow_trips`](Self::slow_trips) of a count window holding `len` outcomes.
    pub(crate) fn slow_trips_at(&self, len: u32, slow: &OutcomeWindow) -> bool {
        self.slow_rate().is_some_and(|r| {
            len >= self.minimum_calls() && at_rate(slow.failures().into(), len.into(), r)
        })
    }

    /// Every closed call is counted outside the count window: for a fleet rate (`rate.rs`) or a
    /// time window (`cell/tally.rs`).
    pub(crate) fn counts_every_call(&self) -> bool {
        self.trip.fleet_rate().is_some() || self.time_window.is_some()
    }

    /// The time window's verdict: enough calls in the period, and failures or slow calls at
    /// their rate.
    pub(crate) fn timed_trips(&self, c: Counts) -> bool {
        c.calls >= u64::from(self.minimum_calls())
            && (at_rate(c.failures, c.calls, self.failure_limit)
                || self
                    .slow_rate()
                    .is_some_and(|r| at_rate(c.slow, c.calls, r)))
    }

    /// The verdict of a half-open window once all its probes reported, or as soon as closing
    /// has become impossible (then Open, without waiting for the rest), else `None`. The same
    /// rule as `rc_report_probe` for fleet rounds.
    ///
    /// With a success limit: close when successes reach its numerator. Without: the failure
    /// limit decides, as in the Python package.
    pub(crate) fn half_open_verdict(&self, w: &OutcomeWindow) -> Option<State> {
        if !w.is_full() {
            let hopeless = match self.success_limit {
                Some(s) => w.failures() > s.denominator().saturating_sub(s.numerator()),
                None => w.failures() >= self.failure_limit.numerator(),
            };
            return hopeless.then_some(State::Open);
        }
        Some(match self.success_limit {
            Some(s) if w.successes() >= s.numerator() => State::Closed,
            Some(_) => State::Open,
            None if w.failures() >= self.failure_limit.numerator() => State::Open,
            None => State::Closed,
        })
    }
}

/// `hits / calls >= limit`, in integers (u128: no product overflows).
fn at_rate(hits: u64, calls: u64, limit: Ratio) -> bool {
    calls > 0
        && u128::from(hits) * u128::from(limit.denominator())
            >= u128::from(limit.numerator()) * u128::from(calls)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
