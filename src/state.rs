//! [`State`] and [`ChangeOrigin`]: what a breaker is doing and who decided it (a transition is
//! a [`Change`](crate::Change)).

use std::fmt;
use std::str::FromStr;

/// The three states of a circuit breaker.
///
/// The string forms (`CLOSED`, `OPEN`, `HALF_OPEN`) are the ones stored in the `state` column of
/// `rc_circuit_breakers`, shared with the Python package.
///
/// ```
/// use resilient_circuit::State;
/// assert_eq!(State::HalfOpen.as_str(), "HALF_OPEN");
/// assert_eq!("OPEN".parse::<State>(), Ok(State::Open));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls run; outcomes are recorded in the failure window.
    Closed,
    /// Calls are rejected without running until the cooldown ends.
    Open,
    /// A bounded number of probe calls run to decide between closing and opening again.
    HalfOpen,
}

impl State {
    /// The database / wire spelling of the state.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`State`] from a string that is not `CLOSED`, `OPEN` or `HALF_OPEN`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown breaker state {0:?}: expected CLOSED, OPEN or HALF_OPEN")]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "CLOSED" => Ok(State::Closed),
            "OPEN" => Ok(State::Open),
            "HALF_OPEN" => Ok(State::HalfOpen),
            other => Err(UnknownState(other.to_owned())),
        }
    }
}

/// Where a transition was decided.
///
/// ```
/// # fn main() -> Result<(), resilient_circuit::ConfigError> {
/// use resilient_circuit::{ChangeOrigin, CircuitBreaker, Storage};
/// let cb = CircuitBreaker::builder("kyc")
///     .storage(Storage::in_memory())
///     .on_status_change(|c| match c.origin {
///         ChangeOrigin::Local => println!("{}: we saw {} -> {}", c.key, c.from, c.to),
///         _ => println!("{}: the fleet moved it to {}", c.key, c.to),
///     })
///     .build()?;
/// # drop(cb); Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeOrigin {
    /// This process decided it (its own window, its own probes, a manual override through it).
    Local,
    /// Another instance, service or operator changed the shared row; this process applied it.
    Remote,
}

/// What [`on_status_change`](crate::Builder::on_status_change) callbacks received before they
/// received the stream's [`Change`](crate::Change) (same fields, and more).
#[deprecated(
    since = "0.1.0",
    note = "callbacks receive `resilient_circuit::Change`"
)]
pub type StatusChange = crate::Change;
