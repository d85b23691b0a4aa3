//! [`TripPolicy`]: who may open a breaker for the whole fleet when one instance's window trips.

use std::time::Duration;

use crate::{ConfigError, MAX_DURATION};

/// The most instances a quorum may ask for. A quorum larger than the fleet can never open the
/// breaker, so this only catches nonsense (a count of calls given where instances were meant).
pub const MAX_QUORUM: u32 = 10_000;

/// Who opens a breaker for the fleet. Chosen per breaker with
/// [`Builder::trip_policy`](crate::Builder::trip_policy); every instance sharing a key should
/// choose the same. The README's "Fleet policies" section says when to choose which.
///
/// Whatever the policy, an instance whose own window trips stops its own calls at once (for the
/// breaker's cooldown); the policy decides whether the rest of the fleet follows. On the
/// in-memory store there is one instance, and its window opens the breaker.
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
    /// the Python ancestor's behaviour).
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
}

impl TripPolicy {
    /// Checks the policy's numbers (called by `Builder::build`).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
                if within < Duration::from_millis(1) {
                    return Err(ConfigError::InvalidTripPolicy {
                        reason: format!(
                            "votes that count for {within:?}: the period must be at least 1 ms"
                        ),
                    });
                }
                if within > MAX_DURATION {
                    return Err(ConfigError::DurationTooLong {
                        name: "quorum period",
                        given: within,
                        max: MAX_DURATION,
                    });
                }
                Ok(())
            }
        }
    }

    /// The quorum's size and period, for a quorum policy.
    pub(crate) fn quorum(&self) -> Option<(u32, Duration)> {
        match *self {
            TripPolicy::Quorum { instances, within } => Some((instances, within)),
            TripPolicy::AnyInstance => None,
        }
    }
}

impl std::fmt::Display for TripPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TripPolicy::AnyInstance => f.write_str("any instance"),
            TripPolicy::Quorum { instances, within } => {
                write!(f, "quorum of {instances} instances within {within:?}")
            }
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
        assert!(instant.to_string().contains("at least 1 ms"), "{instant}");
        assert!(matches!(
            q(3, MAX_DURATION + second).validate(),
            Err(ConfigError::DurationTooLong {
                name: "quorum period",
                ..
            })
        ));
    }
}
