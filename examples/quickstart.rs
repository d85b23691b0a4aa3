//! A breaker's whole life in under a second: it trips on failures, rejects calls while open,
//! goes half-open after a short cooldown and closes after successful probes.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Needs no set-up: in memory unless `RC_DB_*` is set, in which case the breaker lives in
//! PostgreSQL (see `Storage::from_env`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resilient_circuit::{CircuitBreaker, CircuitError, Ratio, Storage};

/// "+  12.3 ms | 14:03:07.123 UTC": time since start and wall-clock time.
fn stamp(start: Instant) -> String {
    let elapsed = start.elapsed().as_secs_f64() * 1000.0;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    format!(
        "+{elapsed:>6.1} ms | {:02}:{:02}:{:02}.{:03} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// The protected call: a pretend upstream that is down or up.
async fn upstream(healthy: bool) -> Result<&'static str, String> {
    if healthy {
        Ok("200 OK")
    } else {
        Err("503 Service Unavailable".to_owned())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let storage = Storage::from_env().await?;
    println!("{}  storage: {}", stamp(start), storage.backend_name());

    let cooldown = Duration::from_millis(300);
    let cb = CircuitBreaker::builder(format!("quickstart-{}", std::process::id()))
        .storage(storage)
        .failure_limit(Ratio::new(3, 5)) // trip at 3 failures in the last 5 calls
        .success_limit(Ratio::new(2, 2)) // half-open: 2 probes, both must succeed
        .cooldown(cooldown)
        .on_status_change(move |c| {
            println!(
                "{}  >>> on_status_change: {} {} -> {} ({:?})",
                stamp(start),
                c.key,
                c.from,
                c.to,
                c.origin
            );
        })
        .build()?;
    println!("{}  breaker {:?} is {}", stamp(start), cb.key(), cb.state());

    let call = |healthy: bool| {
        let cb = &cb;
        async move {
            let res = cb.call(|| upstream(healthy)).await;
            let what = match &res {
                Ok(v) => format!("ran: {v}"),
                Err(CircuitError::Inner(e)) => format!("ran and failed: {e}"),
                Err(CircuitError::Rejected(r)) => format!(
                    "REJECTED, did not run (retry in {} ms)",
                    r.retry_after().unwrap_or_default().as_millis()
                ),
            };
            println!(
                "{}  call (upstream {}) -> {what:<42} state now {}",
                stamp(start),
                if healthy { "up  " } else { "down" },
                cb.state()
            );
        }
    };

    println!("\n-- the upstream goes down: 2 good calls, then failures --");
    for healthy in [true, true, false, false, false] {
        call(healthy).await;
    }

    println!("\n-- open: calls are rejected without running --");
    for _ in 0..3 {
        call(true).await;
    }

    println!(
        "\n-- waiting for the {cooldown:?} cooldown ({} ms left) --",
        cb.cooldown_remaining().as_millis()
    );
    // Until the breaker says the cooldown is over. With PostgreSQL its end is the database's,
    // which may move it by a few milliseconds when the trip's answer arrives: look again.
    while !cb.cooldown_remaining().is_zero() {
        tokio::time::sleep(cb.cooldown_remaining()).await;
    }

    println!("\n-- the upstream is back: the next calls are half-open probes --");
    for _ in 0..2 {
        call(true).await;
    }

    // With PostgreSQL the probes' results reach the database in the background, and the fleet's
    // round closes once it has them: wait until it answered (at once in memory).
    cb.storage().flush(Duration::from_secs(2)).await;

    println!("\n-- closed again: calls run normally --");
    call(true).await;
    println!("\n{}  done, final state {}", stamp(start), cb.state());
    Ok(())
}
