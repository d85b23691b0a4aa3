//! [`Error`]: the error of a service behind a [`CircuitBreakerLayer`](super::CircuitBreakerLayer).

use crate::Rejected;

/// A type-erased error, as tower's middleware pass them around (`tower::BoxError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a [`CircuitBreakerService`](super::CircuitBreakerService): the breaker refused the
/// call (the inner service was not called), or the inner service failed.
///
/// The inner error is boxed, as tower's own middleware do, so that the service composes with
/// `Buffer`, `Retry` and `?` whatever the inner error type (a `tower::timeout` inside the breaker
/// makes it a [`BoxError`] already); it stays reachable through [`source`] and downcasting.
/// `Error` itself is `Send + Sync + 'static`, and once boxed by an outer layer it downcasts back:
/// `boxed.downcast_ref::<resilient_circuit::tower::Error>()`.
///
/// [`source`]: std::error::Error::source
///
/// ```
/// use resilient_circuit::tower::Error;
/// use std::error::Error as _;
///
/// let e = Error::Inner(std::io::Error::other("connection reset").into());
/// assert!(!e.is_rejected());
/// assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("connection reset"));
/// assert!(e.into_inner().is_some_and(|inner| inner.is::<std::io::Error>()));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The breaker refused the call: the inner service was neither polled nor called.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The inner service failed, in `poll_ready` or in its response future.
    #[error("the service behind the circuit breaker failed")]
    Inner(#[source] BoxError),
}

impl Error {
    /// True when the breaker refused the call: the inner service was not called. A retry policy
    /// should not retry such an error (see the README's "Retries").
    pub fn is_rejected(&self) -> bool {
        matches!(self, Error::Rejected(_))
    }

    /// The rejection, if the breaker refused the call.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            Error::Rejected(r) => Some(r),
            Error::Inner(_) => None,
        }
    }

    /// The inner service's error, if it was called and failed.
    pub fn into_inner(self) -> Option<BoxError> {
        match self {
            Error::Inner(e) => Some(e),
            Error::Rejected(_) => None,
        }
    }
}
