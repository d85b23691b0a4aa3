//! Phase 12, live configuration: how long after an operator's change commits every instance's
//! snapshot holds it.
//!
//! Three listening instances and one polling instance ([`Follow::Poll`] at the default 250 ms)
//! build a breaker on one key. Each round a bare connection calls `rc_configure` with a new
//! cooldown (as `resilient-circuit config` does); the clock starts when the call returns (its
//! commit acknowledged) and, as an upper bound, when it was sent. The main thread then looks at
//! every breaker's `live_config()` in turn, every few tens of microseconds, as phase 9 does, and
//! notes when each first holds the new value. The changes fall at spread points of the polling
//! instance's interval.
//!
//! Why: a change an operator makes to stop an incident (a longer cooldown, `forced-open`) is only
//! as good as the time it takes to reach the last instance; `docs::performance` quotes these figures.

use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::Follow;
use resilient_circuit::{CircuitBreaker, Storage};

use crate::db::Target;
use crate::report::Report;
use crate::{Sizes, R, WAIT};

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section("12. live configuration: rc_configure's commit -> every instance's snapshot");
    let rounds = if sizes.quick { 3 } else { 100 };
    let ns = "live_config";
    let key = "configured";
    let mut listening = Vec::new();
    for _ in 0..3 {
        listening.push(Storage::connect_with(t.opts(ns)?).await?);
    }
    let polling = Storage::connect_with(t.opts(ns)?.follow(Follow::Poll)).await?;
    let build = |s: &Storage| CircuitBreaker::builder(key).storage(s.clone()).build();
    let on_listening = listening.iter().map(build).collect::<Result<Vec<_>, _>>()?;
    let on_polling = build(&polling)?;
    let client = t.client().await?;
    let (mut after_commit, mut after_send, mut polled) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let cooldown = Duration::from_millis(1_000 + round as u64);
        let holds = |cb: &CircuitBreaker| {
            cb.live_config()
                .is_some_and(|c| c.cooldown == Some(cooldown))
        };
        // Each change at another point of the polling instance's interval: the round would
        // otherwise start just after the read that ended the last one, and always wait it whole.
        tokio::time::sleep(Duration::from_millis((round as u64 * 97) % 250)).await;
        let sent = Instant::now();
        client
            .execute(
                "SELECT FROM rc_configure($1, $2, p_cooldown_ms => $3)",
                &[&ns, &key, &(cooldown.as_millis() as i64)],
            )
            .await?;
        let committed = Instant::now();
        let mut seen: Vec<Option<Instant>> = vec![None; on_listening.len() + 1];
        let deadline = committed + WAIT;
        while seen.iter().any(Option::is_none) {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("round {round}: an instance did not get the change").into());
            }
            for (i, cb) in on_listening.iter().chain([&on_polling]).enumerate() {
                if seen[i].is_none() && holds(cb) {
                    seen[i] = Some(now);
                }
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        let last_listening = seen[..on_listening.len()].iter().flatten().max();
        if let Some(&last) = last_listening {
            after_commit.push(last.saturating_duration_since(committed));
            after_send.push(last.saturating_duration_since(sent));
        }
        if let Some(&at) = seen[on_listening.len()].as_ref() {
            polled.push(at.saturating_duration_since(committed));
        }
    }
    report.dist(
        "commit acknowledged -> last of 3 listening instances holds it",
        &after_commit,
        "NOTIFY, one read of the configuration row, the snapshot swapped",
    );
    report.dist(
        "statement sent -> last of 3 listening instances holds it",
        &after_send,
        "the same, with rc_configure and its commit",
    );
    report.dist(
        "commit acknowledged -> a polling instance (every 250 ms) holds it",
        &polled,
        "the change log's next read, then the row",
    );
    Ok(())
}
