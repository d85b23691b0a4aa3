//! Seed scenario **"Single Service, Multiple Instances"**, with **"Kubernetes Deployments"**: the
//! pods of one service share the breaker of `stripe_payment_api`. Pod 1 sees the payment API fail
//! and trips; every other pod stops calling it within milliseconds; a pod started later (a
//! scale-up, a restart) is OPEN from its very first call, with the cooldown left.
//!
//! Five `Storage` instances in one process stand for five pods: each has its own LISTEN
//! connection, pool and snapshot, as separate processes would. In a deployment every pod calls
//! `Storage::from_env()` with the same `RC_DB_*` variables (the seed's `deployment.yaml`) and
//! builds the breaker with the same settings.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example one_service_many_instances
//! ```
//!
//! `RC_DB_AUTO_CREATE=1` lets the first pod create the schema (or run `resilient-circuit setup`
//! once). The example keeps to a namespace of its own, deletes its rows at the end, and exits
//! with status 0 only when every check it prints held.

mod common;

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{check, millis, ms, reach, Outcome, PUSHED};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, CircuitError, State, Storage};

const KEY: &str = "stripe_payment_api";
const COOLDOWN: Duration = Duration::from_secs(5 * 60);

/// One pod of the payment service.
struct Pod {
    name: String,
    payments: CircuitBreaker,
}

/// What every replica runs at start: one instance of the fleet, and the breaker with the same
/// settings everywhere.
async fn start_pod(name: &str, opts: &PostgresOptions) -> Result<Pod, Box<dyn Error>> {
    let storage = Storage::connect_with(opts.clone()).await?; // a pod: Storage::from_env()
    let who = name.to_owned();
    let payments = CircuitBreaker::builder(KEY)
        .storage(storage)
        .cooldown(COOLDOWN)
        .on_status_change(move |c| {
            println!(
                "{}   {who} saw {} -> {} ({:?})",
                ms(),
                c.from,
                c.to,
                c.origin
            );
            common::changed();
        })
        .build()?;
    Ok(Pod {
        name: name.to_owned(),
        payments,
    })
}

/// The protected call: Stripe, which is down throughout; `ran` counts the calls that ran.
async fn charge(pod: &Pod, ran: &AtomicUsize) -> Result<(), CircuitError<String>> {
    pod.payments
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Err("stripe: 503 Service Unavailable".to_owned())
        })
        .await
}

fn states(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| format!("{} {}", p.name, p.payments.state()))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn scenario(opts: PostgresOptions) -> Outcome {
    let namespace = common::namespace("payment-service");
    let opts = opts.namespace(namespace.as_str());
    let mut pods = Vec::new();
    for i in 1..=5 {
        pods.push(start_pod(&format!("pod-{i}"), &opts).await?);
    }
    println!(
        "{} 5 pods of payment-service are up: {}",
        ms(),
        states(&pods)
    );
    check(
        pods.iter().all(|p| p.payments.state() == State::Closed),
        "every pod starts CLOSED",
    )?;

    println!(
        "\n{} 1. pod-1 calls the Stripe API, which fails repeatedly",
        ms()
    );
    let ran = AtomicUsize::new(0);
    for _ in 0..10 {
        let _ = charge(&pods[0], &ran).await;
    }
    let tripped = Instant::now();
    check(
        ran.load(Ordering::SeqCst) == 10 && pods[0].payments.state() == State::Open,
        "pod-1 ran 10 calls that failed and opened its breaker (default limit: 5 failures in the last 10 calls)",
    )?;

    println!(
        "\n{} 2. the trip is saved to PostgreSQL, and 3. every pod sees OPEN",
        ms()
    );
    for pod in &pods[1..] {
        reach(&pod.payments, State::Open).await?;
    }
    let seen = tripped.elapsed();
    check(
        seen < PUSHED,
        format!(
            "pods 2-5 are OPEN {} after pod-1's trip, within {} (pushed by NOTIFY; nobody polls)",
            millis(seen),
            millis(PUSHED)
        ),
    )?;
    let row = common::row(&opts, &namespace, KEY).await?;
    check(
        matches!(&row, Some((state, secs)) if state == "OPEN" && *secs > 290.0),
        format!("the row in rc_circuit_breakers is OPEN, half-open in ~300 s: {row:?}"),
    )?;

    println!("\n{} 4. the other pods stop calling the Stripe API", ms());
    let ran = AtomicUsize::new(0);
    for pod in &pods[1..] {
        let r = charge(pod, &ran).await;
        check(
            r.as_ref().is_err_and(CircuitError::is_rejected),
            format!("{} rejects its call without running it", pod.name),
        )?;
    }
    check(
        ran.load(Ordering::SeqCst) == 0,
        "pods 2-5 sent the Stripe API nothing",
    )?;

    println!(
        "\n{} 5. Kubernetes scales the deployment up: pod-6 starts",
        ms()
    );
    let pod6 = start_pod("pod-6", &opts).await?;
    check(
        pod6.payments.state() == State::Open,
        "pod-6 is OPEN before its first call: connecting loaded the namespace",
    )?;
    check(
        charge(&pod6, &ran).await.is_err_and(|e| e.is_rejected())
            && ran.load(Ordering::SeqCst) == 0,
        "pod-6's first call is rejected without running",
    )?;

    println!("\n{} 6. a rolling deploy restarts pod-1", ms());
    drop(pods.remove(0)); // its storage, listener and connections go with it
    let pod1 = start_pod("pod-1 (new)", &opts).await?;
    let left = pod1.payments.cooldown_remaining();
    check(
        pod1.payments.state() == State::Open && left > COOLDOWN - Duration::from_secs(10),
        format!(
            "the new pod-1 is OPEN with the fleet's cooldown left ({} s), not a fresh start",
            left.as_secs()
        ),
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run("one_service_many_instances", scenario).await
}
