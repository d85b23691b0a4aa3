//! Tests of the test support code itself (tests/support).

use crate::support;

use std::time::{Duration, Instant};

use support::{eventually, test_db, unique_key, Cluster, Mode, Proxy};
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};

async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn db_exists(client: &Client, name: &str) -> bool {
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .expect("querying pg_database failed");
    row.get::<_, i64>(0) == 1
}

async fn select_one(client: &Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client.query_one("SELECT 1", &[]).await?.get(0))
}

/// Two test_db()s are distinct databases, reachable by conninfo and URL, and each is gone from pg_database once dropped.
#[tokio::test]
async fn test_dbs_are_distinct_and_dropped() {
    let a = test_db().await;
    let b = test_db().await;
    assert_ne!(a.name(), b.name());

    let via_conninfo = connect(&a.conninfo())
        .await
        .expect("connecting with TestDb::conninfo failed");
    let via_url = connect(&a.url())
        .await
        .expect("connecting with TestDb::url failed");
    let current: String = via_url
        .query_one("SELECT current_database()", &[])
        .await
        .expect("SELECT current_database() failed")
        .get(0);
    assert_eq!(current, a.name());

    via_conninfo
        .batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .expect("creating a table in db a failed");
    let in_b: i64 = b
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'",
            &[],
        )
        .await
        .expect("looking for the table in db b failed")
        .get(0);
    assert_eq!(in_b, 0, "a table created in db a shows up in db b");

    assert!(db_exists(&via_conninfo, b.name()).await);
    let b_name = b.name().to_owned();
    drop(b);
    assert!(
        !db_exists(&via_conninfo, &b_name).await,
        "database {b_name} still exists after its TestDb was dropped"
    );

    // Dropping works even with connections still open (WITH (FORCE)).
    let a_name = a.name().to_owned();
    drop(a);
    let c = test_db().await;
    assert!(
        !db_exists(&c.client().await, &a_name).await,
        "database {a_name} still exists after its TestDb was dropped"
    );
    assert!(
        via_conninfo.is_closed() || select_one(&via_conninfo).await.is_err(),
        "a connection to a dropped database still works"
    );
}

/// A Cluster starts and serves queries; stop() makes connections fail; start_again() serves again on the same port; drop removes it.
#[tokio::test]
async fn cluster_stops_and_starts_again() {
    let cluster = Cluster::start().await;
    let db = cluster.create_db().await;
    let client = cluster.client(&db).await;
    assert_eq!(select_one(&client).await.expect("SELECT 1 on cluster"), 1);

    cluster.stop().await;
    assert!(
        select_one(&client).await.is_err(),
        "a query on a stopped cluster succeeded"
    );
    assert!(
        connect(&cluster.conninfo(&db)).await.is_err(),
        "connecting to a stopped cluster succeeded"
    );

    let started = Instant::now();
    cluster.start_again().await;
    eprintln!("start_again took {:?}", started.elapsed());
    let again = connect(&cluster.url(&db))
        .await
        .expect("connecting after start_again failed");
    assert_eq!(select_one(&again).await.expect("SELECT 1 after restart"), 1);

    cluster.restart().await;
    assert!(select_one(&again).await.is_err());
    let test_db = cluster.test_db().await;
    assert_eq!(
        select_one(&test_db.client().await).await.expect("SELECT 1"),
        1
    );
    drop(test_db);

    let dir = cluster
        .data_dir()
        .parent()
        .expect("data dir has a parent")
        .to_owned();
    let conninfo = cluster.conninfo("postgres");
    drop(cluster);
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    assert!(
        connect(&conninfo).await.is_err(),
        "the cluster still answers after drop"
    );
}

/// Not a test by itself: run by `cluster_is_cleaned_up_at_process_exit` in a child process.
#[tokio::test]
#[ignore = "helper run in a child process"]
async fn cluster_exit_child() {
    if std::env::var_os("RC_HARNESS_CHILD").is_none() {
        return;
    }
    let cluster = Cluster::start().await;
    println!(
        "CHILD_CLUSTER {} {}",
        cluster.port(),
        cluster.data_dir().display()
    );
    // Never dropped: only the process-exit watchdog can clean it up.
    std::mem::forget(cluster);
}

/// A Cluster that is never dropped (like the shared fallback one) is stopped and deleted after its process exits.
#[tokio::test]
async fn cluster_is_cleaned_up_at_process_exit() {
    let exe = std::env::current_exe().expect("current_exe failed");
    let out = tokio::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "harness::cluster_exit_child",
            "--nocapture",
        ])
        .env("RC_HARNESS_CHILD", "1")
        .output()
        .await
        .expect("running the child test process failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CHILD_CLUSTER "))
        .unwrap_or_else(|| panic!("child printed no CHILD_CLUSTER line: {stdout}"));
    let (port, data) = line.split_once(' ').expect("CHILD_CLUSTER <port> <dir>");
    let data = std::path::PathBuf::from(data);
    let process_dir = data
        .parent()
        .and_then(|p| p.parent())
        .expect("data dir is <process dir>/c<n>/data")
        .to_owned();
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let cleaned = eventually(Duration::from_secs(15), || {
        let process_dir = process_dir.clone();
        let conninfo = conninfo.clone();
        async move { !process_dir.exists() && connect(&conninfo).await.is_err() }
    })
    .await;
    assert!(
        cleaned,
        "child's cluster (port {port}, {}) still there 15 s after the child exited",
        process_dir.display()
    );
}

/// The Proxy forwards queries in Pass mode and counts the connections it accepts.
#[tokio::test]
async fn proxy_passes_traffic_and_counts_connections() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    assert_eq!(proxy.connections(), 0);
    let first = connect(&db.conninfo_via(proxy.addr()))
        .await
        .expect("connecting through the proxy failed");
    assert_eq!(select_one(&first).await.expect("SELECT 1 via proxy"), 1);
    let second = connect(&db.url_via(proxy.addr()))
        .await
        .expect("second connection through the proxy failed");
    assert_eq!(select_one(&second).await.expect("SELECT 1 via proxy"), 1);
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.open_connections(), 2);
    drop(first);
    assert!(
        eventually(Duration::from_secs(2), || async {
            proxy.open_connections() == 1
        })
        .await,
        "closing a client did not close its proxied connection"
    );
}

/// Cut makes an established connection fail within a second, refuses new ones, and Pass lets new ones through again.
#[tokio::test]
async fn proxy_cut_breaks_connections() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let client = db.config_via(proxy.addr()).connect(NoTls).await;
    let (client, connection) = client.expect("connecting through the proxy failed");
    let driver = tokio::spawn(connection);
    assert_eq!(select_one(&client).await.expect("SELECT 1 before cut"), 1);

    let cut_at = Instant::now();
    proxy.set_mode(Mode::Cut);
    let ended = timeout(Duration::from_secs(1), driver)
        .await
        .expect("the connection was still alive 1 s after Cut")
        .expect("connection task panicked");
    assert!(
        ended.is_err(),
        "connection ended cleanly instead of failing"
    );
    assert!(select_one(&client).await.is_err());
    eprintln!("cut noticed after {:?}", cut_at.elapsed());

    let refused = timeout(
        Duration::from_secs(2),
        connect(&db.conninfo_via(proxy.addr())),
    )
    .await
    .expect("a connection attempt during Cut hung");
    assert!(refused.is_err(), "a new connection succeeded during Cut");

    proxy.set_mode(Mode::Pass);
    let again = connect(&db.conninfo_via(proxy.addr()))
        .await
        .expect("connecting after Cut -> Pass failed");
    assert_eq!(select_one(&again).await.expect("SELECT 1 after cut"), 1);
    assert_eq!(proxy.connections(), 3);
}

/// Blackhole makes queries and new connections hang; back in Pass, the swallowed connection is reset and new ones work.
#[tokio::test]
async fn proxy_blackhole_hangs() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let client = connect(&db.conninfo_via(proxy.addr()))
        .await
        .expect("connecting through the proxy failed");
    assert_eq!(select_one(&client).await.expect("SELECT 1 before"), 1);

    proxy.set_mode(Mode::Blackhole);
    assert!(
        timeout(Duration::from_millis(500), select_one(&client))
            .await
            .is_err(),
        "a query through the black hole did not hang"
    );
    assert!(
        timeout(
            Duration::from_millis(500),
            connect(&db.conninfo_via(proxy.addr()))
        )
        .await
        .is_err(),
        "a connection attempt through the black hole did not hang"
    );
    assert!(!client.is_closed(), "the black-holed connection was closed");

    proxy.set_mode(Mode::Pass);
    assert!(
        eventually(Duration::from_secs(2), || async { client.is_closed() }).await,
        "the black-holed connection was not reset after Pass"
    );
    let again = connect(&db.conninfo_via(proxy.addr()))
        .await
        .expect("connecting after Blackhole -> Pass failed");
    assert_eq!(select_one(&again).await.expect("SELECT 1 after"), 1);
}

/// Delay(d) makes a SELECT 1 round trip take at least 2*d, and Pass removes it.
#[tokio::test]
async fn proxy_delay_adds_latency() {
    let db = test_db().await;
    let proxy = Proxy::start(db.addr()).await;
    let client = connect(&db.conninfo_via(proxy.addr()))
        .await
        .expect("connecting through the proxy failed");
    select_one(&client).await.expect("warm-up SELECT 1");

    let delay = Duration::from_millis(100);
    proxy.set_mode(Mode::Delay(delay));
    let started = Instant::now();
    select_one(&client).await.expect("delayed SELECT 1");
    let delayed = started.elapsed();
    assert!(
        delayed >= 2 * delay,
        "round trip took {delayed:?}, expected >= {:?}",
        2 * delay
    );
    assert!(
        delayed < Duration::from_secs(2),
        "round trip took {delayed:?}"
    );

    // The best of three, so that a loaded machine does not fail the test.
    proxy.set_mode(Mode::Pass);
    let mut fast = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        select_one(&client).await.expect("SELECT 1 after Pass");
        fast = fast.min(started.elapsed());
    }
    assert!(fast < delay, "round trip still took {fast:?} after Pass");
}

/// unique_key never repeats, and eventually() returns true once the condition holds and false at the timeout.
#[tokio::test]
async fn unique_key_and_eventually() {
    let keys: std::collections::HashSet<String> = (0..1000).map(|_| unique_key("k")).collect();
    assert_eq!(keys.len(), 1000);
    assert!(keys.iter().all(|k| k.starts_with("k-")));

    let started = Instant::now();
    let ready_at = started + Duration::from_millis(100);
    assert!(
        eventually(Duration::from_secs(2), || async {
            Instant::now() >= ready_at
        })
        .await
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    let started = Instant::now();
    assert!(!eventually(Duration::from_millis(100), || async { false }).await);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
        "eventually gave up after {waited:?}"
    );
}
