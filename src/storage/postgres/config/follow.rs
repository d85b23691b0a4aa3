//! How an instance follows the table: [`Follow::Listen`] (LISTEN on a session of its own) or
//! [`Follow::Poll`] (ask the change log every interval), and `RC_DB_FOLLOW`'s names for them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How an instance learns of the changes other instances make; see
/// [`PostgresOptions::follow`](super::PostgresOptions::follow) and [`docs::scale`](crate::docs::scale).
///
/// ```
/// use resilient_circuit::storage::postgres::Follow;
/// assert_eq!("poll".parse::<Follow>(), Ok(Follow::Poll));
/// assert_eq!(Follow::default(), Follow::Listen);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
#[non_exhaustive]
pub enum Follow {
    /// LISTEN on a connection of its own to the primary: a change reaches every instance within
    /// milliseconds, at the cost of one server connection per instance that the server wakes on
    /// every change. The default.
    #[default]
    Listen,
    /// Ask the change log for what is new every
    /// [`poll_interval`](super::PostgresOptions::poll_interval), in one statement that works
    /// through pgbouncer in transaction mode and on a streaming replica. For fleets past one
    /// primary's connection budget, and for instances far from the primary.
    Poll,
}

/// The default [`poll_interval`](super::PostgresOptions::poll_interval): a change reaches a
/// polling instance within this, plus the replica's lag; each poll costs the server about 60 µs
/// of CPU ([`docs::scale`](crate::docs::scale)).
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);

impl Follow {
    /// The name `RC_DB_FOLLOW` takes: `listen` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Follow::Listen => "listen",
            Follow::Poll => "poll",
        }
    }
}

impl fmt::Display for Follow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of `"…".parse::<Follow>()`: the text is neither `listen` nor `poll`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown follow mode: use listen or poll")]
pub struct ParseFollowError;

impl FromStr for Follow {
    type Err = ParseFollowError;

    /// `listen` or `poll`, in any case, around white space.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "listen" => Ok(Follow::Listen),
            "poll" => Ok(Follow::Poll),
            _ => Err(ParseFollowError),
        }
    }
}
