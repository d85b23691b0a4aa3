//! [`SlowCalls`]: what a call slower than [`Builder::slow_call`](crate::Builder::slow_call)'s
//! threshold counts as.

use crate::Ratio;

/// How a breaker judges calls slower than its slow-call threshold
/// ([`Builder::slow_call`](crate::Builder::slow_call)).
///
/// A call's duration is known where the crate runs it ([`call`](crate::CircuitBreaker::call),
/// [`call_with`](crate::CircuitBreaker::call_with), the `tower` layer) and where a
/// [`Permit`](crate::Permit) reports it with [`record_timed`](crate::Permit::record_timed).
///
/// ```
/// # fn main() -> Result<(), resilient_circuit::ConfigError> {
/// use resilient_circuit::{CircuitBreaker, Ratio, SlowCalls, Storage};
/// use std::time::Duration;
/// // Any call over 2 s counts as a failure of the failure limit.
/// let strict = CircuitBreaker::builder("search")
///     .storage(Storage::in_memory())
///     .slow_call(Duration::from_secs(2), SlowCalls::AsFailure)
///     .build()?;
/// // Trip when 8 calls in 10 (of the window) took over 500 ms, whatever their outcome.
/// let patient = CircuitBreaker::builder("reports")
///     .storage(Storage::in_memory())
///     .slow_call(Duration::from_millis(500), SlowCalls::Rate(Ratio::new(8, 10)))
///     .build()?;
/// # let _ = (strict, patient);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlowCalls {
    /// A slow call is a failure, whatever it returned: it counts toward the failure limit, and a
    /// slow half-open probe is a failed probe.
    AsFailure,
    /// Slow calls keep their outcome and count toward a rate of their own, judged over the same
    /// window as the failure limit (and its minimum number of calls): the breaker trips when at
    /// least this share of the window's calls were slow, e.g. `Ratio::new(8, 10)` = 80 %. The
    /// ratio is read as a rate only; half-open probes are judged by their outcome alone.
    Rate(Ratio),
}

impl std::fmt::Display for SlowCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlowCalls::AsFailure => f.write_str("as failures"),
            SlowCalls::Rate(r) => write!(f, "rate {r}"),
        }
    }
}
