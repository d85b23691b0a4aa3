//! Plumbing shared by the fleet examples: where the database is, namespaces of their own,
//! awaiting a breaker's state, checking what an example claims, and cleaning up. What each
//! example demonstrates is written out in the example itself.
//!
//! Every example run through [`run`]:
//!
//! * reads the database from the `RC_DB_*` variables (`PostgresOptions::from_env`, as
//!   `Storage::from_env` does), and exits with status 2 and a hint when they are not set;
//! * keeps its breakers in namespaces of its own (`example-<name>-<pid>`, see [`namespace`]), so
//!   it never touches real breakers, and deletes their rows when it ends;
//! * states each claim with [`check`]: the first that does not hold ends the example with
//!   status 1.

// Each example uses part of this module.
#![allow(dead_code)]

use std::error::Error;
use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use resilient_circuit::admin::AdminSession;
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, State};
use tokio::sync::watch;

/// What an example's body returns.
pub type Outcome = Result<(), Box<dyn Error>>;

/// The longest an example waits for something the fleet does in milliseconds (a trip to reach
/// another instance); past it the example fails.
pub const WITHIN: Duration = Duration::from_secs(5);

/// How soon a transition one instance makes is on every other listening instance: the
/// publication (one round trip and a commit) and the NOTIFY, single-digit milliseconds on one
/// host or network. The bound leaves room for a loaded machine and stays well under the 250 ms
/// poll interval, the fallback of an instance that hears no notifications.
pub const PUSHED: Duration = Duration::from_millis(100);

/// `12.3 ms`.
pub fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs `body` with the database settings from `RC_DB_*`, then deletes the rows of the
/// namespaces it used; exit status 0 when every check held, 1 when one did not (or the body
/// failed), 2 when PostgreSQL is not configured.
pub async fn run<F, Fut>(name: &str, body: F) -> ExitCode
where
    F: FnOnce(PostgresOptions) -> Fut,
    Fut: Future<Output = Outcome>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = match PostgresOptions::from_env() {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            eprintln!(
                "{name}: this example needs PostgreSQL. Set RC_DB_DSN (or RC_DB_HOST and \
                 RC_DB_PASSWORD), e.g.\n  RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' \
                 RC_DB_AUTO_CREATE=1 cargo run --example {name}"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    ms(); // the examples' timestamps count from here
    let target = opts.to_string();
    let target = target.split(" namespace=").next().unwrap_or_default();
    println!("{name}: PostgreSQL at {target}");
    let result = body(opts.clone()).await;
    if let Err(e) = remove_rows(&opts).await {
        eprintln!("{name}: could not delete the example's rows: {e}");
    }
    match result {
        Ok(()) => {
            println!(
                "{name}: all {} checks passed",
                CHECKS.load(Ordering::Relaxed)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Namespaces made by [`namespace`], deleted at the end.
static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Checks that held.
static CHECKS: AtomicUsize = AtomicUsize::new(0);

/// `example-<name>-<pid>`: a namespace of this run only. Real services pick theirs with
/// `RC_NAMESPACE` or `PostgresOptions::namespace`.
pub fn namespace(name: &str) -> String {
    let ns = format!("example-{name}-{}", std::process::id());
    NAMESPACES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(ns.clone());
    ns
}

async fn remove_rows(opts: &PostgresOptions) -> Result<(), Box<dyn Error>> {
    let namespaces = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if namespaces.is_empty() {
        return Ok(());
    }
    let mut admin = AdminSession::connect(opts).await?;
    for ns in &namespaces {
        for row in admin.status(ns).await? {
            admin.delete(ns, &row.key, Some("example cleanup")).await?;
        }
    }
    Ok(())
}

/// The row of `key` in `namespace` as the table holds it: its state and the seconds until
/// half-open (the seed's dashboard query), or `None` when there is no row.
pub async fn row(
    opts: &PostgresOptions,
    namespace: &str,
    key: &str,
) -> Result<Option<(String, f64)>, Box<dyn Error>> {
    let admin = AdminSession::connect(opts).await?;
    Ok(admin
        .status(namespace)
        .await?
        .into_iter()
        .find(|r| r.key == key)
        .map(|r| {
            let left = r.half_open_in.map_or(0.0, |d| d.as_secs_f64());
            (r.state.as_str().to_owned(), left)
        }))
}

/// Every row of `key` in this run's namespaces: `(namespace, state)`, by namespace.
pub async fn rows_of(
    opts: &PostgresOptions,
    key: &str,
) -> Result<Vec<(String, String)>, Box<dyn Error>> {
    let mut namespaces = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    namespaces.sort();
    let admin = AdminSession::connect(opts).await?;
    let mut rows = Vec::new();
    for ns in &namespaces {
        if let Some(r) = admin.status(ns).await?.into_iter().find(|r| r.key == key) {
            rows.push((ns.clone(), r.state.as_str().to_owned()));
        }
    }
    Ok(rows)
}

/// Prints `[ok] what` when `holds`, else fails the example with `what`.
pub fn check(holds: bool, what: impl Display) -> Outcome {
    if holds {
        CHECKS.fetch_add(1, Ordering::Relaxed);
        println!("    [ok] {what}");
        Ok(())
    } else {
        Err(format!("this did not hold: {what}").into())
    }
}

/// Milliseconds since the example started, for timestamps.
pub fn ms() -> String {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    format!("{:>8.1} ms", start.elapsed().as_secs_f64() * 1000.0)
}

/// Sleeps until `cb`'s cooldown is over by its own clock. The end may move by a few
/// milliseconds after a trip (the database's answer carries its own clock's end), so it looks
/// again after each sleep. Waiting for a cooldown is waiting for time, not for an event.
pub async fn cooldown(cb: &CircuitBreaker) {
    while !cb.cooldown_remaining().is_zero() {
        tokio::time::sleep(cb.cooldown_remaining()).await;
    }
}

/// Bumped by [`changed`] on every transition of every breaker of the process.
fn changes() -> &'static watch::Sender<u64> {
    static CHANGES: OnceLock<watch::Sender<u64>> = OnceLock::new();
    CHANGES.get_or_init(|| watch::channel(0).0)
}

/// Call from every breaker's `on_status_change`: wakes whoever waits in [`reach`].
pub fn changed() {
    changes().send_modify(|n| *n = n.wrapping_add(1));
}

/// Waits until `cb` is in `state` (at once if it is), at most [`WITHIN`]; returns how long it
/// took. Awaits the breaker's transitions (its callback must call [`changed`]), never polls.
pub async fn reach(cb: &CircuitBreaker, state: State) -> Result<Duration, Box<dyn Error>> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut rx = changes().subscribe();
    loop {
        // Marked seen before looking, so a transition in between wakes the wait below.
        rx.borrow_and_update();
        if cb.state() == state {
            return Ok(started.elapsed());
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Err(format!(
                "{:?} did not become {state} within {WITHIN:?}; it is {}",
                cb.key(),
                cb.state()
            )
            .into());
        }
    }
}
