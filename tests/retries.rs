//! Retries composed with a breaker, by maintained retry libraries (this crate has none): `backon`
//! around `CircuitBreaker::call`, `tower::retry` around the `CircuitBreakerLayer`. In both the
//! retry sits outside the breaker, so every attempt counts in the breaker's window, and its
//! predicate never retries a rejection: once the breaker opens, a retried call fails fast after
//! one attempt. (The README's "Retries" says why.)

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use resilient_circuit::tower::{CircuitBreakerLayer, Error};
use resilient_circuit::{CircuitBreaker, CircuitError, ManualClock, Ratio, State, Storage};
use tower::retry::Policy;
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// Trips after 3 failures in the last 3 calls; the cooldown never ends (the clock stands still).
fn breaker(key: &str) -> CircuitBreaker {
    CircuitBreaker::builder(key)
        .storage(Storage::in_memory_with(8, Arc::new(ManualClock::new())))
        .failure_limit(Ratio::new(3, 3))
        .cooldown(Duration::from_secs(30))
        .build()
        .expect("valid breaker")
}

/// Four retries: enough to retry into an open breaker, if the predicate let it.
const RETRIES: usize = 4;

/// `backon` around `call`: each attempt runs through the breaker and counts; the rejection that
/// follows the trip is not retried, and once open a retried call makes exactly one attempt.
#[tokio::test(start_paused = true)]
async fn backon_around_call() {
    let cb = breaker("backon");
    let attempts = AtomicUsize::new(0); // calls of `cb.call`
    let runs = AtomicUsize::new(0); // the protected operation actually running
    let retried = || {
        (|| async {
            attempts.fetch_add(1, SeqCst);
            cb.call(|| async {
                runs.fetch_add(1, SeqCst);
                Err::<(), _>(std::io::Error::other("down"))
            })
            .await
        })
        .retry(
            ConstantBuilder::new()
                .with_delay(Duration::from_millis(100))
                .with_max_times(RETRIES),
        )
        .when(|e: &CircuitError<std::io::Error>| !e.is_rejected())
    };

    let first = retried().await.expect_err("every attempt fails");
    assert!(first.is_rejected(), "the 4th attempt met the open breaker");
    assert_eq!(runs.load(SeqCst), 3, "three attempts ran");
    assert_eq!(
        attempts.load(SeqCst),
        4,
        "and one more was rejected, not retried"
    );
    assert_eq!(cb.execution_log(), vec![false; 3], "each attempt counted");
    assert_eq!(cb.state(), State::Open);

    let second = retried().await.expect_err("open");
    assert!(second.is_rejected());
    assert_eq!(attempts.load(SeqCst), 5, "exactly one attempt");
    assert_eq!(runs.load(SeqCst), 3, "and it did not run");
}

/// `backon` around `call`, a transient failure: the retry absorbs it and the breaker saw both
/// attempts.
#[tokio::test(start_paused = true)]
async fn backon_transient_failure_counts_each_attempt() {
    let cb = breaker("backon-transient");
    let runs = AtomicUsize::new(0);
    let ok = (|| {
        cb.call(|| async {
            match runs.fetch_add(1, SeqCst) {
                0 => Err(std::io::Error::other("blip")),
                _ => Ok("fine"),
            }
        })
    })
    .retry(ConstantBuilder::new().with_max_times(RETRIES))
    .when(|e: &CircuitError<std::io::Error>| !e.is_rejected())
    .await;
    assert_eq!(ok.expect("the retry succeeds"), "fine");
    assert_eq!(cb.execution_log(), vec![false, true]);
    assert_eq!(cb.state(), State::Closed);
}

/// A `tower::retry` policy that retries the inner service's errors, never a rejection.
#[derive(Clone)]
struct RetryInnerErrors {
    left: usize,
}

impl<Req: Clone, Res> Policy<Req, Res, Error> for RetryInnerErrors {
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, Error>) -> Option<Self::Future> {
        match result {
            Err(e) if !e.is_rejected() && self.left > 0 => {
                self.left -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// `tower::retry` around the layer: the same order and predicate as with `backon`, counted at
/// the retry (attempts into the breaker) and at the inner service (attempts that ran).
#[tokio::test]
async fn tower_retry_around_the_layer() {
    let cb = breaker("tower-retry");
    let attempts = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let (a, r) = (attempts.clone(), runs.clone());
    let svc = ServiceBuilder::new()
        .retry(RetryInnerErrors { left: RETRIES })
        .map_request(move |req: ()| {
            a.fetch_add(1, SeqCst);
            req
        })
        .layer(CircuitBreakerLayer::new(cb.clone()))
        .service(service_fn(move |_: ()| {
            r.fetch_add(1, SeqCst);
            async { Err::<(), _>(std::io::Error::other("down")) }
        }));

    let first = svc
        .clone()
        .oneshot(())
        .await
        .expect_err("every attempt fails");
    assert!(first.is_rejected(), "the 4th attempt met the open breaker");
    assert_eq!(runs.load(SeqCst), 3, "three attempts ran");
    assert_eq!(
        attempts.load(SeqCst),
        4,
        "and one more was rejected, not retried"
    );
    assert_eq!(cb.execution_log(), vec![false; 3], "each attempt counted");
    assert_eq!(cb.state(), State::Open);

    let second = svc.oneshot(()).await.expect_err("open");
    assert!(second.is_rejected());
    assert_eq!(attempts.load(SeqCst), 5, "exactly one attempt");
    assert_eq!(runs.load(SeqCst), 3, "and it did not run");
}
