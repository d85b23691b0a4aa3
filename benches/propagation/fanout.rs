//! Phase 10, fan-out as a curve: one trip seen by fleets of 10, 100, 500 and 1,000 instances,
//! each holding one server connection at rest; and what a large fleet costs the database.
//!
//! Why: every instance LISTENs on a connection of its own, the server wakes every listening
//! backend of the database for each notification, and a transaction that NOTIFYs takes a
//! database-wide lock at commit. Phase 5 shows 50 instances; this shows how propagation, server
//! CPU and accepted transitions per second change with the size of the fleet.
//!
//! Per fleet size `n` (each instance its own `Storage` with `pool_idle_timeout` 1 s, one breaker
//! on one key; instance 0 trips):
//!
//! * the floor: `n` bare LISTEN connections (tokio-postgres, on the bench's runtime) and a bare
//!   `UPDATE`: commit until the last of them has the notification;
//! * connections held at rest, from `pg_stat_activity`, once the pools have been reaped;
//! * the server's CPU at rest (heartbeats, reloads), over a few seconds;
//! * trip -> OPEN in the snapshot of each other instance (the change stream's `seen_at`, stamped
//!   when the listener applied it, so the bench's own scheduling is not counted), and on the
//!   last one per trip;
//! * the server's CPU per transition over the trips (each trip and each re-close is one
//!   transition, NOTIFYed to every listener), gross and net of the rest rate (`server_cpu.rs`).
//!
//! Then the largest fleet's listeners are all cut at once and come back (`reconnect.rs`), and
//! transitions per second as phase 6 measures them (4 instances cycling their keys), with
//! no other listener, with the largest fleet listening (its instances receive and drop every
//! notification, in this process), and with as many bare LISTEN connections (the server's share
//! alone, nearly: their drivers only drain). Before all that, `first_trip.rs`.
//!
//! All instances of a fleet live in this process and share the crate's background I/O runtime
//! (two worker threads) and the machine's cores with the server: the gap between the fleet's
//! last instance and the floor's last listener is what the runtime adds. In production each
//! instance is a process of its own. 1,000 instances need about 1,100 connections: the full run
//! starts a private cluster (`max_connections=2300`, the main server's durability and TLS
//! settings), as phase 5 does; the quick run uses small fleets on the main server.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt, TryStreamExt};
use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio::sync::{mpsc, Notify};
use tokio_postgres::Client;

use crate::db::{free_slots, recv_change, NotifyListener, Target};
use crate::report::{ms, Report};
use crate::server_cpu::ServerCpu;
use crate::{
    first_trip, fleet, reclose, throughput, trip_fast, Sizes, FLEET_WARMUP, R, SLOT_HEADROOM, WAIT,
};

/// The fleet's idle timeout: short, so that it is at one connection each soon after starting.
const FLEET_IDLE: Duration = Duration::from_secs(1);
/// Instances (and bare listeners) connected at once.
const CONNECTING: usize = 16;
/// The private cluster's `max_connections`.
const MAX_CONNECTIONS: usize = 2300;
const KEY: &str = "fanout_key";
const NS: &str = "fanout";

pub(crate) async fn phase(
    main: &Target,
    admin: &Client,
    sizes: &Sizes,
    report: &mut Report,
) -> R<()> {
    report.section(
        "10. fan-out curve: trip -> OPEN on the last of n instances, one connection each at rest",
    );
    let largest = sizes.fanout_fleets.iter().copied().max().unwrap_or(0);
    // The fleet, a few pools at a time, then the bare listeners of the throughput run beside
    // phase 6's instances (4 listeners, 4 pools of 4, a counting listener).
    let need = largest + CONNECTING * 2 + 25 + SLOT_HEADROOM;
    let free = free_slots(admin).await?;
    let mut cluster = None;
    let mut private = None;
    if free < need && !sizes.quick {
        let extra = [("max_connections".to_owned(), MAX_CONNECTIONS.to_string())];
        match fleet::private_target(main, admin, &extra).await {
            Ok((c, target)) => {
                report.note(format!(
                    "phase 10 ran on a private cluster (same binaries and machine, the main \
                     server's fsync/synchronous_commit/TLS settings, max_connections={MAX_CONNECTIONS}): \
                     the main server has {free} free connection slots, {largest} instances need about {need}"
                ));
                private = Some(target);
                cluster = Some(c);
            }
            Err(e) => report.note(format!("no private cluster for phase 10: {e}")),
        }
    }
    let t = private.as_ref().unwrap_or(main);
    let room = if private.is_some() {
        MAX_CONNECTIONS
    } else {
        free.saturating_sub(CONNECTING * 2 + 25 + SLOT_HEADROOM)
    };
    let observer = t.client().await?;
    let cpu = ServerCpu::of(&observer).await;
    match &cpu {
        Some(c) => report.note(format!(
            "phase 10 server CPU: utime+stime of the postmaster, its children and its reaped \
             children from /proc, {} ticks a second (see server_cpu.rs for the error)",
            c.ticks_per_sec()
        )),
        None => report
            .note("phase 10: the server's processes cannot be read here; no CPU figures".into()),
    }
    let result = async {
        first_trip::measure(t, sizes, cpu.as_ref(), report).await?;
        let quiet = tps(t, sizes, "fan_tps_0").await?;
        let mut kept: Option<Fleet> = None;
        for &n in sizes.fanout_fleets {
            if n > room {
                report.note(format!(
                    "phase 10 skipped the fleet of {n}: room for {room} connections"
                ));
                continue;
            }
            let fleet = curve_point(t, &observer, cpu.as_ref(), n, sizes, report).await?;
            if n == largest {
                kept = Some(fleet);
            } else {
                fleet.close(&observer).await;
            }
        }
        report_tps(
            report,
            "no other listener (4 instances, 1 counting listener)",
            &quiet,
        );
        if let Some(fleet) = kept {
            let busy = tps(t, sizes, "fan_tps_fleet").await?;
            report_tps(
                report,
                &format!("{} idle instances listening (in this process)", fleet.n),
                &busy,
            );
            crate::reconnect::storm(&observer, cpu.as_ref(), &fleet.storages, report).await?;
            let n = fleet.n;
            fleet.close(&observer).await;
            let alone = batched_tps(t, sizes, "fan_batch_0").await?;
            let bare = bare_listeners(t, n).await?;
            let drains: Vec<_> = bare.into_iter().map(drain).collect();
            let bare_run = tps(t, sizes, "fan_tps_bare").await?;
            report_tps(report, &format!("{n} bare LISTEN connections"), &bare_run);
            let crowded = batched_tps(t, sizes, "fan_batch_n").await?;
            report.value(
                "transitions/s in batches of 100, no listener",
                BATCH,
                format!("{alone:.0} /s"),
                "open loop: rc_force_many opens 100 keys, then closes them, one commit each",
            );
            report.value(
                &format!("transitions/s in batches of 100, {n} bare listeners"),
                BATCH,
                format!("{crowded:.0} /s"),
                "one commit wakes each listener once, whatever the batch holds",
            );
            for d in drains {
                d.abort();
            }
        }
        Ok(())
    }
    .await;
    drop(observer);
    drop(private);
    drop(cluster);
    result
}

/// One throughput run of phase 6, in namespace `ns`.
async fn tps(t: &Target, sizes: &Sizes, ns: &str) -> R<throughput::TpsRun> {
    throughput::tps_run(t, sizes, ns, None, None).await
}

/// Keys per batch of [`batched_tps`]: what an instance's outbox sends in one call during an
/// incident that trips many keys.
const BATCH: usize = 100;

/// Transitions per second accepted in batches of [`BATCH`], open loop: one session alternately
/// opens and closes [`BATCH`] keys of namespace `ns` with one `rc_force_many` call (one commit)
/// each, for `sizes.tps_run`. Shows that the cost NOTIFY puts on a commit with many listeners
/// is paid per commit, so batching keeps its gain.
async fn batched_tps(t: &Target, sizes: &Sizes, ns: &str) -> R<f64> {
    let client = t.client().await?;
    let keys: Vec<String> = (0..BATCH).map(|i| format!("batch-{i}")).collect();
    let cooldowns = vec![3_600_000i64; BATCH];
    let started = Instant::now();
    let mut changed = 0u64;
    let mut open = true;
    while started.elapsed() < sizes.tps_run {
        let states = vec![if open { "OPEN" } else { "CLOSED" }; BATCH];
        let rows = client
            .query(
                "SELECT o_key FROM public.rc_force_many($1, $2, $3, $4)",
                &[&ns, &keys, &states, &cooldowns],
            )
            .await?;
        changed += rows.len() as u64;
        open = !open;
    }
    Ok(changed as f64 / started.elapsed().as_secs_f64())
}

fn report_tps(report: &mut Report, label: &str, r: &throughput::TpsRun) {
    report.value(
        &format!("transitions/s, {label}"),
        r.accepted,
        format!("{:.0} /s", r.per_sec()),
        &format!(
            "{} full cycles, {} stalls (1 s), counted over {}",
            r.cycles,
            r.stalls,
            ms(r.elapsed)
        ),
    );
}

/// A fleet of instances, each with one breaker on [`KEY`] and a task that notes when its
/// snapshot went OPEN.
struct Fleet {
    n: usize,
    storages: Vec<Storage>,
    breakers: Vec<CircuitBreaker>,
    /// When instance `i` applied the trip (ns since the Unix epoch; 0: not yet).
    opened: Arc<Vec<AtomicU64>>,
    /// How many of instances 1.. have applied it.
    count: Arc<AtomicUsize>,
    all_seen: Arc<Notify>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    async fn start(t: &Target, n: usize) -> R<(Fleet, Duration)> {
        let t0 = Instant::now();
        let storages: Vec<Storage> = stream::iter(0..n)
            .map(|_| async move {
                let opts = t.opts(NS)?.pool_idle_timeout(FLEET_IDLE);
                Ok::<_, crate::BoxError>(Storage::connect_with(opts).await?)
            })
            .buffered(CONNECTING)
            .try_collect()
            .await?;
        let connected = t0.elapsed();
        let opened: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let count = Arc::new(AtomicUsize::new(0));
        let all_seen = Arc::new(Notify::new());
        let mut breakers = Vec::with_capacity(n);
        let mut watchers = Vec::with_capacity(n);
        for (i, s) in storages.iter().enumerate() {
            breakers.push(trip_fast(CircuitBreaker::builder(KEY).storage(s.clone())).build()?);
            if i == 0 {
                continue;
            }
            let mut changes = s.changes();
            let (opened, count, all_seen) = (opened.clone(), count.clone(), all_seen.clone());
            watchers.push(tokio::spawn(async move {
                while let Some(c) = changes.next().await {
                    let Ok(c) = c else { continue };
                    if c.key != KEY || c.to != State::Open {
                        continue;
                    }
                    let at = c
                        .seen_at
                        .duration_since(UNIX_EPOCH)
                        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                    let first = opened[i]
                        .compare_exchange(0, at.max(1), Ordering::AcqRel, Ordering::Acquire)
                        .is_ok();
                    if first && count.fetch_add(1, Ordering::AcqRel) + 1 == n - 1 {
                        all_seen.notify_one();
                    }
                }
            }));
        }
        let fleet = Fleet {
            n,
            storages,
            breakers,
            opened,
            count,
            all_seen,
            watchers,
        };
        Ok((fleet, connected))
    }

    /// Instance 0 trips; returns, per other instance, how long after `failure` its snapshot
    /// was OPEN.
    async fn trip(&self, round: usize) -> R<Vec<Duration>> {
        for o in self.opened.iter() {
            o.store(0, Ordering::Release);
        }
        self.count.store(0, Ordering::Release);
        let t0 = SystemTime::now();
        self.breakers[0]
            .try_acquire()
            .map_err(|r| format!("instance 0 is not closed before trip {round}: {r}"))?
            .failure();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.count.load(Ordering::Acquire) < self.n - 1 {
            if tokio::time::timeout_at(deadline, self.all_seen.notified())
                .await
                .is_err()
            {
                let missing = self.n - 1 - self.count.load(Ordering::Acquire);
                return Err(format!(
                    "{missing} of {} instances never saw trip {round}",
                    self.n - 1
                )
                .into());
            }
        }
        let t0 = u64::try_from(t0.duration_since(UNIX_EPOCH)?.as_nanos())?;
        Ok(self.opened[1..]
            .iter()
            .map(|o| Duration::from_nanos(o.load(Ordering::Acquire).saturating_sub(t0)))
            .collect())
    }

    /// Drops every instance and waits until their sessions are gone.
    async fn close(self, observer: &Client) {
        for w in &self.watchers {
            w.abort();
        }
        drop(self.breakers);
        drop(self.storages);
        crate::support::eventually(Duration::from_secs(30), || async {
            sessions(observer).await.is_ok_and(|(all, _)| all == 0)
        })
        .await;
    }
}

/// The instances' sessions in the benchmark database: (all, listeners).
async fn sessions(observer: &Client) -> R<(i64, i64)> {
    let row = observer
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE application_name = 'resilient-circuit-listener') \
             FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name IN ('resilient-circuit', 'resilient-circuit-listener')",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// `n` bare LISTEN connections.
async fn bare_listeners(t: &Target, n: usize) -> R<Vec<NotifyListener>> {
    stream::iter(0..n)
        .map(|_| t.transport.listener(&t.cfg))
        .buffered(CONNECTING)
        .try_collect()
        .await
}

/// Keeps `l` open and throws its notifications away as they come.
fn drain(mut l: NotifyListener) -> tokio::task::JoinHandle<()> {
    let mut rx = std::mem::replace(&mut l.rx, mpsc::unbounded_channel().1);
    tokio::spawn(async move {
        let _open = l;
        while rx.recv().await.is_some() {}
    })
}

/// The floor for `n` listeners: a bare UPDATE, commit to the last bare listener's receipt.
async fn floor(t: &Target, n: usize, sizes: &Sizes) -> R<Vec<Duration>> {
    let c = t.client().await?;
    // A row of its own per size, CLOSED: only a change of state notifies.
    let key = format!("raw-{n}");
    c.execute(
        "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
         VALUES ($1, 'fanraw', 'CLOSED')",
        &[&key],
    )
    .await?;
    let mut listeners = bare_listeners(t, n).await?;
    let update = c
        .prepare(
            "UPDATE public.rc_circuit_breakers SET state = $1 \
             WHERE namespace = 'fanraw' AND resource_key = $2",
        )
        .await?;
    let mut out = Vec::new();
    for k in 0..FLEET_WARMUP + sizes.fanout_trips {
        let state = if k % 2 == 0 { "OPEN" } else { "CLOSED" };
        let t0 = Instant::now();
        c.execute(&update, &[&state, &key]).await?;
        let mut last = t0;
        for l in &mut listeners {
            last = last.max(recv_change(&mut l.rx, "fanraw", &key, state).await?);
        }
        if k >= FLEET_WARMUP {
            out.push(last.saturating_duration_since(t0));
        }
        tokio::time::sleep(crate::IDLE_GAP).await;
    }
    Ok(out)
}

/// One point of the curve: a fleet of `n`. Returns the fleet, for the throughput run beside
/// the largest.
async fn curve_point(
    t: &Target,
    observer: &Client,
    cpu: Option<&ServerCpu>,
    n: usize,
    sizes: &Sizes,
    report: &mut Report,
) -> R<Fleet> {
    let floor = floor(t, n, sizes).await?;
    report.dist(
        &format!("n={n}: bare UPDATE -> NOTIFY at the last of {n} bare listeners"),
        &floor,
        "the floor at this size",
    );
    let (fleet, connected) = Fleet::start(t, n).await?;
    // One connection each once the pools are reaped.
    let rest = crate::support::eventually(FLEET_IDLE * 3 + WAIT, || async {
        sessions(observer)
            .await
            .is_ok_and(|(all, _)| all <= n as i64)
    })
    .await;
    let (held, listening) = sessions(observer).await?;
    report.value(
        &format!("n={n}: connections held at rest"),
        held,
        format!("{:.2} /instance", held as f64 / n as f64),
        &format!(
            "{listening} listening; {} after connecting {n} ({CONNECTING} at a time) in {}",
            if rest { "reached" } else { "NOT reached" },
            ms(connected)
        ),
    );
    let rest_cpu = match cpu {
        Some(c) => {
            let (b, t0) = (c.used(), Instant::now());
            tokio::time::sleep(sizes.fanout_rest).await;
            match (b, c.used()) {
                (Some(b), Some(a)) => {
                    Some(a.saturating_sub(b).as_secs_f64() / t0.elapsed().as_secs_f64())
                }
                _ => None,
            }
        }
        None => None,
    };
    let (mut each, mut last) = (Vec::new(), Vec::new());
    let mut cpu_start = None;
    let mut started = Instant::now();
    for round in 0..FLEET_WARMUP + sizes.fanout_trips {
        if round == FLEET_WARMUP {
            cpu_start = cpu.and_then(ServerCpu::used);
            started = Instant::now();
        }
        let seen = fleet.trip(round).await?;
        if round >= FLEET_WARMUP {
            last.push(seen.iter().copied().max().unwrap_or_default());
            each.extend(seen);
        }
        reclose(&fleet.storages[0], &fleet.breakers[0], &fleet.breakers)?;
    }
    let wall = started.elapsed();
    let cpu_used = match (cpu_start, cpu.and_then(ServerCpu::used)) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let (held_busy, _) = sessions(observer).await?;
    report.dist(
        &format!("n={n}: trip -> OPEN on each of the {} others", n - 1),
        &each,
        &format!("{} trips", sizes.fanout_trips),
    );
    let st = report.dist(
        &format!("n={n}: trip -> OPEN on the last instance"),
        &last,
        "per trip, the slowest",
    );
    let transitions = 2 * sizes.fanout_trips;
    if let Some(used) = cpu_used {
        let gross = used / transitions as u32;
        let net = rest_cpu.map(|r| {
            let idle = Duration::from_secs_f64(r * wall.as_secs_f64());
            used.saturating_sub(idle) / transitions as u32
        });
        report.value(
            &format!("n={n}: server CPU per transition"),
            transitions,
            ms(gross),
            &format!(
                "gross; net of the rest rate {}; at rest {} CPU per second ({:.1} ms per instance-second)",
                net.map_or("-".into(), ms),
                rest_cpu.map_or("-".into(), |r| format!("{:.1} ms", r * 1e3)),
                rest_cpu.map_or(0.0, |r| r * 1e3 / n as f64),
            ),
        );
    }
    let degraded = fleet.storages.iter().filter(|s| s.is_degraded()).count();
    report.value(
        &format!("n={n}: connections held during the trips"),
        held_busy,
        format!("{:.2} /instance", held_busy as f64 / n as f64),
        &format!("{degraded} instances degraded after the trips"),
    );
    if let Some(s) = st {
        if n == 1000 {
            report.goal(
                "1,000 instances: every trip seen by the last one",
                "<= 100 ms (max over trips)",
                format!("p50 {}, max {}", ms(s.p50), ms(s.max)),
                s.max <= Duration::from_millis(100),
            );
            report.goal(
                "1,000 instances: connections at rest",
                "1 per instance",
                format!("{held} for {n}"),
                rest && held <= n as i64,
            );
        }
    }
    Ok(fleet)
}
