//! [`Classify`]: what a response or an error of the inner service means for the protected
//! resource's health. [`ErrorsAsFailures`] by default, `HttpClassifier` for HTTP.

use crate::Outcome;

/// Decides whether a finished call of the inner service counts as a success or a failure.
///
/// Implemented by [`ErrorsAsFailures`] (the default), `HttpClassifier` (feature `http`) and by
/// every `Fn(&Result<Response, Error>) -> Outcome`, so a closure overrides either:
///
/// ```
/// use resilient_circuit::tower::{Classify, CircuitBreakerLayer};
/// use resilient_circuit::{CircuitBreaker, Outcome, Storage};
///
/// // A "not found" from a lookup service says nothing about its health.
/// let classify = |r: &Result<Option<u32>, std::io::Error>| match r {
///     Ok(_) => Outcome::Success,
///     Err(e) => Outcome::failure_if(e.kind() != std::io::ErrorKind::NotFound),
/// };
/// let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
/// assert_eq!(classify.classify(&Err(missing)), Outcome::Success);
///
/// let cb = CircuitBreaker::builder("lookup").storage(Storage::in_memory()).build()?;
/// let layer = CircuitBreakerLayer::new(cb).classifier(classify);
/// # Ok::<(), resilient_circuit::ConfigError>(())
/// ```
pub trait Classify<Res, E> {
    /// The outcome of one call, from what the inner service's future returned.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

impl<F, Res, E> Classify<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

/// The default classifier: every `Err` of the inner service is a failure, every `Ok` a success
/// ([`Outcome::from_result`]).
///
/// ```
/// use resilient_circuit::tower::{Classify, ErrorsAsFailures};
/// use resilient_circuit::Outcome;
/// assert_eq!(ErrorsAsFailures.classify(&Ok::<u16, ()>(503)), Outcome::Success);
/// assert_eq!(ErrorsAsFailures.classify(&Err::<u16, ()>(())), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl<Res, E> Classify<Res, E> for ErrorsAsFailures {
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        Outcome::from_result(result)
    }
}

#[cfg(feature = "http")]
pub use self::http_classifier::HttpClassifier;

#[cfg(feature = "http")]
mod http_classifier {
    use super::Classify;
    use crate::Outcome;
    use http::{Response, StatusCode};

    /// Classifies HTTP responses (feature `http`): a **5xx** response and every **error** of the
    /// inner service (a connection refused or reset, a timeout from `tower::timeout` placed
    /// inside the breaker) are failures; any other response, **4xx** included, is a success,
    /// since a client's mistake says nothing about the server's health.
    ///
    /// [`failure_statuses`](Self::failure_statuses) replaces the status rule (errors stay
    /// failures); a closure over the whole `Result` replaces everything (see [`Classify`]).
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use resilient_circuit::tower::{Classify, HttpClassifier};
    /// use resilient_circuit::Outcome;
    ///
    /// type Answer = Result<Response<()>, std::io::Error>;
    /// let status = |s: StatusCode| -> Answer {
    ///     let mut response = Response::new(());
    ///     *response.status_mut() = s;
    ///     Ok(response)
    /// };
    /// let http = HttpClassifier::new();
    /// assert_eq!(http.classify(&status(StatusCode::SERVICE_UNAVAILABLE)), Outcome::Failure);
    /// assert_eq!(http.classify(&status(StatusCode::NOT_FOUND)), Outcome::Success);
    /// let reset: Answer = Err(std::io::Error::other("connection reset"));
    /// assert_eq!(http.classify(&reset), Outcome::Failure);
    ///
    /// // Count "429 Too Many Requests" as well:
    /// let strict = HttpClassifier::failure_statuses(|s| {
    ///     s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS
    /// });
    /// assert_eq!(strict.classify(&status(StatusCode::TOO_MANY_REQUESTS)), Outcome::Failure);
    /// ```
    #[derive(Clone, Copy)]
    pub struct HttpClassifier {
        is_failure: fn(StatusCode) -> bool,
    }

    impl HttpClassifier {
        /// 5xx responses and errors are failures.
        pub const fn new() -> Self {
            HttpClassifier {
                is_failure: |s| s.is_server_error(),
            }
        }

        /// Responses whose status satisfies `is_failure` are failures; errors still are.
        pub const fn failure_statuses(is_failure: fn(StatusCode) -> bool) -> Self {
            HttpClassifier { is_failure }
        }
    }

    impl Default for HttpClassifier {
        fn default() -> Self {
            Self::new()
        }
    }

    impl std::fmt::Debug for HttpClassifier {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HttpClassifier").finish_non_exhaustive()
        }
    }

    impl<B, E> Classify<Response<B>, E> for HttpClassifier {
        fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
            match result {
                Ok(response) => Outcome::failure_if((self.is_failure)(response.status())),
                Err(_) => Outcome::Failure,
            }
        }
    }
}
