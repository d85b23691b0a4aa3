//! Failover: a primary and a streaming standby (`pg_basebackup -R`, started on a port of its
//! own), instances given **both** in one DSN (`host=127.0.0.1,127.0.0.1 port=P1,P2`, the default
//! `target_session_attrs=read-write`), logging in as the application role. The primary goes away,
//! the standby is promoted, and the fleet follows it: every instance reconnects to it, reloads,
//! publishes what it decided meanwhile, and hears trips made there.
//!
//! Needs `pg_basebackup` beside the server binaries (Debian's `postgresql` package has it).
//! Every test prints `MEASURED <test>: ...` (see it with `--nocapture`).

use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::support::breakers::{fail, published, row_state, trip_fast, Watched};
use crate::support::{eventually, unique_key, Cluster, Mode, Proxy, TestRole};

/// Instances in each test.
const INSTANCES: usize = 3;

/// Something expected in milliseconds (a NOTIFY, a publication, a replica replaying).
use crate::support::WAIT;

/// How long no host accepts writes before the standby is promoted: long enough for every
/// listener's reconnect backoff (50 ms doubling, jittered in [ceiling/2, ceiling]) to reach its
/// ceiling of 3.2–5 s, so that the promotion lands in the longest waits.
const NO_PRIMARY_FOR: Duration = Duration::from_secs(6);

/// From the promotion (`pg_ctl promote` returned) to every instance following the new primary:
/// each listener retries with a backoff of 50 ms doubling to a cap of 5 s (jittered in
/// [cap/2, cap]), so its next attempt comes within the delay it is in, at most 5 s; then one
/// connect (the old primary refuses at once, the new one is tried next) and one reload. 3 s of
/// slack for a 2-core machine busy with other builds.
const FOLLOW_AFTER_PROMOTION: Duration = Duration::from_secs(8);

/// The tuned instance's reconnect backoff ceiling, and its slack over it (one connect and one
/// reload on a busy 2-core machine).
const TUNED_BACKOFF: Duration = Duration::from_millis(500);
const TUNED_SLACK: Duration = Duration::from_millis(1500);

/// A primary that vanished without closing its connections (a black hole, as a crashed host or
/// a hung load balancer), from the moment it went silent to every instance following the
/// promoted standby: the listener notices within one heartbeat interval (2 s) plus the heartbeat's
/// statement timeout (2 s), waits one backoff step, then tries the silent host first, which costs
/// one connect timeout (5 s: the whole attempt is bounded per host, as libpq does), before the
/// new primary answers. About 9 s; 5 s of slack.
const FOLLOW_A_VANISHED_PRIMARY: Duration = Duration::from_secs(15);

/// `host=127.0.0.1,127.0.0.1 port=P1,P2 user=<role> dbname=<db>`: the failover DSN.
fn both_hosts(first: u16, second: u16, role: &TestRole, db: &str) -> String {
    format!(
        "host=127.0.0.1,127.0.0.1 port={first},{second} user={} dbname={db}",
        role.name()
    )
}

/// `INSTANCES` instances on `dsn` (default settings), each connected and synced.
async fn fleet(dsn: &str) -> Vec<Storage> {
    let mut fleet = Vec::new();
    for _ in 0..INSTANCES {
        let opts = PostgresOptions::from_dsn(dsn).expect("the failover DSN parses");
        let storage = Storage::connect_with(opts).await.expect("connects");
        assert!(!storage.is_degraded(), "connected to the primary at start");
        fleet.push(storage);
    }
    fleet
}

/// A breaker on `key` on every instance (trips on one failure, cools down for a minute).
fn watch_everywhere(fleet: &[Storage], key: &str) -> Vec<Watched> {
    fleet
        .iter()
        .map(|s| Watched::new(s, key, trip_fast))
        .collect()
}

/// Another breaker on `key` on `storage` (it shares the key's cell), and its state changes with
/// the instant each happened (its callback lives as long as the handle).
fn timed_changes(
    storage: &Storage,
    key: &str,
) -> (CircuitBreaker, mpsc::UnboundedReceiver<(Instant, State)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let cb = trip_fast(CircuitBreaker::builder(key).storage(storage.clone()))
        .on_status_change(move |c| {
            let _ = tx.send((Instant::now(), c.to));
        })
        .build()
        .expect("valid breaker");
    (cb, rx)
}

/// When the last change to CLOSED recorded by [`timed_changes`] happened (the breaker is CLOSED
/// already; its callback may still be on its way: the state changes before callbacks run).
async fn closed_at(changes: &mut mpsc::UnboundedReceiver<(Instant, State)>, who: &str) -> Instant {
    let mut last = None;
    while let Ok((at, state)) = changes.try_recv() {
        if state == State::Closed {
            last = Some(at);
        }
    }
    if let Some(at) = last {
        return at;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, changes.recv()).await {
            Ok(Some((at, State::Closed))) => return at,
            Ok(Some(_)) => continue,
            _ => panic!("{who}: CLOSED but no change to CLOSED recorded within {WAIT:?}"),
        }
    }
}

/// Waits until every breaker is in `state`; names the first that is not.
async fn all_reach(watched: &mut [Watched], state: State, within: Duration, what: &str) {
    for (i, w) in watched.iter_mut().enumerate() {
        assert!(
            w.reaches_within(state, within).await,
            "{what}: instance {i} is {:?}, not {state:?}",
            w.cb.state()
        );
    }
}

/// The end of the WAL the primary has inserted, committed transactions included (the test
/// clusters run with `synchronous_commit=off`, so a commit may not be written out yet, and
/// `pg_current_wal_lsn()` would be behind it).
async fn wal_position(primary: &Client) -> String {
    primary
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .expect("pg_current_wal_insert_lsn")
        .get(0)
}

/// Whether the standby has replayed (`replayed`) or at least received (`!replayed`) the WAL up
/// to `lsn`.
async fn standby_has(standby: &Client, lsn: &str, replayed: bool) -> bool {
    let sql = if replayed {
        "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)"
    } else {
        "SELECT coalesce(pg_last_wal_receive_lsn() >= $1::text::pg_lsn, false)"
    };
    standby
        .query_one(sql, &[&lsn])
        .await
        .expect("reading the standby's WAL position")
        .get(0)
}

/// Listener sessions of `role` on the server `client` is connected to.
async fn listeners_of(client: &Client, role: &TestRole) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND application_name = 'resilient-circuit-listener'",
            &[&role.name()],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// The primary stops, the standby is promoted, and the fleet follows it. On the way:
///
/// * a trip replicated before the failover stays OPEN everywhere;
/// * a trip the old primary accepted but never replicated (the standby's WAL receiver was
///   stopped before it, and the test checks that the standby never received its WAL) is OPEN on
///   every instance, its maker included, until that instance's listener reloads from the new
///   primary, which has no row for it: from then on the key is CLOSED everywhere. The reload is
///   authoritative (`precedence.rs`): nothing remembers an accepted trip to replay it.
/// * a trip made while no host accepted writes is published to the new primary and reaches
///   everyone, and so does a trip made after the promotion (by NOTIFY from the new primary).
#[tokio::test]
async fn promoted_standby_takes_over_and_the_fleet_follows() {
    let primary = Cluster::start().await;
    let db = primary.create_db().await;
    let app = primary.app_role(&db).await;
    let standby = Cluster::standby_of(&primary).await;
    let on_primary = primary.client(&db).await;
    let on_standby = standby.client(&db).await;
    let fleet = fleet(&both_hosts(primary.port(), standby.port(), &app, &db)).await;
    assert_eq!(
        listeners_of(&on_primary, &app).await,
        INSTANCES as i64,
        "every listener is on the primary"
    );
    assert_eq!(
        listeners_of(&on_standby, &app).await,
        0,
        "none stays on the standby"
    );

    // One more instance, with a shorter reconnect backoff ceiling: the knob that bounds how long
    // an instance takes to follow a promotion.
    let tuned = Storage::connect_with(
        PostgresOptions::from_dsn(&both_hosts(primary.port(), standby.port(), &app, &db))
            .expect("parses")
            .reconnect_backoff_max(TUNED_BACKOFF),
    )
    .await
    .expect("connects");

    // A trip the standby replays.
    let kept = unique_key("replicated");
    let mut on_kept = watch_everywhere(&fleet, &kept);
    fail(&on_kept[0].cb).await;
    all_reach(&mut on_kept, State::Open, WAIT, "the replicated trip").await;
    published(&fleet[0]).await;
    let lsn = wal_position(&on_primary).await;
    assert!(
        eventually(WAIT, || standby_has(&on_standby, &lsn, true)).await,
        "the standby replays the first trip"
    );
    assert_eq!(row_state(&on_standby, &kept).await.as_deref(), Some("OPEN"));

    // A trip the old primary accepts and the standby never receives.
    standby.stop_receiving().await;
    let lost = unique_key("unreplicated");
    let mut on_lost = watch_everywhere(&fleet, &lost);
    // When each instance's breaker on it changes state, by the clock of this test.
    let mut lost_changes: Vec<_> = fleet.iter().map(|s| timed_changes(s, &lost)).collect();
    let mut on_lost_tuned = Watched::new(&tuned, &lost, trip_fast);
    let (_tuned_cb, mut tuned_changes) = timed_changes(&tuned, &lost);
    fail(&on_lost[1].cb).await;
    all_reach(
        &mut on_lost,
        State::Open,
        WAIT,
        "the unreplicated trip, by NOTIFY",
    )
    .await;
    published(&fleet[1]).await;
    assert!(on_lost_tuned.reaches(State::Open).await);
    assert_eq!(row_state(&on_primary, &lost).await.as_deref(), Some("OPEN"));
    let lsn = wal_position(&on_primary).await;
    assert!(
        !standby_has(&on_standby, &lsn, false).await,
        "the standby must not have received the second trip's WAL"
    );
    assert_eq!(row_state(&on_standby, &lost).await, None);

    // The primary goes away. No host accepts writes: every instance runs on local state and
    // still holds both trips.
    let stopped = Instant::now();
    primary.stop().await;
    assert!(
        eventually(WAIT, || async { fleet.iter().all(Storage::is_degraded) }).await,
        "every instance notices the primary is gone"
    );
    for (i, s) in fleet.iter().enumerate() {
        let states = s.states();
        for key in [&kept, &lost] {
            assert!(
                states.iter().any(|(k, st)| k == key && *st == State::Open),
                "instance {i} holds {key} OPEN while no host is writable: {states:?}"
            );
        }
    }
    // A trip decided while no host accepts writes waits for one.
    let during = unique_key("during");
    let mut on_during = watch_everywhere(&fleet, &during);
    fail(&on_during[2].cb).await;
    assert_eq!(on_during[2].cb.state(), State::Open);
    assert_eq!(fleet[2].pending_publications(), 1);

    // No writable host for a while, as when an operator or a failover manager takes its time:
    // the listeners' backoff grows to its cap meanwhile. Part of the scenario, not a wait for an
    // event.
    tokio::time::sleep_until((stopped + NO_PRIMARY_FOR).into()).await;
    standby.promote().await;
    let promoted = Instant::now();
    // Following = the listener reloaded from the new primary, which has no row for the lost
    // trip: the key turns CLOSED. Timed from the stop, by when each instance's change happened.
    let mut followed = Vec::new();
    for (i, ((_, changes), (s, w))) in lost_changes
        .iter_mut()
        .zip(fleet.iter().zip(on_lost.iter_mut()))
        .enumerate()
    {
        assert!(
            w.reaches_within(State::Closed, FOLLOW_AFTER_PROMOTION).await,
            "instance {i} reloads from the new primary within {FOLLOW_AFTER_PROMOTION:?} of the promotion, where the unreplicated trip has no row"
        );
        let closed_at = closed_at(changes, &format!("instance {i}")).await;
        assert!(
            eventually(WAIT, || async { !s.is_degraded() }).await,
            "instance {i} is connected again"
        );
        followed.push(closed_at - stopped);
    }
    let promotion = promoted - stopped;
    let after_promotion: Vec<Duration> = followed
        .iter()
        .map(|f| f.saturating_sub(promotion))
        .collect();
    let slowest = after_promotion.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= FOLLOW_AFTER_PROMOTION,
        "every instance follows within {FOLLOW_AFTER_PROMOTION:?} of the promotion ({promotion:?} after the stop): {followed:?}"
    );
    assert!(
        on_lost_tuned
            .reaches_within(State::Closed, FOLLOW_AFTER_PROMOTION)
            .await
    );
    let tuned_followed = closed_at(&mut tuned_changes, "the tuned instance").await - stopped;
    let tuned_after = tuned_followed.saturating_sub(promotion);
    assert!(
        tuned_after <= TUNED_BACKOFF + TUNED_SLACK,
        "with reconnect_backoff_max({TUNED_BACKOFF:?}) an instance follows within {:?} of the promotion: {tuned_after:?}",
        TUNED_BACKOFF + TUNED_SLACK
    );
    assert_eq!(
        on_lost[1].cb.state(),
        State::Closed,
        "the maker of the lost trip follows the new primary too"
    );
    all_reach(
        &mut on_kept,
        State::Open,
        WAIT,
        "the replicated trip after the failover",
    )
    .await;
    all_reach(
        &mut on_during,
        State::Open,
        WAIT,
        "the trip made while no host was writable, published to the new primary",
    )
    .await;
    published(&fleet[2]).await;
    assert_eq!(
        listeners_of(&on_standby, &app).await,
        INSTANCES as i64 + 1,
        "every listener is on the new primary"
    );

    // A trip on the new primary reaches everyone by NOTIFY.
    let after = unique_key("after");
    let mut on_after = watch_everywhere(&fleet, &after);
    let tripped = Instant::now();
    fail(&on_after[0].cb).await;
    all_reach(
        &mut on_after,
        State::Open,
        WAIT,
        "a trip after the promotion",
    )
    .await;
    let propagated = tripped.elapsed();
    for (key, want) in [
        (&kept, Some("OPEN")),
        (&lost, None),
        (&during, Some("OPEN")),
        (&after, Some("OPEN")),
    ] {
        assert_eq!(
            row_state(&on_standby, key).await.as_deref(),
            want,
            "{key} on the new primary"
        );
    }
    eprintln!(
        "MEASURED promoted_standby_takes_over_and_the_fleet_follows: promoted (pg_ctl promote returned) {promotion:?} after the primary stopped; each instance followed {followed:?} after the stop, i.e. {after_promotion:?} after the promotion (a standby turns writable shortly before pg_ctl sees it); with reconnect_backoff_max({TUNED_BACKOFF:?}) {tuned_followed:?} after the stop; a trip after the promotion reached every instance in {propagated:?}"
    );
}

/// The primary vanishes without closing its connections (it sits behind a proxy that turns into
/// a black hole: connections stay open, nothing answers, new ones are accepted and hang), and is
/// listed first. The standby is promoted. Every instance's listener notices by its heartbeat,
/// gives the silent first host one connect timeout, and moves on to the new primary; the pool
/// drops the connections whose calls went unanswered and follows; a trip made after the promotion
/// reaches everyone.
#[tokio::test]
async fn fleet_leaves_a_primary_that_went_silent() {
    let primary = Cluster::start().await;
    let db = primary.create_db().await;
    let app = primary.app_role(&db).await;
    let standby = Cluster::standby_of(&primary).await;
    let on_standby = standby.client(&db).await;
    let proxy = Proxy::start(primary.addr()).await;
    let fleet = fleet(&both_hosts(proxy.addr().port(), standby.port(), &app, &db)).await;
    let kept = unique_key("replicated");
    let mut on_kept = watch_everywhere(&fleet, &kept);
    fail(&on_kept[0].cb).await;
    all_reach(&mut on_kept, State::Open, WAIT, "the replicated trip").await;
    published(&fleet[0]).await;
    let lsn = wal_position(&primary.client(&db).await).await;
    assert!(eventually(WAIT, || standby_has(&on_standby, &lsn, true)).await);

    proxy.set_mode(Mode::Blackhole);
    let silent = Instant::now();
    primary.stop().await;
    standby.promote().await;
    let promoted = silent.elapsed();
    let mut detected = Vec::new();
    for (i, s) in fleet.iter().enumerate() {
        assert!(
            eventually(FOLLOW_A_VANISHED_PRIMARY, || async { s.is_degraded() }).await,
            "instance {i} notices the silence"
        );
        detected.push(silent.elapsed());
    }
    let mut followed = Vec::new();
    for (i, s) in fleet.iter().enumerate() {
        let left = FOLLOW_A_VANISHED_PRIMARY.saturating_sub(silent.elapsed());
        assert!(
            eventually(left, || async { !s.is_degraded() }).await,
            "instance {i} follows the new primary within {FOLLOW_A_VANISHED_PRIMARY:?} of the silence"
        );
        followed.push(silent.elapsed());
    }
    assert_eq!(listeners_of(&on_standby, &app).await, INSTANCES as i64);

    let after = unique_key("after");
    let mut on_after = watch_everywhere(&fleet, &after);
    let tripped = Instant::now();
    fail(&on_after[1].cb).await;
    all_reach(
        &mut on_after,
        State::Open,
        WAIT,
        "a trip after the promotion",
    )
    .await;
    let propagated = tripped.elapsed();
    published(&fleet[1]).await;
    assert_eq!(
        row_state(&on_standby, &after).await.as_deref(),
        Some("OPEN")
    );
    all_reach(
        &mut on_kept,
        State::Open,
        WAIT,
        "the replicated trip after the failover",
    )
    .await;
    eprintln!(
        "MEASURED fleet_leaves_a_primary_that_went_silent: promoted {promoted:?} after the silence began; each instance noticed at {detected:?} and followed the new primary at {followed:?}; a trip after that reached every instance in {propagated:?}"
    );
}
