//! `Storage::changes()`: every transition an instance sees, with origin, version and the
//! database's commit time; slow receivers are told what they missed.

use std::time::{Duration, SystemTime};

use resilient_circuit::changes::{Lagged, CHANGE_BUFFER};
use resilient_circuit::{Change, ChangeOrigin, Changes, CircuitBreaker, State, Storage};
use tokio_stream::StreamExt;

use crate::support::breakers::{fail, instance, trip_fast, Watched};
use crate::support::{test_db, unique_key};

use crate::support::WAIT;

/// The next change of `key` on `changes`, skipping other keys.
async fn next_of(changes: &mut Changes, key: &str) -> Change {
    tokio::time::timeout(WAIT, async {
        loop {
            let c = changes
                .next()
                .await
                .expect("the stream lives as long as the storage")
                .expect("nothing missed");
            if c.key == key {
                return c;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no change of {key} within {WAIT:?}"))
}

/// The database's clock now.
async fn database_now(client: &tokio_postgres::Client) -> SystemTime {
    let us: i64 = client
        .query_one(
            "SELECT floor(date_part('epoch', clock_timestamp()) * 1000000)::bigint",
            &[],
        )
        .await
        .expect("reads the clock")
        .get(0);
    SystemTime::UNIX_EPOCH + Duration::from_micros(us.try_into().expect("after 1970"))
}

/// A trip on A is a local change on A (no version yet) and a remote change on B carrying the
/// row's version and a commit time between a database reading before and one after.
#[tokio::test]
async fn a_trip_is_local_on_its_instance_and_remote_with_version_and_commit_time_elsewhere() {
    let db = test_db().await;
    let client = db.client().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let (mut on_a, mut on_b) = (a.changes(), b.changes());
    let key = unique_key("streamed");
    let cb_a = Watched::new(&a, &key, trip_fast);
    let _cb_b = Watched::new(&b, &key, trip_fast);

    let before = database_now(&client).await;
    fail(&cb_a.cb).await;

    let local = next_of(&mut on_a, &key).await;
    assert_eq!((local.from, local.to), (State::Closed, State::Open));
    assert_eq!(local.origin, ChangeOrigin::Local);
    assert_eq!((local.version, local.committed_at), (None, None));
    assert_eq!(local.namespace, "default");

    let remote = next_of(&mut on_b, &key).await;
    let after = database_now(&client).await;
    assert_eq!((remote.from, remote.to), (State::Closed, State::Open));
    assert_eq!(remote.origin, ChangeOrigin::Remote);
    let version = crate::support::version_of(&client, &key).await;
    assert_eq!(remote.version, Some(version));
    let committed = remote.committed_at.expect("the notification says when");
    assert!(
        before <= committed && committed <= after,
        "committed {committed:?} outside [{before:?}, {after:?}]"
    );
    assert!(remote.delay().expect("has a commit time") < WAIT);
}

/// A close made elsewhere (an operator's UPDATE) reaches the stream, as the callbacks.
#[tokio::test]
async fn a_close_made_elsewhere_is_streamed_and_called_back() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("reopened");
    let mut watched = Watched::new(&a, &key, trip_fast);
    fail(&watched.cb).await;
    assert!(watched.reaches(State::Open).await);
    crate::support::breakers::published(&a).await;
    let mut changes = a.changes();
    db.client()
        .await
        .execute(
            "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL \
             WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("updates");
    let c = next_of(&mut changes, &key).await;
    assert_eq!(
        (c.from, c.to, c.origin),
        (State::Open, State::Closed, ChangeOrigin::Remote)
    );
    assert!(c.version.is_some() && c.committed_at.is_some(), "{c:?}");
    assert!(watched.reaches(State::Closed).await, "the callback ran too");
}

/// A receiver that does not keep up loses the oldest changes and is told exactly how many; the
/// breakers never wait for it.
#[tokio::test]
async fn a_slow_receiver_is_told_how_many_it_missed() {
    let storage = Storage::in_memory();
    let mut changes = storage.changes();
    let cb = CircuitBreaker::builder(unique_key("flapping"))
        .storage(storage.clone())
        .build()
        .expect("valid");
    let rounds = CHANGE_BUFFER + 100;
    for _ in 0..rounds {
        cb.force_open(Duration::from_secs(60));
        cb.force_closed();
    }
    let sent = 2 * rounds as u64;
    let missed = sent - CHANGE_BUFFER as u64;
    assert_eq!(changes.next().await, Some(Err(Lagged { missed })));
    let mut received = 0;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::ZERO, changes.next()).await {
        let c = item.expect("nothing more missed");
        let want = if received % 2 == 0 {
            (State::Closed, State::Open)
        } else {
            (State::Open, State::Closed)
        };
        assert_eq!((c.from, c.to), want, "change {received} in order");
        received += 1;
    }
    assert_eq!(received, CHANGE_BUFFER);
}

/// The stream ends when the storage and every breaker on it are gone.
#[tokio::test]
async fn the_stream_ends_with_its_storage() {
    let storage = Storage::in_memory();
    let mut changes = storage.changes();
    let cb = CircuitBreaker::builder("short-lived")
        .storage(storage.clone())
        .build()
        .expect("valid");
    cb.force_open(Duration::from_secs(1));
    drop((cb, storage));
    assert!(matches!(changes.next().await, Some(Ok(_))));
    assert_eq!(changes.next().await, None);
}

/// A breaker's whole local cycle is streamed in order: trip, half-open after the cooldown,
/// close on a good probe.
#[tokio::test]
async fn a_local_cycle_is_streamed_in_order() {
    let clock = std::sync::Arc::new(resilient_circuit::ManualClock::new());
    let storage = Storage::in_memory_with(16, clock.clone());
    let mut changes = storage.changes();
    let cb = trip_fast(CircuitBreaker::builder("cycle").storage(storage.clone()))
        .success_limit(resilient_circuit::Ratio::new(1, 1))
        .build()
        .expect("valid");
    fail(&cb).await;
    clock.advance(Duration::from_secs(61));
    cb.try_acquire()
        .expect("a probe after the cooldown")
        .success();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let c = next_of(&mut changes, "cycle").await;
        assert_eq!(
            (c.origin, c.version, c.namespace.as_str()),
            (ChangeOrigin::Local, None, "in-memory")
        );
        seen.push((c.from, c.to));
    }
    assert_eq!(
        seen,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

/// A status-change callback receives the very change the stream carries: a remote one with its
/// row version and the database's commit time, a local one with neither.
#[tokio::test]
async fn callbacks_and_the_stream_see_the_same_change() {
    let db = test_db().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let key = unique_key("same-change");
    let mut stream = b.changes();
    let on_a = Watched::new(&a, &key, trip_fast);
    let mut on_b = Watched::new(&b, &key, trip_fast);
    fail(&on_a.cb).await;
    let streamed = next_of(&mut stream, &key).await;
    let called = tokio::time::timeout(WAIT, on_b.changes.recv())
        .await
        .expect("a callback within 10 s")
        .expect("the callback ran");
    assert_eq!(called.origin, ChangeOrigin::Remote);
    assert!(
        called.version.is_some() && called.committed_at.is_some(),
        "{called:?}"
    );
    assert_eq!(
        (
            &called.key,
            &called.namespace,
            called.from,
            called.to,
            called.version,
            called.committed_at
        ),
        (
            &streamed.key,
            &streamed.namespace,
            streamed.from,
            streamed.to,
            streamed.version,
            streamed.committed_at
        )
    );
    let mut on_a = on_a;
    let local = tokio::time::timeout(WAIT, on_a.changes.recv())
        .await
        .expect("a's own callback")
        .expect("ran");
    assert_eq!(
        (local.origin, local.version, local.committed_at),
        (ChangeOrigin::Local, None, None)
    );
}
