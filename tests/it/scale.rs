//! Connections at rest: pooled connections left idle are closed (`pool_idle_timeout`), so an
//! instance that made transition calls goes back to one server connection, its listener's, and
//! opens a pooled one again on demand.

use crate::support;

use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{State, Storage};
use support::breakers::{fail, options, row_state, trip_fast, Watched};
use support::{eventually, test_db, unique_key};
use tokio_postgres::Client;

const WAIT: Duration = Duration::from_secs(5);
/// Short enough for a test; the reaper checks every half of it.
const IDLE: Duration = Duration::from_millis(300);

/// Server connections (client backends) logged in as `role`, and how many of them are
/// listeners.
async fn sessions_of(client: &Client, role: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE application_name = 'resilient-circuit-listener') \
             FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'",
            &[&role],
        )
        .await
        .expect("pg_stat_activity");
    (row.get(0), row.get(1))
}

/// Server connections whose `application_name` is `name` (set in the options, it names the
/// listener's session as well as the pool's, when no listener DSN is given).
async fn sessions_named(client: &Client, name: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// An instance that made transition calls ends with one server connection (its listener) once
/// its pooled one has been idle for `pool_idle_timeout`, and a trip after that still reaches the
/// database and another instance: the pool reconnects on demand.
#[tokio::test]
async fn idle_pool_connections_close_and_reopen_on_demand() {
    let db = test_db().await;
    let role = db.app().await.name().to_owned();
    let a = Storage::connect_with(options(&db).await.pool_idle_timeout(IDLE))
        .await
        .expect("connects");
    // The other instance logs in as the admin, so that only `a` counts under the role.
    let b = Storage::connect_with(PostgresOptions::from_dsn(&db.conninfo()).expect("conninfo"))
        .await
        .expect("connects");
    let admin = db.client().await;
    let key = unique_key("reaped");
    let on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);

    // Transition calls on a's pool: a trip and an override, each answered.
    fail(&on_a.cb).await;
    assert!(a.flush(WAIT).await, "the trip is answered");
    assert!(on_b.reaches(State::Open).await);
    on_a.cb.force_closed();
    assert!(a.flush(WAIT).await, "the override is answered");
    assert!(on_b.reaches(State::Closed).await);

    let rest = eventually(WAIT, || async {
        sessions_of(&admin, &role).await == (1, 1)
    })
    .await;
    assert!(
        rest,
        "a ends with its listener alone, (sessions, listeners) = {:?}",
        sessions_of(&admin, &role).await
    );

    // The first trip after the quiet spell opens a connection and lands everywhere.
    fail(&on_a.cb).await;
    assert!(a.flush(WAIT).await, "the trip after reaping is answered");
    assert_eq!(row_state(&admin, &key).await.as_deref(), Some("OPEN"));
    assert!(on_b.reaches(State::Open).await, "b hears the trip");
    let rest = eventually(WAIT, || async {
        sessions_of(&admin, &role).await == (1, 1)
    })
    .await;
    assert!(rest, "and a goes back to one connection");
    assert!(!a.is_degraded(), "reaping is not a connection loss");
}

/// The negative control: with `pool_idle_timeout(Duration::ZERO)` the pooled connection stays,
/// while an instance beside it with reaping on has closed its own.
#[tokio::test]
async fn without_reaping_the_pool_connection_stays() {
    let db = test_db().await;
    let role = db.app().await.name().to_owned();
    let keeper = Storage::connect_with(options(&db).await.pool_idle_timeout(Duration::ZERO))
        .await
        .expect("connects");
    // The reference logs in as the admin; its sessions are told apart by their application_name.
    let app_name = unique_key("rc-reaping-pool");
    let reaping = Storage::connect_with(
        PostgresOptions::from_dsn(&db.conninfo())
            .expect("conninfo")
            .application_name(app_name.as_str())
            .pool_idle_timeout(IDLE),
    )
    .await
    .expect("connects");
    let admin = db.client().await;
    let key = unique_key("kept");
    let on_keeper = Watched::new(&keeper, &key, trip_fast);
    let on_reaping = Watched::new(&reaping, &key, trip_fast);
    fail(&on_keeper.cb).await;
    assert!(keeper.flush(WAIT).await, "the keeper's trip is answered");
    on_reaping.cb.force_closed();
    assert!(
        reaping.flush(WAIT).await,
        "the reference's override is answered"
    );

    let reaped = eventually(WAIT, || async {
        sessions_named(&admin, &app_name).await == 1
    })
    .await;
    assert!(
        reaped,
        "the reference closes its idle pooled connection, keeping its listener"
    );
    let (sessions, listeners) = sessions_of(&admin, &role).await;
    assert!(
        sessions >= 2 && listeners == 1,
        "the keeper still holds its pooled connection beside its listener: {sessions} sessions, {listeners} listening"
    );
}
