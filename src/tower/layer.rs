//! [`CircuitBreakerLayer`]: wraps services in a [`CircuitBreakerService`].

use tower_layer::Layer;

use super::{CircuitBreakerService, ErrorsAsFailures};
use crate::CircuitBreaker;

/// Puts a [`CircuitBreaker`] in front of a `tower::Service`: see the [module docs](super).
///
/// Every service it wraps, and every clone of those, shares the breaker's state (its key and
/// storage: with a PostgreSQL storage, the whole fleet's).
///
/// ```
/// use resilient_circuit::tower::CircuitBreakerLayer;
/// use resilient_circuit::{CircuitBreaker, Storage};
/// use std::time::Duration;
///
/// let cb = CircuitBreaker::builder("inventory_api")
///     .storage(Storage::in_memory())
///     .cooldown(Duration::from_secs(30))
///     .build()?;
/// let layer = CircuitBreakerLayer::new(cb).backpressure(false);
/// # Ok::<(), resilient_circuit::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    breaker: CircuitBreaker,
    classifier: C,
    backpressure: bool,
}

impl CircuitBreakerLayer {
    /// A layer failing fast with the default classifier ([`ErrorsAsFailures`]).
    pub const fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer {
            breaker,
            classifier: ErrorsAsFailures,
            backpressure: false,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Decides with `classifier` which results count as failures: a
    /// [`Classify`](super::Classify) implementation, such as
    /// `HttpClassifier` (feature `http`), or a closure over `&Result<Response, Error>`.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
            backpressure: self.backpressure,
        }
    }

    /// Backpressure instead of failing fast (off by default): while the breaker would reject,
    /// `poll_ready` returns `Pending` rather than a rejection for `call`. It wakes when the
    /// cooldown ends (a timer) or the breaker's state changes (a trip, a probe slot given back,
    /// an override, another instance's news), then looks again.
    ///
    /// A caller then waits as long as the breaker stays open, a forced open included: put a
    /// `tower::timeout` or `load_shed` outside this layer to bound it.
    pub fn backpressure(mut self, on: bool) -> Self {
        self.backpressure = on;
        self
    }

    /// The breaker the layer's services use.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(
            inner,
            self.breaker.clone(),
            self.classifier.clone(),
            self.backpressure,
        )
    }
}
