//! Phase 11, followers without LISTEN: 2,000 instances following by polling (`Follow::Poll`)
//! through pgbouncer in transaction mode (8 server connections) in front of a streaming
//! replica, while transitions go to the primary.
//!
//! Why: past one primary's connection budget, or far from it, instances follow a replica by
//! polling its change log. The questions are whether every follower sees a trip made on the
//! primary within the poll interval plus the replication lag plus 100 ms, what a poll costs the
//! servers (the replica's backends and pgbouncer, in CPU per poll), and how many connections
//! the fleet holds on the primary at rest.
//!
//! On private clusters from the tests' kit (the primary, a `pg_basebackup` standby) and a
//! pgbouncer started by the kit (`tests/support/pgbouncer.rs`); skipped with a note when the
//! PostgreSQL binaries or pgbouncer are missing. A listening instance on the primary trips and
//! closes one key again and again; each follower's breaker counts the transitions it sees.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::{Follow, PostgresOptions};
use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio::sync::Notify;

use crate::report::{ms, Report};
use crate::server_cpu::ServerCpu;
use crate::support::cluster::PgTools;
use crate::support::pgbouncer::{PgBouncer, PoolMode};
use crate::support::Cluster;
use crate::{Sizes, R};

/// Followers, rounds and poll interval of each mode; `RC_BENCH_FOLLOW_INTERVAL_MS` sets another
/// interval for the full run.
fn shape(sizes: &Sizes) -> (usize, usize, Duration) {
    if sizes.quick {
        return (20, 3, Duration::from_millis(100));
    }
    let every = std::env::var("RC_BENCH_FOLLOW_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(Duration::from_millis(250), Duration::from_millis);
    (2000, 10, every)
}

/// What the followers have seen: transitions to the state of the current round.
struct Arrivals {
    count: AtomicUsize,
    times: std::sync::Mutex<Vec<Duration>>,
    started: std::sync::Mutex<Instant>,
    all: Notify,
    want: usize,
}

impl Arrivals {
    fn arrive(&self) {
        let at = self.started.lock().map(|s| s.elapsed()).unwrap_or_default();
        if let Ok(mut t) = self.times.lock() {
            t.push(at);
        }
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.want {
            self.all.notify_one();
        }
    }

    fn reset(&self) {
        self.count.store(0, Ordering::Release);
        if let Ok(mut t) = self.times.lock() {
            t.clear();
        }
        if let Ok(mut s) = self.started.lock() {
            *s = Instant::now();
        }
    }
}

/// pgbouncer's pid: the process listening as `pgbouncer` whose command line names its ini file
/// in `bouncer`'s directory.
fn pgbouncer_pid(bouncer: &PgBouncer) -> Option<u32> {
    let port = bouncer.addr().port().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("pgbouncer")
            && cmd.contains(&format!("pgbouncer{port}.ini"))
            && !cmd.starts_with("/bin/sh")
        {
            return Some(pid);
        }
    }
    None
}

/// Server sessions of `role`.
async fn connections_of(client: &tokio_postgres::Client, role: &str) -> R<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&role],
        )
        .await?
        .get(0))
}

pub(crate) async fn phase(sizes: &Sizes, report: &mut Report) -> R<()> {
    let (n, rounds, every) = shape(sizes);
    report.section(&format!(
        "11. followers: {n} instances poll a replica through pgbouncer (transaction mode) every {} ms; a trip on the primary",
        every.as_millis()
    ));
    if PgTools::find().is_none() {
        report.note("phase 11 skipped: no PostgreSQL server binaries (initdb, pg_ctl)".into());
        return Ok(());
    }
    let has_bouncer = std::env::var_os("RC_TEST_PGBOUNCER").is_some()
        || std::path::Path::new("/usr/sbin/pgbouncer").exists()
        || std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("pgbouncer").exists()));
    if !has_bouncer {
        report.note("phase 11 skipped: no pgbouncer".into());
        return Ok(());
    }
    let max = (n + 200).to_string();
    // Commits flushed at once, as by default: with the kit's synchronous_commit=off the WAL
    // reaches the standby only when the WAL writer flushes it (up to 3 x wal_writer_delay).
    let primary = Cluster::start_with(&[
        ("max_connections".into(), max),
        ("synchronous_commit".into(), "on".into()),
    ])
    .await;
    let db = primary.create_db().await;
    let app = primary.app_role(&db).await;
    let standby = Cluster::standby_of(&primary).await;
    let bouncer = PgBouncer::start(standby.addr(), PoolMode::Transaction, &[app.name()], 8).await;
    let opts = PostgresOptions::from_dsn(&app.conninfo())?
        .follow(Follow::Poll)
        .poll_interval(every)
        .listener_dsn(&app.conninfo_via(bouncer.addr()))?
        .pool_size(1)
        .pool_idle_timeout(Duration::from_secs(1));

    // The replica's own CPU with no follower (recovery, WAL receiver, checkpointer), to subtract.
    let replica_cpu = ServerCpu::of(&standby.client(&db).await).await;
    let bouncer_cpu = pgbouncer_pid(&bouncer).and_then(ServerCpu::of_process);
    let quiet = if sizes.quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let cpu = |of: &Option<ServerCpu>| {
        of.as_ref()
            .and_then(ServerCpu::used)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let idle0 = cpu(&replica_cpu);
    tokio::time::sleep(quiet).await; // measuring a stretch of time, not waiting for an event
    let idle = cpu(&replica_cpu) - idle0;

    let arrivals = Arc::new(Arrivals {
        count: AtomicUsize::new(0),
        times: std::sync::Mutex::new(Vec::with_capacity(n)),
        started: std::sync::Mutex::new(Instant::now()),
        all: Notify::new(),
        want: n,
    });
    let key = "followed";
    let started = Instant::now();
    let mut followers = Vec::with_capacity(n);
    let mut breakers = Vec::with_capacity(n);
    for _ in 0..n {
        let storage = Storage::connect_with(opts.clone()).await?;
        let seen = arrivals.clone();
        breakers.push(
            CircuitBreaker::builder(key)
                .storage(storage.clone())
                .on_status_change(move |_| seen.arrive())
                .build()?,
        );
        followers.push(storage);
    }
    let connected = started.elapsed();
    report.value(
        "followers connected",
        n,
        format!("{:.1} s", connected.as_secs_f64()),
        "sequentially, each loading the namespace from the replica",
    );
    let tripper_storage = Storage::connect_with(
        PostgresOptions::from_dsn(&app.conninfo())?.pool_idle_timeout(Duration::from_secs(1)),
    )
    .await?;
    let tripper = CircuitBreaker::builder(key)
        .storage(tripper_storage.clone())
        .failure_limit(resilient_circuit::Ratio::new(1, 1))
        .cooldown(Duration::from_secs(3600))
        .build()?;

    // Server CPU per poll, over a quiet stretch, less the replica's idle CPU.
    let (r0, b0) = (cpu(&replica_cpu), cpu(&bouncer_cpu));
    tokio::time::sleep(quiet).await; // measuring a stretch of time, not waiting for an event
    let (r1, b1) = (cpu(&replica_cpu), cpu(&bouncer_cpu));
    let r1 = r1 - idle;
    let polls = n as f64 * quiet.as_secs_f64() / every.as_secs_f64();
    report.value(
        "replica CPU per poll",
        polls as u64,
        format!("{:.1} µs", (r1 - r0) / polls * 1e6),
        &format!(
            "{:.2} cores for {n} followers (idle replica {:.2} subtracted); pgbouncer {:.1} µs per poll",
            (r1 - r0) / quiet.as_secs_f64(),
            idle / quiet.as_secs_f64(),
            (b1 - b0) / polls * 1e6
        ),
    );

    let mut last = Vec::new();
    let mut p50s = Vec::new();
    let bound = every + Duration::from_secs(5);
    for round in 0..rounds * 2 {
        let target = if round % 2 == 0 {
            State::Open
        } else {
            State::Closed
        };
        arrivals.reset();
        let wait_all = arrivals.all.notified();
        tokio::pin!(wait_all);
        wait_all.as_mut().enable();
        if target == State::Open {
            let _ = tripper.call(|| async { Err::<(), _>("down") }).await;
        } else {
            tripper.force_closed();
        }
        if tokio::time::timeout(bound, wait_all).await.is_err() {
            return Err(format!(
                "round {round}: {} of {n} followers saw {target} within {bound:?}",
                arrivals.count.load(Ordering::Acquire)
            )
            .into());
        }
        let mut times = arrivals.times.lock().map(|t| t.clone()).unwrap_or_default();
        times.sort_unstable();
        if let (Some(l), Some(m)) = (times.last(), times.get(times.len() / 2)) {
            last.push(*l);
            p50s.push(*m);
        }
        if !tripper_storage.flush(Duration::from_secs(5)).await {
            return Err("the tripper's transition was not acknowledged".into());
        }
    }
    let to_last = report.dist(
        "trip or close -> the last follower",
        &last,
        "includes the replica's replay and the primary's commit",
    );
    report.dist("trip or close -> the median follower", &p50s, "");
    if let Some(s) = to_last {
        let goal = every + Duration::from_millis(100);
        report.goal(
            &format!("{n} followers see a change within interval + lag + 100 ms"),
            &format!("p99 to the last < {} + lag", ms(goal)),
            format!("p99 {}", ms(s.p99)),
            s.p99 < goal + Duration::from_millis(50),
        );
    }
    // At rest: the pools' connections to the primary close after the idle timeout (1 s here).
    let admin = primary.client(&db).await;
    let during = connections_of(&admin, app.name()).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut at_rest = during;
    while Instant::now() < deadline {
        at_rest = connections_of(&admin, app.name()).await?;
        if at_rest <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling a server count
    }
    let on_replica = connections_of(&standby.client(&db).await, app.name()).await?;
    report.value(
        "server connections held",
        n + 1,
        format!("primary {during} after the trips, {at_rest} at rest; replica {on_replica}"),
        "at rest: the tripper's LISTEN; the replica's are pgbouncer's pool",
    );
    drop(breakers);
    drop(tripper);
    drop(followers);
    drop(tripper_storage);
    Ok(())
}
