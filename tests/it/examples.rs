//! Every example that ends by itself, run as a user would, against a fresh test database, so that
//! none of them rots: exit status 0, the lines that show its scenario, and no rows left behind.
//!
//! The examples are built once per test process with `cargo build --examples --all-features`
//! (the cargo that built this binary, in its profile; the target directory comes from
//! `CARGO_TARGET_DIR` or cargo's configuration, as for the outer build), which is a no-op when
//! `cargo test --all-targets` built them already and builds them when this module runs alone.
//! They then run directly, each with only `RC_DB_DSN` (and what a test adds) among the `RC_*`
//! variables. `prometheus` serves forever and is left to `tests/metrics_scrape.rs`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::support::{test_db, Cluster, TestDb};

const CLI: &str = env!("CARGO_BIN_EXE_resilient-circuit");
/// An example ends within a few seconds; this bounds a hung one.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Building every example from scratch on a 2-core machine.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The executables of every example, by name, built once per process.
async fn examples() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceCell<HashMap<String, PathBuf>> = OnceCell::const_new();
    BUILT.get_or_init(build_examples).await
}

async fn build_examples() -> HashMap<String, PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--examples",
        "--all-features",
        "--message-format=json",
    ])
    .arg("--manifest-path")
    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
    .stdin(Stdio::null())
    .kill_on_drop(true);
    // The profile this test binary was built with: <target>/<profile dir>/deps/it-<hash>.
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    if profile_dir == "release" {
        cmd.arg("--release");
    }
    let out = tokio::time::timeout(BUILD_LIMIT, cmd.output())
        .await
        .expect("the examples build in time")
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo build --examples failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut built = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_example = msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"));
        if let (true, Some(name), Some(exe)) = (
            is_example,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            built.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    built
}

/// What one run printed.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and that stdout holds each of `lines`.
    fn shows(&self, lines: &[&str]) {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        for line in lines {
            assert!(
                self.stdout.contains(line),
                "missing {line:?} in stdout:\n{}\nstderr:\n{}",
                self.stdout,
                self.stderr
            );
        }
    }
}

/// Runs example `name` with `vars` as its only `RC_*` variables.
async fn run(name: &str, vars: &[(&str, &str)]) -> Run {
    let exe = examples()
        .await
        .get(name)
        .unwrap_or_else(|| panic!("no example {name} was built"));
    let mut cmd = Command::new(exe);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RC_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("example {name} did not end within {RUN_LIMIT:?}"))
        .expect("the example runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Applies the schema to the database of `dsn` with `resilient-circuit setup`, as an operator would.
async fn setup(dsn: &str) {
    let out = Command::new(CLI)
        .args(["setup", "--yes"])
        .env("RC_DB_DSN", dsn)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("the command runs");
    assert!(
        out.status.success(),
        "setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh database with the schema applied by `resilient-circuit setup`.
async fn set_up() -> TestDb {
    let db = test_db().await;
    setup(&db.conninfo()).await;
    db
}

/// Runs example `name` against `db` (RC_DB_DSN only).
async fn run_on(name: &str, db: &TestDb) -> Run {
    run(name, &[("RC_DB_DSN", db.conninfo().as_str())]).await
}

/// Rows the examples left in their namespaces (they delete them at the end).
async fn leftovers(db: &TestDb) -> i64 {
    leftovers_in(&db.client().await).await
}

/// [`leftovers`] through `client`, a connection to the examples' database.
async fn leftovers_in(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM rc_circuit_breakers WHERE namespace LIKE 'example-%'",
            &[],
        )
        .await
        .expect("counts")
        .get(0)
}

#[tokio::test]
async fn one_service_many_instances() {
    let db = set_up().await;
    run_on("one_service_many_instances", &db).await.shows(&[
        "[ok] pod-1 ran 10 calls that failed and opened its breaker",
        "[ok] pods 2-5 are OPEN",
        "[ok] the row in rc_circuit_breakers is OPEN",
        "[ok] pods 2-5 sent the Stripe API nothing",
        "[ok] pod-6 is OPEN before its first call",
        "[ok] the new pod-1 is OPEN with the fleet's cooldown left",
        "checks passed",
    ]);
    assert_eq!(leftovers(&db).await, 0);
}

#[tokio::test]
async fn services_sharing_a_key() {
    let db = set_up().await;
    run_on("services_sharing_a_key", &db).await.shows(&[
        "[ok] order-service opened its breaker",
        "[ok] payment-service is OPEN",
        "[ok] user-service is OPEN",
        "[ok] the table holds one row for external_fraud_check_api",
        "[ok] the staging payment-service is still CLOSED and its call ran",
        "checks passed",
    ]);
    assert_eq!(leftovers(&db).await, 0);
}

#[tokio::test]
async fn local_and_shared_keys() {
    let db = set_up().await;
    run_on("local_and_shared_keys", &db).await.shows(&[
        "[ok] local_cache_pod-a is OPEN on pod-a",
        "[ok] and nowhere else: no row for it in PostgreSQL",
        "[ok] pod-b follows",
        "[ok] pod-b's local cache is unaffected",
        "checks passed",
    ]);
    assert_eq!(leftovers(&db).await, 0);
}

#[tokio::test]
async fn serverless() {
    let db = set_up().await;
    let r = run_on("serverless", &db).await;
    r.shows(&[
        "[ok] invocation 5: ran and the breaker is OPEN",
        "[ok] invocation 5's trip is in the table when it returns",
        "[ok] invocation 8: rejected and the breaker is OPEN",
        "[ok] invocation 9: probe ran and the breaker is CLOSED",
        "[ok] invocation 12: ran and the breaker is CLOSED",
        "serverless: cold start, connect: min ",
        "serverless: cold start, connect + first decision: min ",
        "serverless: warm (storage kept across invocations), first decision: min ",
        "checks passed",
    ]);
    for line in r.stdout.lines().filter(|l| l.starts_with("serverless: ")) {
        eprintln!("MEASURED {line}");
    }
    assert_eq!(leftovers(&db).await, 0);
}

/// The T0–T4 timeline, with the schema made by the example itself (`RC_DB_AUTO_CREATE=1`, as its
/// docs say to run it).
#[tokio::test]
async fn timeline() {
    let db = test_db().await;
    let dsn = db.conninfo();
    run(
        "timeline",
        &[("RC_DB_DSN", dsn.as_str()), ("RC_DB_AUTO_CREATE", "1")],
    )
    .await
    .shows(&[
        "[ok] T0: all instances are CLOSED",
        "[ok] T1: instance 1 is OPEN",
        "[ok] T2: instance 2 rejects the call without executing it",
        "[ok] T3: while its probe runs, instance 3 and the row are HALF_OPEN",
        "[ok] T4: the row and all instances are CLOSED",
        "checks passed",
    ]);
    assert_eq!(leftovers(&db).await, 0);
}

/// The quickstart, in memory (no `RC_DB_*`) and on PostgreSQL.
#[tokio::test]
async fn quickstart() {
    let lines = [
        "-> OPEN",
        "REJECTED, did not run",
        "HALF_OPEN",
        "done, final state CLOSED",
    ];
    let r = run("quickstart", &[]).await;
    r.shows(&lines);
    assert!(r.stdout.contains("storage: in-memory"), "{}", r.stdout);
    let db = set_up().await;
    let r = run_on("quickstart", &db).await;
    r.shows(&lines);
    assert!(r.stdout.contains("storage: postgres"), "{}", r.stdout);
}

/// The far region follows a real streaming replica by polling; its trip crosses to the primary.
#[tokio::test]
async fn multi_region() {
    let primary = Cluster::start().await;
    let db = primary.create_db().await;
    setup(&primary.conninfo(&db)).await;
    let standby = Cluster::standby_of(&primary).await;
    let replica = format!("host=127.0.0.1 port={}", standby.port());
    let r = run(
        "multi_region",
        &[
            ("RC_DB_DSN", primary.conninfo(&db).as_str()),
            ("EXAMPLE_REPLICA_DSN", replica.as_str()),
        ],
    )
    .await;
    r.shows(&[
        "eu-west pods follow the replica at",
        "[ok] all four pods follow the fleet",
        "[ok] the far region followed within the poll interval plus the replication lag",
        "[ok] eu-west-1/pod-a rejects its call",
        "[ok] every pod in both regions is CLOSED again",
        "[ok] the eu-west trip went to the primary",
        "[ok] the primary's row is OPEN",
        "checks passed",
    ]);
    assert_eq!(leftovers_in(&primary.client(&db).await).await, 0);
}

/// Without `RC_DB_*` the fleet examples say what to set, with exit status 2.
#[tokio::test]
async fn fleet_examples_need_the_database_settings() {
    for name in [
        "one_service_many_instances",
        "services_sharing_a_key",
        "local_and_shared_keys",
        "serverless",
        "timeline",
        "multi_region",
    ] {
        let r = run(name, &[]).await;
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("Set RC_DB_DSN"), "{name}: {}", r.stderr);
    }
}
