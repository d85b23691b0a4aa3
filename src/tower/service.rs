//! [`CircuitBreakerService`]: the breaker decides in `poll_ready`, the inner service runs in
//! `call`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::Sleep;
use tower_service::Service;

use super::{BoxError, Classify, Error, ErrorsAsFailures, ResponseFuture};
use crate::{CircuitBreaker, OwnedPermit, Rejected};

/// A future completing at the breaker's next change of state (see `CircuitBreaker::changed`).
type Changed = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;
/// `CircuitBreaker::acquire_owned`, boxed to be stored.
type Acquire = Pin<Box<dyn Future<Output = Result<OwnedPermit, Rejected>> + Send + Sync>>;

/// A `tower::Service` behind a [`CircuitBreaker`], made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer); see the [module docs](super).
///
/// `poll_ready` asks the breaker first and polls the inner service only when the breaker admits
/// the call; a rejection is never an `Err` of `poll_ready` (tower takes those as final): `call`
/// returns it as [`Error::Rejected`] without calling the inner service. The admission, a
/// half-open probe slot maybe, belongs to this service from `poll_ready` to `call` and then to
/// the response future; a clone starts without one.
pub struct CircuitBreakerService<S, C = ErrorsAsFailures> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    backpressure: bool,
    /// What the last `poll_ready` decided, for the next `call`. Never cloned: a clone starts
    /// `Idle`, so a probe slot reserved here is not used twice.
    ready: Ready,
}

/// The state between `poll_ready` and `call`.
enum Ready {
    /// Nothing decided: `poll_ready` asks the breaker.
    Idle,
    /// Admitted: the inner service may be polled; the permit goes to the response future.
    Admitted(OwnedPermit),
    /// Refused (and counted once): `call` returns it without calling the inner service.
    Rejected(Rejected),
    /// A fleet-wide probe lease is on its way: wait for it as `CircuitBreaker::acquire` does.
    Acquiring(Acquire),
    /// Backpressure: wait until the state changes or the timer (the cooldown's end, else
    /// `probe_wait` as a bound) fires, then ask again.
    Waiting {
        changed: Changed,
        timer: Pin<Box<Sleep>>,
    },
}

impl<S, C> CircuitBreakerService<S, C> {
    pub(super) fn new(
        inner: S,
        breaker: CircuitBreaker,
        classifier: C,
        backpressure: bool,
    ) -> Self {
        CircuitBreakerService {
            inner,
            breaker,
            classifier,
            backpressure,
            ready: Ready::Idle,
        }
    }

    /// The breaker in front of the inner service.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; an admission taken by `poll_ready` and not used is given back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Asks the breaker (`Idle` → the next state).
    fn decide(&self, cx: &mut Context<'_>) -> Ready {
        let rejected = match self.breaker.try_admit_owned() {
            Ok(permit) => return Ready::Admitted(permit),
            Err(r) => r,
        };
        if !self.backpressure {
            if self.breaker.may_wait(&rejected) {
                // As `CircuitBreaker::call` does; `acquire_owned` counts its own rejection.
                return Ready::Acquiring(Box::pin(self.breaker.acquire_owned()));
            }
            return Ready::Rejected(self.breaker.counted(rejected));
        }
        // Register for the next change, then look again, so that a change between the first look
        // and the wait is not missed. A wait is not a rejection: nothing is counted.
        let mut changed = self.breaker.changed();
        if changed.as_mut().poll(cx).is_ready() {
            return Ready::Idle;
        }
        match self.breaker.try_admit_owned() {
            Ok(permit) => Ready::Admitted(permit),
            Err(r) => Ready::Waiting {
                changed,
                timer: Box::pin(tokio::time::sleep(
                    r.retry_after().unwrap_or_else(|| self.breaker.probe_wait()),
                )),
            },
        }
    }
}

impl<S, C, Request> Service<Request> for CircuitBreakerService<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.ready {
                Ready::Idle => self.ready = self.decide(cx),
                Ready::Admitted(_) => {
                    return match self.inner.poll_ready(cx) {
                        Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            // Not an outcome of the resource: the permit is dropped unreported
                            // (a probe gives its slot back) and the error is the inner one.
                            self.ready = Ready::Idle;
                            Poll::Ready(Err(Error::Inner(e.into())))
                        }
                    };
                }
                // Ready for `call`, which returns the rejection: `poll_ready` never fails for it.
                Ready::Rejected(_) => return Poll::Ready(Ok(())),
                Ready::Acquiring(acquire) => {
                    self.ready = match ready!(acquire.as_mut().poll(cx)) {
                        Ok(permit) => Ready::Admitted(permit),
                        Err(rejected) => Ready::Rejected(rejected),
                    };
                }
                Ready::Waiting { changed, timer } => {
                    if changed.as_mut().poll(cx).is_pending()
                        && timer.as_mut().poll(cx).is_pending()
                    {
                        return Poll::Pending;
                    }
                    self.ready = Ready::Idle;
                }
            }
        }
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match std::mem::replace(&mut self.ready, Ready::Idle) {
            Ready::Admitted(permit) => {
                let started = self.breaker.call_started();
                let timed = self.breaker.timing_started();
                ResponseFuture::called(
                    self.inner.call(request),
                    permit,
                    self.classifier.clone(),
                    started,
                    timed,
                )
            }
            Ready::Rejected(rejected) => ResponseFuture::rejected(rejected),
            _ => panic!(
                "CircuitBreakerService::call without poll_ready having returned Ready(Ok(())) first"
            ),
        }
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreakerService<S, C> {
    /// A clone shares the breaker and starts without an admission of its own.
    fn clone(&self) -> Self {
        CircuitBreakerService::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classifier.clone(),
            self.backpressure,
        )
    }
}

impl<S: std::fmt::Debug, C: std::fmt::Debug> std::fmt::Debug for CircuitBreakerService<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ready = match &self.ready {
            Ready::Idle => "idle",
            Ready::Admitted(_) => "admitted",
            Ready::Rejected(_) => "rejected",
            Ready::Acquiring(_) => "acquiring a probe lease",
            Ready::Waiting { .. } => "waiting (backpressure)",
        };
        f.debug_struct("CircuitBreakerService")
            .field("inner", &self.inner)
            .field("breaker", &self.breaker)
            .field("classifier", &self.classifier)
            .field("backpressure", &self.backpressure)
            .field("ready", &ready)
            .finish()
    }
}
