//! Fleet benchmarks against a real PostgreSQL: how fast a change made by one instance reaches the
//! others, what starting an instance costs, what a breaker costs in memory, and how many
//! transitions the database accepts per second.
//!
//! A plain `fn main` (`harness = false`) on a tokio multi-thread runtime. It creates a database of
//! its own on the server of `RC_BENCH_DATABASE_URL`, else `RC_TEST_DATABASE_URL` (a URL or conninfo
//! of a role that may `CREATE DATABASE`), else `host=127.0.0.1 user=postgres dbname=test`, applies
//! the migrations there and drops it at the end. When no server answers it says so and exits 0.
//!
//! * `cargo bench --bench propagation` (cargo passes `--bench`): the full run, about 3 minutes on
//!   2 cores (phase 10 alone, about 2 minutes).
//! * `cargo test --bench propagation`, `cargo test --benches`, `cargo test --all-targets` (no
//!   `--bench` argument) or `cargo bench --bench propagation -- --test`: a quick run with small
//!   sizes that only checks every path works; its figures are not comparable with the goals.
//!
//! Measured, one module per phase (each module's docs say what and why):
//!
//! 1. [`raw_notify`]: the physical floor, a bare UPDATE -> NOTIFY, and the crate's SQL functions
//!    called bare.
//! 2. [`trip_to_reject`]: A trips -> B rejects, the headline, with the floor under the same
//!    conditions, and B's own share timed at B's socket.
//! 3. [`startup`]: `Storage::connect_with` with 0, 1,000 and 10,000 rows, and its parts.
//! 4. [`memory`]: live heap bytes per breaker (a counting global allocator).
//! 5. [`fleet`]: one trip seen by each of 50 instances (on a private cluster from the tests' kit,
//!    `tests/support/cluster.rs`, when the server has no room for 100 more connections).
//! 6. [`throughput`]: transitions per second from 4 instances.
//! 7. [`round_trips`]: round trips an instance starts, counted by a proxy on the wire.
//! 8. [`storm`]: 10,000 notifications a second applied by one instance: lag, missed changes,
//!    heartbeat and reconciliation under the load.
//! 9. [`half_open`]: a fleet-wide half-open round on PostgreSQL: the probe lease, the report.
//! 10. [`fanout`]: the fan-out curve, fleets of 10 to 1,000 instances at one connection each:
//!     trip to the last instance against a bare-listener floor, server CPU per transition,
//!     connections held, transitions per second with 0 and 1,000 listeners; and before it
//!     [`first_trip`], the first trip after idle pooled connections were closed, warm vs reaped.
//! 11. [`followers`]: 2,000 instances following a streaming replica by polling, through
//!     pgbouncer in transaction mode: a trip on the primary to the last follower, CPU per poll.
//! 12. [`live_config`]: an operator's configuration change, from its commit to the last
//!     listening instance's snapshot and to a polling one's.
//!
//! Beside them: [`report`] (percentiles and the tables), [`db`] (the benchmark's database,
//! transports and bare connections), [`server_cpu`] (a local server's CPU from `/proc`),
//! [`wire_proxy`] (the protocol-parsing proxy of phases 2 and
//! 7) and `support`, the integration tests' kit (`tests/support/`), included as is.
//!
//! `RC_BENCH_PHASES=2,3` runs only some phases (phase 1 runs with 2, 3 and 4 together).
//! Set `RUST_LOG` (e.g. `RUST_LOG=resilient_circuit=debug`) to see the crate's logs on stderr.

mod db;
mod fanout;
mod first_trip;
mod fleet;
mod followers;
mod half_open;
mod live_config;
mod memory;
mod raw_notify;
mod reconnect;
mod report;
mod round_trips;
mod server_cpu;
mod startup;
mod storm;
#[allow(dead_code, unused_imports)] // the bench uses the cluster launcher of the tests' kit
#[path = "../../tests/support/mod.rs"]
mod support;
mod throughput;
mod trip_to_reject;
mod wire_proxy;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use resilient_circuit::{Builder, CircuitBreaker, Ratio, State, Storage};
use tokio_postgres::{Client, Config};

use db::{create_bench_db, drop_bench_db, drop_stale_bench_dbs, tls_connector, Target, Transport};
use raw_notify::Floor;
use report::Report;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type R<T> = Result<T, BoxError>;

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// Sizes of the two modes.

#[derive(Clone, Copy, Debug)]
struct Sizes {
    quick: bool,
    raw_warmup: usize,
    raw_samples: usize,
    trip_warmup: usize,
    trips: usize,
    small_rows: usize,
    small_samples: usize,
    large_rows: usize,
    large_samples: usize,
    fleet_instances: usize,
    fleet_trips: usize,
    tps_keys_per_instance: usize,
    tps_run: Duration,
    /// Phase 10: the fleet sizes of the curve, the trips at each, how long the server's CPU at
    /// rest is sampled, and the samples of each kind of first trip.
    fanout_fleets: &'static [usize],
    fanout_trips: usize,
    fanout_rest: Duration,
    first_trip_samples: usize,
}

const FULL: Sizes = Sizes {
    quick: false,
    raw_warmup: 100,
    raw_samples: 1000,
    trip_warmup: 20,
    trips: 1000,
    small_rows: 1000,
    small_samples: 20,
    large_rows: 10_000,
    large_samples: 10,
    fleet_instances: 50,
    fleet_trips: 50,
    tps_keys_per_instance: 32,
    tps_run: Duration::from_secs(5),
    fanout_fleets: &[10, 100, 500, 1000],
    fanout_trips: 15,
    fanout_rest: Duration::from_secs(3),
    first_trip_samples: 20,
};

const QUICK: Sizes = Sizes {
    quick: true,
    raw_warmup: 5,
    raw_samples: 30,
    trip_warmup: 2,
    trips: 20,
    small_rows: 100,
    small_samples: 3,
    large_rows: 1000,
    large_samples: 2,
    fleet_instances: 5,
    fleet_trips: 3,
    tps_keys_per_instance: 4,
    tps_run: Duration::from_millis(500),
    fanout_fleets: &[3, 6],
    fanout_trips: 3,
    fanout_rest: Duration::from_millis(300),
    first_trip_samples: 2,
};

/// Trips (and 50-instance trips) done before the recorded ones: the first trip inserts the row.
const FLEET_WARMUP: usize = 2;
const COOLDOWN: Duration = Duration::from_secs(3600);
/// Server settings of the what-if runs: commits that do not wait for the WAL flush.
const ASYNC_COMMIT: &str = "-c synchronous_commit=off";
const WAIT: Duration = Duration::from_secs(5);
/// Client connections left free on a shared server for everyone else.
const SLOT_HEADROOM: usize = 20;
/// Idle time before each sample of the floor: phase 2 closes the key and rests 2 ms between
/// trips, so each trip starts from an idle machine (idle CPUs, sleeping backends), which costs
/// several hundred microseconds on a VM. The floor is measured the same way.
const IDLE_GAP: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------------------------
// Helpers for breakers.

fn trip_fast(b: Builder) -> Builder {
    b.failure_limit(Ratio::new(1, 1)).cooldown(COOLDOWN)
}

/// Polls `f` every few tens of microseconds (sleeping, so it takes no core) until true or
/// `timeout`. Only for waits that are not being measured.
fn spin_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// After a trip by `a` on `a_storage`: waits for the database to acknowledge it, closes the key
/// fleet-wide with `force_closed`, and waits until every breaker of `all` reads CLOSED and still
/// does 2 ms later (late notifications of the trip are ignored by version, but let them land).
fn reclose(a_storage: &Storage, a: &CircuitBreaker, all: &[CircuitBreaker]) -> R<()> {
    if !spin_until(WAIT, || a_storage.pending_publications() == 0) {
        return Err("the trip was not acknowledged by the database within 5 s".into());
    }
    let closed = || all.iter().all(|c| c.state() == State::Closed);
    for _ in 0..5 {
        a.force_closed();
        if spin_until(WAIT, closed) {
            std::thread::sleep(Duration::from_millis(2));
            if closed() {
                return Ok(());
            }
        }
    }
    Err("could not close the key on every instance again".into())
}

// ---------------------------------------------------------------------------------------------
// Main.

/// `RC_BENCH_PHASES=2,3` runs only those phases (for profiling one of them); default all.
fn wanted(phase: u32) -> bool {
    match std::env::var("RC_BENCH_PHASES") {
        Ok(list) => list.split(',').any(|p| p.trim() == phase.to_string()),
        Err(_) => true,
    }
}

async fn phases(main: &Target, admin: &Client, sizes: &Sizes, report: &mut Report) -> R<()> {
    let floor = if wanted(1) || wanted(2) {
        raw_notify::phase(main, sizes, report).await?
    } else {
        Floor {
            tls: None,
            plain: None,
            busy: None,
        }
    };
    if wanted(2) {
        trip_to_reject::phase(main, sizes, &floor, report).await?;
    }
    if wanted(3) || wanted(4) {
        let filled = startup::phase(main, sizes, report).await?;
        memory::phase(main, sizes, &filled, report).await?;
    }
    if wanted(5) {
        fleet::phase(main, admin, sizes, report).await?;
    }
    if wanted(6) {
        throughput::phase(main, sizes, report).await?;
    }
    if wanted(7) {
        round_trips::phase(main, sizes, report).await?;
    }
    if wanted(8) {
        storm::phase(main, sizes, report).await?;
    }
    if wanted(9) {
        half_open::phase(main, sizes, report).await?;
    }
    if wanted(10) {
        fanout::phase(main, admin, sizes, report).await?;
    }
    if wanted(11) {
        followers::phase(sizes, report).await?;
    }
    if wanted(12) {
        live_config::phase(main, sizes, report).await?;
    }
    Ok(())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn run(sizes: Sizes) -> i32 {
    let dsn = std::env::var("RC_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("RC_TEST_DATABASE_URL"))
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".to_owned());
    let skip = |why: String| {
        println!("propagation bench: skipped, no usable PostgreSQL ({why})");
        0
    };
    let mut admin_cfg: Config = match dsn.parse() {
        Ok(c) => c,
        Err(e) => return skip(format!("cannot parse the admin DSN: {e}")),
    };
    admin_cfg.connect_timeout(Duration::from_secs(3));
    let transport = match tls_connector() {
        Ok(t) => Transport::Tls(t),
        Err(e) => return skip(format!("no TLS context: {e}")),
    };
    let admin =
        match tokio::time::timeout(Duration::from_secs(4), transport.client(&admin_cfg)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return skip(e.to_string()),
            Err(_) => return skip("no answer within 4 s".into()),
        };
    drop_stale_bench_dbs(&admin).await;
    let main = match create_bench_db(&admin, &admin_cfg, &dsn, &transport, "main").await {
        Ok(t) => t,
        Err(e) => return skip(format!("cannot create a benchmark database: {e}")),
    };
    let load_before = load();
    let started = Instant::now();
    eprintln!(
        "propagation bench ({} run) in database {}, load average {load_before}",
        if sizes.quick { "quick" } else { "full" },
        main.db
    );
    let mut report = Report::default();
    let outcome = AssertUnwindSafe(phases(&main, &admin, &sizes, &mut report))
        .catch_unwind()
        .await;
    drop_bench_db(&admin, &main.db).await;
    report.note(format!(
        "ran in {:.1} s; load average (1/5/15 min) before {load_before}, after {}; {} cores",
        started.elapsed().as_secs_f64(),
        load(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    report.print(sizes.quick);
    match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("propagation bench failed: {e}");
            1
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let full = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = rt.block_on(run(if full { FULL } else { QUICK }));
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
