//! Seed scenario **"Serverless Functions"**: every invocation of a function (AWS Lambda, Cloud
//! Functions) makes its own storage and breaker, as the seed's `lambda_handler` does, and the
//! breaker's state carries over from one invocation to the next through PostgreSQL. The example
//! measures what that costs each invocation: connecting (verifying the schema, opening the
//! listener, loading the namespace) and the first decision, and prints min / median / max.
//!
//! Twelve invocations run one after the other: 1–4 call a healthy API; 5 sees it fail and trips
//! the breaker; 6–8 start OPEN and are rejected without calling it; after the cooldown, 9 probes
//! and closes the breaker; 10–12 run normally. Then the same handler with a storage kept across
//! warm invocations, for comparison.
//!
//! What a function must do differently from a long-lived service:
//!
//! * **Reach the trip within one invocation.** Windows are per instance and an invocation's
//!   starts empty, so a failure limit of 5 in 10 never fills in a function that makes one call.
//!   Here `failure_limit(1/1)`: a failed invocation trips the breaker for every later one. (The
//!   Python package kept the window in the row; this crate keeps rows for transitions only.)
//! * **Flush before returning.** Trips and probe results are sent in the background; a function
//!   frozen or ended first keeps them to itself. `Storage::flush(within)` waits until the
//!   database answered them.
//! * **Reuse a warm storage when the platform allows it** (a `static` `OnceCell` initialised by the
//!   first invocation of a container, the seed's "create once, reuse"): a warm invocation then
//!   decides in microseconds instead of paying a connection. Either way each live storage holds a
//!   LISTEN connection and up to `pool_size` pooled ones; size `max_connections` (or pgbouncer,
//!   with `RC_DB_LISTENER_DSN` pointing past it) for the concurrency limit.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --release --example serverless
//! ```
//!
//! `RC_DB_AUTO_CREATE=1` lets the first invocation create the schema (or run `resilient-circuit
//! setup` once; a function should not create schemas). The example keeps to a namespace of its
//! own, deletes its rows at the end, and exits with status 0 only when every check it prints held.

mod common;

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{check, ms, Outcome};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

const KEY: &str = "third_party_api";
/// Short, so the example ends in seconds; the seed's is 5 minutes.
const COOLDOWN: Duration = Duration::from_secs(1);

/// What one invocation did and how long it took.
struct Invocation {
    /// From the start of the invocation until the storage was ready.
    connect: Duration,
    /// From the start of the invocation until the breaker said run or reject.
    decided: Duration,
    /// `ran`, `probe ran`, or `rejected`.
    decision: &'static str,
    state_after: State,
    /// How long a rejected call should wait.
    retry_after: Option<Duration>,
    /// Whether the database answered everything before the invocation returned.
    flushed: bool,
}

/// The breaker, as the function builds it on every invocation.
fn breaker(storage: &Storage) -> Result<CircuitBreaker, Box<dyn Error>> {
    Ok(CircuitBreaker::builder(KEY)
        .storage(storage.clone())
        .failure_limit(Ratio::new(1, 1)) // one call per invocation: see the module docs
        .success_limit(Ratio::new(1, 1))
        .cooldown(COOLDOWN)
        .build()?)
}

/// The handler's body on `storage`: one decision, the call if admitted, then a flush.
async fn handle(
    storage: &Storage,
    started: Instant,
    api_up: bool,
    calls: &AtomicUsize,
) -> Result<Invocation, Box<dyn Error>> {
    let cb = breaker(storage)?;
    // `cb.call(...)` does the same; the permit shows the moment of the decision.
    let admitted = cb.acquire().await;
    let decided = started.elapsed();
    let (decision, retry_after) = match admitted {
        Ok(permit) => {
            let decision = if permit.is_probe() {
                "probe ran"
            } else {
                "ran"
            };
            calls.fetch_add(1, Ordering::SeqCst); // the third-party API
            if api_up {
                permit.success();
            } else {
                permit.failure();
            }
            (decision, None)
        }
        Err(rejected) => ("rejected", rejected.retry_after()),
    };
    // Before the function returns: let the database hear what this invocation decided.
    let flushed = storage.flush(Duration::from_secs(2)).await;
    Ok(Invocation {
        connect: Duration::ZERO,
        decided,
        decision,
        state_after: cb.state(),
        retry_after,
        flushed,
    })
}

/// One cold invocation: its own storage, as the seed's `lambda_handler`.
async fn invoke(
    opts: &PostgresOptions,
    api_up: bool,
    calls: &AtomicUsize,
) -> Result<Invocation, Box<dyn Error>> {
    let started = Instant::now();
    let storage = Storage::connect_with(opts.clone()).await?; // in a function: Storage::from_env()
    let connect = started.elapsed();
    let mut inv = handle(&storage, started, api_up, calls).await?;
    inv.connect = connect;
    Ok(inv) // the storage is dropped here: its connections close
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `12.34 ms`, or `5.6 µs` below a millisecond.
fn show(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", millis(d))
    }
}

/// `min a, median b, max c`.
fn spread(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2
    };
    format!(
        "min {}, median {}, max {}",
        show(samples[0]),
        show(median),
        show(samples[n - 1])
    )
}

async fn scenario(opts: PostgresOptions) -> Outcome {
    let namespace = common::namespace("serverless");
    let opts = opts.namespace(namespace.as_str());
    let calls = AtomicUsize::new(0);
    let mut cold = Vec::new();
    println!(
        "{}   #  API   connect   decided   decision    state after",
        ms()
    );
    for n in 1..=12 {
        let api_up = n != 5;
        if n == 9 {
            // The cooldown itself is time, not an event: invocation 8 was told how long.
            let wait = cold
                .last()
                .and_then(|i: &Invocation| i.retry_after)
                .unwrap_or(COOLDOWN);
            println!(
                "{}      (no invocations for {} ms: the cooldown)",
                ms(),
                wait.as_millis()
            );
            tokio::time::sleep(wait).await;
        }
        let before = calls.load(Ordering::SeqCst);
        let inv = invoke(&opts, api_up, &calls).await?;
        println!(
            "{}  {n:>2}  {}  {:>6.2} ms {:>6.2} ms  {:<10}  {}",
            ms(),
            if api_up { "up  " } else { "down" },
            millis(inv.connect),
            millis(inv.decided),
            inv.decision,
            inv.state_after
        );
        let called = calls.load(Ordering::SeqCst) - before;
        let expected = match n {
            5 => ("ran", State::Open),
            6..=8 => ("rejected", State::Open),
            9 => ("probe ran", State::Closed),
            _ => ("ran", State::Closed),
        };
        check(
            (inv.decision, inv.state_after) == expected
                && called == usize::from(inv.decision != "rejected")
                && inv.flushed,
            format!(
                "invocation {n}: {} and the breaker is {} (the database answered before it returned)",
                expected.0, expected.1
            ),
        )?;
        if n == 5 {
            let row = common::row(&opts, &namespace, KEY).await?;
            check(
                row.as_ref().is_some_and(|(s, _)| s == "OPEN"),
                format!("invocation 5's trip is in the table when it returns: {row:?}"),
            )?;
        }
        cold.push(inv);
    }
    let row = common::row(&opts, &namespace, KEY).await?;
    check(
        row.as_ref().is_some_and(|(s, _)| s == "CLOSED"),
        format!("invocation 9's probe closed the row: {row:?}"),
    )?;

    // The same handler, warm: one storage kept across invocations.
    let storage = Storage::connect_with(opts.clone()).await?;
    let mut warm = Vec::new();
    let before = calls.load(Ordering::SeqCst);
    let mut ran = 0;
    for _ in 0..12 {
        let inv = handle(&storage, Instant::now(), true, &calls).await?;
        if (inv.decision, inv.state_after, inv.flushed) == ("ran", State::Closed, true) {
            ran += 1;
        }
        warm.push(inv.decided);
    }
    let called = calls.load(Ordering::SeqCst) - before;
    check(
        ran == 12 && called == 12,
        format!(
            "12 warm invocations on one kept storage ran: {ran} of 12 ran, left the breaker CLOSED and had the database's answer before returning ({called} API calls)"
        ),
    )?;

    println!();
    println!(
        "serverless: cold start, connect: {} ({} invocations, each with its own storage)",
        spread(cold.iter().map(|i| i.connect).collect()),
        cold.len()
    );
    println!(
        "serverless: cold start, connect + first decision: {}",
        spread(cold.iter().map(|i| i.decided).collect())
    );
    println!(
        "serverless: warm (storage kept across invocations), first decision: {}",
        spread(warm)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run("serverless", scenario).await
}
