//! [`ResponseFuture`]: the inner service's future, holding the call's permit until it completes.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use super::{BoxError, Classify, Error};
use crate::{OwnedPermit, Rejected};

pin_project! {
    /// The response future of a [`CircuitBreakerService`](super::CircuitBreakerService) or a
    /// [`GroupService`](super::GroupService).
    ///
    /// When the inner service's future completes, the classifier's verdict on its result is
    /// reported to the breaker. Dropped before that (a timeout outside the layer, a client gone),
    /// the call counts as neither success nor failure and a half-open probe gives its slot back.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            // Taken when the outcome is reported.
            permit: Option<OwnedPermit>,
            classifier: C,
            // Set only when the breaker's opt-in call metrics are on.
            started: Option<Instant>,
            // The clock reading at the call, set only when the breaker has a slow-call threshold.
            timed: Option<u64>,
        },
        Rejected {
            rejected: Rejected,
        },
        // The call could not be made (no breaker for it); taken when polled.
        Failed {
            error: Option<Error>,
        },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(super) fn called(
        future: F,
        permit: OwnedPermit,
        classifier: C,
        started: Option<Instant>,
        timed: Option<u64>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                classifier,
                started,
                timed,
            },
        }
    }

    pub(super) fn rejected(rejected: Rejected) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { rejected },
        }
    }

    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res, E>,
{
    type Output = Result<Res, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
                started,
                timed,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    if let Some(started) = started.take() {
                        permit.breaker().call_ended(started);
                    }
                    permit.record_since(classifier.classify(&result), *timed);
                }
                Poll::Ready(result.map_err(|e| Error::Inner(e.into())))
            }
            KindProj::Rejected { rejected } => Poll::Ready(Err(Error::Rejected(rejected.clone()))),
            KindProj::Failed { error } => Poll::Ready(Err(error.take().unwrap_or_else(|| {
                Error::Inner("the response future was polled after it completed".into())
            }))),
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ResponseFuture");
        match &self.kind {
            Kind::Called { permit, .. } => d.field("permit", permit),
            Kind::Rejected { rejected } => d.field("rejected", rejected),
            Kind::Failed { error } => d.field("failed", error),
        };
        d.finish_non_exhaustive()
    }
}
