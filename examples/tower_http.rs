//! The tower layer in front of a real HTTP client: a loopback server answers 503 for a while,
//! the breaker opens and rejects calls without sending them, probes after each cooldown, and
//! closes once the server has recovered. Exits by itself.
//!
//! ```text
//! cargo run --example tower_http --features http
//! ```
//!
//! Needs no database: the breaker lives in memory (`Storage::in_memory`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use resilient_circuit::tower::{CircuitBreakerLayer, HttpClassifier};
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
use tower::{Service, ServiceBuilder, ServiceExt};

/// The server's requests numbered from 1: these answer 503, the others 200.
const DOWN: std::ops::RangeInclusive<usize> = 3..=6;
/// At most this many calls, one every `PACE`, whatever happens.
const MAX_CALLS: usize = 80;
const PACE: Duration = Duration::from_millis(50);

/// A loopback HTTP/1 server, down for the requests numbered in `DOWN`. Returns its address and
/// its request count.
async fn upstream() -> std::io::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            let svc = hyper::service::service_fn(move |_: Request<Incoming>| {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let mut response = Response::new(Full::new(Bytes::from_static(b"hello")));
                if DOWN.contains(&n) {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    eprintln!("server: connection ended with {e}");
                }
            });
        }
    });
    Ok((addr, hits))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, hits) = upstream().await?;
    let cb = CircuitBreaker::builder("tower-http-example")
        .storage(Storage::in_memory())
        .failure_limit(Ratio::new(3, 5)) // open at 3 failures in the last 5 calls
        .success_limit(Ratio::new(1, 1)) // one probe decides
        .cooldown(Duration::from_millis(300))
        .build()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut svc = ServiceBuilder::new()
        // 5xx and errors count as failures, 4xx does not.
        .layer(CircuitBreakerLayer::new(cb.clone()).classifier(HttpClassifier::new()))
        // Inside the breaker, so that a call that times out counts as a failure.
        .timeout(Duration::from_secs(2))
        .service(client);

    let start = Instant::now();
    let mut was_open = false;
    for call in 1..=MAX_CALLS {
        let request = Request::get(format!("http://{addr}/")).body(Empty::new())?;
        let outcome = match svc.ready().await?.call(request).await {
            Ok(response) => {
                let status = response.status();
                response.into_body().collect().await?;
                format!("{status}")
            }
            Err(e) => match e.rejected() {
                Some(r) => format!(
                    "rejected, {} (probe in {} ms)",
                    r.state(),
                    r.retry_after().unwrap_or_default().as_millis()
                ),
                None => format!(
                    "error: {}",
                    e.into_inner().map_or(String::new(), |e| e.to_string())
                ),
            },
        };
        let state = cb.state();
        println!(
            "+{:>4} ms  call {call:>2}: {outcome:<34} breaker {:<6}  server saw {}",
            start.elapsed().as_millis(),
            state.to_string(),
            hits.load(Ordering::SeqCst)
        );
        was_open |= state == State::Open;
        if was_open && state == State::Closed {
            println!("the server recovered and the breaker closed: done");
            return Ok(());
        }
        tokio::time::sleep(PACE).await;
    }
    Err(format!("the breaker did not close within {MAX_CALLS} calls").into())
}
