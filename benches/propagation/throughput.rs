//! Phase 6, throughput: how many transitions per second the database accepts from a small fleet.
//!
//! 4 instances (default pool), each cycling its own keys through trip / `force_closed`, each step
//! waiting until another instance has seen it, for about 5 s. Counted: NOTIFYs of the namespace
//! (every accepted state change sends exactly one). What-ifs: `synchronous_commit=off`, a pool of
//! one connection per instance, and both. Why: an incident trips many keys at once, and every
//! transition is a database write plus a NOTIFY to every instance.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio::sync::watch;

use crate::db::Target;
use crate::report::{ms, Report};
use crate::{trip_fast, Sizes, ASYNC_COMMIT, R, WAIT};

/// One throughput run's results.
pub(crate) struct TpsRun {
    /// State changes the database accepted within the run (NOTIFYs of the namespace).
    pub(crate) accepted: u64,
    pub(crate) elapsed: Duration,
    pub(crate) cycles: u64,
    pub(crate) stalls: u64,
    pub(crate) observed: u64,
    pub(crate) cycle_times: Vec<Duration>,
}

impl TpsRun {
    /// Accepted transitions per second.
    pub(crate) fn per_sec(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }
}

/// 4 instances cycling their keys in namespace `ns` for `sizes.tps_run` (see the module docs);
/// `options` are server settings for their sessions, `pool_size` overrides the default pool.
pub(crate) async fn tps_run(
    t: &Target,
    sizes: &Sizes,
    ns: &str,
    options: Option<&str>,
    pool_size: Option<usize>,
) -> R<TpsRun> {
    const INSTANCES: usize = 4;
    let mut storages = Vec::new();
    for _ in 0..INSTANCES {
        let mut o = t.opts_with(ns, options)?;
        if let Some(n) = pool_size {
            o = o.pool_size(n);
        }
        storages.push(Storage::connect_with(o).await?);
    }
    // Counts every accepted state change: one NOTIFY each.
    let mut counter_listener = t.transport.listener(&t.cfg).await?;
    let notified = Arc::new(AtomicU64::new(0));
    let counting = notified.clone();
    let quoted_ns = format!("\"{ns}\"");
    let start = Instant::now();
    let stop = start + sizes.tps_run;
    // Only what the database accepted within the run's window counts.
    let counter = tokio::spawn(async move {
        while let Some((at, payload)) = counter_listener.rx.recv().await {
            if at <= stop && payload.contains(&quoted_ns) {
                counting.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let observed = Arc::new(AtomicU64::new(0));
    let cycles = Arc::new(AtomicU64::new(0));
    let stalls = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..INSTANCES {
        for k in 0..sizes.tps_keys_per_instance {
            let key = format!("tps-{i}-{k}");
            let (tx, rx) = watch::channel(State::Closed);
            let seen = observed.clone();
            let watcher = trip_fast(
                CircuitBreaker::builder(key.as_str())
                    .storage(storages[(i + 1) % INSTANCES].clone()),
            )
            .on_status_change(move |c| {
                seen.fetch_add(1, Ordering::Relaxed);
                tx.send_replace(c.to);
            })
            .build()?;
            let cb = trip_fast(CircuitBreaker::builder(key.as_str()).storage(storages[i].clone()))
                .build()?;
            workers.push(tokio::spawn(cycle_key(
                cb,
                watcher,
                rx,
                stop,
                cycles.clone(),
                stalls.clone(),
            )));
        }
    }
    let mut cycle_times = Vec::new();
    for w in workers {
        cycle_times.extend(w.await?);
    }
    let elapsed = sizes.tps_run;
    tokio::time::sleep(Duration::from_millis(300)).await;
    counter.abort();
    drop(storages);
    Ok(TpsRun {
        accepted: notified.load(Ordering::Relaxed),
        elapsed,
        cycles: cycles.load(Ordering::Relaxed),
        stalls: stalls.load(Ordering::Relaxed),
        observed: observed.load(Ordering::Relaxed),
        cycle_times,
    })
}

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section(
        "6. transitions/s: 4 instances cycling their own keys through trip / force_closed",
    );
    let keys = 4 * sizes.tps_keys_per_instance;
    type Run<'a> = (&'a str, &'a str, Option<&'a str>, Option<usize>);
    let mut runs: Vec<Run<'_>> = vec![("default pool (4 per instance)", "tps", None, None)];
    if !sizes.quick {
        runs.push((
            "what-if: synchronous_commit=off",
            "tps_async",
            Some(ASYNC_COMMIT),
            None,
        ));
        runs.push(("what-if: pool_size 1", "tps_pool1", None, Some(1)));
        runs.push((
            "what-if: pool_size 1 + synchronous_commit=off",
            "tps_both",
            Some(ASYNC_COMMIT),
            Some(1),
        ));
    }
    for (idx, (label, ns, options, pool)) in runs.into_iter().enumerate() {
        let r = tps_run(t, sizes, ns, options, pool).await?;
        let per_sec = r.per_sec();
        report.value(
            &format!("transitions/s, {label}"),
            r.accepted,
            format!("{per_sec:.0} /s"),
            &format!(
                "{keys} keys, counted over {}, {} full cycles, {} stalls (1 s), {} seen by the watchers",
                ms(r.elapsed),
                r.cycles,
                r.stalls,
                r.observed
            ),
        );
        report.dist(
            "  one cycle under that load",
            &r.cycle_times,
            "trip, seen elsewhere, force_closed, seen elsewhere",
        );
        if idx == 0 {
            report.goal(
                "transitions/s from 4 instances",
                ">= 5,000 /s",
                format!("{per_sec:.0} /s"),
                per_sec >= 5000.0,
            );
        }
    }
    Ok(())
}

/// How long a worker of phase 6 waits to see its change elsewhere before counting a stall.
const STALL: Duration = Duration::from_secs(1);

/// One key's loop: trip it, wait until another instance sees OPEN, close it, wait until that
/// instance sees CLOSED. Returns the cycle times.
async fn cycle_key(
    cb: CircuitBreaker,
    watcher: CircuitBreaker,
    mut seen: watch::Receiver<State>,
    stop: Instant,
    cycles: Arc<AtomicU64>,
    stalls: Arc<AtomicU64>,
) -> Vec<Duration> {
    let mut times = Vec::new();
    let give_up = stop + WAIT;
    while Instant::now() < stop {
        let t0 = Instant::now();
        // Trip; the own instance may still be applying the previous close, and an outcome
        // recorded while a remote change lands counts as neither (its epoch is gone): look.
        let mut tries = 0u32;
        loop {
            match cb.try_acquire() {
                Ok(p) => {
                    p.failure();
                    if cb.state() == State::Open {
                        break;
                    }
                }
                Err(_) => {
                    tries += 1;
                    if tries % 200 == 0 {
                        cb.force_closed();
                    }
                    if Instant::now() > give_up {
                        return times;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
        let opened = matches!(
            tokio::time::timeout(STALL, seen.wait_for(|s| *s == State::Open)).await,
            Ok(Ok(_))
        );
        cb.force_closed();
        let closed = matches!(
            tokio::time::timeout(STALL, seen.wait_for(|s| *s == State::Closed)).await,
            Ok(Ok(_))
        );
        if opened && closed {
            cycles.fetch_add(1, Ordering::Relaxed);
            times.push(t0.elapsed());
        } else {
            stalls.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(watcher);
    times
}
