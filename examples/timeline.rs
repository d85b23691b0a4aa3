//! Seed section **"State Transition Example"**: three instances of one service share a breaker
//! through PostgreSQL and replay the T0–T4 timeline, with timestamps.
//!
//! * T0: instances 1, 2 and 3 are CLOSED.
//! * T1: instance 1 makes 10 calls, 6 fail: it opens, and the trip is written to the table.
//! * T2: instance 2 is OPEN before its next call (the change was pushed to it by NOTIFY rather
//!   than loaded on demand) and rejects the call without running it.
//! * T3: after the cooldown, instance 3 calls first: the database moves the row to HALF_OPEN and
//!   leases it the probe, which then runs.
//! * T4: the probe succeeds: the row is CLOSED, and so is every instance.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example timeline
//! ```
//!
//! `RC_DB_AUTO_CREATE=1` lets the first instance create the schema (or run `resilient-circuit
//! setup` once). The example keeps to a namespace of its own, deletes its rows at the end, and
//! exits with status 0 only when every check it prints held.

mod common;

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{check, millis, ms, reach, Outcome, PUSHED};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

const KEY: &str = "stripe_payment_api";

fn states(cbs: &[CircuitBreaker]) -> String {
    cbs.iter()
        .map(|c| c.state().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

async fn scenario(opts: PostgresOptions) -> Outcome {
    let namespace = common::namespace("timeline");
    let opts = opts.namespace(namespace.as_str());
    let mut instances = Vec::new();
    for i in 1..=3 {
        let storage = Storage::connect_with(opts.clone()).await?; // an instance: Storage::from_env()
        let cb = CircuitBreaker::builder(KEY)
            .storage(storage)
            .failure_limit(Ratio::new(3, 10))
            .success_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(500))
            .on_status_change(move |c| {
                println!(
                    "{}        instance {i} saw {} -> {} ({:?})",
                    ms(),
                    c.from,
                    c.to,
                    c.origin
                );
                common::changed();
            })
            .build()?;
        instances.push(cb);
    }
    let [one, two, three] = &instances[..] else {
        unreachable!("three instances")
    };

    println!("{} T0: instances 1, 2, 3 -> {}", ms(), states(&instances));
    check(
        instances.iter().all(|c| c.state() == State::Closed),
        "T0: all instances are CLOSED",
    )?;

    println!("{} T1: instance 1 makes 10 calls, 6 fail", ms());
    for n in 0..10 {
        let _ = one
            .call(|| async move {
                if n % 5 < 3 {
                    Err("stripe timeout")
                } else {
                    Ok(())
                }
            })
            .await;
    }
    let tripped = Instant::now();
    check(
        one.state() == State::Open,
        "T1: instance 1 is OPEN and publishes the trip",
    )?;

    reach(two, State::Open).await?;
    let pushed = tripped.elapsed();
    println!(
        "{} T2: instance 2 is {} before its next call",
        ms(),
        two.state()
    );
    check(
        pushed < PUSHED,
        format!(
            "T2: instance 2 is OPEN {} after instance 1's trip, within {}: pushed by NOTIFY",
            millis(pushed),
            millis(PUSHED)
        ),
    )?;
    let mut ran = false;
    let r = two
        .call(|| async {
            ran = true;
            Ok::<_, &str>("charged")
        })
        .await;
    println!(
        "{} T2: instance 2 call -> {:?}",
        ms(),
        r.as_ref().map_err(|e| e.to_string())
    );
    check(
        r.is_err_and(|e| e.is_rejected()) && !ran,
        "T2: instance 2 rejects the call without executing it",
    )?;

    // Instance 3 has its own listener: wait until it too holds the trip, then for its cooldown
    // (the cooldown is time, not an event).
    reach(three, State::Open).await?;
    common::cooldown(three).await;
    println!(
        "{} T3: cooldown over; instance 3 calls first and leases the probe",
        ms()
    );
    let seen_in_probe = Mutex::new(None);
    let r = three
        .call(|| async {
            let row = common::row(&opts, &namespace, KEY).await;
            println!(
                "{} T3: instance 3 probe runs; it is {}, the row {:?}",
                ms(),
                three.state(),
                row.as_ref().ok().and_then(|r| r.as_ref().map(|r| &r.0))
            );
            *seen_in_probe.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((three.state(), row.ok().flatten().map(|r| r.0)));
            Ok::<_, &str>("charged")
        })
        .await;
    let seen = seen_in_probe
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    check(
        seen == Some((State::HalfOpen, Some("HALF_OPEN".to_owned()))),
        "T3: while its probe runs, instance 3 and the row are HALF_OPEN",
    )?;

    println!("{} T4: the probe succeeded: {:?}", ms(), r);
    for cb in &instances {
        reach(cb, State::Closed).await?;
    }
    println!("{} T4: instances 1, 2, 3 -> {}", ms(), states(&instances));
    let row = common::row(&opts, &namespace, KEY).await?;
    check(
        r.is_ok() && row.is_some_and(|(s, _)| s == "CLOSED"),
        "T4: the row and all instances are CLOSED",
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run("timeline", scenario).await
}
