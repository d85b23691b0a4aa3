//! Phase 8, a storm of notifications: 10,000 row changes a second for 10 s (100 keys flipped
//! between OPEN and CLOSED by one UPDATE every 10 ms), applied by one instance.
//!
//! Measured at the instance, through `Storage::changes()`: from each change's commit (the
//! trigger's `at_us`, database clock) to its snapshot; how many changes the stream missed; and
//! whether the listener kept its own duties: it never turned degraded (a heartbeat unanswered
//! for the statement timeout would have dropped the connection), and a change made *without* a
//! notification (`session_replication_role = replica`, so no trigger fires) in the middle of the
//! storm reaches it by the periodic reload, within the reconcile interval (1 s here) and a turn.
//!
//! Why: an incident flips many keys at once, and every other instance applies every flip; a
//! listener that falls behind, or whose heartbeat and reconciliation starve, is a silent fleet.

use std::time::{Duration, Instant};

use resilient_circuit::{State, Storage};
use tokio_stream::StreamExt;

use crate::db::Target;
use crate::report::{ms, Report};
use crate::{Sizes, R};

/// Keys flipped by each UPDATE.
const KEYS: usize = 100;
/// One UPDATE per tick: 100 keys every 10 ms is 10,000 changes a second.
const TICK: Duration = Duration::from_millis(10);
const RECONCILE: Duration = Duration::from_secs(1);

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section("8. storm: 10,000 notifications/s applied by one instance");
    let run = if sizes.quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    let ns = "storm";
    let writer = t.client().await?;
    writer
        .execute(
            "INSERT INTO rc_circuit_breakers (namespace, resource_key, state)
             SELECT $1, 'storm-k' || g, 'CLOSED' FROM generate_series(1, $2::int) g",
            &[&ns, &(KEYS as i32)],
        )
        .await?;
    let storage = Storage::connect_with(t.opts(ns)?.reconcile_interval(RECONCILE)).await?;
    let mut changes = storage.changes();
    let collector = tokio::spawn(async move {
        let (mut lags, mut missed, mut applied) = (Vec::new(), 0u64, 0u64);
        while let Some(item) = changes.next().await {
            match item {
                Ok(c) => {
                    applied += 1;
                    if let Some(d) = c.delay() {
                        lags.push(d);
                    }
                }
                Err(lagged) => missed += lagged.missed,
            }
        }
        (lags, missed, applied)
    });

    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut statements, mut rows, mut degraded_seen) = (0u64, 0u64, false);
    let mut silent: Option<tokio::task::JoinHandle<Option<Duration>>> = None;
    while started.elapsed() < run {
        ticker.tick().await;
        rows += writer
            .execute(
                "UPDATE rc_circuit_breakers SET
                   state = CASE state WHEN 'OPEN' THEN 'CLOSED' ELSE 'OPEN' END,
                   open_until = CASE state WHEN 'OPEN' THEN NULL
                                ELSE now() + interval '1 hour' END
                 WHERE namespace = $1 AND resource_key LIKE 'storm-k%'",
                &[&ns],
            )
            .await?;
        statements += 1;
        degraded_seen |= storage.is_degraded();
        if silent.is_none() && started.elapsed() >= run / 2 {
            // Written with no trigger: only the periodic reload can deliver it.
            let key = "storm-silent".to_owned();
            writer
                .batch_execute(&format!(
                    "SET session_replication_role = replica;
                     INSERT INTO rc_circuit_breakers (namespace, resource_key, state, open_until, version)
                     VALUES ('{ns}', '{key}', 'OPEN', now() + interval '1 hour', 9000000000000);
                     SET session_replication_role = origin;"
                ))
                .await?;
            // Watched while the storm goes on: polled, as the reload has no event of its own.
            let (watched, at) = (storage.clone(), Instant::now());
            silent = Some(tokio::spawn(async move {
                let until = at + RECONCILE * 3 + Duration::from_secs(2);
                while Instant::now() < until {
                    if watched.state_of(&key) == Some(State::Open) {
                        return Some(at.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            }));
        }
    }
    let elapsed = started.elapsed();
    // The silent change, by the reload.
    let silent_after = match silent {
        Some(watch) => watch.await?,
        None => None,
    };
    // Let the last changes land, then end the stream with the storage.
    tokio::time::sleep(Duration::from_millis(500)).await;
    degraded_seen |= storage.is_degraded();
    drop(storage);
    let (lags, missed, applied) = collector.await?;

    let per_sec = rows as f64 / elapsed.as_secs_f64();
    report.value(
        "row changes written",
        rows,
        format!("{per_sec:.0} /s"),
        &format!("{statements} UPDATEs of {KEYS} rows over {}", ms(elapsed)),
    );
    report.dist(
        "commit -> snapshot (each change, database clock)",
        &lags,
        &format!("{applied} applied through Storage::changes(), {missed} missed by the stream"),
    );
    report.value(
        "listener degraded during the storm",
        u8::from(degraded_seen),
        if degraded_seen { "yes" } else { "no" }.to_owned(),
        "sampled after every UPDATE: a heartbeat unanswered for the statement timeout drops the connection",
    );
    report.value(
        "silent change seen by the periodic reload",
        1,
        silent_after.map_or_else(|| "never".to_owned(), ms),
        &format!(
            "written without a notification mid-storm; reconcile interval {}",
            ms(RECONCILE)
        ),
    );
    if !sizes.quick {
        report.goal(
            "notifications/s applied",
            ">= 10,000 /s",
            format!("{per_sec:.0} /s"),
            per_sec >= 9_500.0,
        );
        report.goal(
            "reload on time under the storm",
            "<= interval + 1 s",
            silent_after.map_or_else(|| "never".to_owned(), ms),
            silent_after.is_some_and(|d| d <= RECONCILE + Duration::from_secs(1)),
        );
    }
    Ok(())
}
