//! Three instances of one service share a breaker through PostgreSQL and replay the seed
//! document's T0–T4 timeline, with timestamps.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example distributed
//! ```
//!
//! Without RC_DB_* set it uses `host=127.0.0.1 user=postgres dbname=test`.

use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let start = Instant::now();
    let t = move || format!("{:>7.1} ms", start.elapsed().as_secs_f64() * 1000.0);
    let opts = match PostgresOptions::from_env()? {
        Some(o) => o,
        None => PostgresOptions::from_dsn("host=127.0.0.1 user=postgres dbname=test")?,
    };
    // A namespace of its own, so the example never touches real breakers.
    let opts = opts
        .namespace(format!("example-{}", std::process::id()))
        .auto_create(true);

    let mut instances = Vec::new();
    for i in 1..=3 {
        let storage = Storage::connect_with(opts.clone()).await?;
        let cb = CircuitBreaker::builder("stripe_payment_api")
            .storage(storage)
            .failure_limit(Ratio::new(3, 10))
            .success_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(500))
            .on_status_change(move |c| {
                println!(
                    "            instance {i} saw {} -> {} ({:?})",
                    c.from, c.to, c.origin
                )
            })
            .build()?;
        instances.push(cb);
    }
    let states = |cbs: &[CircuitBreaker]| {
        cbs.iter()
            .map(|c| c.state().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!("{} T0: instances 1, 2, 3 -> {}", t(), states(&instances));

    println!("{} T1: instance 1 makes 10 calls, 6 fail", t());
    for n in 0..10 {
        let _ = instances[0]
            .call(|| async move {
                if n % 5 < 3 {
                    Err("stripe timeout")
                } else {
                    Ok(())
                }
            })
            .await;
    }
    println!(
        "{} T1: instance 1 is {} and publishes the trip",
        t(),
        instances[0].state()
    );

    // Instance 2 learns it by NOTIFY; wait for that event rather than sleeping.
    while instances[1].state() != State::Open {
        tokio::task::yield_now().await;
    }
    println!("{} T2: instance 2 sees {}", t(), instances[1].state());
    let r = instances[1]
        .call(|| async { Ok::<_, &str>("charged") })
        .await;
    println!(
        "{} T2: instance 2 call -> {:?}",
        t(),
        r.map_err(|e| e.to_string())
    );

    // Instance 3 has its own listener: wait until it too holds the trip, then for its cooldown.
    while instances[2].state() != State::Open {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(instances[2].cooldown_remaining()).await;
    println!(
        "{} T3: cooldown over; instance 3 calls first and leases the probe",
        t()
    );
    let r = instances[2]
        .call(|| async {
            println!("{} T3: instance 3 probe runs (breaker is HALF_OPEN)", t());
            Ok::<_, &str>("charged")
        })
        .await;
    println!("{} T4: probe succeeded: {:?}", t(), r);
    while instances.iter().any(|c| c.state() != State::Closed) {
        tokio::task::yield_now().await;
    }
    println!("{} T4: instances 1, 2, 3 -> {}", t(), states(&instances));
    Ok(())
}
