//! A [`CircuitBreaker`](crate::CircuitBreaker) in front of any `tower::Service` (feature `tower`;
//! feature `http` adds `HttpClassifier`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use resilient_circuit::tower::CircuitBreakerLayer;
//! use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let cb = CircuitBreaker::builder("pricing_api")
//!     .storage(Storage::in_memory())
//!     .failure_limit(Ratio::new(2, 2))
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(cb.clone()))
//!     .service(service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("down")) }));
//!
//! for _ in 0..2 {
//!     let e = svc.clone().oneshot(()).await.unwrap_err();
//!     assert!(!e.is_rejected()); // the inner service ran and failed
//! }
//! assert_eq!(cb.state(), State::Open);
//! let e = svc.clone().oneshot(()).await.unwrap_err();
//! assert!(e.is_rejected()); // the inner service was not called
//! # Ok(()) }
//! ```
//!
//! # How it behaves
//!
//! * **`poll_ready` asks the breaker first** and polls the inner service only when the breaker
//!   admits the call, so an open breaker is not held up by a dependency that never gets ready.
//! * **A rejection is not a `poll_ready` error**: tower takes an error there as final (a `Buffer`
//!   would shut down for good). `poll_ready` returns `Ready(Ok(()))` and `call` returns
//!   [`Error::Rejected`] without calling the inner service, counted once in the rejection metric.
//! * **The admission is the service's from `poll_ready` to `call`**, then the response future's:
//!   an [`OwnedPermit`](crate::OwnedPermit). A half-open probe slot is thus reserved across the
//!   clones of a service (they share the breaker, and a clone starts without an admission); a
//!   response future or a service dropped before the call completes gives its slot back.
//! * **[`Classify`] decides what counts as a failure**: [`ErrorsAsFailures`] by default,
//!   `HttpClassifier` for HTTP (5xx and errors, not 4xx), or any closure over
//!   `&Result<Response, Error>`.
//! * **[`Error`]** tells a rejection from the inner service's error, which it boxes.
//! * **Slow calls** ([`Builder::slow_call`](crate::Builder::slow_call)) are timed from `call` to
//!   the response future's completion, on the storage's clock.
//! * **[`backpressure`](CircuitBreakerLayer::backpressure)**, opt-in: `poll_ready` returns
//!   `Pending` while the breaker would reject, woken by a timer at the cooldown's end and by any
//!   change of the breaker's state.
//!
//! Where the other layers go: a **timeout inside** the breaker, so that a call that times out
//! counts as a failure (outside, it would be a dropped future, which counts as neither); a
//! **retry outside**, so that each attempt counts, and never retrying [`Error::Rejected`] (the
//! README's "Retries"). `Buffer`, `ConcurrencyLimit` and the like go outside as usual.
//!
//! A breaker per member of a [`Group`](crate::Group), picked from each request (one per host of a
//! service), is [`GroupLayer`]'s: see [`docs::groups`](crate::docs::groups).
//!
//! With a PostgreSQL storage, a half-open round's probes are leased from the database; when a
//! lease is being asked, `poll_ready` waits for it up to the builder's `probe_wait`, as
//! [`CircuitBreaker::call`](crate::CircuitBreaker::call) does. The opt-in call metrics
//! (`Builder::call_metrics`) count the layer's calls and their durations like `call`'s. Timers
//! (backpressure, that lease wait) need a Tokio runtime with its time driver.

mod classify;
mod error;
mod future;
mod group;
mod layer;
mod service;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use self::classify::HttpClassifier;
pub use self::classify::{Classify, ErrorsAsFailures};
pub use self::error::{BoxError, Error};
pub use self::future::ResponseFuture;
pub use self::group::{GroupLayer, GroupService};
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreakerService;
