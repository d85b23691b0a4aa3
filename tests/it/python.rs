//! Python services on the same table: the Python package `resilient-circuit` 0.8.6,
//! installed for real, run as a long-lived process (`tests/python/driver.py`: one JSON line per
//! command each way) beside instances of this crate, on one database per test.
//!
//! The package lives in a virtual environment cached in
//! `${XDG_CACHE_HOME:-$HOME/.cache}/resilient-circuit-tests/py-0.8.6`, made with `python3 -m venv`
//! (`RC_TEST_PYTHON` names another interpreter) and pip. Every test process verifies it once by
//! importing the package, and builds it anew when that fails: tests of one process wait for one
//! build (a `OnceCell`); concurrent processes each build in a private directory and publish it
//! with an atomic rename, keeping the first one that verifies. The console scripts in its `bin/`
//! name the private directory, so the Python package's command is run as `python -m
//! resilient_circuit.cli`, its entry point. If pip cannot install the package, every test here
//! fails with pip's output.
//!
//! Every test prints `MEASURED <test>: ...` on stderr (see them with `--nocapture`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{Ratio, State, Storage};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::OnceCell;
use tokio_postgres::Client;

use crate::cli::{ok, Run};
use crate::support::breakers::{caught_up, fail, fleet_probe, published, trip_fast, Watched};
use crate::support::{test_db, unique_key, TestDb};

/// The version the table is shared with, and what pip installs.
const PY_VERSION: &str = "0.8.6";
const PY_REQUIREMENT: &str = "resilient-circuit[postgres]==0.8.6";
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/driver.py");
/// How long a transition may take to show anywhere before the test gives up.
use crate::support::WAIT;
/// How long one driver command or Python package CLI run may take.
const ANSWER: Duration = Duration::from_secs(60);
/// How long `python3 -m venv` plus pip may take on a cold cache.
const INSTALL: Duration = Duration::from_secs(600);
/// A Python trip must be rejected by a listening instance within this of its commit.
const PROPAGATION: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// The virtual environment.

static VENV: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();

/// The interpreter of the cached virtual environment, ready (made or verified once per process).
async fn venv_python() -> PathBuf {
    match VENV.get_or_init(prepare_venv).await {
        Ok(dir) => dir.join("bin").join("python"),
        Err(why) => {
            panic!("the Python package resilient-circuit {PY_VERSION} is not usable: {why}")
        }
    }
}

fn cache_dir() -> PathBuf {
    let nonempty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    let base = match (nonempty("XDG_CACHE_HOME"), nonempty("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => PathBuf::from(home).join(".cache"),
        (None, None) => std::env::temp_dir(),
    };
    base.join("resilient-circuit-tests")
}

/// A `Command` for a Python interpreter that sees none of the caller's Python or RC_* settings.
fn python_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("RC_") || k == "PYTHONHOME" || k == "PYTHONPATH" {
            cmd.env_remove(&*k);
        }
    }
    cmd.env("PYTHONNOUSERSITE", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to the end, at most `limit`; `Err` says why it did not run.
async fn output(what: &str, cmd: &mut Command, limit: Duration) -> Result<Run, String> {
    let out = match tokio::time::timeout(limit, cmd.output()).await {
        Err(_) => return Err(format!("{what} did not finish within {limit:?}")),
        Ok(Err(e)) => return Err(format!("{what} could not be started: {e}")),
        Ok(Ok(out)) => out,
    };
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn failed(what: &str, r: &Run) -> String {
    format!(
        "{what} exited with {}\n--- its stdout:\n{}\n--- its stderr:\n{}",
        r.code, r.stdout, r.stderr
    )
}

/// The virtual environment in `dir` imports the package at the right version and loads libpq.
async fn verify(dir: &Path) -> Result<(), String> {
    let python = dir.join("bin").join("python");
    if !python.exists() {
        return Err(format!("{} does not exist", python.display()));
    }
    let script = format!(
        "import psycopg, resilient_circuit, resilient_circuit.cli\n\
         assert resilient_circuit.__version__ == '{PY_VERSION}', resilient_circuit.__version__\n\
         psycopg.pq.version()\n"
    );
    let what = format!("{} -c 'import resilient_circuit'", python.display());
    let r = output(&what, python_command(&python).args(["-c", &script]), ANSWER).await?;
    if r.code == 0 {
        Ok(())
    } else {
        Err(failed(&what, &r))
    }
}

async fn prepare_venv() -> Result<PathBuf, String> {
    let root = cache_dir();
    let dir = root.join(format!("py-{PY_VERSION}"));
    let started = Instant::now();
    match verify(&dir).await {
        Ok(()) => {
            eprintln!(
                "MEASURED python venv: cached {} verified in {:?}",
                dir.display(),
                started.elapsed()
            );
            return Ok(dir);
        }
        Err(why) if dir.exists() => eprintln!("python venv: rebuilding {}: {why}", dir.display()),
        Err(_) => {}
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let tmp = root.join(format!(
        ".py-{PY_VERSION}.{}.{}.tmp",
        std::process::id(),
        nanos()
    ));
    let result = match build(&tmp).await {
        Ok(()) => publish(&tmp, &dir).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    let ours = result?;
    eprintln!(
        "MEASURED python venv: made {} ({PY_REQUIREMENT}) in {:?}{}",
        dir.display(),
        started.elapsed(),
        if ours {
            ""
        } else {
            "; another process published its own first, which is kept"
        }
    );
    Ok(dir)
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// `python3 -m venv tmp`, pip installs the package into it, and it verifies.
async fn build(tmp: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(tmp);
    let base = std::env::var_os("RC_TEST_PYTHON")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into());
    let what = format!("{} -m venv {}", base.to_string_lossy(), tmp.display());
    let r = output(
        &what,
        python_command(&base).args(["-m", "venv"]).arg(tmp),
        INSTALL,
    )
    .await?;
    if r.code != 0 {
        return Err(failed(&what, &r));
    }
    let what = format!("pip install {PY_REQUIREMENT}");
    let r = output(
        &what,
        python_command(tmp.join("bin").join("python")).args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
            PY_REQUIREMENT,
        ]),
        INSTALL,
    )
    .await?;
    if r.code != 0 {
        return Err(failed(&what, &r));
    }
    verify(tmp)
        .await
        .map_err(|e| format!("pip installed {PY_REQUIREMENT}, but {e}"))
}

/// Renames the finished `tmp` to `dir` (true). When `dir` is there already, keeps it if it
/// verifies (false: another process published first), else moves it aside and tries once more.
async fn publish(tmp: &Path, dir: &Path) -> Result<bool, String> {
    let mut last = String::new();
    for _ in 0..2 {
        match std::fs::rename(tmp, dir) {
            Ok(()) => return Ok(true),
            Err(e) if dir.exists() => {
                if verify(dir).await.is_ok() {
                    return Ok(false);
                }
                last = format!("{} is in the way and broken ({e})", dir.display());
                let aside = dir.with_file_name(format!(
                    ".py-{PY_VERSION}.broken.{}.{}",
                    std::process::id(),
                    nanos()
                ));
                if std::fs::rename(dir, &aside).is_ok() {
                    let _ = std::fs::remove_dir_all(&aside);
                }
            }
            Err(e) => {
                return Err(format!(
                    "renaming {} to {}: {e}",
                    tmp.display(),
                    dir.display()
                ))
            }
        }
    }
    Err(last)
}

/// The Python package's command line (`resilient-circuit-cli`), with `dsn` in `RC_DB_DSN`.
async fn python_package_cli(dsn: &str, args: &[&str]) -> Run {
    let python = venv_python().await;
    let what = format!("resilient-circuit-cli {}", args.join(" "));
    output(
        &what,
        python_command(python)
            .args(["-m", "resilient_circuit.cli"])
            .args(args)
            .env("RC_DB_DSN", dsn),
        ANSWER,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the Python package's command and expects exit 0.
async fn python_package_ok(dsn: &str, args: &[&str]) -> Run {
    let r = python_package_cli(dsn, args).await;
    assert_eq!(
        r.code,
        0,
        "{}",
        failed(&format!("resilient-circuit-cli {}", args.join(" ")), &r)
    );
    r
}

// ---------------------------------------------------------------------------------------------
// A Python service: the driver process.

struct PyService {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// What it wrote on stderr so far (the package's log), for failure messages.
    stderr: Arc<Mutex<String>>,
    next_id: u64,
}

impl PyService {
    /// Starts the driver on `conninfo` (as `RC_DB_DSN`, with `RC_DB_STRICT=1`) and waits until
    /// it has made its PostgreSQL storage.
    async fn start(conninfo: &str) -> PyService {
        let python = venv_python().await;
        let mut child = python_command(python)
            .arg(DRIVER)
            .env("RC_DB_DSN", conninfo)
            .env("RC_DB_STRICT", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the Python driver starts");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut py = PyService {
            child,
            stdin,
            stdout,
            stderr,
            next_id: 0,
        };
        let ready = py.answer("its start").await;
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["version"], PY_VERSION, "{ready}");
        assert_eq!(ready["backend"], "postgres", "{ready}");
        assert_eq!(ready["problems"], json!([]), "{ready}");
        py
    }

    fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn answer(&mut self, what: &str) -> Value {
        let line = match tokio::time::timeout(ANSWER, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                let status = self.child.wait().await;
                panic!(
                    "the Python driver exited before answering {what} ({status:?}); its stderr:\n{}",
                    self.log()
                )
            }
            Ok(Err(e)) => panic!("reading the Python driver's answer to {what}: {e}"),
            Err(_) => panic!(
                "the Python driver did not answer {what} within {ANSWER:?}; its stderr:\n{}",
                self.log()
            ),
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the Python driver answered {what} with {line:?}: {e}"))
    }

    /// Sends one command; its answer must be `ok` with no problem logged by the package.
    async fn send(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        cmd["id"] = json!(self.next_id);
        let what = cmd.to_string();
        let line = format!("{what}\n");
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            panic!(
                "sending {what} to the Python driver: {e}; its stderr:\n{}",
                self.log()
            );
        }
        let a = self.answer(&what).await;
        assert_eq!(a["id"], cmd["id"], "answers are in order");
        assert_eq!(
            a["ok"],
            true,
            "{what} failed in Python:\n{}\nstderr:\n{}",
            a["error"].as_str().unwrap_or_default(),
            self.log()
        );
        assert_eq!(
            a["problems"],
            json!([]),
            "the Python package logged problems during {what}: {a}"
        );
        a
    }

    /// A policy on `key` that trips on its first failure, rests `cooldown`, re-reads the row
    /// before every call (`admission_refresh_interval=None`), and in HALF_OPEN closes on
    /// `success_limit` (n of d probes) if given, else on one success.
    async fn policy(&mut self, key: &str, cooldown: Duration, success_limit: Option<[u32; 2]>) {
        let a = self
            .send(json!({
                "op": "policy", "key": key, "cooldown_ms": cooldown.as_millis() as u64,
                "failure_limit": [1, 1], "success_limit": success_limit, "refresh_ms": null,
            }))
            .await;
        assert_eq!(a["status"], "CLOSED", "a new key starts CLOSED: {a}");
    }

    /// One protected call that succeeds, or fails with `fail`.
    async fn call(&mut self, key: &str, fail: bool) -> Value {
        self.send(json!({"op": "call", "key": key, "fail": fail}))
            .await
    }

    /// The policy's local view, no I/O.
    async fn status(&mut self, key: &str) -> String {
        text(&self.send(json!({"op": "status", "key": key})).await["status"]).to_owned()
    }

    /// The row as the package reads it (`storage.get_state`).
    async fn read(&mut self, key: &str) -> Value {
        self.send(json!({"op": "read", "key": key})).await["row"].take()
    }

    /// Sleeps (in Python) until the policy's own cooldown is over.
    async fn until_cooldown(&mut self, key: &str) {
        self.send(json!({"op": "until_cooldown", "key": key})).await;
    }
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
}

fn epoch(v: &Value) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs_f64(
            v.as_f64()
                .unwrap_or_else(|| panic!("expected seconds, got {v}")),
        )
}

/// The first write of `state` in an answer; it must have been applied (not refused by the
/// package's guard, nor failed).
fn applied_write<'a>(a: &'a Value, state: &str) -> &'a Value {
    let w = a["writes"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["state"] == state))
        .unwrap_or_else(|| panic!("no write of {state} in {a}"));
    assert_eq!(w["applied"], true, "the write of {state} was refused: {a}");
    w
}

/// `later - earlier` in milliseconds, negative if `later` is earlier.
fn ms(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

// ---------------------------------------------------------------------------------------------
// Both sides on one database.

/// A Python service and two instances of this crate on one database (as one role), plus an
/// administrator's connection to look at the table.
struct Fleet {
    py: PyService,
    rust: Storage,
    other: Storage,
    admin: Client,
}

impl Fleet {
    async fn on(db: &TestDb, conninfo: &str) -> Fleet {
        // Each of its own name, as two pods.
        let opts = || {
            PostgresOptions::from_dsn(conninfo)
                .expect("test conninfo parses")
                .strict(true)
                .instance_name(unique_key("instance"))
        };
        let rust = Storage::connect_with(opts())
            .await
            .expect("a Rust instance connects");
        let other = Storage::connect_with(opts())
            .await
            .expect("a second Rust instance connects");
        Fleet {
            py: PyService::start(conninfo).await,
            rust,
            other,
            admin: db.client().await,
        }
    }

    /// `key`'s row: state, failure_count, execution_log.
    async fn row(&self, key: &str) -> (String, i32, Value) {
        let r = self
            .admin
            .query_one(
                "SELECT state::text, failure_count, coalesce(execution_log, 'null') \
                 FROM public.rc_circuit_breakers WHERE resource_key = $1 AND namespace = 'default'",
                &[&key],
            )
            .await
            .unwrap_or_else(|e| panic!("{key} has no row: {e}"));
        (r.get(0), r.get(1), r.get(2))
    }
}

/// How long after a Python trip's commit a listening instance rejected, per trip.
struct Lag {
    /// From the moment the package's write returned (its commit acknowledged) to the Rust
    /// instance's rejection; negative when the instance rejected first.
    after_commit_ms: f64,
    /// From the moment the package started the write (connect, upsert, commit) to the rejection.
    after_write_started_ms: f64,
}

/// A Python process trips keys; a Rust instance that is already listening rejects each within
/// [`PROPAGATION`] of the write's commit, and the row holds what Python wrote.
async fn python_trip_reaches_rust(f: &mut Fleet, rounds: usize) -> Vec<Lag> {
    let mut lags = Vec::new();
    for _ in 0..rounds {
        let key = unique_key("py-trips");
        let mut w = Watched::new(&f.rust, &key, |b| b);
        assert!(w.cb.try_acquire().is_ok(), "admits before the trip");
        f.py.policy(&key, Duration::from_secs(60), None).await;
        // Both at once: the Python call, and the instance awaiting the change then asking.
        let (a, seen) = tokio::join!(f.py.call(&key, true), async {
            let reached = w.reaches_within(State::Open, WAIT).await;
            let rejected = w.cb.try_acquire().err().map(|r| r.state());
            (reached, rejected, SystemTime::now())
        });
        let (reached, rejected, at) = seen;
        assert_eq!(a["outcome"], "failed", "{a}");
        assert_eq!(a["status"], "OPEN", "the Python breaker tripped: {a}");
        let write = applied_write(&a, "OPEN");
        assert!(
            reached,
            "the Rust instance never saw the Python trip of {key}"
        );
        assert_eq!(rejected, Some(State::Open), "the Rust instance rejects");
        let lag = Lag {
            after_commit_ms: ms(at, epoch(&write["t_done"])),
            after_write_started_ms: ms(at, epoch(&write["t_start"])),
        };
        assert!(
            lag.after_commit_ms < PROPAGATION.as_secs_f64() * 1e3,
            "the Rust instance rejected {:.1} ms after the Python trip's commit (bound {PROPAGATION:?})",
            lag.after_commit_ms
        );
        lags.push(lag);
        let (state, failures, log) = f.row(&key).await;
        assert_eq!(
            (state.as_str(), failures, &log),
            ("OPEN", 1, &json!([false])),
            "the row holds the Python write"
        );
        let left = w.cb.cooldown_remaining();
        assert!(
            left > Duration::from_secs(50) && left <= Duration::from_secs(60),
            "the instance took the Python cooldown: {left:?} left"
        );
    }
    lags
}

/// A Rust instance trips a key; the Python process, which was admitting calls, rejects on its
/// next check. Returns how long that check took in Python's process (ms).
async fn rust_trip_reaches_python(f: &mut Fleet) -> f64 {
    let key = unique_key("rust-trips");
    let w = Watched::new(&f.rust, &key, trip_fast);
    f.py.policy(&key, Duration::from_secs(60), None).await;
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "ok", "Python admits before the trip: {a}");
    // That success inserted the row (CLOSED). A trip decided before the instance saw that row
    // yields to it, as to any newer row (`docs::guarantees`, "Can be lost"): let the instance see it first.
    assert!(caught_up(&f.admin, &[&f.rust], WAIT).await);

    fail(&w.cb).await;
    assert_eq!(w.cb.state(), State::Open);
    published(&f.rust).await;
    assert_eq!(f.row(&key).await.0, "OPEN");

    let asked = Instant::now();
    let a = f.py.call(&key, false).await;
    let took = asked.elapsed();
    assert_eq!(
        a["outcome"], "rejected",
        "Python's next check after the Rust trip: {a}"
    );
    assert_eq!(a["status"], "OPEN", "{a}");
    assert_eq!(
        a["changes"],
        json!([{"key": key, "old": "CLOSED", "new": "OPEN"}]),
        "{a}"
    );
    assert_eq!(
        a["writes"],
        json!([]),
        "a rejected call writes nothing: {a}"
    );
    let row = f.py.read(&key).await;
    assert_eq!(row["state"], "OPEN", "{row}");
    let left = ms(epoch(&row["open_until"]), SystemTime::now());
    assert!(
        left > 50_000.0 && left <= 60_000.0,
        "Python reads the Rust cooldown: {left} ms left"
    );
    took.as_secs_f64() * 1e3
}

/// A Python process trips a key, moves it to HALF_OPEN after the cooldown and closes it with
/// its probes: both Rust instances follow each step, and the row holds each Python write.
async fn python_recovery_reaches_rust(f: &mut Fleet) {
    let key = unique_key("py-recovers");
    let mut a_side = Watched::new(&f.rust, &key, |b| b);
    let mut b_side = Watched::new(&f.other, &key, |b| b);
    // Two of three probes must succeed: HALF_OPEN lasts three calls, so it can be seen.
    f.py.policy(&key, Duration::from_millis(300), Some([2, 3]))
        .await;
    let a = f.py.call(&key, true).await;
    applied_write(&a, "OPEN");
    for w in [&mut a_side, &mut b_side] {
        assert!(w.reaches(State::Open).await, "the Python trip reached Rust");
    }

    f.py.until_cooldown(&key).await;
    let a = f.py.call(&key, false).await;
    assert_eq!(
        (&a["outcome"], &a["status"]),
        (&json!("ok"), &json!("HALF_OPEN")),
        "{a}"
    );
    applied_write(&a, "HALF_OPEN");
    for w in [&mut a_side, &mut b_side] {
        assert!(
            w.reaches(State::HalfOpen).await,
            "the Python HALF_OPEN reached Rust"
        );
    }
    assert_eq!(f.row(&key).await.0, "HALF_OPEN");

    let a = f.py.call(&key, false).await;
    assert_eq!(a["status"], "HALF_OPEN", "one more probe to go: {a}");
    let a = f.py.call(&key, false).await;
    assert_eq!(a["status"], "CLOSED", "{a}");
    applied_write(&a, "CLOSED");
    for w in [&mut a_side, &mut b_side] {
        assert!(
            w.reaches(State::Closed).await,
            "the Python close reached Rust"
        );
        assert!(w.cb.try_acquire().is_ok(), "Rust admits again");
    }
    let (state, failures, _) = f.row(&key).await;
    assert_eq!((state.as_str(), failures), ("CLOSED", 0));
}

/// A Python process trips a key for a minute; a Rust instance closes it
/// (`force_closed_confirmed`): Python, still OPEN locally, admits on its next check, going
/// straight to CLOSED, and the other Rust instance follows too.
async fn rust_close_reaches_python(f: &mut Fleet) {
    let key = unique_key("rust-closes");
    let mut closer = Watched::new(&f.rust, &key, |b| b);
    let mut other = Watched::new(&f.other, &key, |b| b);
    f.py.policy(&key, Duration::from_secs(60), None).await;
    let a = f.py.call(&key, true).await;
    applied_write(&a, "OPEN");
    assert!(closer.reaches(State::Open).await);
    assert!(other.reaches(State::Open).await);

    closer
        .cb
        .force_closed_confirmed()
        .await
        .expect("the database takes the close");
    assert_eq!(f.row(&key).await.0, "CLOSED");
    assert!(
        other.reaches(State::Closed).await,
        "the close reached the other instance"
    );
    assert_eq!(
        f.py.status(&key).await,
        "OPEN",
        "Python has not looked yet (it is not told, it reads)"
    );
    let a = f.py.call(&key, false).await;
    assert_eq!(
        a["outcome"], "ok",
        "Python admits after the Rust close: {a}"
    );
    assert_eq!(a["status"], "CLOSED", "{a}");
    assert_eq!(
        a["changes"],
        json!([{"key": key, "old": "OPEN", "new": "CLOSED"}]),
        "straight to CLOSED, no half-open of its own: {a}"
    );
}

/// A deleted row (`resilient-circuit delete`) is CLOSED for the Rust instances, but the Python
/// package 0.8.6 keeps its own view of a key whose row is gone: it goes on rejecting until its
/// own cooldown ends. A close, which writes a row, reaches it.
async fn delete_reaches_rust_but_not_python(f: &mut Fleet) {
    let key = unique_key("deleted");
    let mut w = Watched::new(&f.rust, &key, |b| b);
    f.py.policy(&key, Duration::from_secs(60), None).await;
    let a = f.py.call(&key, true).await;
    applied_write(&a, "OPEN");
    assert!(w.reaches(State::Open).await);
    let deleted = f
        .admin
        .execute(
            "DELETE FROM public.rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("deletes");
    assert_eq!(deleted, 1);
    assert!(w.reaches(State::Closed).await, "the delete reached Rust");
    let a = f.py.call(&key, false).await;
    assert_eq!(
        (&a["outcome"], &a["status"]),
        (&json!("rejected"), &json!("OPEN")),
        "Python 0.8.6 ignores a missing row: {a}"
    );
    w.cb.force_closed_confirmed()
        .await
        .expect("the database takes the close");
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "ok", "the close reached Python: {a}");
}

/// A Rust instance trips a key on three failures in three calls and, after the cooldown, begins
/// a half-open round (it holds a fleet probe). A Python process on the same key, closing on two
/// successes of three probes, probes from a window of its own: three successes close the key
/// for everyone, none of them reopens it.
async fn rust_half_open_reaches_python(f: &mut Fleet) {
    let key = unique_key("rust-probes");
    let cooldown = Duration::from_millis(300);
    let mut w = Watched::new(&f.rust, &key, |b| {
        b.failure_limit(Ratio::new(3, 3)).cooldown(cooldown)
    });
    let mut other = Watched::new(&f.other, &key, |b| b);
    f.py.policy(&key, Duration::from_secs(60), Some([2, 3]))
        .await;
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "ok", "{a}");
    assert!(caught_up(&f.admin, &[&f.rust], WAIT).await);
    for _ in 0..3 {
        fail(&w.cb).await;
    }
    assert_eq!(w.cb.state(), State::Open);
    published(&f.rust).await;
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "rejected", "{a}");

    tokio::time::sleep(w.cb.cooldown_remaining()).await;
    let probe = fleet_probe(&w.cb).await;
    assert!(probe.is_probe());
    assert_eq!(
        f.py.read(&key).await,
        json!({"state": "HALF_OPEN", "failure_count": 0, "open_until": 0, "execution_log": []}),
        "the Rust round began as the Python package begins one: an empty window"
    );
    assert!(other.reaches(State::HalfOpen).await);

    for n in 1..=3 {
        let a = f.py.call(&key, false).await;
        assert_eq!(a["outcome"], "ok", "Python probe {n} runs: {a}");
        let expected = if n < 3 { "HALF_OPEN" } else { "CLOSED" };
        assert_eq!(
            a["status"], expected,
            "after {n} successful Python probe(s) in the Rust round: {a}"
        );
    }
    drop(probe);
    assert_eq!(f.row(&key).await.0, "CLOSED");
    assert!(
        w.reaches(State::Closed).await,
        "the Python close reached Rust"
    );
    assert!(other.reaches(State::Closed).await);
}

fn summary(lags: &[Lag]) -> String {
    let mut after: Vec<f64> = lags.iter().map(|l| l.after_commit_ms).collect();
    after.sort_by(f64::total_cmp);
    let started: Vec<String> = lags
        .iter()
        .map(|l| format!("{:.1}", l.after_write_started_ms))
        .collect();
    format!(
        "rejected after the Python commit: min {:.2} ms, median {:.2} ms, max {:.2} ms over {} trips; \
         after the Python write started: [{}] ms",
        after[0],
        after[after.len() / 2],
        after[after.len() - 1],
        after.len(),
        started.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// After the Python package's `pg-setup` then our `setup`, both checks pass and both sides trip and read.
#[tokio::test]
async fn python_package_setup_then_ours_leave_a_schema_both_accept() {
    let db = test_db().await;
    let r = python_package_ok(&db.conninfo(), &["pg-setup", "--yes"]).await;
    assert!(
        r.stdout.contains("created table rc_circuit_breakers"),
        "{}",
        r.stdout
    );
    let r = ok(&db.conninfo(), &["setup", "--yes"]).await;
    assert!(
        r.stdout.contains("applied migration(s) 0001"),
        "{}",
        r.stdout
    );
    both_accept(
        &db,
        "python_package_setup_then_ours_leave_a_schema_both_accept",
    )
    .await;
}

/// After our `setup` then the Python package's `pg-setup`, both checks pass and both sides trip and read.
#[tokio::test]
async fn our_setup_then_the_python_packages_leave_a_schema_both_accept() {
    let db = test_db().await;
    ok(&db.conninfo(), &["setup", "--yes"]).await;
    let r = python_package_ok(&db.conninfo(), &["pg-setup", "--yes"]).await;
    assert!(r.stdout.contains("already exists"), "{}", r.stdout);
    both_accept(
        &db,
        "our_setup_then_the_python_packages_leave_a_schema_both_accept",
    )
    .await;
}

/// Our `check` and the Python package's `pg-check` pass (exit 0: complete), and a Python process and a
/// Rust instance each trip a key the other then reads.
async fn both_accept(db: &TestDb, test: &str) {
    let r = ok(&db.conninfo(), &["check"]).await;
    assert!(r.stdout.contains("the database is ready"), "{}", r.stdout);
    let r = python_package_ok(&db.conninfo(), &["pg-check"]).await;
    assert!(r.stdout.contains("Schema is complete"), "{}", r.stdout);
    let mut f = Fleet::on(db, &db.conninfo()).await;
    let lags = python_trip_reaches_rust(&mut f, 1).await;
    let took = rust_trip_reaches_python(&mut f).await;
    // Neither side's writes disturbed the other's checks.
    ok(&db.conninfo(), &["check"]).await;
    python_package_ok(&db.conninfo(), &["pg-check"]).await;
    eprintln!(
        "MEASURED {test}: {}; Python's next check after the Rust trip took {took:.1} ms",
        summary(&lags)
    );
}

/// A Python trip is rejected by an already listening Rust instance within 50 ms of its commit.
#[tokio::test]
async fn python_trip_is_rejected_by_a_listening_rust_instance_within_50_ms() {
    let db = test_db().await;
    ok(&db.conninfo(), &["setup", "--yes"]).await;
    let mut f = Fleet::on(&db, &db.conninfo()).await;
    let lags = python_trip_reaches_rust(&mut f, 5).await;
    eprintln!(
        "MEASURED python_trip_is_rejected_by_a_listening_rust_instance_within_50_ms: {}",
        summary(&lags)
    );
}

/// A Rust trip is rejected by a running Python process on its next check.
#[tokio::test]
async fn rust_trip_is_rejected_by_python_on_its_next_check() {
    let db = test_db().await;
    ok(&db.conninfo(), &["setup", "--yes"]).await;
    let mut f = Fleet::on(&db, &db.conninfo()).await;
    let took = rust_trip_reaches_python(&mut f).await;
    eprintln!(
        "MEASURED rust_trip_is_rejected_by_python_on_its_next_check: the check took {took:.1} ms"
    );
}

/// Python's HALF_OPEN and close reach the Rust instances; a Rust half-open round and close reach
/// Python (a deleted row does not).
#[tokio::test]
async fn recovery_crosses_between_python_and_rust() {
    let db = test_db().await;
    ok(&db.conninfo(), &["setup", "--yes"]).await;
    let mut f = Fleet::on(&db, &db.conninfo()).await;
    python_recovery_reaches_rust(&mut f).await;
    rust_half_open_reaches_python(&mut f).await;
    rust_close_reaches_python(&mut f).await;
    delete_reaches_rust_but_not_python(&mut f).await;
}

/// A role that owns nothing, given by `setup` the rights its `flags` name (`--grant-python`,
/// `--grant-operator`, `--grant-to`, each for this role).
async fn granted(db: &TestDb, flags: &[&str]) -> crate::support::TestRole {
    let role = db.role(&[]).await;
    let name = role.name().to_owned();
    let mut args = vec!["setup", "--yes"];
    for flag in flags {
        args.extend([*flag, name.as_str()]);
    }
    ok(&db.conninfo(), &args).await;
    role
}

/// All of the above with Python and Rust on a role that owns nothing, granted by `setup
/// --grant-python` (the package writes the table) and `--grant-operator` (a Rust instance closes
/// a key by override): no Python write is refused or lost.
#[tokio::test]
async fn on_a_role_that_owns_nothing_python_and_rust_see_each_other() {
    let db = test_db().await;
    let role = granted(&db, &["--grant-python", "--grant-operator"]).await;
    let name = role.name().to_owned();
    ok(&db.conninfo(), &["check", "--role", &name]).await;
    let admin = db.client().await;
    let owns: bool = admin
        .query_one(
            "SELECT pg_has_role($1, relowner, 'USAGE') FROM pg_class \
             WHERE oid = 'public.rc_circuit_breakers'::regclass",
            &[&name],
        )
        .await
        .expect("asks")
        .get(0);
    assert!(!owns, "the role must own nothing");
    // The Python package agrees the grant is what its runtime needs.
    python_package_ok(&db.conninfo(), &["pg-check", "--role", &name]).await;

    let mut f = Fleet::on(&db, &db.conninfo_as(&role)).await;
    let lags = python_trip_reaches_rust(&mut f, 3).await;
    let took = rust_trip_reaches_python(&mut f).await;
    python_recovery_reaches_rust(&mut f).await;
    rust_half_open_reaches_python(&mut f).await;
    rust_close_reaches_python(&mut f).await;
    eprintln!(
        "MEASURED on_a_role_that_owns_nothing_python_and_rust_see_each_other: {}; Python's next \
         check after the Rust trip took {took:.1} ms",
        summary(&lags)
    );
}

/// `config --mode forced-open` holds a service on the Python package too: its row is OPEN with
/// the hold's far end, so the package rejects every call, even past its own short cooldown (it
/// would otherwise probe), and `--mode normal` lets its calls through again.
#[tokio::test]
async fn a_python_service_obeys_forced_open() {
    let db = test_db().await;
    ok(&db.conninfo(), &["setup", "--yes"]).await;
    let mut f = Fleet::on(&db, &db.conninfo()).await;
    let key = unique_key("py-forced");
    let cooldown = Duration::from_millis(300);
    f.py.policy(&key, cooldown, None).await;
    assert_eq!(f.py.call(&key, false).await["outcome"], "ok");
    ok(&db.conninfo(), &["config", &key, "--mode", "forced-open"]).await;
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "rejected", "forced open: {a}");
    assert_eq!(a["writes"], json!([]), "{a}");
    // Past the package's own cooldown: a key it had opened itself would now be probed.
    tokio::time::sleep(cooldown + Duration::from_millis(100)).await;
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "rejected", "still forced open: {a}");
    assert_eq!(a["status"], "OPEN", "{a}");
    let row = f.py.read(&key).await;
    assert_eq!(row["state"], "OPEN", "{row}");
    let left = ms(epoch(&row["open_until"]), SystemTime::now());
    assert!(
        left > 365.0 * 24.0 * 3600.0 * 1e3,
        "the package reads the hold's far end: {left} ms left"
    );
    ok(&db.conninfo(), &["config", &key, "--mode", "normal"]).await;
    let a = f.py.call(&key, false).await;
    assert_eq!(a["outcome"], "ok", "normal again: {a}");
    assert_eq!(f.row(&key).await.0, "CLOSED");
}

/// The Python package's own writes on a group's members: its trip of a member is counted in the
/// group's state that every instance holds (the group opening as a whole at a third), and its
/// trip of a second member past the cap is refused by the database, recorded, and leaves the
/// counts as they were; its close of the first is counted out again. On a role that owns
/// nothing, granted the Python package's and an instance's rights.
#[tokio::test]
async fn a_python_service_on_a_groups_members_is_capped_and_counted() {
    let db = test_db().await;
    let role = granted(&db, &["--grant-python", "--grant-to"]).await;
    let mut f = Fleet::on(&db, &db.conninfo_as(&role)).await;
    let group_name = unique_key("py-group");
    let group = f
        .rust
        .group(&group_name)
        .max_open(Ratio::new(1, 3))
        .open_at(Ratio::new(1, 3))
        .join(["host-0", "host-1", "host-2"])
        .await
        .expect("joins");
    let seen = |open: u32| {
        let group = &group;
        async move { crate::support::eventually(WAIT, || async { group.state().open == open }).await }
    };
    let first = group.key("host-0");
    f.py.policy(&first, Duration::from_secs(60), None).await;
    f.py.call(&first, true).await;
    assert_eq!(f.row(&first).await.0, "OPEN");
    assert!(
        seen(1).await,
        "the Python trip is counted: {:?}",
        group.state()
    );
    assert!(
        group.is_open(),
        "a third of the members open: the group is OPEN"
    );

    let second = group.key("host-1");
    f.py.policy(&second, Duration::from_secs(60), None).await;
    f.py.call(&second, true).await;
    let refused: Vec<String> = f
        .admin
        .query(
            "SELECT resource_key FROM public.rc_changes WHERE kind = 'group' AND resource_key = $1",
            &[&second],
        )
        .await
        .expect("reads the change log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Recorded once per refused statement (the package may write the row more than once).
    assert!(!refused.is_empty(), "the refusal is recorded");
    let state: Option<String> = f
        .admin
        .query_opt(
            "SELECT state FROM public.rc_circuit_breakers WHERE resource_key = $1",
            &[&second],
        )
        .await
        .expect("reads the table")
        .map(|r| r.get(0));
    assert_ne!(
        state.as_deref(),
        Some("OPEN"),
        "the cap held the Python trip"
    );
    assert_eq!(group.state().open, 1);

    f.admin
        .query(
            "SELECT * FROM public.rc_force('default', $1, 'CLOSED', 0)",
            &[&first],
        )
        .await
        .expect("an operator closes the first");
    assert!(seen(0).await, "counted out: {:?}", group.state());
    assert!(!group.is_open());
}
