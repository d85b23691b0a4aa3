//! [`TripPolicy`]: who may open a breaker for the whole fleet when one instance's window trips.

use std::time::Duration;

use crate::{ConfigError, Ratio, MAX_DURATION};

/// The shortest period a [`TripPolicy::FleetRate`] may judge: instances report at most once per
/// flush interval (1 s by default), so a shorter period would count one report at most.
pub const MIN_RATE_PERIOD: Duration = Duration::from_secs(1);

/// The most instances a quorum may ask for. A quorum larger than the fleet can never open the
/// breaker, so this only catches nonsense (a count of calls given where instances were meant).
pub const MAX_QUORUM: u32 = 10_000;

/// Who opens a breaker for the fleet. Chosen per breaker with
/// [`Builder::trip_policy`](crate::Builder::trip_policy); every instance sharing a key should
/// choose the same. [`docs::operating`](crate::docs::operating), "Fleet policies", says when to choose which.
///
/// With `AnyInstance` and `Quorum`, an instance whose own window trips stops its own calls at once
/// (for the breaker's cooldown), and the policy decides whether the rest of the fleet follows;
/// with `FleetRate`, only the fleet's failure rate opens the breaker. On the in-memory store
/// there is one instance, and its window opens the breaker.
///
/// ```
/// # fn main() -> Result<(), resilient_circuit::ConfigError> {
/// use resilient_circuit::{CircuitBreaker, Storage, TripPolicy};
/// use std::time::Duration;
/// let cb = CircuitBreaker::builder("payments")
///     .storage(Storage::in_memory())
///     // One sick pod does not open "payments" for everyone: three must agree within a minute.
///     .trip_policy(TripPolicy::Quorum { instances: 3, within: Duration::from_secs(60) })
///     .build()?;
/// # let _ = cb; Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum TripPolicy {
    /// Any instance whose window trips opens the breaker for the whole fleet (the default, and
    /// the Python package's behaviour).
    #[default]
    AnyInstance,
    /// The fleet opens when `instances` distinct instances tripped within `within`. An instance
    /// whose window trips stops its own calls for the cooldown and casts a vote; votes older
    /// than `within` expire, and the votes that opened the breaker are spent. With `instances: 1`
    /// this is [`AnyInstance`](Self::AnyInstance) with a vote in the audit trail.
    Quorum {
        /// How many distinct instances must vote: 1 to [`MAX_QUORUM`].
        instances: u32,
        /// How long a vote counts: at least 1 ms, at most [`MAX_DURATION`].
        within: Duration,
    },
    /// The database opens the breaker when the fleet's failure rate over `period` reaches
    /// `limit`, over at least `min_calls` calls. No instance opens it on its own window: while
    /// its window holds failures, each reports the calls and failures it recorded since its
    /// previous report, at most once per flush interval
    /// ([`PostgresOptions::fleet_rate_interval`](crate::storage::postgres::PostgresOptions::fleet_rate_interval),
    /// 1 s by default), and the reports younger than `period` add up. A healthy fleet sends
    /// nothing. On the in-memory store, and while the database is unreachable, the instance
    /// judges its own window by the same rule (with `min_calls` capped at the window's size).
    FleetRate {
        /// The failure rate that opens it: `Ratio::new(1, 2)` is 50% of the calls.
        limit: Ratio,
        /// The fewest calls the reports must add up to: at least 1.
        min_calls: u32,
        /// How long a report counts: at least [`MIN_RATE_PERIOD`], at most [`MAX_DURATION`].
        period: Duration,
    },
}

impl TripPolicy {
    /// Checks the policy's numbers, as [`Builder::build`](crate::Builder::build) does.
    ///
    /// ```
    /// use resilient_circuit::{Ratio, TripPolicy};
    /// use std::time::Duration;
    /// let rate = TripPolicy::FleetRate {
    ///     limit: Ratio::new(1, 2),
    ///     min_calls: 0,
    ///     period: Duration::from_secs(60),
    /// };
    /// assert!(rate.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        match *self {
            TripPolicy::AnyInstance => Ok(()),
            TripPolicy::Quorum { instances, within } => {
                if instances == 0 || instances > MAX_QUORUM {
                    return Err(ConfigError::InvalidTripPolicy {
                        reason: format!(
                            "a quorum of {instances} instances: it must be 1 to {MAX_QUORUM}"
                        ),
                    });
                }
                check_period("quorum period", within, Duration::from_millis(1), "")
            }
            TripPolicy::FleetRate {
                limit,
                min_calls,
                period,
            } => {
                limit.validate("fleet rate limit")?;
                if min_calls == 0 {
                    return Err(ConfigError::InvalidTripPolicy {
                        reason: "a fleet rate over at least 0 calls: min_calls must be at least 1"
                            .to_owned(),
                    });
                }
                check_period(
                    "fleet rate period",
                    period,
                    MIN_RATE_PERIOD,
                    " (instances report once per flush interval)",
                )
            }
        }
    }

    /// The limit, minimum and period, for a fleet rate policy.
    pub(crate) fn fleet_rate(&self) -> Option<(Ratio, u32, Duration)> {
        match *self {
            TripPolicy::FleetRate {
                limit,
                min_calls,
                period,
            } => Some((limit, min_calls, period)),
            _ => None,
        }
    }
}

/// A policy's period: at least `min` (`why` says why, after the figure), at most
/// [`MAX_DURATION`].
fn check_period(
    name: &'static str,
    given: Duration,
    min: Duration,
    why: &str,
) -> Result<(), ConfigError> {
    if given < min {
        return Err(ConfigError::InvalidTripPolicy {
            reason: format!("a {name} of {given:?}: it must be at least {min:?}{why}"),
        });
    }
    if given > MAX_DURATION {
        return Err(ConfigError::DurationTooLong {
            name,
            given,
            max: MAX_DURATION,
        });
    }
    Ok(())
}

impl std::fmt::Display for TripPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TripPolicy::AnyInstance => f.write_str("any instance"),
            TripPolicy::Quorum { instances, within } => {
                write!(f, "quorum of {instances} instances within {within:?}")
            }
            TripPolicy::FleetRate {
                limit,
                min_calls,
                period,
            } => write!(
                f,
                "fleet failure rate {limit} over {period:?}, at least {min_calls} calls"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_quorums_are_refused_with_the_reason() {
        let q = |instances, within| TripPolicy::Quorum { instances, within };
        let second = Duration::from_secs(1);
        assert!(TripPolicy::AnyInstance.validate().is_ok());
        assert!(q(1, second).validate().is_ok());
        assert!(q(MAX_QUORUM, MAX_DURATION).validate().is_ok());
        let zero = q(0, second).validate().expect_err("zero instances");
        assert!(zero.to_string().contains("quorum of 0"), "{zero}");
        assert!(q(MAX_QUORUM + 1, second).validate().is_err());
        let instant = q(3, Duration::from_micros(999))
            .validate()
            .expect_err("< 1 ms");
        assert!(instant.to_string().contains("at least 1ms"), "{instant}");
        assert!(matches!(
            q(3, MAX_DURATION + second).validate(),
            Err(ConfigError::DurationTooLong {
                name: "quorum period",
                ..
            })
        ));
    }

    #[test]
    fn nonsense_fleet_rates_are_refused_with_the_reason() {
        let rate = |limit, min_calls, period| TripPolicy::FleetRate {
            limit,
            min_calls,
            period,
        };
        let half = Ratio::new(1, 2);
        let minute = Duration::from_secs(60);
        assert!(rate(half, 20, minute).validate().is_ok());
        assert!(rate(Ratio::new(1, 1), 1, MIN_RATE_PERIOD)
            .validate()
            .is_ok());
        assert!(matches!(
            rate(Ratio::new(3, 2), 20, minute).validate(),
            Err(ConfigError::InvalidRatio {
                which: "fleet rate limit",
                ..
            })
        ));
        assert!(rate(Ratio::new(0, 2), 20, minute).validate().is_err());
        let none = rate(half, 0, minute).validate().expect_err("0 calls");
        assert!(none.to_string().contains("min_calls"), "{none}");
        let short = rate(half, 20, Duration::from_millis(999))
            .validate()
            .expect_err("under a second");
        assert!(short.to_string().contains("at least 1s"), "{short}");
        assert!(matches!(
            rate(half, 20, MAX_DURATION + minute).validate(),
            Err(ConfigError::DurationTooLong {
                name: "fleet rate period",
                ..
            })
        ));
        assert_eq!(
            rate(half, 20, minute).to_string(),
            "fleet failure rate 1/2 over 60s, at least 20 calls"
        );
    }
}
