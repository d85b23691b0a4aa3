//! Seed scenario **"Multi-Region Deployments"**: `global_payment_processor` is shared by pods in
//! us-east-1, next to the primary, and in eu-west-1, next to a streaming replica of it.
//!
//! The seed connects the far region to its replica. LISTEN is refused there (and a NOTIFY is not
//! replicated), so the eu-west pods follow by polling ([`Follow::Poll`]): every interval they
//! read the change log on their local replica, and only their own transitions cross the ocean to
//! the primary. The us-east pods LISTEN on the primary as usual.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//! EXAMPLE_REPLICA_DSN='host=127.0.0.1 port=5433' \
//!     cargo run --example multi_region
//! ```
//!
//! `EXAMPLE_REPLICA_DSN` is the eu-west replica (its fields replace the address of `RC_DB_*`;
//! user, password and database are taken from there). Without it the eu-west pods poll the
//! primary's own address, standing in for a replica, and the example says so. In a deployment
//! the eu-west pods set `RC_DB_FOLLOW=poll` and `RC_DB_LISTENER_DSN` to their replica.

mod common;

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{check, millis, ms, reach, Outcome, PUSHED};
use resilient_circuit::storage::postgres::{Follow, PostgresOptions};
use resilient_circuit::{CircuitBreaker, CircuitError, State, Storage};

const KEY: &str = "global_payment_processor";
const POLL: Duration = Duration::from_millis(250);
/// How soon a polling pod has a change committed on the primary: its next poll comes within
/// [`POLL`] and finds the change if the replica has replayed it by then, else the one after
/// does; [`PUSHED`] more for the publication and the poll's own query on a loaded machine.
const FOLLOWED: Duration = POLL.saturating_mul(2).saturating_add(PUSHED);

/// One pod: its region, its instance and its breaker.
struct Pod {
    storage: Storage,
    payments: CircuitBreaker,
}

async fn start_pod(name: &str, opts: &PostgresOptions) -> Result<Pod, Box<dyn Error>> {
    let storage = Storage::connect_with(opts.clone()).await?;
    let who = name.to_owned();
    let payments = CircuitBreaker::builder(KEY)
        .storage(storage.clone())
        .failure_limit(resilient_circuit::Ratio::new(3, 3))
        .cooldown(Duration::from_secs(60))
        .on_status_change(move |c| {
            println!("{}   {who} saw {} -> {}", ms(), c.from, c.to);
            common::changed();
        })
        .build()?;
    Ok(Pod { storage, payments })
}

async fn fail(pod: &Pod) -> Result<(), CircuitError<&'static str>> {
    pod.payments
        .call(|| async { Err("processor: 502 Bad Gateway") })
        .await
}

async fn scenario(opts: PostgresOptions) -> Outcome {
    let namespace = common::namespace("payments");
    let east = opts.clone().namespace(namespace.as_str());
    let replica = std::env::var("EXAMPLE_REPLICA_DSN")
        .ok()
        .filter(|d| !d.is_empty());
    let west = east.clone().follow(Follow::Poll).poll_interval(POLL);
    let west = match &replica {
        Some(dsn) => {
            println!("{} eu-west pods follow the replica at {dsn}", ms());
            west.listener_dsn(dsn)?
        }
        None => {
            println!(
                "{} EXAMPLE_REPLICA_DSN is not set: eu-west pods poll the primary's address, standing in for their replica",
                ms()
            );
            west
        }
    };
    let pods = [
        start_pod("us-east-1/pod-a", &east).await?,
        start_pod("us-east-1/pod-b", &east).await?,
        start_pod("eu-west-1/pod-a", &west).await?,
        start_pod("eu-west-1/pod-b", &west).await?,
    ];
    let (us, eu) = pods.split_at(2);
    check(
        pods.iter().all(|p| !p.storage.is_degraded()),
        "all four pods follow the fleet: us-east by LISTEN on the primary, eu-west by polling",
    )?;

    println!("\n{} 1. the processor fails for us-east-1/pod-a", ms());
    for _ in 0..3 {
        let _ = fail(&us[0]).await;
    }
    let tripped = Instant::now();
    check(
        us[0].payments.state() == State::Open,
        "us-east-1/pod-a opened its breaker",
    )?;
    reach(&us[1].payments, State::Open).await?;
    let near = tripped.elapsed();
    for pod in eu {
        reach(&pod.payments, State::Open).await?;
    }
    let far = tripped.elapsed();
    check(
        near < PUSHED,
        format!(
            "us-east-1/pod-b is OPEN {} after the trip, within {} (NOTIFY)",
            millis(near),
            millis(PUSHED)
        ),
    )?;
    check(
        far < FOLLOWED,
        format!(
            "the far region followed within the poll interval plus the replication lag: both eu-west-1 pods are OPEN {} after the trip, within {} (poll every {})",
            millis(far),
            millis(FOLLOWED),
            millis(POLL)
        ),
    )?;
    let rejected = fail(&eu[0]).await;
    check(
        rejected.is_err_and(|e| e.is_rejected()),
        "eu-west-1/pod-a rejects its call without sending it to the processor",
    )?;

    println!(
        "\n{} 2. an operator closes it on the primary; then eu-west-1/pod-b trips it",
        ms()
    );
    us[1].payments.force_closed_confirmed().await?;
    let closed = Instant::now();
    for pod in us {
        reach(&pod.payments, State::Closed).await?;
    }
    let near = closed.elapsed();
    for pod in eu {
        reach(&pod.payments, State::Closed).await?;
    }
    let far = closed.elapsed();
    check(
        pods.iter().all(|p| p.payments.state() == State::Closed)
            && near < PUSHED
            && far < FOLLOWED,
        format!(
            "every pod in both regions is CLOSED again: us-east-1 {} after the close was confirmed (within {}), eu-west-1 {} (within {})",
            millis(near),
            millis(PUSHED),
            millis(far),
            millis(FOLLOWED)
        ),
    )?;
    for _ in 0..3 {
        let _ = fail(&eu[1]).await;
    }
    let tripped = Instant::now();
    for pod in us {
        reach(&pod.payments, State::Open).await?;
    }
    let across = tripped.elapsed();
    check(
        across < PUSHED,
        format!(
            "the eu-west trip went to the primary and both us-east-1 pods are OPEN {} later, within {} (NOTIFY)",
            millis(across),
            millis(PUSHED)
        ),
    )?;
    reach(&eu[0].payments, State::Open).await?;
    let row = common::row(&east, &namespace, KEY).await?;
    check(
        matches!(&row, Some((state, _)) if state == "OPEN"),
        format!("the primary's row is OPEN: {row:?}"),
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run("multi_region", scenario).await
}
