//! Phase 10's reconnect storm: every listener of the largest fleet loses its connection at once
//! (as after a failover or a pooler's restart), and the fleet comes back.
//!
//! Measured: the time from the cut until every instance listens again on a new session and none
//! is degraded, and the server's CPU from the cut until a few heartbeats later (which includes
//! whatever each listener does to check that it hears other sessions).
//!
//! Why: PostgreSQL before 19 wakes every listening backend of the database for every NOTIFY. A
//! listener that checked itself with a NOTIFY on every connect would make a fleet of `n`
//! reconnecting at once cost `n` × `n` wake-ups; the check must grow linearly with the fleet.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use resilient_circuit::Storage;
use tokio_postgres::Client;

use crate::report::{ms, Report};
use crate::server_cpu::ServerCpu;
use crate::R;

/// How long after the fleet is back its CPU is still counted: a few heartbeats (2 s each by
/// default), within which any deferred check has run.
const SETTLE: Duration = Duration::from_secs(6);
/// The longest wait for the fleet to come back.
const BACK_WITHIN: Duration = Duration::from_secs(120);

/// The backend pids of the instances' listeners.
async fn listeners(observer: &Client) -> R<HashSet<i32>> {
    let rows = observer
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'resilient-circuit-listener'",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(crate) async fn storm(
    observer: &Client,
    cpu: Option<&ServerCpu>,
    storages: &[Storage],
    report: &mut Report,
) -> R<()> {
    let n = storages.len();
    let before = listeners(observer).await?;
    let cpu_before = cpu.and_then(ServerCpu::used);
    let cut = Instant::now();
    observer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() \
             AND application_name = 'resilient-circuit-listener'",
            &[],
        )
        .await?;
    let back = loop {
        let now = listeners(observer).await?;
        if now.len() >= n && now.is_disjoint(&before) && storages.iter().all(|s| !s.is_degraded()) {
            break cut.elapsed();
        }
        if cut.elapsed() > BACK_WITHIN {
            return Err(format!(
                "{} of {n} listeners back {} after the cut",
                now.difference(&before).count(),
                ms(cut.elapsed())
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(SETTLE).await;
    let window = cut.elapsed();
    report.value(
        &format!("n={n}: every listener cut at once -> all listening again, none degraded"),
        n,
        ms(back),
        "pg_terminate_backend of every listener; polled every 20 ms",
    );
    if let (Some(b), Some(a)) = (cpu_before, cpu.and_then(ServerCpu::used)) {
        let used = a.saturating_sub(b);
        report.value(
            &format!(
                "n={n}: server CPU from the cut to {} after the fleet was back",
                ms(SETTLE)
            ),
            n,
            format!(
                "{:.2} s ({:.2} ms an instance) over {}",
                used.as_secs_f64(),
                used.as_secs_f64() * 1e3 / n as f64,
                ms(window)
            ),
            "reconnects, reloads, any listener self-checks, heartbeats",
        );
    }
    Ok(())
}
