//! [`GroupLayer`]: a breaker per member of a [`Group`], the member picked from each request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Classify, Error, ErrorsAsFailures, ResponseFuture};
use crate::{Builder, CircuitBreaker, Group};

/// How a member's breaker is configured: the builder [`Group::member`] hands out, changed.
type Configure = Arc<dyn Fn(Builder) -> Builder + Send + Sync>;

/// Puts the breaker of the request's member of a [`Group`] in front of a `tower::Service`: `pick`
/// names the member (a host, say) from the request, and the call is admitted, or rejected, by
/// that member's breaker alone. The group's cap on open members holds as for any member.
///
/// Unlike [`CircuitBreakerLayer`](super::CircuitBreakerLayer), whose `poll_ready` asks its one
/// breaker, the member is known only in `call`: `poll_ready` readies the inner service, and
/// `call` asks the member's breaker with `try_acquire` (no waiting for a half-open probe lease;
/// a member whose round's probes are taken rejects). A member's breaker is built on its first
/// request and kept; a member not [joined](Group::join) yet is joined then, in the background
/// (join the members up front to have the cap count them from their first call). A member name
/// that makes an invalid key is an [`Error::Inner`] holding the
/// [`ConfigError`](crate::ConfigError); the inner service is not called.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use resilient_circuit::tower::GroupLayer;
/// use resilient_circuit::{Ratio, Storage};
/// use tower::{service_fn, ServiceBuilder};
///
/// struct Request {
///     host: String,
/// }
/// let storage = Storage::from_env().await?;
/// let hosts = storage
///     .group("payments")
///     .max_open(Ratio::new(1, 3))
///     .join(["a", "b", "c"])
///     .await?;
/// let svc = ServiceBuilder::new()
///     .layer(GroupLayer::new(hosts, |r: &Request| r.host.clone()))
///     .service(service_fn(|_: Request| async { Ok::<_, std::io::Error>("paid") }));
/// # let _ = svc;
/// # Ok(()) }
/// ```
pub struct GroupLayer<P, C = ErrorsAsFailures> {
    members: Members,
    pick: P,
    classifier: C,
}

/// The member breakers, shared by every service and clone of one layer.
#[derive(Clone)]
struct Members {
    group: Group,
    configure: Configure,
    built: Arc<Mutex<HashMap<String, CircuitBreaker>>>,
}

impl Members {
    /// `member`'s breaker, built (and the member joined, in the background) on first use.
    fn get(&self, member: String) -> Result<CircuitBreaker, crate::ConfigError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cb) = built.get(&member) {
            return Ok(cb.clone());
        }
        let cb = (self.configure)(self.group.member(&member)).build()?;
        built.insert(member.clone(), cb.clone());
        drop(built);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let group = self.group.clone();
            runtime.spawn(async move {
                if let Err(e) = group.join([&member]).await {
                    tracing::warn!(group = %group.name(), %member, error = %e, "a member could not join its group: it is outside the cap until it does");
                }
            });
        }
        Ok(cb)
    }
}

impl<P> GroupLayer<P> {
    /// A layer over `group`, picking the member with `pick`, its breakers as
    /// [`Group::member`] builds them.
    pub fn new(group: Group, pick: P) -> Self {
        GroupLayer {
            members: Members {
                group,
                configure: Arc::new(|b| b),
                built: Arc::default(),
            },
            pick,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<P, C> GroupLayer<P, C> {
    /// Configures each member's breaker (its limits, cooldown, ...) when it is built.
    pub fn configure(
        mut self,
        configure: impl Fn(Builder) -> Builder + Send + Sync + 'static,
    ) -> Self {
        self.members.configure = Arc::new(configure);
        self
    }

    /// Decides what counts as a failure, as
    /// [`CircuitBreakerLayer::classifier`](super::CircuitBreakerLayer::classifier) does.
    pub fn classifier<C2>(self, classifier: C2) -> GroupLayer<P, C2> {
        GroupLayer {
            members: self.members,
            pick: self.pick,
            classifier,
        }
    }
}

impl<P: Clone, C: Clone> Clone for GroupLayer<P, C> {
    fn clone(&self) -> Self {
        GroupLayer {
            members: self.members.clone(),
            pick: self.pick.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<P, C> std::fmt::Debug for GroupLayer<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupLayer")
            .field("group", &self.members.group)
            .finish_non_exhaustive()
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for GroupLayer<P, C> {
    type Service = GroupService<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        GroupService {
            inner,
            members: self.members.clone(),
            pick: self.pick.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service [`GroupLayer`] makes.
pub struct GroupService<S, P, C = ErrorsAsFailures> {
    inner: S,
    members: Members,
    pick: P,
    classifier: C,
}

impl<S: Clone, P: Clone, C: Clone> Clone for GroupService<S, P, C> {
    fn clone(&self) -> Self {
        GroupService {
            inner: self.inner.clone(),
            members: self.members.clone(),
            pick: self.pick.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P, C> std::fmt::Debug for GroupService<S, P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupService")
            .field("inner", &self.inner)
            .field("group", &self.members.group)
            .finish_non_exhaustive()
    }
}

impl<S, P, C, Request> Service<Request> for GroupService<S, P, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    P: Fn(&Request) -> String,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::Inner(e.into()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let breaker = match self.members.get((self.pick)(&request)) {
            Ok(cb) => cb,
            Err(e) => return ResponseFuture::failed(Error::Inner(Box::new(e))),
        };
        match breaker.try_acquire_owned() {
            Ok(permit) => ResponseFuture::called(
                self.inner.call(request),
                permit,
                self.classifier.clone(),
                breaker.call_started(),
                breaker.timing_started(),
            ),
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
