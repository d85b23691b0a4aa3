//! Instances behind a real pgbouncer (Debian's 1.18), started by each test in front of a
//! throwaway cluster: transaction pooling with the listener on a direct address, a listener
//! wrongly behind the pooler, and session pooling with one address.

use std::sync::Arc;
use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

use crate::support::breakers::{audit_transitions, audited, fail, trip_fast, Logs, Watched};
use crate::support::pgbouncer::{PgBouncer, PoolMode};
use crate::support::{eventually, unique_key, Cluster, TestRole};

use crate::support::WAIT;

/// A cluster, its application role, and pgbouncer in front of it in `mode`: three server
/// connections in transaction mode (fewer than the instances' connections), enough for every
/// client in session mode (which holds one per client).
async fn bounced(mode: PoolMode) -> (Cluster, String, TestRole, PgBouncer) {
    let cluster = Cluster::start().await;
    let db = cluster.create_db().await;
    let app = cluster.app_role(&db).await;
    let server_conns = match mode {
        PoolMode::Transaction => 3,
        PoolMode::Session => 40,
    };
    let bouncer = PgBouncer::start(
        cluster.addr(),
        mode,
        &[app.name(), "postgres"],
        server_conns,
    )
    .await;
    (cluster, db, app, bouncer)
}

/// Options for an instance whose pool goes through `bouncer`, its listener through
/// `listener` (a direct conninfo) or the pooler too.
fn through(app: &TestRole, bouncer: &PgBouncer, listener: Option<String>) -> PostgresOptions {
    let opts = PostgresOptions::from_dsn(&app.conninfo_via(bouncer.addr()))
        .expect("parses")
        .transaction_pooler(true);
    match listener {
        Some(direct) => opts.listener_dsn(&direct).expect("listener DSN parses"),
        None => opts,
    }
}

/// Through pgbouncer in transaction mode (3 server connections, 20 instances; listener direct):
/// twenty instances racing to trip make one transition, every instance sees it, a fleet-wide
/// half-open round hands out exactly its probes, and the close reaches everyone; no call fails
/// on the way (a failed call is retried, so only the logs tell).
#[tokio::test]
async fn transaction_pooling_races_to_one_transition_and_exact_probes() {
    // Current thread: every log line of the instances is this thread's, and captured.
    let (logs, _guard) = Logs::capture();
    let (cluster, db, app, bouncer) = bounced(PoolMode::Transaction).await;
    let admin = cluster.client(&db).await;
    audit_transitions(&admin).await;
    let mut storages = Vec::new();
    for _ in 0..20 {
        let opts = through(&app, &bouncer, Some(app.conninfo()));
        storages.push(Storage::connect_with(opts).await.expect("connects"));
    }
    let key = unique_key("bounced");
    let configure = |b: resilient_circuit::Builder| {
        b.failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(2, 2))
            .cooldown(Duration::from_millis(500))
            .probe_wait(Duration::from_millis(300))
    };
    let mut breakers: Vec<Watched> = storages
        .iter()
        .map(|s| Watched::new(s, &key, configure))
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(breakers.len()));
    let tasks: Vec<_> = breakers
        .iter()
        .map(|w| {
            let (cb, barrier) = (w.cb.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                fail(&cb).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    for w in &mut breakers {
        assert!(w.reaches(State::Open).await);
    }
    assert!(
        eventually(WAIT, || async {
            storages.iter().all(|s| s.pending_publications() == 0)
        })
        .await,
        "every trip answered through the pooler:\n{}",
        bouncer.log()
    );
    assert_eq!(
        audited(&admin, &key).await,
        vec![("NONE".to_owned(), "OPEN".to_owned())],
        "exactly one transition"
    );

    // The fleet-wide round: every instance asks at once; exactly two probes run.
    tokio::time::sleep(breakers[0].cb.cooldown_remaining()).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(breakers.len()));
    let tasks: Vec<_> = breakers
        .iter()
        .map(|w| {
            let (cb, barrier) = (w.cb.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                match cb.acquire().await {
                    Ok(p) => {
                        // Held until every instance has asked, so no slot is reused.
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        p.success();
                        1
                    }
                    Err(_) => 0,
                }
            })
        })
        .collect();
    let mut probes = 0;
    for t in tasks {
        probes += t.await.expect("task");
    }
    assert_eq!(probes, 2, "exactly the round's probes ran");
    for w in &mut breakers {
        assert!(w.reaches(State::Closed).await, "the close reaches everyone");
    }
    // Lease bookkeeping updates the row within HALF_OPEN; the state changes are these.
    let states: Vec<String> = audited(&admin, &key)
        .await
        .into_iter()
        .filter(|(from, to)| from != to)
        .map(|(_, to)| to)
        .collect();
    assert_eq!(
        states,
        ["OPEN", "HALF_OPEN", "CLOSED"],
        "one round, one close"
    );
    assert_eq!(
        logs.text(),
        "",
        "no warning: every call went through the pooler"
    );
}

/// A listener given only the pooler's address hears nothing: the instance says so at WARN,
/// naming RC_DB_LISTENER_DSN, and follows the table by polling: a trip written by another
/// session still reaches it, within the poll interval.
#[tokio::test]
async fn a_listener_behind_a_transaction_pooler_warns_and_polls() {
    let (logs, _guard) = Logs::capture();
    let (_cluster, _db, app, bouncer) = bounced(PoolMode::Transaction).await;
    let started = Instant::now();
    let deaf = Storage::connect_with(through(&app, &bouncer, None))
        .await
        .expect("connects");
    let startup = started.elapsed();
    assert!(
        logs.text()
            .contains("does not hear notifications sent by other sessions")
            && logs.text().contains("RC_DB_LISTENER_DSN")
            && logs.text().contains("RC_DB_FOLLOW=poll"),
        "the self-check says what is wrong and the fix:\n{}",
        logs.text()
    );
    let key = unique_key("polled");
    let mut watched = Watched::new(&deaf, &key, trip_fast);
    let writer = Storage::connect_with(PostgresOptions::from_dsn(&app.conninfo()).expect("parses"))
        .await
        .expect("a direct instance");
    let tripping = trip_fast(CircuitBreaker::builder(&key).storage(writer.clone()))
        .build()
        .expect("valid");
    let tripped = Instant::now();
    fail(&tripping).await;
    assert!(
        watched
            .reaches_within(State::Open, Duration::from_secs(5))
            .await,
        "polling the change log delivers the trip"
    );
    let took = tripped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "within the poll interval (250 ms) and a margin: {took:?}"
    );
    eprintln!(
        "MEASURED a_listener_behind_a_transaction_pooler_warns_and_polls: startup with the self-check {startup:?}; trip reached the deaf instance by polling in {took:?}"
    );
}

/// In session pooling one address serves both: LISTEN works through it, a trip from another
/// instance arrives by NOTIFY, and no warning is logged. Polling and the periodic reload are an
/// hour apart here, so nothing but a notification can bring the trip within the wait: a
/// listener that heard nothing would fall back to polling, and the trip would not arrive.
#[tokio::test]
async fn session_pooling_works_with_one_address() {
    let (logs, _guard) = Logs::capture();
    let (_cluster, _db, app, bouncer) = bounced(PoolMode::Session).await;
    let hour = Duration::from_secs(3600);
    let one_address = || {
        PostgresOptions::from_dsn(&app.conninfo_via(bouncer.addr()))
            .expect("parses")
            .poll_interval(hour)
            .reconcile_interval(hour)
    };
    let a = Storage::connect_with(one_address()).await.expect("a");
    let b = Storage::connect_with(one_address()).await.expect("b");
    let key = unique_key("session");
    let on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);
    let tripped = Instant::now();
    fail(&on_a.cb).await;
    assert!(
        on_b.reaches_within(State::Open, WAIT).await,
        "b hears a's trip through the pooler (it polls only every {hour:?})"
    );
    let took = tripped.elapsed();
    assert!(
        !logs.text().contains("does not hear notifications"),
        "{}",
        logs.text()
    );
    eprintln!("MEASURED session_pooling_works_with_one_address: a's trip reached b by NOTIFY through pgbouncer in {took:?}");
}
