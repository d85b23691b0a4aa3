//! Fleet benchmarks against a real PostgreSQL: how fast a change made by one instance reaches the
//! others, what starting an instance costs, what a breaker costs in memory, and how many
//! transitions the database accepts per second.
//!
//! A plain `fn main` (`harness = false`) on a tokio multi-thread runtime. It creates a database of
//! its own on the server of `RC_BENCH_DATABASE_URL`, else `RC_TEST_DATABASE_URL` (a URL or conninfo
//! of a role that may `CREATE DATABASE`), else `host=127.0.0.1 user=postgres dbname=test`, applies
//! the migrations there and drops it at the end. When no server answers it says so and exits 0.
//!
//! * `cargo bench --bench propagation` (cargo passes `--bench`): the full run, 80 s on 2 cores.
//! * `cargo test --bench propagation`, `cargo test --benches`, `cargo test --all-targets` (no
//!   `--bench` argument) or `cargo bench --bench propagation -- --test`: a quick run with small
//!   sizes that only checks every path works; its figures are not comparable with the goals.
//!
//! Measured:
//!
//! 1. **Raw NOTIFY** (the physical floor): a bare tokio-postgres connection LISTENs on the crate's
//!    channel, driven with `poll_fn(|cx| connection.poll_message(cx))`; another connection
//!    UPDATEs the state of a row of `rc_circuit_breakers`, whose trigger NOTIFYs. Timed from just
//!    before the UPDATE is sent to the notification's arrival on the listener's connection task.
//!    Each sample starts after 2 ms of idleness, as every trip of phase 2 does (waking idle CPUs
//!    and sleeping backends costs several hundred microseconds on a VM); a back-to-back series
//!    shows the busy-system figure. Over TLS as the crate's default `sslmode=prefer` connects
//!    when the server offers it, and in plain TCP. Also: the round trips of the UPDATE and of the
//!    crate's own `rc_trip()` / `rc_force()` called bare, and `rc_trip()` to NOTIFY (the
//!    database's share of a trip); and, as a what-if, the UPDATE with `synchronous_commit=off`.
//! 2. **Trip-to-reject**: instances A and B (two `Storage`s, same namespace and key, failure limit
//!    1/1, one-hour cooldown). A thread spins on B's `try_acquire` (yielding between looks) and
//!    notes the first rejection; the main thread notes the time just before A's tripping
//!    `try_acquire().failure()`. B's `on_status_change` also notes when B applied the change.
//!    Then A `force_closed()`s, both must read CLOSED again, and 2 ms pass before the next trip.
//!    After each trip and its re-close, the same run takes one raw UPDATE -> NOTIFY sample (as in
//!    phase 1, bare connections) with the same spinner spinning on B and the same 2 ms of rest
//!    before: the floor under the trips' own conditions, which the propagation is divided by
//!    (and by phase 1's back-to-back and from-idle floors, which ran without the spinner).
//!    Also: without the spinner (a bare listener on the side notes when the NOTIFY reaches one
//!    more connection), tripped from a tokio task (as an async application does), and, as a
//!    what-if, with the crate's connections at `synchronous_commit=off` (a DSN `options`
//!    setting). **B's own share**: B's connections go through a proxy in this process (plain TCP,
//!    std threads) that notes the instant just before it writes the NotificationResponse's bytes
//!    to B's listener socket; from there to B's first rejection (spinner) and to B's callback,
//!    all on one clock. The proxy hop is outside that interval.
//! 3. **Start-up**: `Storage::connect_with` until it returns with the namespace loaded, with 1,000
//!    and 10,000 rows (a tenth OPEN), an empty namespace, and `sslmode=disable`; plus the parts:
//!    a TLS context, a bare connection, the snapshot query alone.
//! 4. **Memory per breaker**: a counting global allocator (live bytes requested) around connecting
//!    an instance that loads 10,000 rows, less an instance of an empty namespace (the map entry,
//!    the cell, the key); then `CircuitBreaker` handles built on each of those keys (their heap
//!    plus `size_of::<CircuitBreaker>()`, as the handles themselves live in a Vec allocated
//!    before counting); and breakers built on 10,000 keys the instance has never seen (the build
//!    creates the cell). RSS deltas for reference.
//! 5. **50 instances**: 50 `Storage`s, one breaker each on one key; instance 0 trips; each other
//!    instance's `on_status_change` notes when it went OPEN. 50 instances need 100 connections:
//!    when the server has no room for them (the default `max_connections` is 100), the full run
//!    starts a private cluster from the local PostgreSQL binaries with the main server's
//!    durability and TLS settings and `max_connections=200`, and says so.
//! 6. **Transitions per second**: 4 instances (default pool), each cycling its own keys through
//!    trip / `force_closed`, each step waiting until another instance has seen it, for about 5 s.
//!    Counted: NOTIFYs of the namespace (every accepted state change sends exactly one). What-ifs:
//!    `synchronous_commit=off`, a pool of one connection per instance, and both.
//!
//! 7. **The wire**: one instance whose connections go through the proxy of phase 2 (plain TCP),
//!    which counts the round trips each connection starts (Sync and Query messages; the listener's
//!    connection, told apart by its `application_name`, separately): while building a breaker,
//!    during a million healthy `try_acquire` + `success` and 100,000 healthy `call().await`,
//!    per transition one at a time (trip / `force_closed`, each acknowledged before the next),
//!    and per transition when 100 keys trip, then close, at once.
//!
//! `RC_BENCH_PHASES=2,3` runs only some phases (phase 1 runs with 2, 3 and 4 together).
//! Set `RUST_LOG` (e.g. `RUST_LOG=resilient_circuit=debug`) to see the crate's logs on stderr.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use resilient_circuit::storage::postgres::{migrate, PostgresOptions, SslMode};
use resilient_circuit::{Builder, CircuitBreaker, Ratio, State, Storage};
use tokio::sync::{mpsc, watch};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type R<T> = Result<T, BoxError>;

// ---------------------------------------------------------------------------------------------
// Counting allocator: live bytes requested, for the memory figure.

struct CountingAlloc;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` unchanged and only keeps a counter on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/status` (0 where unavailable).
fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

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
};

/// Trips (and 50-instance trips) done before the recorded ones: the first trip inserts the row.
const FLEET_WARMUP: usize = 2;
const COOLDOWN: Duration = Duration::from_secs(3600);
/// Server settings of the what-if runs: commits that do not wait for the WAL flush.
const ASYNC_COMMIT: &str = "-c synchronous_commit=off";
const WAIT: Duration = Duration::from_secs(5);
/// Client connections left free on a shared server for everyone else.
const SLOT_HEADROOM: usize = 20;

// ---------------------------------------------------------------------------------------------
// Statistics and the report.

#[derive(Clone, Copy, Debug)]
struct Stats {
    n: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

/// Nearest-rank percentiles.
fn stats(samples: &[Duration]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let at = |p: f64| {
        let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    };
    Some(Stats {
        n: s.len(),
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: s[s.len() - 1],
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("x{:.2}", a.as_secs_f64() / b.as_secs_f64())
    }
}

#[derive(Default)]
struct Report {
    started: Option<Instant>,
    rows: Vec<Vec<String>>,
    goals: Vec<[String; 4]>,
    notes: Vec<String>,
}

impl Report {
    fn section(&mut self, title: &str) {
        let started = *self.started.get_or_insert_with(Instant::now);
        eprintln!("== {title} (at {:.1} s)", started.elapsed().as_secs_f64());
        self.rows.push(vec![format!("[{title}]")]);
    }

    fn dist(&mut self, name: &str, samples: &[Duration], note: &str) -> Option<Stats> {
        let st = stats(samples);
        let row = match st {
            Some(s) => vec![
                name.to_owned(),
                s.n.to_string(),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                note.to_owned(),
            ],
            None => vec![
                name.to_owned(),
                "0".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                note.to_owned(),
            ],
        };
        eprintln!("   {}", row.join("  "));
        self.rows.push(row);
        st
    }

    fn value(&mut self, name: &str, n: impl ToString, value: String, note: &str) {
        let row = vec![
            name.to_owned(),
            n.to_string(),
            value,
            String::new(),
            String::new(),
            String::new(),
            note.to_owned(),
        ];
        eprintln!("   {}", row.join("  "));
        self.rows.push(row);
    }

    fn goal(&mut self, what: &str, target: &str, measured: String, ok: bool) {
        self.goals.push([
            what.to_owned(),
            target.to_owned(),
            measured,
            if ok { "met" } else { "MISSED" }.to_owned(),
        ]);
    }

    fn note(&mut self, note: String) {
        eprintln!("   note: {note}");
        self.notes.push(note);
    }

    fn print(&self, quick: bool) {
        const HEAD: [&str; 7] = ["measurement", "n", "p50", "p90", "p99", "max", "notes"];
        let mut w = HEAD.map(str::len);
        for r in self.rows.iter().filter(|r| r.len() > 1) {
            for (i, c) in r.iter().enumerate().take(6) {
                w[i] = w[i].max(c.len());
            }
        }
        let line = |cells: &[String]| {
            let mut s = format!("{:<w0$}", cells[0], w0 = w[0]);
            for (i, c) in cells.iter().enumerate().skip(1).take(5) {
                s.push_str(&format!("  {:>wi$}", c, wi = w[i]));
            }
            if let Some(n) = cells.get(6).filter(|n| !n.is_empty()) {
                s.push_str("  ");
                s.push_str(n);
            }
            s
        };
        println!();
        println!(
            "resilient-circuit fleet propagation: {}",
            if quick {
                "QUICK run (small sizes; figures not comparable with the goals)"
            } else {
                "full run"
            }
        );
        println!("{}", line(&HEAD.map(str::to_owned)));
        println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * 6 + 10));
        for r in &self.rows {
            if r.len() == 1 {
                println!("{}", r[0]);
            } else {
                println!("{}", line(r));
            }
        }
        if !self.goals.is_empty() {
            println!();
            let mut gw = [4, 6, 8, 7];
            for g in &self.goals {
                for (i, c) in g.iter().enumerate() {
                    gw[i] = gw[i].max(c.len());
                }
            }
            println!(
                "{:<a$}  {:<b$}  {:<c$}  verdict",
                "goal",
                "target",
                "measured",
                a = gw[0],
                b = gw[1],
                c = gw[2]
            );
            for g in &self.goals {
                println!(
                    "{:<a$}  {:<b$}  {:<c$}  {}",
                    g[0],
                    g[1],
                    g[2],
                    if quick { "(quick run)" } else { g[3].as_str() },
                    a = gw[0],
                    b = gw[1],
                    c = gw[2]
                );
            }
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("* {n}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections.

/// TLS without verification, as the crate's (and libpq's) `sslmode=prefer`/`require`.
fn tls_connector() -> R<MakeTlsConnector> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let mut c = MakeTlsConnector::new(b.build());
    c.set_callback(|cfg, _| {
        cfg.set_verify_hostname(false);
        Ok(())
    });
    Ok(c)
}

#[derive(Clone)]
enum Transport {
    /// No TLS (`sslmode=disable`).
    Plain,
    /// TLS when the server offers it (or as the DSN's `sslmode` says).
    Tls(MakeTlsConnector),
}

impl Transport {
    async fn client(&self, cfg: &Config) -> R<Client> {
        match self {
            Transport::Plain => {
                let mut cfg = cfg.clone();
                cfg.ssl_mode(PgSslMode::Disable);
                connect_client(&cfg, NoTls).await
            }
            Transport::Tls(t) => connect_client(cfg, t.clone()).await,
        }
    }

    async fn listener(&self, cfg: &Config) -> R<NotifyListener> {
        match self {
            Transport::Plain => {
                let mut cfg = cfg.clone();
                cfg.ssl_mode(PgSslMode::Disable);
                notify_listener(&cfg, NoTls).await
            }
            Transport::Tls(t) => notify_listener(cfg, t.clone()).await,
        }
    }
}

async fn connect_client<T>(cfg: &Config, tls: T) -> R<Client>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = tokio::time::timeout(WAIT, cfg.connect(tls)).await??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A bare LISTEN connection: every notification of the channel with the instant its connection
/// task saw it.
struct NotifyListener {
    _client: Client,
    rx: mpsc::UnboundedReceiver<(Instant, String)>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn notify_listener<T>(cfg: &Config, tls: T) -> R<NotifyListener>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = tokio::time::timeout(WAIT, cfg.connect(tls)).await??;
    let (tx, rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let at = Instant::now();
                    if tx.send((at, n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute("LISTEN rc_circuit_breakers").await?;
    Ok(NotifyListener {
        _client: client,
        rx,
        driver,
    })
}

/// Waits for the notification of `ns`/`key` announcing `state`; returns when it arrived.
async fn recv_change(
    rx: &mut mpsc::UnboundedReceiver<(Instant, String)>,
    ns: &str,
    key: &str,
    state: &str,
) -> R<Instant> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (at, payload) = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => n,
            Ok(None) => return Err("the listener connection closed".into()),
            Err(_) => {
                return Err(format!("no NOTIFY of {ns}/{key} -> {state} within {WAIT:?}").into())
            }
        };
        let v: serde_json::Value = serde_json::from_str(&payload)?;
        if v["ns"] == ns && v["key"] == key && v["state"] == state {
            return Ok(at);
        }
    }
}

/// Where a benchmark database lives.
struct Target {
    label: String,
    /// The DSN given (URL or conninfo); the database name is replaced.
    dsn: String,
    db: String,
    /// tokio-postgres settings of the benchmark database.
    cfg: Config,
    transport: Transport,
}

impl Target {
    fn opts(&self, ns: &str) -> R<PostgresOptions> {
        self.opts_with(ns, None)
    }

    /// Options for namespace `ns`, with `options` (server settings, libpq's `options`) added to
    /// the DSN.
    fn opts_with(&self, ns: &str, options: Option<&str>) -> R<PostgresOptions> {
        let dsn = match options {
            None => self.dsn.clone(),
            Some(o) if self.dsn.contains("://") => {
                let sep = if self.dsn.contains('?') { '&' } else { '?' };
                let enc = o.replace(' ', "%20").replace('=', "%3D");
                format!("{}{sep}options={enc}", self.dsn)
            }
            Some(o) => format!("{} options='{o}'", self.dsn),
        };
        Ok(PostgresOptions::from_dsn(&dsn)?
            .dbname(self.db.clone())
            .namespace(ns)
            .auto_create(true))
    }

    async fn client(&self) -> R<Client> {
        self.transport.client(&self.cfg).await
    }
}

/// Creates a uniquely named database on the server of `admin` and applies the migrations.
async fn create_bench_db(
    admin: &Client,
    admin_cfg: &Config,
    dsn: &str,
    transport: &Transport,
    label: &str,
) -> R<Target> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let db = format!("rc_bench_prop_{}_{nanos:x}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await?;
    let mut cfg = admin_cfg.clone();
    cfg.dbname(&db);
    let target = Target {
        label: label.to_owned(),
        dsn: dsn.to_owned(),
        db,
        cfg,
        transport: transport.clone(),
    };
    let mut c = target.client().await?;
    migrate::migrate(&mut c).await?;
    Ok(target)
}

async fn drop_bench_db(admin: &Client, db: &str) {
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await
    {
        eprintln!("warning: could not drop database {db}: {e}");
    }
}

/// Drops databases left by runs of this benchmark that were killed: named
/// `rc_bench_prop_<pid>_…`, with no connection, and no live local process of that pid.
async fn drop_stale_bench_dbs(admin: &Client) {
    let Ok(rows) = admin
        .query(
            "SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'rc\\_bench\\_prop\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(3).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if pid.is_some() && !alive {
            eprintln!("dropping {name}, left by a killed run");
            drop_bench_db(admin, &name).await;
        }
    }
}

/// Client connections the server can still take.
async fn free_slots(admin: &Client) -> R<usize> {
    let row = admin
        .query_one(
            "SELECT current_setting('max_connections')::int \
                    - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int",
            &[],
        )
        .await?;
    Ok(usize::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}

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
// A counting TCP proxy (plain TCP only), for what only the wire shows.

/// What the proxy saw.
#[derive(Default)]
struct WireLog {
    /// Round trips the pool's connections started: Sync (extended protocol) and Query (simple
    /// protocol) messages from the client.
    pool_round_trips: AtomicU64,
    /// The same on the listener's connection (LISTEN, reloads, heartbeats).
    listener_round_trips: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicU64,
    /// NotificationResponses to the listener's connection: payload and the instant just before
    /// the proxy wrote the bytes that complete it to the client's socket.
    notifications: Mutex<Vec<(Instant, String)>>,
}

/// A TCP proxy in front of the server for one instance, on plain std threads (blocking I/O, so it
/// takes nothing from the tokio runtime and answers as soon as the kernel wakes it). It parses
/// the protocol in both directions; the instance must connect with `sslmode=disable`.
struct WireProxy {
    port: u16,
    log: Arc<WireLog>,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

/// Splits complete protocol messages off `buf`; calls `f(type, body)` for each. `untyped` is the
/// number of leading untyped messages still expected (the client's startup message).
fn split_messages(buf: &mut Vec<u8>, untyped: &mut usize, mut f: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    loop {
        let head = if *untyped > 0 { 4 } else { 5 };
        if buf.len() < at + head {
            break;
        }
        let ty = if head == 5 { buf[at] } else { 0 };
        let len_at = at + head - 4;
        let len = u32::from_be_bytes([
            buf[len_at],
            buf[len_at + 1],
            buf[len_at + 2],
            buf[len_at + 3],
        ]) as usize;
        let end = len_at + len.max(4);
        if buf.len() < end {
            break;
        }
        let body = &buf[len_at + 4..end];
        if head == 4 {
            // SSLRequest / GSSENCRequest (8 bytes, a magic code) are followed by another
            // untyped message; the startup message ends the untyped part.
            let code = body
                .get(..4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            if !matches!(code, Some(80_877_103 | 80_877_104)) {
                *untyped -= 1;
            }
        }
        f(ty, body);
        at = end;
    }
    buf.drain(..at);
}

impl WireProxy {
    fn start(upstream: std::net::SocketAddr) -> R<WireProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(WireLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (l, st, so) = (log.clone(), stop.clone(), sockets.clone());
        std::thread::Builder::new()
            .name("wire-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                        so.lock().unwrap_or_else(|e| e.into_inner()).extend([c, s]);
                    }
                    l.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = Self::pipe(client, server, l.clone());
                }
            })?;
        Ok(WireProxy {
            port,
            log,
            stop,
            sockets,
        })
    }

    /// Two threads per connection: client -> server and server -> client.
    fn pipe(client: std::net::TcpStream, server: std::net::TcpStream, log: Arc<WireLog>) -> R<()> {
        use std::io::{Read, Write};
        // The role is known once the client's startup message is through: shared with the
        // other direction (0 unknown, 1 listener, 2 pool).
        let role = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let (mut c_rd, mut s_wr) = (client.try_clone()?, server.try_clone()?);
        let (mut s_rd, mut c_wr) = (server, client);
        let (up_log, up_role) = (log.clone(), role.clone());
        std::thread::Builder::new()
            .name("wire-up".into())
            .spawn(move || {
                let (mut buf, mut untyped, mut chunk) = (Vec::new(), 1usize, [0u8; 16384]);
                loop {
                    let n = match c_rd.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    split_messages(&mut buf, &mut untyped, |ty, body| match ty {
                        0 => {
                            // Startup: protocol version, then name\0value\0 pairs.
                            let text = String::from_utf8_lossy(body.get(4..).unwrap_or(&[]));
                            let mut parts = text.split('\0');
                            let mut listener = false;
                            while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                                if k.ends_with("application_name") && v.ends_with("-listener") {
                                    listener = true;
                                }
                            }
                            if body.len() > 8 {
                                up_role.store(if listener { 1 } else { 2 }, Ordering::Release);
                            }
                        }
                        b'S' | b'Q' => {
                            let counter = if up_role.load(Ordering::Acquire) == 1 {
                                &up_log.listener_round_trips
                            } else {
                                &up_log.pool_round_trips
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    });
                    if s_wr.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_wr.shutdown(std::net::Shutdown::Both);
            })?;
        std::thread::Builder::new()
            .name("wire-down".into())
            .spawn(move || {
                let (mut buf, mut untyped, mut chunk) = (Vec::new(), 0usize, [0u8; 16384]);
                let mut payloads = Vec::new();
                loop {
                    let n = match s_rd.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    split_messages(&mut buf, &mut untyped, |ty, body| {
                        if ty == b'A' && body.len() > 4 {
                            // NotificationResponse: pid, channel\0, payload\0.
                            let text = String::from_utf8_lossy(&body[4..]);
                            if let Some(p) = text.split('\0').nth(1) {
                                payloads.push(p.to_owned());
                            }
                        }
                    });
                    let at = Instant::now();
                    if c_wr.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    if !payloads.is_empty() && role.load(Ordering::Acquire) == 1 {
                        let mut v = log.notifications.lock().unwrap_or_else(|e| e.into_inner());
                        v.extend(payloads.drain(..).map(|p| (at, p)));
                    }
                    payloads.clear();
                }
                let _ = c_wr.shutdown(std::net::Shutdown::Both);
            })?;
        Ok(())
    }

    /// `(pool, listener)` round trips so far.
    fn round_trips(&self) -> (u64, u64) {
        (
            self.log.pool_round_trips.load(Ordering::Relaxed),
            self.log.listener_round_trips.load(Ordering::Relaxed),
        )
    }

    /// When the NotificationResponse announcing `ns`/`key` -> `state` was handed to the
    /// listener's socket; waits for it up to `WAIT`.
    fn notified(&self, ns: &str, key: &str, state: &str) -> R<Instant> {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let mut v = self
                    .log
                    .notifications
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let found = v.iter().position(|(_, p)| {
                    serde_json::from_str::<serde_json::Value>(p)
                        .is_ok_and(|j| j["ns"] == ns && j["key"] == key && j["state"] == state)
                });
                if let Some(i) = found {
                    let at = v[i].0;
                    v.drain(..=i);
                    return Ok(at);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("the proxy saw no NOTIFY of {ns}/{key} -> {state}").into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn clear_notifications(&self) {
        self.log
            .notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for WireProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Raw NOTIFY.

struct Floor {
    /// UPDATE -> NOTIFY over the crate's transport, starting from an idle system as a trip does.
    tls: Option<Stats>,
    /// The same in plain TCP.
    plain: Option<Stats>,
    /// UPDATE -> NOTIFY over the crate's transport, back to back (a busy system).
    busy: Option<Stats>,
}

/// Idle time before each sample of the floor: phase 2 closes the key and rests 2 ms between
/// trips, so each trip starts from an idle machine (idle CPUs, sleeping backends), which costs
/// several hundred microseconds on a VM. The floor is measured the same way.
const IDLE_GAP: Duration = Duration::from_millis(2);

/// `n` UPDATEs alternating the row's state, each timed to its NOTIFY on `listener`; returns the
/// NOTIFY latencies and the round trips. `flip` keeps the alternation going across calls.
#[allow(clippy::too_many_arguments)]
async fn update_loop(
    writer: &Client,
    listener: &mut NotifyListener,
    update: &tokio_postgres::Statement,
    ns: &str,
    flip: &mut usize,
    warmup: usize,
    n: usize,
    gap: Option<Duration>,
) -> R<(Vec<Duration>, Vec<Duration>)> {
    let (mut notify, mut rtt) = (Vec::new(), Vec::new());
    for k in 0..warmup + n {
        *flip += 1;
        let state = if *flip % 2 == 0 { "OPEN" } else { "CLOSED" };
        while listener.rx.try_recv().is_ok() {}
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
        let t0 = Instant::now();
        let changed = writer.execute(update, &[&state, &ns]).await?;
        let done = t0.elapsed();
        if changed != 1 {
            return Err(format!("UPDATE changed {changed} rows").into());
        }
        let at = recv_change(&mut listener.rx, ns, "raw", state).await?;
        if k >= warmup {
            notify.push(at.saturating_duration_since(t0));
            rtt.push(done);
        }
    }
    Ok((notify, rtt))
}

async fn phase_raw(t: &Target, sizes: &Sizes, report: &mut Report) -> R<Floor> {
    report.section("1. raw NOTIFY: UPDATE of a row of rc_circuit_breakers -> its trigger's NOTIFY on a bare listener");
    let mut floor = Floor {
        tls: None,
        plain: None,
        busy: None,
    };
    let (warmup, n) = (sizes.raw_warmup, sizes.raw_samples);
    let mut transports = vec![("TLS", t.transport.clone())];
    if !matches!(t.cfg.get_ssl_mode(), PgSslMode::Require) {
        transports.push(("plain TCP", Transport::Plain));
    }
    for (i, (label, transport)) in transports.iter().enumerate() {
        let ns = format!("raw{i}");
        let writer = transport.client(&t.cfg).await?;
        let encrypted: bool = writer
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        writer
            .execute(
                "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
                 VALUES ('raw', $1, 'OPEN')",
                &[&ns],
            )
            .await?;
        let mut listener = transport.listener(&t.cfg).await?;
        let update = writer
            .prepare(
                "UPDATE public.rc_circuit_breakers SET state = $1 \
                 WHERE namespace = $2 AND resource_key = 'raw'",
            )
            .await?;
        let mut flip = 0;
        let (notify, rtt) = update_loop(
            &writer,
            &mut listener,
            &update,
            &ns,
            &mut flip,
            warmup,
            n,
            Some(IDLE_GAP),
        )
        .await?;
        let st = report.dist(
            &format!("UPDATE -> NOTIFY received ({label})"),
            &notify,
            &format!("2 ms idle before each, as phase 2's trips; encrypted: {encrypted}"),
        );
        if i > 0 {
            floor.plain = st;
            continue;
        }
        floor.tls = st;
        report.dist(
            &format!("UPDATE round trip ({label})"),
            &rtt,
            "execute() returned",
        );
        let (busy, _) = update_loop(
            &writer,
            &mut listener,
            &update,
            &ns,
            &mut flip,
            warmup,
            n,
            None,
        )
        .await?;
        floor.busy = report.dist(
            &format!("UPDATE -> NOTIFY received, back to back ({label})"),
            &busy,
            "no idle time between samples",
        );

        // The crate's transition functions, called bare: the database's share of a trip.
        let trip = writer
            .prepare("SELECT o_state FROM public.rc_trip($1, 'fn', $2, $3, $4)")
            .await?;
        let force = writer
            .prepare("SELECT o_state FROM public.rc_force($1, 'fn', 'CLOSED', 0)")
            .await?;
        let log = serde_json::json!([false]);
        let cooldown_ms: i64 = 3_600_000;
        let failures: i32 = 1;
        let (mut trip_notify, mut trip_rtt, mut force_rtt) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..warmup + n {
            while listener.rx.try_recv().is_ok() {}
            std::thread::sleep(IDLE_GAP);
            let t0 = Instant::now();
            let row = writer
                .query_one(&trip, &[&ns, &cooldown_ms, &failures, &log])
                .await?;
            let done = t0.elapsed();
            if row.get::<_, String>(0) != "OPEN" {
                return Err("rc_trip did not open".into());
            }
            let at = recv_change(&mut listener.rx, &ns, "fn", "OPEN").await?;
            std::thread::sleep(IDLE_GAP);
            let t1 = Instant::now();
            writer.query_one(&force, &[&ns]).await?;
            let forced = t1.elapsed();
            recv_change(&mut listener.rx, &ns, "fn", "CLOSED").await?;
            if k >= warmup {
                trip_notify.push(at.saturating_duration_since(t0));
                trip_rtt.push(done);
                force_rtt.push(forced);
            }
        }
        report.dist(
            &format!("rc_trip() -> NOTIFY received ({label})"),
            &trip_notify,
            "the crate's trip function called bare, 2 ms idle before",
        );
        report.dist(&format!("rc_trip() round trip ({label})"), &trip_rtt, "");
        report.dist(
            &format!("rc_force(CLOSED) round trip ({label})"),
            &force_rtt,
            "",
        );

        // What-if: the same UPDATE when the commit does not wait for the WAL flush.
        writer.batch_execute("SET synchronous_commit = off").await?;
        let (fast, _) = update_loop(
            &writer,
            &mut listener,
            &update,
            &ns,
            &mut flip,
            warmup,
            n,
            Some(IDLE_GAP),
        )
        .await?;
        writer.batch_execute("RESET synchronous_commit").await?;
        report.dist(
            &format!("what-if: UPDATE -> NOTIFY, synchronous_commit=off ({label})"),
            &fast,
            "commit does not wait for the WAL flush; 2 ms idle before each",
        );
    }
    Ok(floor)
}

// ---------------------------------------------------------------------------------------------
// 2. Trip-to-reject.

/// A thread spinning on a breaker's `try_acquire` until the first rejection, on demand.
struct Spinner {
    arm: Option<std_mpsc::Sender<()>>,
    spinning: Arc<AtomicBool>,
    /// Ends a spin that is not waiting for a rejection (a floor sample).
    stop: Arc<AtomicBool>,
    result: std_mpsc::Receiver<Option<Instant>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn spawn(cb: CircuitBreaker) -> R<Spinner> {
        let (arm_tx, arm_rx) = std_mpsc::channel::<()>();
        let (res_tx, res_rx) = std_mpsc::channel();
        let spinning = Arc::new(AtomicBool::new(false));
        let flag = spinning.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rejection-spinner".into())
            .spawn(move || {
                while arm_rx.recv().is_ok() {
                    let deadline = Instant::now() + WAIT;
                    flag.store(true, Ordering::Release);
                    let seen = loop {
                        match cb.try_acquire() {
                            Ok(permit) => drop(permit),
                            Err(_) => break Some(Instant::now()),
                        }
                        if Instant::now() >= deadline || stopped.load(Ordering::Acquire) {
                            break None;
                        }
                        // Two cores only: leave the other runnable threads (the listener, the
                        // database's backends) their turn.
                        std::thread::yield_now();
                    };
                    flag.store(false, Ordering::Release);
                    if res_tx.send(seen).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Spinner {
            arm: Some(arm_tx),
            spinning,
            stop,
            result: res_rx,
            thread: Some(thread),
        })
    }

    /// Starts a spin and returns once the thread is spinning.
    fn arm(&self) -> R<()> {
        self.arm.as_ref().ok_or("spinner stopped")?.send(())?;
        if !spin_until(WAIT, || self.spinning.load(Ordering::Acquire)) {
            return Err("the spinner thread did not start".into());
        }
        Ok(())
    }

    /// Ends a spin during which no rejection is expected; an error if there was one.
    fn stop(&self) -> R<()> {
        self.stop.store(true, Ordering::Release);
        let seen = self.result.recv_timeout(WAIT + Duration::from_secs(1))?;
        self.stop.store(false, Ordering::Release);
        match seen {
            None => Ok(()),
            Some(_) => Err("B rejected during a floor sample".into()),
        }
    }

    fn first_rejection(&self) -> R<Instant> {
        self.result
            .recv_timeout(WAIT + Duration::from_secs(1))?
            .ok_or_else(|| "B never rejected within 5 s".into())
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.arm = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The two instances of phase 2 and what B's callback noted.
struct Pair {
    a: Storage,
    /// Kept so that B lives as long as the pair (its breaker holds it too).
    _b: Storage,
    a_cb: CircuitBreaker,
    b_cb: CircuitBreaker,
    applied: Arc<Slot>,
}

/// An instant written by a callback, waited for without polling (a condition variable), so the
/// waiting thread takes no CPU from the path being measured.
#[derive(Default)]
struct Slot {
    at: Mutex<Option<Instant>>,
    set: Condvar,
}

impl Slot {
    fn put(&self, at: Instant) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        self.set.notify_all();
    }

    fn take(&self) -> Option<Instant> {
        self.at.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Waits until an instant is there and takes it.
    fn wait(&self, timeout: Duration) -> Option<Instant> {
        let guard = self.at.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .set
            .wait_timeout_while(guard, timeout, |at| at.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.take()
    }
}

impl Pair {
    async fn connect(t: &Target, ns: &str, options: Option<&str>) -> R<Pair> {
        Pair::connect_with(t.opts_with(ns, options)?, t.opts_with(ns, options)?).await
    }

    async fn connect_with(a_opts: PostgresOptions, b_opts: PostgresOptions) -> R<Pair> {
        let a = Storage::connect_with(a_opts).await?;
        let b = Storage::connect_with(b_opts).await?;
        let key = "payments_api";
        let applied = Arc::new(Slot::default());
        let slot = applied.clone();
        let a_cb = trip_fast(CircuitBreaker::builder(key).storage(a.clone())).build()?;
        let b_cb = trip_fast(CircuitBreaker::builder(key).storage(b.clone()))
            .on_status_change(move |c| {
                if c.to == State::Open {
                    slot.put(Instant::now());
                }
            })
            .build()?;
        Ok(Pair {
            a,
            _b: b,
            a_cb,
            b_cb,
            applied,
        })
    }

    fn take_applied(&self) -> Option<Instant> {
        self.applied.take()
    }
}

/// Samples of one series of trips, from the tripping call's start.
#[derive(Default)]
struct TripSamples {
    /// B's first rejection (spinner runs only).
    rejected: Vec<Duration>,
    /// B's `on_status_change` saw OPEN.
    applied: Vec<Duration>,
    /// A bare listener of the same database received the NOTIFY (decomposition runs only).
    notified: Vec<Duration>,
    /// Raw UPDATE -> NOTIFY samples taken between the trips, under the same spinner.
    floor: Vec<Duration>,
    /// Proxied B only: from the trip to the proxy handing the NOTIFY to B's listener socket.
    to_wire: Vec<Duration>,
    /// Proxied B only: from that hand-over to B's first rejection (spinner).
    wire_to_rejected: Vec<Duration>,
    /// Proxied B only: from that hand-over to B's `on_status_change`.
    wire_to_applied: Vec<Duration>,
    /// Proxied B only: samples where B's rejection or callback came before the hand-over's
    /// instant (impossible unless the clocks disagree; counted, not clamped).
    wire_negative: usize,
}

/// A raw UPDATE -> NOTIFY probe on bare connections, sampled between the trips of a series.
struct FloorProbe {
    writer: Client,
    listener: NotifyListener,
    update: tokio_postgres::Statement,
    ns: String,
    flip: usize,
}

impl FloorProbe {
    async fn new(t: &Target, ns: &str) -> R<FloorProbe> {
        let writer = t.client().await?;
        writer
            .execute(
                "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
                 VALUES ('raw', $1, 'CLOSED')",
                &[&ns],
            )
            .await?;
        let listener = t.transport.listener(&t.cfg).await?;
        let update = writer
            .prepare(
                "UPDATE public.rc_circuit_breakers SET state = $1 \
                 WHERE namespace = $2 AND resource_key = 'raw'",
            )
            .await?;
        Ok(FloorProbe {
            writer,
            listener,
            update,
            ns: ns.to_owned(),
            flip: 0,
        })
    }

    /// One sample, with `spinner` spinning on B throughout as during a trip.
    async fn sample(&mut self, spinner: Option<&Spinner>) -> R<Duration> {
        self.flip += 1;
        let state = if self.flip % 2 == 0 { "CLOSED" } else { "OPEN" };
        while self.listener.rx.try_recv().is_ok() {}
        if let Some(s) = spinner {
            s.arm()?;
        }
        let t0 = Instant::now();
        let changed = self
            .writer
            .execute(&self.update, &[&state, &self.ns])
            .await?;
        let at = recv_change(&mut self.listener.rx, &self.ns, "raw", state).await?;
        if let Some(s) = spinner {
            s.stop()?;
        }
        if changed != 1 {
            return Err(format!("UPDATE changed {changed} rows").into());
        }
        Ok(at.saturating_duration_since(t0))
    }
}

/// What a series of trips measures besides B's callback.
#[derive(Default)]
struct Extras<'a> {
    /// A thread spinning on B's `try_acquire` notes B's first rejection.
    spinner: Option<&'a Spinner>,
    /// A bare listener notes the NOTIFY's arrival on a connection of its own.
    raw: Option<&'a mut NotifyListener>,
    /// Trip from a tokio task rather than the bench's main thread.
    from_task: bool,
    /// After each trip (and its re-close), a raw UPDATE -> NOTIFY sample under the same spinner.
    floor: Option<&'a mut FloorProbe>,
    /// B's connections go through this proxy, which notes when it handed the NOTIFY to B.
    wire: Option<&'a WireProxy>,
}

/// `warmup + n` trips by A, each followed by a fleet-wide close.
async fn trips(p: &Pair, ns: &str, warmup: usize, n: usize, mut x: Extras<'_>) -> R<TripSamples> {
    let mut out = TripSamples::default();
    let all = [p.a_cb.clone(), p.b_cb.clone()];
    let key = p.a_cb.key().to_owned();
    for i in 0..warmup + n {
        p.take_applied();
        if let Some(l) = x.raw.as_deref_mut() {
            while l.rx.try_recv().is_ok() {}
        }
        if let Some(w) = x.wire {
            w.clear_notifications();
        }
        if let Some(s) = x.spinner {
            s.arm()?;
        }
        let t0 = if x.from_task {
            // As an async application trips: on a runtime worker, whose spawns stay local.
            let a_cb = p.a_cb.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                a_cb.try_acquire().map(|permit| {
                    permit.failure();
                    t0
                })
            })
            .await?
            .map_err(|r| format!("A is not closed before trip {i}: {r}"))?
        } else {
            let t0 = Instant::now();
            p.a_cb
                .try_acquire()
                .map_err(|r| format!("A is not closed before trip {i}: {r}"))?
                .failure();
            t0
        };
        let rejected = match x.spinner {
            Some(s) => Some(s.first_rejection()?),
            None => None,
        };
        let cb_at = p.applied.wait(WAIT).ok_or("B's callback never saw OPEN")?;
        if p.b_cb.try_acquire().is_ok() {
            return Err("B admitted a call after applying OPEN".into());
        }
        let notified = match x.raw.as_deref_mut() {
            Some(l) => Some(recv_change(&mut l.rx, ns, &key, "OPEN").await?),
            None => None,
        };
        let wired = match x.wire {
            Some(w) => Some(w.notified(ns, &key, "OPEN")?),
            None => None,
        };
        if i >= warmup {
            if let Some(r) = rejected {
                out.rejected.push(r.saturating_duration_since(t0));
            }
            out.applied.push(cb_at.saturating_duration_since(t0));
            if let Some(at) = notified {
                out.notified.push(at.saturating_duration_since(t0));
            }
            if let Some(w) = wired {
                out.to_wire.push(w.saturating_duration_since(t0));
                for (end, into) in [
                    (rejected, &mut out.wire_to_rejected),
                    (Some(cb_at), &mut out.wire_to_applied),
                ] {
                    match end.map(|e| e.checked_duration_since(w)) {
                        Some(Some(d)) => into.push(d),
                        Some(None) => out.wire_negative += 1,
                        None => {}
                    }
                }
            }
        }
        reclose(&p.a, &p.a_cb, &all)?;
        if let Some(f) = x.floor.as_deref_mut() {
            // reclose() ended with 2 ms of rest, as before a trip; rest again after the sample
            // so that the next trip starts from the same idleness.
            let d = f.sample(x.spinner).await?;
            if i >= warmup {
                out.floor.push(d);
            }
            std::thread::sleep(IDLE_GAP);
        }
    }
    Ok(out)
}

/// The server's TCP address, for a proxy in front of it (`None` for a Unix socket).
fn tcp_upstream(cfg: &Config) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = match cfg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port).to_socket_addrs().ok()?.next()
}

/// Options for an instance of namespace `ns` whose connections all go through `proxy`, in plain
/// TCP (the proxy parses the protocol).
fn proxied_opts(t: &Target, ns: &str, proxy: &WireProxy) -> R<PostgresOptions> {
    Ok(t.opts(ns)?
        .host("127.0.0.1")
        .port(proxy.port)
        .ssl_mode(SslMode::Disable))
}

async fn phase_propagation(t: &Target, sizes: &Sizes, floor: &Floor, report: &mut Report) -> R<()> {
    report.section("2. trip-to-reject: A trips (failure on a 1/1 breaker) -> B's first rejection");
    let pair = Pair::connect(t, "prop", None).await?;

    // The headline: a thread spinning on B's try_acquire. Between the trips, under the same
    // spinner and after the same rest, a raw UPDATE -> NOTIFY sample on bare connections: the
    // floor under the very conditions of the trips.
    let spinner = Spinner::spawn(pair.b_cb.clone())?;
    let mut probe = FloorProbe::new(t, "floor_spin").await?;
    let spun = trips(
        &pair,
        "prop",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            spinner: Some(&spinner),
            floor: Some(&mut probe),
            ..Extras::default()
        },
    )
    .await?;
    drop(spinner);
    drop(probe);
    let st = report.dist(
        "trip -> B's first rejection (spinner)",
        &spun.rejected,
        "spinning thread on B's try_acquire",
    );
    report.dist(
        "trip -> B applied it (callback, same trips)",
        &spun.applied,
        "B's on_status_change",
    );
    let same_run = report.dist(
        "raw UPDATE -> NOTIFY between those trips (same spinner)",
        &spun.floor,
        "bare connections; spinner on B, 2 ms rest before, as each trip",
    );
    if let (Some(s), Some(f)) = (st, same_run) {
        report.value(
            "  ratio to the same-run floor (spinner)",
            spun.rejected.len(),
            format!("{} / {}", ratio(s.p50, f.p50), ratio(s.p99, f.p99)),
            "p50 / p99 of trip -> rejection over p50 / p99 of the floor above",
        );
    }
    if let (Some(s), Some(b)) = (st, floor.busy) {
        report.value(
            "  ratio to the back-to-back floor (phase 1)",
            spun.rejected.len(),
            format!("{} / {}", ratio(s.p50, b.p50), ratio(s.p99, b.p99)),
            "p50 / p99; that floor ran with no spinner and no rest between samples",
        );
    }
    if let (Some(s), Some(f)) = (st, floor.tls) {
        report.value(
            "  ratio to the from-idle floor (phase 1)",
            spun.rejected.len(),
            format!("{} / {}", ratio(s.p50, f.p50), ratio(s.p99, f.p99)),
            "p50 / p99; that floor ran with no spinner, 2 ms rest before each sample",
        );
    }

    // Without the spinner, with a bare listener on the side (A's and the database's share as
    // one more listener connection sees it).
    let mut raw = t.transport.listener(&t.cfg).await?;
    let quiet = trips(
        &pair,
        "prop",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            raw: Some(&mut raw),
            ..Extras::default()
        },
    )
    .await?;
    report.dist(
        "trip -> B applied it (no spinner)",
        &quiet.applied,
        "only B's callback; the main thread blocks on a condvar",
    );
    report.dist(
        "  trip -> NOTIFY on a bare listener",
        &quiet.notified,
        "A's spawn, pool, rc_trip(), commit, NOTIFY, delivery to another connection",
    );

    // The same, tripped from a runtime task as an async application would.
    let in_task = trips(
        &pair,
        "prop",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            raw: Some(&mut raw),
            from_task: true,
            ..Extras::default()
        },
    )
    .await?;
    report.dist(
        "trip from a tokio task -> B applied it",
        &in_task.applied,
        "no spinner; the crate's spawn stays on the worker",
    );
    report.dist("  trip -> NOTIFY on a bare listener", &in_task.notified, "");
    // What the crate's own connections are.
    let c = t.client().await?;
    let rows = c
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.application_name LIKE 'resilient-circuit%' \
             ORDER BY 1",
            &[],
        )
        .await?;
    let described: Vec<String> = rows
        .iter()
        .map(|r| format!("{} ssl={}", r.get::<_, String>(0), r.get::<_, bool>(1)))
        .collect();
    report.note(format!(
        "the crate's connections during phase 2: {}",
        described.join(", ")
    ));
    drop(raw);
    if let Some(s) = st {
        report.goal(
            "propagation p50",
            "<= 0.5 ms",
            ms(s.p50),
            s.p50 <= Duration::from_micros(500),
        );
        report.goal(
            "propagation p99",
            "<= 2 ms",
            ms(s.p99),
            s.p99 <= Duration::from_millis(2),
        );
    }

    // B's own share, on one clock: B's connections go through a proxy in this process that notes
    // the instant it hands the NOTIFY's bytes to B's listener socket; the spinner and B's
    // callback note when B's snapshot shows OPEN.
    match tcp_upstream(&t.cfg) {
        None => report.note("B's own share not measured: the server is not on TCP".into()),
        Some(addr) => {
            let proxy = WireProxy::start(addr)?;
            let wired =
                Pair::connect_with(t.opts("prop_wire")?, proxied_opts(t, "prop_wire", &proxy)?)
                    .await?;
            let spinner = Spinner::spawn(wired.b_cb.clone())?;
            let w = trips(
                &wired,
                "prop_wire",
                sizes.trip_warmup,
                sizes.trips,
                Extras {
                    spinner: Some(&spinner),
                    wire: Some(&proxy),
                    ..Extras::default()
                },
            )
            .await?;
            drop(spinner);
            report.dist(
                "B's share: NOTIFY handed to B's socket -> B's first rejection",
                &w.wire_to_rejected,
                "B proxied, plain TCP; spinner on B; one process, one clock",
            );
            report.dist(
                "B's share: NOTIFY handed to B's socket -> B's callback",
                &w.wire_to_applied,
                "same trips; B's on_status_change",
            );
            report.dist(
                "  trip -> NOTIFY handed to B's socket (through the proxy)",
                &w.to_wire,
                "A's and the database's share plus the proxy hop",
            );
            report.dist(
                "  trip -> B's first rejection (through the proxy)",
                &w.rejected,
                "includes the proxy hop; not comparable with the headline",
            );
            if w.wire_negative > 0 {
                report.note(format!(
                    "B's share: {} samples had B's rejection or callback before the proxy's \
                     hand-over instant; left out",
                    w.wire_negative
                ));
            }
            drop(wired);
            drop(proxy);
        }
    }

    drop(pair);

    // What-if: the crate's connections with synchronous_commit=off (a DSN option, no code change).
    let pair = Pair::connect(t, "prop_async", Some(ASYNC_COMMIT)).await?;
    let spinner = Spinner::spawn(pair.b_cb.clone())?;
    let fast = trips(
        &pair,
        "prop_async",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            spinner: Some(&spinner),
            ..Extras::default()
        },
    )
    .await?;
    drop(spinner);
    report.dist(
        "what-if: synchronous_commit=off (spinner)",
        &fast.rejected,
        "options=-c synchronous_commit=off in the DSN",
    );
    drop(pair);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Start-up and 4. memory.

async fn fill(c: &Client, ns: &str, rows: usize) -> R<()> {
    let n = i32::try_from(rows)?;
    c.execute(
        "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state, open_until) \
         SELECT 'svc-' || lpad(i::text, 6, '0'), $1, \
                CASE WHEN i % 10 = 0 THEN 'OPEN' ELSE 'CLOSED' END, \
                CASE WHEN i % 10 = 0 THEN now() + interval '1 hour' END \
         FROM generate_series(1, $2) AS i",
        &[&ns, &n],
    )
    .await?;
    Ok(())
}

async fn time_connects(
    t: &Target,
    ns: &str,
    expect: usize,
    samples: usize,
    tweak: impl Fn(PostgresOptions) -> PostgresOptions,
) -> R<Vec<Duration>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let opts = tweak(t.opts(ns)?);
        let t0 = Instant::now();
        let s = Storage::connect_with(opts).await?;
        let d = t0.elapsed();
        // Only non-CLOSED rows need a cell (a key without one is CLOSED): one row in ten.
        let expect = expect / 10;
        if s.len() != expect || s.is_degraded() {
            return Err(format!(
                "connect loaded {} keys (expected the {expect} OPEN ones), degraded: {}",
                s.len(),
                s.is_degraded()
            )
            .into());
        }
        drop(s);
        // Let the dropped instance's connections close before the next one.
        tokio::time::sleep(Duration::from_millis(20)).await;
        out.push(d);
    }
    Ok(out)
}

async fn phase_startup(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section("3. start-up: Storage::connect_with until it returns with the namespace loaded");
    let c = t.client().await?;
    let (small_ns, large_ns) = ("start_small", "start_large");
    fill(&c, small_ns, sizes.small_rows).await?;
    fill(&c, large_ns, sizes.large_rows).await?;
    // One connect first: process-wide one-time costs (OpenSSL, first prepares) are not start-up.
    time_connects(t, "start_empty", 0, 1, |o| o).await?;

    let empty = time_connects(t, "start_empty", 0, sizes.small_samples, |o| o).await?;
    report.dist(
        "connect, empty namespace",
        &empty,
        "fixed cost of an instance",
    );
    let small = time_connects(t, small_ns, sizes.small_rows, sizes.small_samples, |o| o).await?;
    let small_st = report.dist(
        &format!("connect, {} rows", sizes.small_rows),
        &small,
        "a tenth OPEN",
    );
    let large = time_connects(t, large_ns, sizes.large_rows, sizes.large_samples, |o| o).await?;
    let large_st = report.dist(
        &format!("connect, {} rows", sizes.large_rows),
        &large,
        "a tenth OPEN",
    );
    if !matches!(t.cfg.get_ssl_mode(), PgSslMode::Require) {
        let plain = time_connects(t, small_ns, sizes.small_rows, sizes.small_samples, |o| {
            o.ssl_mode(SslMode::Disable)
        })
        .await?;
        report.dist(
            &format!("connect, {} rows, sslmode=disable", sizes.small_rows),
            &plain,
            "same, no TLS handshakes",
        );
    }

    // The parts.
    let mut ctx_build = Vec::new();
    for _ in 0..sizes.small_samples {
        let t0 = Instant::now();
        let b = SslConnector::builder(SslMethod::tls_client())?;
        drop(b.build());
        ctx_build.push(t0.elapsed());
    }
    report.dist(
        "  part: SslConnector::builder + build",
        &ctx_build,
        "connect builds two (pool + listener)",
    );
    for (label, transport) in [("TLS", t.transport.clone()), ("plain", Transport::Plain)] {
        if matches!(transport, Transport::Plain)
            && matches!(t.cfg.get_ssl_mode(), PgSslMode::Require)
        {
            continue;
        }
        let mut v = Vec::new();
        for _ in 0..sizes.small_samples {
            let t0 = Instant::now();
            let client = transport.client(&t.cfg).await?;
            v.push(t0.elapsed());
            drop(client);
        }
        report.dist(
            &format!("  part: one bare connection ({label})"),
            &v,
            "startup + auth, no query",
        );
    }
    let snapshot = c
        .prepare("SELECT o_key, o_state, o_version, o_remaining_ms FROM public.rc_snapshot($1)")
        .await?;
    let mut q = Vec::new();
    for _ in 0..sizes.large_samples.max(3) {
        let t0 = Instant::now();
        let rows = c.query(&snapshot, &[&large_ns]).await?;
        let mut open = 0usize;
        for r in &rows {
            let _key: String = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let _v: i64 = r.try_get(2)?;
            let _rem: i64 = r.try_get(3)?;
            open += usize::from(state == "OPEN");
        }
        q.push(t0.elapsed());
        if rows.len() != sizes.large_rows || open != sizes.large_rows / 10 {
            return Err("the snapshot query returned unexpected rows".into());
        }
    }
    report.dist(
        &format!(
            "  part: rc_snapshot() of {} rows + decode",
            sizes.large_rows
        ),
        &q,
        "on an open connection",
    );
    if let Some(s) = small_st {
        let target = format!("<= 20 ms ({} rows)", sizes.small_rows);
        report.goal(
            "connect with 1,000 rows (p50)",
            &target,
            format!("p50 {}, p99 {}", ms(s.p50), ms(s.p99)),
            s.p50 <= Duration::from_millis(20),
        );
    }
    if let Some(s) = large_st {
        let target = format!("<= 100 ms ({} rows)", sizes.large_rows);
        report.goal(
            "connect with 10,000 rows (p50)",
            &target,
            format!("p50 {}, p99 {}", ms(s.p50), ms(s.p99)),
            s.p50 <= Duration::from_millis(100),
        );
    }

    // 4. Memory.
    report
        .section("4. memory: live heap bytes (counting allocator) of an instance holding the rows");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settle = || tokio::time::sleep(Duration::from_millis(100));
    let (l0, r0) = (live_bytes(), rss_bytes());
    let empty = Storage::connect_with(t.opts("start_empty")?).await?;
    settle().await;
    let (l1, r1) = (live_bytes(), rss_bytes());
    let full = Storage::connect_with(t.opts(large_ns)?).await?;
    settle().await;
    let (l2, r2) = (live_bytes(), rss_bytes());
    let n = sizes.large_rows;
    let instance = l1 - l0;
    let per_key = (l2 - l1 - instance) as f64 / n as f64;
    let keys: Vec<String> = (1..=n).map(|i| format!("svc-{i:06}")).collect();
    let key_len = keys.iter().map(String::len).sum::<usize>() as f64 / n as f64;
    report.value(
        "instance, empty namespace",
        1,
        format!("{instance} B"),
        &format!("RSS +{} KiB", (r1 - r0) / 1024),
    );
    report.value(
        &format!("per key loaded ({n} rows)"),
        n,
        format!("{per_key:.0} B"),
        &format!(
            "{:.0} B beyond the {key_len:.0}-byte key; RSS +{:.0} B/key",
            per_key - key_len,
            (r2 - r1) as f64 / n as f64
        ),
    );
    // The handles' own bytes live wherever the application keeps them (here a Vec allocated
    // before counting): added as size_of, on top of the heap they allocate.
    let inline = std::mem::size_of::<CircuitBreaker>();
    let mut handles = Vec::with_capacity(n);
    let l3 = live_bytes();
    for k in &keys {
        handles.push(
            CircuitBreaker::builder(k.as_str())
                .storage(full.clone())
                .build()?,
        );
    }
    settle().await;
    let l4 = live_bytes();
    let per_handle = (l4 - l3) as f64 / n as f64;
    report.value(
        "per CircuitBreaker handle built on a loaded key",
        n,
        format!("{:.0} B", per_handle + inline as f64),
        &format!(
            "{per_handle:.0} B of heap + {inline} B of the handle itself (size_of); default \
             policy, no callback; in addition to the key's cell"
        ),
    );
    let loaded_total = per_key + per_handle + inline as f64;
    report.value(
        "per breaker, loaded key + its handle",
        n,
        format!("{loaded_total:.0} B"),
        &format!(
            "the map entry, the cell, the {key_len:.0}-byte key, the handle and its heap; \
             {:.0} B beyond the key",
            loaded_total - key_len
        ),
    );
    // Breakers on keys the instance has never seen: the build creates the cell.
    let fresh: Vec<String> = (1..=n).map(|i| format!("new-{i:06}")).collect();
    let mut fresh_handles = Vec::with_capacity(n);
    let l5 = live_bytes();
    for k in &fresh {
        fresh_handles.push(
            CircuitBreaker::builder(k.as_str())
                .storage(empty.clone())
                .build()?,
        );
    }
    settle().await;
    let l6 = live_bytes();
    let fresh_total = (l6 - l5) as f64 / n as f64 + inline as f64;
    report.value(
        "per breaker built on a new key (cell created by the build)",
        n,
        format!("{fresh_total:.0} B"),
        &format!(
            "everything the build allocates (map entry, cell, key copies, handle heap) + the \
             {inline}-byte handle; {:.0} B beyond the {key_len:.0}-byte key",
            fresh_total - key_len
        ),
    );
    report.goal(
        "memory per breaker, handle included, beyond the key",
        "<= 1 KiB",
        format!("{:.0} B", loaded_total - key_len),
        loaded_total - key_len <= 1024.0,
    );
    drop(fresh_handles);
    drop(handles);
    drop((empty, full));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Fifty instances.

/// A private PostgreSQL cluster from the local binaries, stopped and deleted on drop.
struct PrivateCluster {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    prefix: Vec<String>,
    bin: PathBuf,
}

fn find_pg_bin() -> Option<PathBuf> {
    let has = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|t| d.join(t).is_file())
    };
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has(d)) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()?
                .parse()
                .ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn run_cmd(argv: &[String]) -> R<()> {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

impl PrivateCluster {
    /// Starts a cluster with `settings` (`-c name=value`) plus `max_connections=200`.
    fn start(settings: &[(String, String)]) -> R<PrivateCluster> {
        let bin = find_pg_bin().ok_or("no PostgreSQL server binaries (initdb, pg_ctl) found")?;
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        let prefix: Vec<String> = if root {
            ["runuser", "-u", "postgres", "--"]
                .map(str::to_owned)
                .to_vec()
        } else {
            Vec::new()
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("rc-bench-prop-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let cluster = PrivateCluster {
            data: dir.join("data"),
            dir,
            port: {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.local_addr()?.port()
            },
            prefix,
            bin,
        };
        if root {
            let id = |flag: &str| -> R<u32> {
                let o = Command::new("id").args([flag, "postgres"]).output()?;
                Ok(String::from_utf8_lossy(&o.stdout).trim().parse()?)
            };
            std::os::unix::fs::chown(&cluster.dir, Some(id("-u")?), Some(id("-g")?))?;
        }
        run_cmd(&cluster.argv(
            "initdb",
            &[
                "-D",
                &cluster.data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        ))?;
        let base = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            cluster.port,
            cluster.dir.display()
        );
        let with: String = settings
            .iter()
            .map(|(k, v)| format!(" -c {k}={v}"))
            .collect();
        let without_ssl: String = settings
            .iter()
            .filter(|(k, _)| !k.starts_with("ssl"))
            .map(|(k, v)| format!(" -c {k}={v}"))
            .collect();
        let log = cluster.dir.join("log").to_string_lossy().into_owned();
        let data = cluster.data.to_string_lossy().into_owned();
        let start = |opts: String| {
            run_cmd(&cluster.argv(
                "pg_ctl",
                &[
                    "start", "-D", &data, "-l", &log, "-w", "-t", "60", "-o", &opts,
                ],
            ))
        };
        // Should this process die without running `Drop` (SIGKILL), a detached watchdog stops the
        // cluster and deletes its files once this process is gone.
        let quote = |a: &String| format!("'{}'", a.replace('\'', r"'\''"));
        let stop: Vec<String> = cluster
            .argv("pg_ctl", &["stop", "-D", &data, "-m", "immediate", "-w"])
            .iter()
            .map(quote)
            .collect();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            stop = stop.join(" "),
            dir = quote(&cluster.dir.to_string_lossy().into_owned()),
        );
        Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        if let Err(e) = start(format!("{base}{with}")) {
            eprintln!("   private cluster with the main server's TLS settings failed ({e}); retrying without TLS");
            start(format!("{base}{without_ssl}"))?;
        }
        Ok(cluster)
    }

    fn argv(&self, tool: &str, args: &[&str]) -> Vec<String> {
        let mut v = self.prefix.clone();
        v.push(self.bin.join(tool).to_string_lossy().into_owned());
        v.extend(args.iter().map(|s| (*s).to_owned()));
        v
    }

    fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = run_cmd(&self.argv("pg_ctl", &["stop", "-D", &data, "-m", "immediate", "-w"]));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings of the main server that the private cluster copies, so the figures compare.
async fn mirrored_settings(admin: &Client) -> R<Vec<(String, String)>> {
    let rows = admin
        .query(
            "SELECT name, setting FROM pg_settings WHERE name IN \
             ('fsync', 'synchronous_commit', 'full_page_writes', 'autovacuum', 'shared_buffers', \
              'wal_level', 'ssl', 'ssl_cert_file', 'ssl_key_file')",
            &[],
        )
        .await?;
    let mut out: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, v)| !v.is_empty() && !v.contains(char::is_whitespace))
        .collect();
    // TLS settings only when TLS is on.
    if !out.iter().any(|(k, v)| k == "ssl" && v == "on") {
        out.retain(|(k, _)| !k.starts_with("ssl"));
    }
    Ok(out)
}

async fn phase_fleet(main: &Target, admin: &Client, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section(
        "5. fleet: instance 0 trips -> each other instance sees OPEN (its on_status_change)",
    );
    let wanted = sizes.fleet_instances;
    let free = free_slots(admin).await?;
    let mut n = wanted;
    let mut cluster = None;
    let mut private_target = None;
    if free < 2 * wanted + 1 + SLOT_HEADROOM {
        if !sizes.quick {
            match PrivateCluster::start(&mirrored_settings(admin).await?) {
                Ok(c) => {
                    let mut cfg: Config = c.dsn().parse()?;
                    cfg.connect_timeout(WAIT);
                    let pc_admin = main.transport.client(&cfg).await?;
                    let target = create_bench_db(
                        &pc_admin,
                        &cfg,
                        &c.dsn(),
                        &main.transport,
                        "private cluster",
                    )
                    .await?;
                    report.note(format!(
                        "phase 5 ran on a private cluster (same binaries and machine, the main \
                         server's fsync/synchronous_commit/TLS settings, max_connections=200): the \
                         main server has {free} free connection slots, {wanted} instances need {}",
                        2 * wanted
                    ));
                    private_target = Some(target);
                    cluster = Some(c);
                }
                Err(e) => report.note(format!("no private cluster for phase 5: {e}")),
            }
        }
        if private_target.is_none() {
            n = free
                .saturating_sub(SLOT_HEADROOM + 1)
                .div_euclid(2)
                .clamp(2, wanted);
            if n < wanted {
                report.note(format!(
                    "phase 5 used {n} instances, not {wanted}: the server has {free} free connection slots"
                ));
            }
        }
    }
    let t = private_target.as_ref().unwrap_or(main);
    let result = run_fleet(t, n, sizes, report).await;
    drop(private_target);
    drop(cluster);
    result
}

async fn run_fleet(t: &Target, n: usize, sizes: &Sizes, report: &mut Report) -> R<()> {
    if t.label != "main" {
        // The floor on this server, for comparison.
        let c = t.client().await?;
        c.execute(
            "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) VALUES ('raw', 'fleetraw', 'CLOSED')",
            &[],
        )
        .await?;
        let mut l = t.transport.listener(&t.cfg).await?;
        let update = c
            .prepare(
                "UPDATE public.rc_circuit_breakers SET state = $1 WHERE namespace = 'fleetraw'",
            )
            .await?;
        let mut v = Vec::new();
        for k in 0..sizes.raw_warmup + sizes.raw_samples / 5 {
            let state = if k % 2 == 0 { "OPEN" } else { "CLOSED" };
            std::thread::sleep(IDLE_GAP);
            let t0 = Instant::now();
            c.execute(&update, &[&state]).await?;
            let at = recv_change(&mut l.rx, "fleetraw", "raw", state).await?;
            if k >= sizes.raw_warmup {
                v.push(at.saturating_duration_since(t0));
            }
        }
        report.dist(
            &format!("raw UPDATE -> NOTIFY on the {}", t.label),
            &v,
            "floor of this server",
        );
    }
    let base = Instant::now();
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (mut storages, mut cbs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t_connect = Instant::now();
    for i in 0..n {
        let s = Storage::connect_with(t.opts("fleet")?).await?;
        let slots = slots.clone();
        let cb = trip_fast(CircuitBreaker::builder("fleet_key").storage(s.clone()))
            .on_status_change(move |c| {
                if c.to == State::Open {
                    let at = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    slots[i].store(at.max(1), Ordering::Release);
                }
            })
            .build()?;
        storages.push(s);
        cbs.push(cb);
    }
    let connect_all = t_connect.elapsed();
    let (mut each, mut last) = (Vec::new(), Vec::new());
    for trip in 0..FLEET_WARMUP + sizes.fleet_trips {
        for s in slots.iter() {
            s.store(0, Ordering::Release);
        }
        let t0 = base.elapsed();
        cbs[0]
            .try_acquire()
            .map_err(|r| format!("instance 0 is not closed before trip {trip}: {r}"))?
            .failure();
        let all_seen = spin_until(WAIT, || {
            slots[1..].iter().all(|s| s.load(Ordering::Acquire) != 0)
        });
        if !all_seen {
            let missing = slots[1..]
                .iter()
                .filter(|s| s.load(Ordering::Acquire) == 0)
                .count();
            return Err(format!("{missing} of {} instances never saw the trip", n - 1).into());
        }
        if trip >= FLEET_WARMUP {
            let mut worst = Duration::ZERO;
            for s in &slots[1..] {
                let d = Duration::from_nanos(s.load(Ordering::Acquire)).saturating_sub(t0);
                worst = worst.max(d);
                each.push(d);
            }
            last.push(worst);
        }
        reclose(&storages[0], &cbs[0], &cbs)?;
    }
    report.value(
        &format!("connect {n} instances one after another"),
        n,
        ms(connect_all),
        &format!("{} per instance", ms(connect_all / n as u32)),
    );
    let st = report.dist(
        &format!("trip -> OPEN on each of {} other instances", n - 1),
        &each,
        &format!(
            "{} trips x {} instances, on the {}",
            sizes.fleet_trips,
            n - 1,
            t.label
        ),
    );
    report.dist(
        "trip -> OPEN on the last instance of the fleet",
        &last,
        "per trip, the slowest instance",
    );
    if let Some(s) = st {
        report.goal(
            &format!("{n} instances p99"),
            "<= 10 ms (50 instances)",
            ms(s.p99),
            s.p99 <= Duration::from_millis(10) && n >= 50,
        );
    }
    drop(cbs);
    drop(storages);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Transitions per second.

/// One throughput run's results.
struct TpsRun {
    accepted: u64,
    elapsed: Duration,
    cycles: u64,
    stalls: u64,
    observed: u64,
    cycle_times: Vec<Duration>,
}

async fn tps_run(
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

async fn phase_tps(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
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
        let per_sec = r.accepted as f64 / r.elapsed.as_secs_f64();
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

// ---------------------------------------------------------------------------------------------
// 7. The wire: round trips, counted.

/// Waits until `storage` has no transition in flight or queued.
fn settled(storage: &Storage) -> R<()> {
    if !spin_until(WAIT, || storage.pending_publications() == 0) {
        return Err("a transition was not acknowledged within 5 s".into());
    }
    Ok(())
}

async fn phase_wire(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section(
        "7. wire: round trips one instance starts (Sync/Query messages seen by a proxy, plain TCP)",
    );
    let Some(addr) = tcp_upstream(&t.cfg) else {
        report.note("phase 7 skipped: the server is not on TCP".into());
        return Ok(());
    };
    let proxy = WireProxy::start(addr)?;
    let storage = Storage::connect_with(proxied_opts(t, "wire", &proxy)?).await?;
    let quiet = || tokio::time::sleep(Duration::from_millis(100));
    quiet().await;
    let (p0, l0) = proxy.round_trips();
    let healthy = CircuitBreaker::builder("healthy")
        .storage(storage.clone())
        .build()?;
    quiet().await;
    let (p1, l1) = proxy.round_trips();
    report.value(
        "round trips to build a breaker (pool)",
        1,
        (p1 - p0).to_string(),
        &format!(
            "CircuitBreaker::builder(..).build() on a new key; since connect: pool {p0}, \
             listener {l0} (LISTEN, the reload)"
        ),
    );

    // Healthy calls: the synchronous pair and the async call.
    let (n_sync, n_async) = if sizes.quick {
        (10_000u64, 1_000u64)
    } else {
        (1_000_000, 100_000)
    };
    let t0 = Instant::now();
    for _ in 0..n_sync {
        healthy
            .try_acquire()
            .map_err(|r| format!("the healthy breaker rejected: {r}"))?
            .success();
    }
    for _ in 0..n_async {
        healthy
            .call(|| async { Ok::<_, ()>(()) })
            .await
            .map_err(|_| "the healthy breaker's call failed")?;
    }
    let calls_took = t0.elapsed();
    quiet().await;
    let (p2, l2) = proxy.round_trips();
    let calls = n_sync + n_async;
    report.value(
        "round trips per healthy call (pool)",
        calls,
        format!("{}", (p2 - p1) as f64 / calls as f64),
        &format!(
            "{} in all during {n_sync} try_acquire+success and {n_async} call().await ({}, \
             then 100 ms); the listener's own: {} in the same {} (heartbeats, per instance)",
            p2 - p1,
            ms(calls_took),
            l2 - l1,
            ms(calls_took + Duration::from_millis(100)),
        ),
    );

    // Transitions one at a time: trip, wait for the acknowledgement, rest, force_closed, ...
    let cb = trip_fast(CircuitBreaker::builder("cycled").storage(storage.clone())).build()?;
    let cycles = if sizes.quick { 10 } else { 200 };
    let mut counted = (0, 0);
    for i in 0..3 + cycles {
        if i == 3 {
            quiet().await;
            counted.0 = proxy.round_trips().0;
        }
        cb.try_acquire()
            .map_err(|r| format!("the cycled breaker is not closed: {r}"))?
            .failure();
        settled(&storage)?;
        std::thread::sleep(IDLE_GAP);
        cb.force_closed();
        settled(&storage)?;
        std::thread::sleep(IDLE_GAP);
    }
    quiet().await;
    counted.1 = proxy.round_trips().0;
    report.value(
        "round trips per transition, one at a time (pool)",
        2 * cycles,
        format!(
            "{:.2}",
            (counted.1 - counted.0) as f64 / (2 * cycles) as f64
        ),
        &format!(
            "{} for {cycles} trips + {cycles} force_closed, each acknowledged before the next",
            counted.1 - counted.0
        ),
    );

    // A burst: many keys change at once and share statements.
    let burst = if sizes.quick { 10 } else { 100 };
    let many: Vec<CircuitBreaker> = (0..burst)
        .map(|i| {
            trip_fast(CircuitBreaker::builder(format!("burst-{i}")).storage(storage.clone()))
                .build()
        })
        .collect::<Result<_, _>>()?;
    quiet().await;
    let b0 = proxy.round_trips().0;
    for cb in &many {
        cb.try_acquire()
            .map_err(|r| format!("a burst breaker is not closed: {r}"))?
            .failure();
    }
    settled(&storage)?;
    quiet().await;
    let b1 = proxy.round_trips().0;
    for cb in &many {
        cb.force_closed();
    }
    settled(&storage)?;
    quiet().await;
    let b2 = proxy.round_trips().0;
    report.value(
        &format!("round trips per transition, {burst} keys tripped at once (pool)"),
        burst,
        format!("{:.2}", (b1 - b0) as f64 / burst as f64),
        &format!("{} in all", b1 - b0),
    );
    report.value(
        &format!("round trips per transition, {burst} keys force_closed at once (pool)"),
        burst,
        format!("{:.2}", (b2 - b1) as f64 / burst as f64),
        &format!("{} in all", b2 - b1),
    );
    drop((many, cb, healthy));
    drop(storage);
    drop(proxy);
    Ok(())
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
        phase_raw(main, sizes, report).await?
    } else {
        Floor {
            tls: None,
            plain: None,
            busy: None,
        }
    };
    if wanted(2) {
        phase_propagation(main, sizes, &floor, report).await?;
    }
    if wanted(3) || wanted(4) {
        phase_startup(main, sizes, report).await?;
    }
    if wanted(5) {
        phase_fleet(main, admin, sizes, report).await?;
    }
    if wanted(6) {
        phase_tps(main, sizes, report).await?;
    }
    if wanted(7) {
        phase_wire(main, sizes, report).await?;
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
