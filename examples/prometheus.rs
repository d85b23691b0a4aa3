//! Serving the breakers' metrics to Prometheus at `http://127.0.0.1:9000/metrics`, with
//! `metrics-exporter-prometheus`, while a breaker trips, rejects and recovers in a loop.
//!
//! ```text
//! cargo run --example prometheus            # then: curl -s 127.0.0.1:9000/metrics
//! RC_METRICS_ADDR=0.0.0.0:9100 cargo run --example prometheus
//! ```
//!
//! In memory unless `RC_DB_*` is set (see `Storage::from_env`), in which case the per-instance
//! PostgreSQL metrics appear too. `dashboards/resilient-circuit.json` is a Grafana dashboard for
//! what this serves.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use resilient_circuit::{CircuitBreaker, Ratio, Storage};

/// Buckets for the call and database-operation durations, in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::var("RC_METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9000".into())
        .parse()?;
    // The recorder first: metric handles made before it is installed stay no-ops, and storages
    // and breakers make theirs when they are made.
    PrometheusBuilder::new()
        // Base units and `_total` suffixes (our names have them already; this keeps any other
        // metric of the process consistent).
        .with_recommended_naming(true)
        .set_buckets(BUCKETS)?
        .with_http_listener(addr)
        .install()?;
    println!("serving http://{addr}/metrics");

    let storage = Storage::from_env().await?;
    let cb = CircuitBreaker::builder("example_payment_api")
        .storage(storage)
        .failure_limit(Ratio::new(3, 5))
        .cooldown(Duration::from_secs(5))
        // Per-call counts and durations: opt-in, they cost the hot path an atomic increment.
        .call_metrics(true)
        .build()?;

    // Healthy for a while, then failing for a while: the breaker opens, rejects, probes and
    // closes again, every cycle.
    for tick in 0u64.. {
        let failing = (tick / 50) % 2 == 1;
        let r = cb
            .call(|| async move {
                tokio::time::sleep(Duration::from_millis(2 + tick % 7)).await;
                if failing {
                    Err("dependency down")
                } else {
                    Ok(())
                }
            })
            .await;
        if tick % 25 == 0 {
            println!("tick {tick}: {:?}, last call {r:?}", cb.state());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
