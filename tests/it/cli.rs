//! The `resilient-circuit` command, end to end: the built binary against a fresh database.

use std::process::Stdio;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::support::breakers::Watched;
use crate::support::{eventually, test_db, unique_key, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_resilient-circuit");
use crate::support::WAIT;

/// What one run printed.
pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The command with `dsn` in `RC_DB_DSN` and no other RC_* variable.
pub(crate) fn command(dsn: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RC_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RC_DB_DSN", dsn)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

pub(crate) async fn run(dsn: &str, args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), command(dsn, args).output())
        .await
        .expect("the command ends")
        .expect("the command runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs and expects exit 0.
pub(crate) async fn ok(dsn: &str, args: &[&str]) -> Run {
    let r = run(dsn, args).await;
    assert_eq!(
        r.code, 0,
        "{args:?} failed\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    r
}

async fn set_up(db: &TestDb) {
    ok(&db.conninfo(), &["setup", "--yes"]).await;
}

fn instance_options(conninfo: &str) -> PostgresOptions {
    PostgresOptions::from_dsn(conninfo)
        .expect("test conninfo parses")
        .strict(true)
}

async fn row_count(db: &TestDb, key: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM public.rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("counts")
        .get(0)
}

/// On an empty database `check` reports the schema and the triggers as problems and names the
/// fix; asked about a role too, it names the grant that role needs.
#[tokio::test]
async fn check_fails_on_an_empty_database_and_names_the_fix() {
    let db = test_db().await;
    let r = run(&db.conninfo(), &["check"]).await;
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("PROBLEM schema: table public.rc_schema_migrations does not exist"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("PROBLEM trigger rc_notify_insert on public.rc_circuit_breakers"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("fix: resilient-circuit setup"),
        "{}",
        r.stderr
    );
    // The Python package's name answers too.
    assert_eq!(run(&db.conninfo(), &["pg-check"]).await.code, 1);

    let role = db.role(&[]).await;
    let r = run(&db.conninfo(), &["check", "--role", role.name()]).await;
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "fix: resilient-circuit setup --grant-to {}",
            role.name()
        )),
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

#[tokio::test]
async fn setup_then_check_succeed() {
    let db = test_db().await;
    let r = ok(&db.conninfo(), &["pg-setup", "--yes"]).await;
    assert!(r.stdout.contains("setup complete"), "{}", r.stdout);
    let r = ok(&db.conninfo(), &["check"]).await;
    assert!(r.stdout.contains("the database is ready"), "{}", r.stdout);
    assert!(!r.stdout.contains("MISSING"), "{}", r.stdout);
    assert!(!r.stdout.contains("PROBLEM"), "{}", r.stdout);
    // Idempotent.
    let r = ok(&db.conninfo(), &["setup", "--yes"]).await;
    assert!(
        r.stdout
            .contains("every migration and object was applied already"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn setup_without_yes_off_a_terminal_is_refused() {
    let db = test_db().await;
    let r = run(&db.conninfo(), &["setup"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert_eq!(
        run(&db.conninfo(), &["check"]).await.code,
        1,
        "nothing applied"
    );
}

#[tokio::test]
async fn setup_dry_run_changes_nothing() {
    let db = test_db().await;
    let role = db.role(&[]).await;
    let r = ok(
        &db.conninfo(),
        &["setup", "--dry-run", "--grant-to", role.name()],
    )
    .await;
    assert!(r
        .stdout
        .contains("CREATE TABLE IF NOT EXISTS public.rc_circuit_breakers"));
    let to = format!("TO \"{}\";", role.name());
    for grant in [
        "GRANT SELECT ON public.rc_circuit_breakers",
        "GRANT EXECUTE ON FUNCTION public.rc_notify_secret()",
        "GRANT EXECUTE ON FUNCTION public.rc_trip_many(text,text[],bigint[],integer[],jsonb[],bigint[])",
    ] {
        assert!(
            r.stdout.contains(&format!("{grant} {to}")),
            "{grant} {to}:\n{}",
            r.stdout
        );
    }
    let grants = r
        .stdout
        .split_once(&format!("-- \"{}\" as instance\n", role.name()))
        .map(|(_, grants)| grants)
        .unwrap_or_else(|| panic!("a section of the role's grants:\n{}", r.stdout));
    assert!(
        grants.lines().all(|l| l.starts_with("GRANT ")
            && !l.starts_with("GRANT INSERT")
            && !l.contains("rc_force")),
        "an instance writes no table and decrees nothing:\n{grants}"
    );
    let exists: bool = db
        .client()
        .await
        .query_one(
            "SELECT to_regclass('public.rc_schema_migrations') IS NOT NULL \
                 OR to_regclass('public.rc_circuit_breakers') IS NOT NULL",
            &[],
        )
        .await
        .expect("queries")
        .get(0);
    assert!(!exists, "a dry run created tables");
    assert_eq!(run(&db.conninfo(), &["check"]).await.code, 1);
}

/// The grant `setup --grant-to` gives is all an instance needs: on a role that owns nothing it
/// connects, trips, leases a probe from the database and reports it; forcing a state takes an
/// operator's grant (`--grant-operator`), which `check` then expects of the role too.
#[tokio::test]
async fn setup_grant_to_is_enough_for_an_instance() {
    let db = test_db().await;
    set_up(&db).await;
    let role = db.role(&[]).await;
    let name = role.name().to_owned();
    let r = run(&db.conninfo(), &["check", "--role", &name]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!("--grant-to {name}")),
        "{}",
        r.stderr
    );

    let r = ok(&db.conninfo(), &["setup", "--yes", "--grant-to", &name]).await;
    assert!(
        r.stdout
            .contains(&format!("granted \"{name}\" the rights of instance")),
        "{}",
        r.stdout
    );
    ok(&db.conninfo(), &["check", "--role", &name]).await;

    let storage = Storage::connect_with(instance_options(&db.conninfo_as(&role)))
        .await
        .expect("an instance on the granted role connects");
    let key = unique_key("granted");
    let mut watched = Watched::new(&storage, &key, |b| {
        b.failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(300))
    });
    let cb = watched.cb.clone();
    let _ = cb.call(|| async { Err::<(), _>("down") }).await;
    assert!(eventually(WAIT, || async { storage.pending_publications() == 0 }).await);
    let admin = db.client().await;
    let state: String = admin
        .query_one(
            "SELECT state::text FROM public.rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("the trip reached the table")
        .get(0);
    assert_eq!(state, "OPEN");

    let probe = loop {
        match cb.acquire().await {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(probe.is_probe());
    let leases: i64 = admin
        .query_one(
            "SELECT count(*) FROM public.rc_probe_leases WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("counts")
        .get(0);
    assert_eq!(leases, 1, "the probe was leased from the database");
    probe.success();
    assert!(
        watched.reaches(State::Closed).await,
        "the probe's report closed it"
    );
    assert!(eventually(WAIT, || async { storage.pending_publications() == 0 }).await);
    assert_eq!(
        crate::support::breakers::row_state(&admin, &key)
            .await
            .as_deref(),
        Some("CLOSED"),
        "the report reached the table"
    );

    let refused = cb
        .force_open_confirmed(Duration::from_secs(600))
        .await
        .expect_err("an instance does not force");
    assert_eq!(refused.sqlstate(), Some("42501"), "{refused}");
    ok(
        &db.conninfo(),
        &["setup", "--yes", "--grant-operator", &name],
    )
    .await;
    ok(&db.conninfo(), &["check", "--role", &name]).await;
    cb.force_open_confirmed(Duration::from_secs(600))
        .await
        .expect("an operator may force");
    cb.force_closed_confirmed().await.expect("and close");
    assert!(!storage.is_degraded());
}

#[tokio::test]
async fn status_shows_a_trip_as_text_and_json() {
    let db = test_db().await;
    set_up(&db).await;
    let storage = Storage::connect_with(instance_options(&db.app_conninfo().await))
        .await
        .expect("connects");
    let key = unique_key("status");
    let cb = CircuitBreaker::builder(&key)
        .storage(storage.clone())
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_secs(120))
        .build()
        .expect("valid");
    let _ = cb.call(|| async { Err::<(), _>("down") }).await;
    assert!(eventually(WAIT, || async { storage.pending_publications() == 0 }).await);

    let r = ok(&db.conninfo(), &["status"]).await;
    let header = r.stdout.lines().next().expect("a header");
    assert!(header.starts_with("KEY"), "{}", r.stdout);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&key))
        .unwrap_or_else(|| panic!("no line for {key}:\n{}", r.stdout));
    assert!(line.contains("OPEN"), "{line}");
    assert!(!line.contains('\x1b'), "no colour off a terminal: {line:?}");
    // Aligned: the STATE column starts where its header does.
    assert_eq!(header.find("STATE"), line.find("OPEN"), "{}", r.stdout);

    let r = ok(&db.conninfo(), &["status", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["namespace"], "default");
    let b = &v["breakers"][0];
    assert_eq!(b["key"], key.as_str());
    assert_eq!(b["state"], "OPEN");
    assert!(b["failure_count"].is_i64());
    let secs = b["half_open_in_seconds"].as_f64().expect("seconds");
    assert!(secs > 60.0 && secs <= 120.0, "{secs}");
    assert!(b["version"].as_i64().expect("version") > 0);
    assert!(b["updated_at"].as_str().expect("time").ends_with('Z'));

    let r = ok(
        &db.conninfo(),
        &["status", "--json", "--namespace", "elsewhere"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["breakers"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn open_close_delete_reach_a_running_instance() {
    let db = test_db().await;
    set_up(&db).await;
    let storage = Storage::connect_with(instance_options(&db.app_conninfo().await))
        .await
        .expect("connects");
    let key = unique_key("override");
    let mut w = Watched::new(&storage, &key, |b| b);
    assert_eq!(w.cb.state(), State::Closed);

    let r = ok(&db.conninfo(), &["open", &key]).await;
    assert!(r.stdout.contains("until `close`"), "{}", r.stdout);
    assert!(
        w.reaches_within(State::Open, WAIT).await,
        "open reached the instance"
    );
    let r = ok(&db.conninfo(), &["status"]).await;
    assert!(r.stdout.contains("until close"), "{}", r.stdout);

    ok(&db.conninfo(), &["close", &key]).await;
    assert!(
        w.reaches_within(State::Closed, WAIT).await,
        "close reached the instance"
    );

    ok(&db.conninfo(), &["open", &key, "--for", "5m"]).await;
    assert!(w.reaches_within(State::Open, WAIT).await);
    let r = ok(&db.conninfo(), &["delete", &key]).await;
    assert!(r.stdout.contains("deleted"), "{}", r.stdout);
    assert!(
        w.reaches_within(State::Closed, WAIT).await,
        "delete reached the instance"
    );
    assert_eq!(row_count(&db, &key).await, 0);

    let bad = run(&db.conninfo(), &["open", &key, "--for", "soon"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

#[tokio::test]
async fn watch_prints_a_line_per_change() {
    let db = test_db().await;
    set_up(&db).await;
    let mut child = command(&db.conninfo(), &["watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let started = tokio::time::timeout(WAIT, async {
        while let Some(line) = stderr.next_line().await.expect("reads") {
            if line.starts_with("watching") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started.ok(), Some(true), "watch announced itself");

    let key = unique_key("watched");
    ok(&db.conninfo(), &["open", &key, "--for", "30s"]).await;
    let line = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("a line within the wait")
        .expect("reads")
        .expect("a line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 8, "{line}");
    assert!(fields[0].ends_with('Z'), "{line}");
    assert_eq!(&fields[1..4], &["default", key.as_str(), "OPEN"], "{line}");
    let version = crate::support::version_of(&db.client().await, &key).await;
    assert_eq!(fields[4], format!("v{version}"), "{line}");
    assert_eq!(&fields[5..7], &["from=CLOSED", "origin=remote"], "{line}");
    let delay = fields[7]
        .strip_prefix("delay=")
        .and_then(|d| d.strip_suffix("ms"))
        .and_then(|d| d.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("a delay in ms: {line}"));
    assert!((0.0..10_000.0).contains(&delay), "{line}");

    // Back to CLOSED: the same command sees it.
    ok(&db.conninfo(), &["close", &key]).await;
    let line = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("a line within the wait")
        .expect("reads")
        .expect("a line");
    assert!(line.contains(&format!(" {key} CLOSED ")), "{line}");
    assert!(line.contains(" from=OPEN origin=remote "), "{line}");
    child.kill().await.expect("kills watch");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let db = test_db().await;
    assert_eq!(run(&db.conninfo(), &["no-such-command"]).await.code, 2);
    assert_eq!(
        run(&db.conninfo(), &["open"]).await.code,
        2,
        "KEY is required"
    );
    let r = run(&db.conninfo(), &["setup", "--yes", "--grant-to", ""]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("must not be empty"), "{}", r.stderr);
    // Not configured at all.
    let mut cmd = command("", &["status"]);
    cmd.env_remove("RC_DB_DSN");
    let out = cmd.output().await.expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not configured"));
}

#[tokio::test]
async fn a_password_in_the_dsn_is_never_printed() {
    let db = test_db().await;
    let secret = "Hunter2-very-secret";
    // Trust authentication ignores the password, so these connect.
    let dsn = format!("{} password={secret}", db.conninfo());
    let wrong_db = format!("{dsn} dbname=rc_no_such_database_{}", std::process::id());
    let mut outputs = Vec::new();
    for (dsn, args) in [
        (&dsn, &["check"][..]),
        (&dsn, &["setup", "--dry-run"][..]),
        (&dsn, &["setup", "--yes"][..]),
        (&dsn, &["status"][..]),
        (&dsn, &["status", "--json"][..]),
        (&dsn, &["open", "k"][..]),
        (&wrong_db, &["check"][..]),
        (&wrong_db, &["setup"][..]),
    ] {
        let r = run(dsn, args).await;
        outputs.push((args, r));
    }
    // And through --dsn, badly formed.
    let r = run(
        "",
        &["--dsn", &format!("postgres://u:{secret}@[bad/x"), "check"],
    )
    .await;
    outputs.push((&["--dsn"][..], r));
    for (args, r) in &outputs {
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "{args:?} printed the password:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert_ne!(outputs[6].1.code, 0, "a missing database is an error");
}

/// `history` tells what happened to a breaker and why: an instance's trip (with the instance's
/// id and its failures), an operator's override with its note, a plain SQL write (as a Python
/// service makes) by its application name, and a delete; `--since` and `--json` too. The
/// instance and the plain writer log in as the application role.
#[tokio::test]
async fn history_says_who_changed_a_breaker_and_why() {
    let db = test_db().await;
    set_up(&db).await;
    let app = db.app_conninfo().await;
    let storage = Storage::connect_with(instance_options(&app))
        .await
        .expect("connects");
    let key = unique_key("audited");
    let mut watched = Watched::new(&storage, &key, |b| {
        b.failure_limit(Ratio::new(3, 3))
            .cooldown(Duration::from_secs(600))
    });
    for _ in 0..3 {
        let _ = watched.cb.call(|| async { Err::<(), _>("down") }).await;
    }
    assert!(storage.flush(WAIT).await, "the trip is accepted");
    ok(
        &db.conninfo(),
        &["close", &key, "--note", "vendor fixed it, ticket 42"],
    )
    .await;
    assert!(watched.reaches(State::Closed).await);
    let (python, connection) = tokio_postgres::connect(
        &format!("{app} application_name=payments-worker"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connects as the application role");
    tokio::spawn(connection);
    python
        .execute(
            "UPDATE rc_circuit_breakers SET state = 'OPEN', open_until = now() + interval '1 minute' WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("a plain write");
    ok(&db.conninfo(), &["delete", &key]).await;

    let r = ok(&db.conninfo(), &["history", &key]).await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    let instance = format!("{}:", std::process::id());
    assert!(
        lines[0].contains("(new) -> OPEN")
            && lines[0].contains("by instance ")
            && lines[0].contains(&instance)
            && lines[0].contains("; 3 failures of the last 3"),
        "the trip, by this process's instance, with its window: {}",
        lines[0]
    );
    assert!(
        lines[1].contains("OPEN -> CLOSED")
            && lines[1].contains("by resilient-circuit")
            && lines[1].contains("note: vendor fixed it, ticket 42"),
        "the override with its note: {}",
        lines[1]
    );
    assert!(
        lines[2].contains("CLOSED -> OPEN") && lines[2].contains("by payments-worker ("),
        "the plain write, by its application name: {}",
        lines[2]
    );
    assert!(
        lines[3].contains("OPEN -> CLOSED"),
        "the delete: {}",
        lines[3]
    );

    let json = ok(
        &db.conninfo(),
        &["history", &key, "--json", "--since", "1h"],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let changes = v["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 4, "{v}");
    assert_eq!(changes[0]["to"], "OPEN");
    assert_eq!(changes[0]["why"]["failures"], 3);
    assert_eq!(changes[1]["why"]["note"], "vendor fixed it, ticket 42");
    assert_eq!(changes[2]["actor"]["application"], "payments-worker");
    assert!(changes
        .windows(2)
        .all(|w| w[0]["version"].as_i64() < w[1]["version"].as_i64()));
    let none = ok(&db.conninfo(), &["history", "never-used-key"]).await;
    assert!(
        none.stdout.contains("no recorded changes"),
        "{}",
        none.stdout
    );
    let bad = run(&db.conninfo(), &["history", &key, "--since", "0s"]).await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}
