//! Transition calls are prepared once per connection on a session of the instance's own, and
//! sent unnamed (nothing prepared) wherever a pooler may route them to another session: a
//! prepared statement there could be unknown, or another process's statement of the same name.
//! Told apart in the server's log (`log_statement = all`): `execute s…:` for a prepared
//! statement, `execute <unnamed>:` for the other.

use std::time::Duration;

use resilient_circuit::storage::postgres::{Follow, PostgresOptions};
use resilient_circuit::{CircuitBreaker, Storage};

use crate::support::breakers::{fail, trip_fast, Logs};
use crate::support::pgbouncer::{PgBouncer, PoolMode};
use crate::support::{eventually, unique_key, Cluster, WAIT};

/// The trips the server executed for `application`, as (prepared, unnamed) counts.
fn trips_in_log(log: &str, application: &str) -> (usize, usize) {
    let trips = log
        .lines()
        .filter(|l| l.starts_with(&format!("{application}|")) && l.contains("rc_trip_many("));
    trips.fold((0, 0), |(named, unnamed), l| {
        if l.contains("execute <unnamed>:") {
            (named, unnamed + 1)
        } else if l.contains("execute s") {
            (named + 1, unnamed)
        } else {
            (named, unnamed)
        }
    })
}

async fn logged_cluster() -> Cluster {
    Cluster::start_with(&[
        ("log_statement".to_owned(), "all".to_owned()),
        ("log_line_prefix".to_owned(), "%a|".to_owned()),
    ])
    .await
}

/// Trips `keys` fresh keys on `storage`, each its own call, and waits until all are answered.
async fn trip_keys(storage: &Storage, keys: usize) {
    for _ in 0..keys {
        let cb =
            trip_fast(CircuitBreaker::builder(unique_key("prepared")).storage(storage.clone()))
                .build()
                .expect("valid");
        fail(&cb).await;
        assert!(storage.flush(WAIT).await, "the trip is answered");
    }
}

/// A listening instance on the server's own address prepares its calls (after its listener
/// heard another session); a polling one, and one whose address is declared a transaction
/// pooler, send every call unnamed.
#[tokio::test]
async fn calls_are_prepared_only_on_a_session_the_listener_vouched_for() {
    let cluster = logged_cluster().await;
    let db = cluster.test_db().await;
    let conninfo = db.app_conninfo().await;
    let options = |application: &str| {
        PostgresOptions::from_dsn(&format!("{conninfo} application_name={application}"))
            .expect("parses")
    };
    let listening = Storage::connect_with(options("rc-listening"))
        .await
        .expect("connects");
    let polling = Storage::connect_with(options("rc-polling").follow(Follow::Poll))
        .await
        .expect("connects");
    let declared = Storage::connect_with(options("rc-declared").transaction_pooler(true))
        .await
        .expect("connects");
    for s in [&listening, &polling, &declared] {
        trip_keys(s, 3).await;
    }
    let log = cluster.log();
    let (named, unnamed) = trips_in_log(&log, "rc-listening");
    assert!(
        named == 3 && unnamed == 0,
        "the listening instance prepares: {named} prepared, {unnamed} unnamed"
    );
    for application in ["rc-polling", "rc-declared"] {
        let (named, unnamed) = trips_in_log(&log, application);
        assert!(
            named == 0 && unnamed == 3,
            "{application} sends its calls unnamed: {named} prepared, {unnamed} unnamed"
        );
    }
}

/// Everything through pgbouncer in transaction mode, without saying so: the listener finds
/// itself deaf, so the instance never prepares a call (no server refuses one, nothing warns of
/// it, and no statement of another instance could be run in its place); several instances'
/// trips through three server connections are all answered.
#[tokio::test]
async fn an_undeclared_transaction_pooler_gets_no_prepared_statement() {
    let (logs, _guard) = Logs::capture();
    let cluster = logged_cluster().await;
    let db = cluster.create_db().await;
    let app = cluster.app_role(&db).await;
    let bouncer = PgBouncer::start(cluster.addr(), PoolMode::Transaction, &[app.name()], 3).await;
    let mut storages = Vec::new();
    for i in 0..4 {
        let dsn = format!(
            "{} application_name=rc-bounced-{i}",
            app.conninfo_via(bouncer.addr())
        );
        let opts = PostgresOptions::from_dsn(&dsn)
            .expect("parses")
            .poll_interval(Duration::from_millis(100));
        storages.push(Storage::connect_with(opts).await.expect("connects"));
    }
    let trips = storages.iter().map(|s| trip_keys(s, 3));
    futures_util::future::join_all(trips).await;
    assert!(
        eventually(WAIT, || async {
            storages.iter().all(|s| s.pending_publications() == 0)
        })
        .await
    );
    let log = cluster.log();
    let (mut named, mut unnamed) = (0, 0);
    for i in 0..4 {
        let (n, u) = trips_in_log(&log, &format!("rc-bounced-{i}"));
        named += n;
        unnamed += u;
    }
    assert_eq!(
        (named, unnamed),
        (0, 12),
        "every trip unnamed through the pooler"
    );
    assert!(
        !logs.text().contains("refused a prepared statement"),
        "no server refused a prepared statement:\n{}",
        logs.text()
    );
}
