//! The administration API (`resilient_circuit::admin`) as a tool of a user's own would use it,
//! on roles that own nothing: an operator decrees, configures and reads the log; a reader reads
//! and is refused the rest with a typed error; an instance's running breakers follow the
//! operator's calls.

use std::time::Duration;

use resilient_circuit::admin::{AdminSession, ConfigChange, Override, RoleKind};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{Mode, Ratio, State};

use crate::support::breakers::{instance, trip_fast, Watched};
use crate::support::{eventually, test_db, unique_key, TestDb, TestRole};

use crate::support::WAIT;

async fn session_as(db: &TestDb, role: &TestRole) -> AdminSession {
    let opts = PostgresOptions::from_dsn(&db.conninfo_as(role)).expect("dsn");
    AdminSession::connect(&opts).await.expect("connects")
}

/// An operator's session opens, closes, configures and deletes a key; a running instance
/// follows each call; `status` and `history` say what happened, with the notes.
#[tokio::test]
async fn an_operator_decrees_and_reads_what_it_did() {
    let db = test_db().await;
    let storage = instance(&db).await;
    let operator = db.role_of(&[RoleKind::Operator]).await;
    let mut admin = session_as(&db, &operator).await;
    let ns = admin.namespace().to_owned();
    let key = unique_key("decreed");
    let mut w = Watched::new(&storage, &key, trip_fast);

    let opened = admin
        .force(
            &ns,
            &key,
            Override::Open {
                hold: Some(Duration::from_secs(60)),
            },
            Some("vendor outage"),
        )
        .await
        .expect("opens");
    assert!(w.reaches(State::Open).await, "the instance follows");
    let rows = admin.status(&ns).await.expect("reads");
    let row = rows.iter().find(|r| r.key == key).expect("a row");
    assert_eq!(
        (row.state, row.version, row.mode),
        (State::Open, opened, Mode::Normal)
    );
    assert!(row
        .half_open_in
        .is_some_and(|d| d > Duration::from_secs(50) && d <= Duration::from_secs(60)));

    let closed = admin
        .force(&ns, &key, Override::Closed, None)
        .await
        .expect("closes");
    assert!(closed > opened);
    assert!(w.reaches(State::Closed).await);

    let live = admin
        .configure(
            &ns,
            &key,
            &ConfigChange::new()
                .failure_limit(Ratio::new(2, 4))
                .cooldown(Duration::from_secs(5)),
        )
        .await
        .expect("configures")
        .expect("a configuration");
    assert_eq!(live.failure_limit, Some(Ratio::new(2, 4)));
    assert_eq!(
        admin.configuration(&ns, &key).await.expect("reads"),
        Some(live.clone())
    );
    assert!(
        eventually(WAIT, || async {
            w.cb.live_config().as_deref() == Some(&live)
        })
        .await,
        "the instance applies it"
    );
    assert_eq!(
        admin
            .configure(&ns, &key, &ConfigChange::new().reset())
            .await
            .expect("resets"),
        None
    );

    let history = admin.history(&ns, &key, None).await.expect("the log");
    let states: Vec<_> = history.iter().filter_map(|h| h.to).collect();
    assert_eq!(states, [State::Open, State::Closed], "{history:?}");
    assert_eq!(
        history[0].why.as_ref().and_then(|w| w["note"].as_str()),
        Some("vendor outage"),
        "{history:?}"
    );
    assert!(admin.delete(&ns, &key, None).await.expect("deletes"));
    assert!(!admin.delete(&ns, &key, None).await.expect("nothing left"));
}

/// A reader reads the breakers but may not decree or configure: the refusal is a typed
/// error with PostgreSQL's SQLSTATE (42501), and nothing changed.
#[tokio::test]
async fn a_reader_is_refused_with_a_typed_error() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let mut admin = session_as(&db, &reader).await;
    let ns = admin.namespace().to_owned();
    let key = unique_key("read-only");
    assert!(admin.status(&ns).await.is_ok(), "a reader reads");
    let e = admin
        .force(&ns, &key, Override::Open { hold: None }, None)
        .await
        .expect_err("a reader may not force");
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    let e = admin
        .configure(&ns, &key, &ConfigChange::new().mode(Mode::Disabled))
        .await
        .expect_err("nor configure");
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    assert!(admin.status(&ns).await.expect("reads").is_empty());
    // A bad value never reaches the database.
    let e = admin
        .configure(
            &ns,
            &key,
            &ConfigChange::new().failure_limit(Ratio::new(5, 4)),
        )
        .await
        .expect_err("refused before the database");
    assert!(
        matches!(e, resilient_circuit::StorageError::Config(_)),
        "{e}"
    );
}

/// `check` finds the schema ready and each role as `setup` granted it; a role's excess rights
/// are reported.
#[tokio::test]
async fn check_reports_the_schema_and_each_role() {
    let db = test_db().await;
    let _setup = instance(&db).await;
    let admin = db.admin_session().await;
    let health = admin.check().await.expect("checks");
    assert_eq!(health.schema_problem, None);
    assert!(health.triggers.iter().all(|t| t.present), "{health:?}");
    assert!(health.missing_functions.is_empty(), "{health:?}");
    assert!(health.public_functions.is_empty(), "{health:?}");
    let operator = db.role_of(&[RoleKind::Operator]).await;
    let found = admin
        .check_role(operator.name(), Some(RoleKind::Operator))
        .await
        .expect("checks the role");
    assert!(
        found.exists && found.missing.is_empty() && found.excess.is_empty(),
        "{found:?}"
    );
    let as_reader = admin
        .check_role(operator.name(), Some(RoleKind::Reader))
        .await
        .expect("checks the role");
    assert!(
        !as_reader.excess.is_empty(),
        "an operator holds more than a reader"
    );
    let nobody = admin
        .check_role("no_such_role_here", None)
        .await
        .expect("checks");
    assert!(!nobody.exists);
}
