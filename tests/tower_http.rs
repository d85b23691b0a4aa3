//! The tower layer (`resilient_circuit::tower`, features `tower` and `http`): against a real HTTP
//! server and client on loopback (hyper), under `Buffer`, with backpressure, and its probe slot
//! across clones. Breakers live in memory on a `ManualClock`: these tests are about the layer, and
//! no test waits for a cooldown (backpressure tests pause Tokio's clock and move both).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_circuit::tower::{CircuitBreakerLayer, CircuitBreakerService, Error, HttpClassifier};
use resilient_circuit::{CircuitBreaker, ManualClock, Ratio, SlowCalls, State, Storage};
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

const COOLDOWN: Duration = Duration::from_secs(30);

/// A breaker on its own in-memory store and manual clock: trips at `failures` failures out of
/// the last `failures` calls, then one probe decides.
fn breaker(key: &str, failures: u32) -> (CircuitBreaker, ManualClock) {
    let clock = ManualClock::new();
    let cb = CircuitBreaker::builder(key)
        .storage(Storage::in_memory_with(16, Arc::new(clock.clone())))
        .failure_limit(Ratio::new(failures, failures))
        .success_limit(Ratio::new(1, 1))
        .cooldown(COOLDOWN)
        .build()
        .expect("valid breaker");
    (cb, clock)
}

/// An HTTP/1 server on loopback answering every request with the status it is set to, counting
/// the requests that reach it. `/hang` never answers. Stops accepting when dropped.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    accept: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let (h, s) = (hits.clone(), status.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, s) = (h.clone(), s.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, s) = (h.clone(), s.clone());
                    async move {
                        h.fetch_add(1, SeqCst);
                        if req.uri().path() == "/hang" {
                            std::future::pending::<()>().await;
                        }
                        let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
                        *response.status_mut() =
                            StatusCode::from_u16(s.load(SeqCst)).expect("a valid status");
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    // A connection the client drops ends here; nothing to report.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            hits,
            status,
            accept,
        }
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One GET through `svc`: its status (the body read to the end), or the layer's error.
async fn get<S>(svc: &mut S, url: &str) -> Result<StatusCode, Error>
where
    S: Service<Request<Empty<Bytes>>, Response = Response<Incoming>, Error = Error>,
{
    let request = Request::get(url)
        .body(Empty::new())
        .expect("a valid request");
    let response = svc.ready().await?.call(request).await?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .expect("the body arrives");
    Ok(status)
}

/// An in-process inner service that counts how often it is polled and called. Requests say what
/// to do: "ok" answers, "fail" fails, "hang" never completes. `never_ready` makes `poll_ready`
/// pending forever.
#[derive(Clone, Default)]
struct Inner {
    polls: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    never_ready: bool,
}

type InnerFuture = Pin<Box<dyn Future<Output = Result<&'static str, std::io::Error>> + Send>>;

impl Service<&'static str> for Inner {
    type Response = &'static str;
    type Error = std::io::Error;
    type Future = InnerFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.polls.fetch_add(1, SeqCst);
        if self.never_ready {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, request: &'static str) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        match request {
            "hang" => Box::pin(std::future::pending()),
            "fail" => Box::pin(std::future::ready(Err(std::io::Error::other("fail")))),
            _ => Box::pin(std::future::ready(Ok(request))),
        }
    }
}

impl Inner {
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    fn polls(&self) -> usize {
        self.polls.load(SeqCst)
    }
}

/// True when `fut` is still pending after one poll.
async fn is_pending<F: Future>(fut: F) -> bool {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx).is_pending())).await
}

// ---------------------------------------------------------------------------------------------
// Real HTTP
// ---------------------------------------------------------------------------------------------

/// A server that starts answering 503 trips the breaker; while open, calls are rejected without
/// reaching it; after the cooldown one probe goes through to the recovered server and closes it.
#[tokio::test]
async fn failing_server_trips_then_a_probe_closes() {
    let upstream = Upstream::start().await;
    let (cb, clock) = breaker("http-recovery", 3);
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(cb.clone()).classifier(HttpClassifier::new()))
        .service(client());
    let url = upstream.url("/");

    for _ in 0..3 {
        assert_eq!(get(&mut svc, &url).await.expect("healthy"), StatusCode::OK);
    }
    assert_eq!(upstream.hits(), 3);

    upstream.set_status(503);
    for i in 0..3 {
        // A 503 is a response, passed through, and a failure for the breaker.
        let status = get(&mut svc, &url).await.expect("a response");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let expected = if i < 2 { State::Closed } else { State::Open };
        assert_eq!(cb.state(), expected, "after {} failures", i + 1);
    }
    assert_eq!(upstream.hits(), 6);

    upstream.set_status(200); // recovered, but the breaker does not know yet
    for _ in 0..5 {
        let e = get(&mut svc, &url).await.expect_err("open");
        let rejected = e.rejected().expect("rejected by the breaker");
        assert_eq!(rejected.state(), State::Open);
        assert_eq!(rejected.retry_after(), Some(COOLDOWN));
    }
    assert_eq!(upstream.hits(), 6, "rejected calls never reach the server");

    clock.advance(COOLDOWN);
    assert_eq!(
        get(&mut svc, &url).await.expect("the probe"),
        StatusCode::OK
    );
    assert_eq!(upstream.hits(), 7, "exactly one probe");
    assert_eq!(cb.state(), State::Closed);
    assert_eq!(get(&mut svc, &url).await.expect("closed"), StatusCode::OK);
}

/// `HttpClassifier`: 4xx answers are successes (no trip however many), a refused connection is
/// a failure, and the layer's error keeps the client's error as its source.
#[tokio::test]
async fn http_classifier_4xx_success_errors_failure() {
    let upstream = Upstream::start().await;
    upstream.set_status(404);
    let (cb, _clock) = breaker("http-classes", 1);
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(cb.clone()).classifier(HttpClassifier::new()))
        .service(client());
    for _ in 0..5 {
        let status = get(&mut svc, &upstream.url("/")).await.expect("a response");
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert_eq!(cb.state(), State::Closed, "4xx is the client's fault");
    assert_eq!(cb.execution_log(), vec![true]);

    // A port nobody listens on: the connection is refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let e = get(&mut svc, &format!("http://{addr}/"))
        .await
        .expect_err("refused");
    assert!(!e.is_rejected());
    let source = std::error::Error::source(&e).expect("the client's error is the source");
    assert!(
        source.is::<hyper_util::client::legacy::Error>(),
        "source: {source:?}"
    );
    assert_eq!(cb.state(), State::Open, "an error is a failure");
}

/// A timeout inside the breaker counts as a failure, and its `Elapsed` is the error's source.
#[tokio::test]
async fn timeout_inside_the_breaker_is_a_failure() {
    let upstream = Upstream::start().await;
    let (cb, _clock) = breaker("http-timeout", 1);
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(cb.clone()).classifier(HttpClassifier::new()))
        .timeout(Duration::from_millis(100))
        .service(client());
    let e = get(&mut svc, &upstream.url("/hang"))
        .await
        .expect_err("times out");
    let source = std::error::Error::source(&e).expect("source");
    assert!(
        source.is::<tower::timeout::error::Elapsed>(),
        "source: {source:?}"
    );
    assert_eq!(cb.state(), State::Open);
    assert_eq!(upstream.hits(), 1);
}

// ---------------------------------------------------------------------------------------------
// poll_ready
// ---------------------------------------------------------------------------------------------

/// `Buffer` keeps working through an open breaker: its rejections reach the caller as errors (not
/// a dead worker), and once the breaker closes the same `Buffer` calls the service again.
#[tokio::test]
async fn buffer_survives_an_open_breaker() {
    let (cb, _clock) = breaker("buffer", 2);
    let inner = Inner::default();
    let mut svc = ServiceBuilder::new()
        .buffer(8)
        .layer(CircuitBreakerLayer::new(cb.clone()))
        .service(inner.clone());
    for _ in 0..2 {
        let e = svc.ready().await.expect("ready").call("fail").await;
        let e = e.expect_err("fails");
        let ours = e.downcast_ref::<Error>().expect("the layer's error");
        assert!(!ours.is_rejected());
    }
    assert_eq!(cb.state(), State::Open);
    for _ in 0..5 {
        let e = svc
            .ready()
            .await
            .expect("Buffer stays ready")
            .call("ok")
            .await;
        let e = e.expect_err("rejected");
        let ours = e
            .downcast_ref::<Error>()
            .expect("the layer's error, not a closed worker");
        assert!(ours.is_rejected(), "{e}");
    }
    assert_eq!(
        inner.calls(),
        2,
        "rejected calls never reach the inner service"
    );
    cb.force_closed();
    let ok = svc.ready().await.expect("ready").call("ok").await;
    assert_eq!(ok.expect("the buffer's worker is alive"), "ok");
    assert_eq!(inner.calls(), 3);
}

/// An open breaker neither polls nor calls the inner service: `poll_ready` is ready at once even
/// though the inner service never is, and `call` returns the rejection. A closed breaker polls it.
#[tokio::test]
async fn open_breaker_neither_polls_nor_calls_the_inner_service() {
    let (cb, _clock) = breaker("never-ready", 1);
    let inner = Inner {
        never_ready: true,
        ..Inner::default()
    };
    let mut svc = CircuitBreakerLayer::new(cb.clone()).layer(inner.clone());
    assert!(is_pending(svc.ready()).await, "closed: waits for the inner");
    assert_eq!(inner.polls(), 1);

    cb.force_open(COOLDOWN);
    let mut fresh = svc.clone();
    let e = fresh
        .ready()
        .await
        .expect("never an Err for a rejection")
        .call("ok")
        .await
        .expect_err("rejected");
    assert!(e.is_rejected());
    assert_eq!((inner.polls(), inner.calls()), (1, 0));
}

/// An error of the inner service's `poll_ready` is an `Inner` error, not an outcome: the probe
/// slot it held comes back.
#[tokio::test]
async fn inner_poll_ready_error_gives_the_probe_back() {
    #[derive(Debug, Clone)]
    struct Broken;
    impl Service<()> for Broken {
        type Response = ();
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<(), std::io::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::Error::other("worker gone")))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let (cb, clock) = breaker("broken-inner", 1);
    cb.force_open(COOLDOWN);
    clock.advance(COOLDOWN);
    let mut svc = CircuitBreakerLayer::new(cb.clone()).layer(Broken);
    let e = svc.ready().await.expect_err("the inner error");
    assert!(!e.is_rejected());
    assert_eq!(cb.state(), State::HalfOpen, "not an outcome");
    let probe = cb.try_acquire().expect("the probe slot came back");
    assert!(probe.is_probe());
}

// ---------------------------------------------------------------------------------------------
// Probe slots across clones
// ---------------------------------------------------------------------------------------------

/// The one half-open probe slot is reserved by the clone whose `poll_ready` took it: another
/// clone (a fresh one, or one cloned from the holder) is rejected. A response future dropped
/// before completion gives it back, and the next clone's call is the probe.
#[tokio::test]
async fn dropped_response_future_returns_the_probe_across_clones() {
    let (cb, clock) = breaker("clones", 1);
    let inner = Inner::default();
    let mut a = CircuitBreakerLayer::new(cb.clone()).layer(inner.clone());
    let mut b = a.clone();
    cb.force_open(COOLDOWN);
    clock.advance(COOLDOWN);

    a.ready().await.expect("ready");
    assert_eq!(cb.state(), State::HalfOpen, "a holds the probe");
    let mut from_a = a.clone(); // a clone does not inherit a's reservation
    for svc in [&mut b, &mut from_a] {
        let e = svc.ready().await.expect("ready").call("ok").await;
        assert_eq!(
            e.expect_err("full").rejected().map(|r| r.state()),
            Some(State::HalfOpen)
        );
    }
    assert_eq!(inner.calls(), 0);

    let hanging = a.call("hang");
    assert_eq!(inner.calls(), 1);
    let e = b.ready().await.expect("ready").call("ok").await;
    assert!(e.expect_err("the probe is out").is_rejected());
    drop(hanging);

    let ok = b.ready().await.expect("ready").call("ok").await;
    assert_eq!(ok.expect("b's call is the probe"), "ok");
    assert_eq!(cb.state(), State::Closed);
    assert_eq!(inner.calls(), 2);
}

/// A service dropped between `poll_ready` and `call` gives its reserved probe slot back.
#[tokio::test]
async fn dropped_service_returns_its_reserved_probe() {
    let (cb, clock) = breaker("dropped-service", 1);
    let inner = Inner::default();
    let mut a = CircuitBreakerLayer::new(cb.clone()).layer(inner.clone());
    let mut b = a.clone();
    cb.force_open(COOLDOWN);
    clock.advance(COOLDOWN);
    a.ready().await.expect("a reserves the probe");
    drop(a);
    let ok = b.ready().await.expect("ready").call("ok").await;
    assert_eq!(ok.expect("b gets the slot a held"), "ok");
    assert_eq!(cb.state(), State::Closed);
}

// ---------------------------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------------------------

fn backpressured(cb: &CircuitBreaker, inner: &Inner) -> CircuitBreakerService<Inner> {
    CircuitBreakerLayer::new(cb.clone())
        .backpressure(true)
        .layer(inner.clone())
}

/// Backpressure: while open, `poll_ready` is pending (not ready with a rejection) and the inner
/// service is not polled; the timer at the cooldown's end wakes it, and the call is the probe.
#[tokio::test(start_paused = true)]
async fn backpressure_waits_for_the_cooldown() {
    let (cb, clock) = breaker("backpressure-cooldown", 1);
    let inner = Inner::default();
    let mut svc = backpressured(&cb, &inner);
    cb.force_open(COOLDOWN);

    let start = tokio::time::Instant::now();
    let ready = tokio::spawn(async move {
        svc.ready().await.expect("ready");
        let r = svc.call("ok").await;
        (tokio::time::Instant::now(), r)
    });
    // Half the cooldown on both clocks: still waiting.
    tokio::time::sleep(COOLDOWN / 2).await;
    clock.advance(COOLDOWN / 2);
    assert!(!ready.is_finished());
    assert_eq!((inner.polls(), inner.calls()), (0, 0));

    // The rest of the cooldown: the breaker's clock first, then Tokio's, whose timer wakes it.
    clock.advance(COOLDOWN / 2);
    let (woke, r) = tokio::time::timeout(2 * COOLDOWN, ready)
        .await
        .expect("woken before twice the cooldown")
        .expect("task");
    assert_eq!(r.expect("the probe ran"), "ok");
    let waited = woke - start;
    assert!(
        waited >= COOLDOWN && waited < COOLDOWN + Duration::from_secs(1),
        "woken by the timer at the cooldown's end, after {waited:?}"
    );
    assert_eq!(inner.calls(), 1);
    assert_eq!(cb.state(), State::Closed);
}

/// Backpressure: a change of state wakes a waiting `poll_ready` before its timer.
#[tokio::test(start_paused = true)]
async fn backpressure_wakes_on_a_state_change() {
    let (cb, _clock) = breaker("backpressure-change", 1);
    let inner = Inner::default();
    let mut svc = backpressured(&cb, &inner);
    cb.force_open(COOLDOWN);
    let start = tokio::time::Instant::now();
    let ready = tokio::spawn(async move { svc.ready().await.map(|_| ()) });
    tokio::task::yield_now().await; // let it wait
    assert!(!ready.is_finished());

    cb.force_closed(); // no clock moves: only the notification can wake it
    tokio::time::timeout(2 * COOLDOWN, ready)
        .await
        .expect("woken")
        .expect("task")
        .expect("ready");
    assert_eq!(tokio::time::Instant::now(), start, "not by a timer");
    assert_eq!(inner.polls(), 1);
}

/// Backpressure: while every probe slot is out, callers wait; the probe's future dropped gives
/// the slot back and wakes one of them, whose call becomes the probe.
#[tokio::test(start_paused = true)]
async fn backpressure_waits_for_a_probe_slot() {
    let (cb, clock) = breaker("backpressure-probe", 1);
    let inner = Inner::default();
    let mut holder = backpressured(&cb, &inner);
    let mut waiter = holder.clone();
    cb.force_open(COOLDOWN);
    clock.advance(COOLDOWN);

    let hanging = holder.ready().await.expect("the probe").call("hang");
    let waiting = tokio::spawn(async move {
        waiter.ready().await.expect("ready");
        waiter.call("ok").await
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "the only slot is out");
    drop(hanging);
    let r = tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("woken by the slot given back, before the re-check timer")
        .expect("task");
    assert_eq!(r.expect("the waiter's call is the probe"), "ok");
    assert_eq!(cb.state(), State::Closed);
}

/// With `call_metrics(true)`, the layer's calls are counted by outcome (a dropped response future
/// as cancelled) and the completed ones timed; a rejection is counted once.
#[tokio::test]
async fn layer_calls_count_in_the_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let cb = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder("tower-metrics")
            .storage(Storage::in_memory())
            .failure_limit(Ratio::new(5, 5))
            .call_metrics(true)
            .build()
            .expect("valid breaker")
    });
    let value = |series: &str, label: &str| -> u64 {
        handle
            .render()
            .lines()
            .filter(|l| l.starts_with(&format!("{series}{{")) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let inner = Inner::default();
    let mut svc = CircuitBreakerLayer::new(cb.clone()).layer(inner.clone());
    for request in ["ok", "ok", "fail"] {
        let _ = svc.ready().await.expect("ready").call(request).await;
    }
    drop(svc.ready().await.expect("ready").call("hang"));
    cb.force_open(COOLDOWN);
    let e = svc.ready().await.expect("ready").call("ok").await;
    assert!(e.expect_err("forced open").is_rejected());

    let calls = "resilient_circuit_calls_total";
    assert_eq!(value(calls, "outcome=\"success\""), 2);
    assert_eq!(value(calls, "outcome=\"failure\""), 1);
    assert_eq!(value(calls, "outcome=\"cancelled\""), 1);
    let timed = "resilient_circuit_call_duration_seconds_count";
    assert_eq!(
        value(timed, "key=\"tower-metrics\""),
        3,
        "{}",
        handle.render()
    );
    let rejected = "resilient_circuit_rejected_calls_total";
    assert_eq!(value(rejected, "reason=\"forced\""), 1, "once");
}

/// The layer's types compose: services and futures cross threads, the error boxes.
#[test]
fn static_assertions() {
    fn send_sync_clone<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    fn send<T: Send + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync_clone::<CircuitBreakerLayer>();
    send_sync_clone::<CircuitBreakerLayer<HttpClassifier>>();
    send_sync_clone::<CircuitBreakerService<HttpClient, HttpClassifier>>();
    send::<<CircuitBreakerService<HttpClient, HttpClassifier> as Service<Request<Empty<Bytes>>>>::Future>();
    error::<Error>();
}

/// Slow calls through the layer: timed from `call` to the response on the storage's clock, and
/// with `SlowCalls::AsFailure` a slow `Ok` is a failure.
#[tokio::test]
async fn slow_calls_through_the_layer() {
    let clock = ManualClock::new();
    let cb = CircuitBreaker::builder("tower-slow")
        .storage(Storage::in_memory_with(16, Arc::new(clock.clone())))
        .failure_limit(Ratio::new(2, 2))
        .slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
        .build()
        .expect("valid breaker");
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(cb.clone()))
        .service(tower::service_fn(move |ms: u64| {
            let clock = clock.clone();
            async move {
                clock.advance(Duration::from_millis(ms));
                Ok::<_, Infallible>(ms)
            }
        }));
    assert_eq!(svc.clone().oneshot(50).await.expect("fast"), 50);
    assert_eq!(svc.clone().oneshot(150).await.expect("answered"), 150);
    assert_eq!(cb.execution_log(), vec![true, false], "150 ms is slow");
    assert_eq!(cb.state(), State::Closed);
    svc.clone().oneshot(100).await.expect("answered");
    assert_eq!(cb.state(), State::Open, "two slow calls in two");
    let e = svc.clone().oneshot(1).await.unwrap_err();
    assert!(e.is_rejected());
}
