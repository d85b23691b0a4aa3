//! Seed scenario **"Per-Instance vs Shared Keys"**: each instance has a local breaker (its own
//! cache, key `local_cache_<instance>`, in memory) beside a shared one (`shared_external_api`, in
//! PostgreSQL). A local trip stays on its instance and never reaches the database; a shared
//! trip reaches every instance.
//!
//! Where a breaker lives is the `Storage` it is built with: `Storage::in_memory()` (the seed's
//! `InMemoryStorage()`) is this process's alone; a PostgreSQL storage is the fleet's.
//! `Storage::from_env()` gives PostgreSQL when `RC_DB_*` is set and memory otherwise (the seed's
//! "automatically uses PostgreSQL if configured"); a breaker built without `.storage()` uses the
//! process-wide in-memory store, `Storage::global()`.
//!
//! Two instances ("pods") run in one process here, each with both storages.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example local_and_shared_keys
//! ```
//!
//! `RC_DB_AUTO_CREATE=1` lets the first instance create the schema (or run `resilient-circuit
//! setup` once). The example keeps to a namespace of its own, deletes its rows at the end, and
//! exits with status 0 only when every check it prints held.

mod common;

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{check, millis, ms, reach, Outcome, PUSHED};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, CircuitError, Ratio, State, Storage};

const SHARED_KEY: &str = "shared_external_api";

/// One instance: a local breaker and a shared one.
struct Pod {
    id: &'static str,
    local_cache: CircuitBreaker,
    shared_api: CircuitBreaker,
}

fn announce(id: &'static str) -> impl Fn(&resilient_circuit::Change) + Send + Sync {
    move |c| {
        println!(
            "{}   {id}: {} {} -> {} ({:?})",
            ms(),
            c.key,
            c.from,
            c.to,
            c.origin
        );
        common::changed();
    }
}

async fn start_pod(id: &'static str, opts: &PostgresOptions) -> Result<Pod, Box<dyn Error>> {
    let local = Storage::in_memory();
    let shared = Storage::connect_with(opts.clone()).await?; // a pod: Storage::from_env()
    let local_cache = CircuitBreaker::builder(format!("local_cache_{id}")) // unique per instance
        .storage(local)
        .failure_limit(Ratio::new(3, 5))
        .cooldown(Duration::from_secs(10))
        .on_status_change(announce(id))
        .build()?;
    let shared_api = CircuitBreaker::builder(SHARED_KEY) // the same on every instance
        .storage(shared)
        .failure_limit(Ratio::new(3, 5))
        .cooldown(Duration::from_secs(60))
        .on_status_change(announce(id))
        .build()?;
    Ok(Pod {
        id,
        local_cache,
        shared_api,
    })
}

/// A call through `cb` that succeeds or fails; `ran` counts the calls that ran.
async fn call(
    cb: &CircuitBreaker,
    up: bool,
    ran: &AtomicUsize,
) -> Result<(), CircuitError<&'static str>> {
    cb.call(|| async move {
        ran.fetch_add(1, Ordering::SeqCst);
        if up {
            Ok(())
        } else {
            Err("down")
        }
    })
    .await
}

async fn scenario(opts: PostgresOptions) -> Outcome {
    let namespace = common::namespace("local-and-shared");
    let opts = opts.namespace(namespace.as_str());
    let a = start_pod("pod-a", &opts).await?;
    let b = start_pod("pod-b", &opts).await?;
    check(
        a.local_cache.storage().backend_name() == "in-memory"
            && a.shared_api.storage().backend_name() == "postgres",
        "each pod has an in-memory breaker (local_cache_<pod>) and a PostgreSQL one (shared_external_api)",
    )?;

    println!("\n{} pod-a's local cache fails", ms());
    let ran = AtomicUsize::new(0);
    for _ in 0..5 {
        let _ = call(&a.local_cache, false, &ran).await;
    }
    check(
        a.local_cache.state() == State::Open,
        "local_cache_pod-a is OPEN on pod-a",
    )?;
    check(
        common::row(&opts, &namespace, a.local_cache.key())
            .await?
            .is_none(),
        "and nowhere else: no row for it in PostgreSQL",
    )?;
    let ran = AtomicUsize::new(0);
    check(
        call(&b.local_cache, true, &ran).await.is_ok() && ran.load(Ordering::SeqCst) == 1,
        "pod-b's own local cache breaker is CLOSED and its call runs",
    )?;
    check(
        a.shared_api.state() == State::Closed && b.shared_api.state() == State::Closed,
        "the shared breaker is CLOSED on both pods",
    )?;

    println!("\n{} pod-a's calls to the shared external API fail", ms());
    let ran = AtomicUsize::new(0);
    for _ in 0..5 {
        let _ = call(&a.shared_api, false, &ran).await;
    }
    let tripped = Instant::now();
    check(
        a.shared_api.state() == State::Open,
        "shared_external_api is OPEN on pod-a",
    )?;
    reach(&b.shared_api, State::Open).await?;
    let took = tripped.elapsed();
    let ran = AtomicUsize::new(0);
    check(
        took < PUSHED
            && call(&b.shared_api, true, &ran)
                .await
                .is_err_and(|e| e.is_rejected())
            && ran.load(Ordering::SeqCst) == 0,
        format!(
            "pod-b follows (OPEN {} after pod-a's trip, within {}: pushed by NOTIFY) and rejects its call without running it",
            millis(took),
            millis(PUSHED)
        ),
    )?;
    let row = common::row(&opts, &namespace, SHARED_KEY).await?;
    check(
        row.as_ref().is_some_and(|(state, _)| state == "OPEN"),
        format!("the shared breaker's row is OPEN: {row:?}"),
    )?;
    let ran = AtomicUsize::new(0);
    check(
        call(&b.local_cache, true, &ran).await.is_ok() && ran.load(Ordering::SeqCst) == 1,
        format!(
            "{}'s local cache is unaffected: CLOSED, its call runs",
            b.id
        ),
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run("local_and_shared_keys", scenario).await
}
