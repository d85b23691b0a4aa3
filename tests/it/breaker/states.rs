//! Transitions, rejections and their reasons, cooldowns on the manual clock, half-open probe limits.

use super::*;

/// Every row of the transition table ends in its expected state with exactly its expected
/// callbacks (all rows are checked; mismatches are listed together).
#[test]
fn transition_table() {
    let mut mismatches = Vec::new();
    for (i, row) in rows().iter().enumerate() {
        let rig = Rig::new(
            &format!("row-{i}"),
            row.failure,
            row.success,
            row.cooldown_ms,
        );
        let mut step_error = None;
        for (j, step) in row.steps.iter().enumerate() {
            if let Wait(ms) = step {
                rig.advance_ms(*ms);
                continue;
            }
            let ok = match (step, rig.cb.try_acquire()) {
                (S, Ok(p)) => {
                    p.success();
                    true
                }
                (F, Ok(p)) => {
                    p.failure();
                    true
                }
                (Rej, Err(_)) => true,
                (_, _) => false,
            };
            if !ok {
                step_error = Some(format!("step {j} ({step:?}) in state {}", rig.cb.state()));
                break;
            }
        }
        let log = rig.log.lock().unwrap().clone();
        let changes = rig.changes();
        if step_error.is_some() || rig.cb.state() != row.state || changes != row.changes {
            mismatches.push(format!(
                "row {i} {:?}: {}expected {:?} with {:?}, got {:?} with {:?}",
                row.name,
                step_error.map(|e| format!("{e}; ")).unwrap_or_default(),
                row.state,
                row.changes,
                rig.cb.state(),
                changes
            ));
        }
        for c in &log {
            assert_eq!(c.key, format!("row-{i}"));
            assert_eq!(c.origin, ChangeOrigin::Local);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} rows differ:\n{}",
        mismatches.len(),
        rows().len(),
        mismatches.join("\n")
    );
}

/// An open breaker rejects through `call` (without running the closure) and `try_acquire`, with
/// the key, the state, the time left and a readable message.
#[tokio::test]
async fn open_rejects_without_running() {
    let rig = Rig::new("payments", r(1, 1), None, 1_000);
    rig.trip(1);
    rig.advance_ms(400);

    let ran = AtomicUsize::new(0);
    let res = rig
        .cb
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the closure must not run");
    let err = res.unwrap_err();
    assert!(err.is_rejected());
    let rej = err.rejected().expect("a rejection").clone();
    assert_eq!(rej.key(), "payments");
    assert_eq!(rej.state(), Open);
    assert_eq!(rej.retry_after(), Some(Duration::from_millis(600)));
    assert!(matches!(err, CircuitError::Rejected(_)));
    let msg = rej.to_string();
    assert!(msg.contains("payments") && msg.contains("OPEN"), "{msg}");

    let rej = rig.reject("try_acquire");
    assert_eq!(rej.state(), Open);
    assert_eq!(rej.retry_after(), Some(Duration::from_millis(600)));

    // `acquire` does not wait on an in-memory store.
    let rej = rig.cb.acquire().await.unwrap_err();
    assert_eq!(rej.state(), Open);
}

/// The cooldown runs on the storage's clock: `cooldown_remaining` counts down, the breaker
/// still reports Open after it ends, and the first call exactly at the deadline is a probe.
#[test]
fn cooldown_follows_the_manual_clock() {
    let rig = Rig::new("cooldown", r(1, 1), None, 300);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    rig.trip(1);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::from_millis(300));
    rig.advance_ms(299);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::from_millis(1));
    rig.reject("1 ms before the deadline");
    rig.advance_ms(1);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    assert_eq!(rig.cb.state(), Open, "nothing moves until a call");
    let p = rig.admit("at the deadline");
    assert!(p.is_probe());
    assert_eq!(rig.cb.state(), HalfOpen);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    p.success();
    assert_eq!(rig.cb.state(), Closed);
}

/// A long wait after the deadline is no different from reaching it exactly.
#[test]
fn cooldown_long_overdue() {
    let rig = Rig::new("overdue", r(1, 1), None, 300);
    rig.trip(1);
    rig.clock.advance(Duration::from_secs(86_400 * 365));
    rig.admit("a year later").success();
    assert_eq!(rig.cb.state(), Closed);
}

/// Half-open admits exactly `den` concurrent probes (success limit's den when set, else the
/// failure limit's) and rejects everyone else as HalfOpen until the probes decide.
#[test]
fn half_open_probe_limit() {
    for (failure, success, den) in [
        (r(1, 1), Some(r(2, 3)), 3),
        (r(1, 1), Some(r(1, 1)), 1),
        (r(2, 4), None, 4),
        (r(1, 1), None, 1),
    ] {
        let rig = Rig::new("probes", failure, success, 10);
        rig.trip(failure.denominator());
        rig.advance_ms(10);
        let probes: Vec<_> = (0..den)
            .map(|i| rig.admit(&format!("probe {i} of {den}")))
            .collect();
        assert!(probes.iter().all(Permit::is_probe));
        for _ in 0..3 {
            let rej = rig.reject("probe slots are full");
            assert_eq!(rej.state(), HalfOpen);
            assert_eq!(rej.retry_after(), None);
        }
        assert_eq!(rig.cb.state(), HalfOpen);
        for p in probes {
            p.success();
        }
        assert_eq!(rig.cb.state(), Closed, "{failure} {success:?}");
        assert!(!rig.admit("closed again").is_probe());
    }
}

/// A rejection says why: open after failures, half-open with every slot taken, or open on
/// purpose (forced); the same reason whichever way the call was refused.
#[tokio::test]
async fn rejections_say_why() {
    let rig = Rig::new("why", Ratio::new(1, 1), None, 100);
    rig.admit("closed").failure();
    assert_eq!(rig.reject("tripped").reason(), RejectReason::Open);
    let by_call = rig
        .cb
        .call(|| async { Ok::<_, std::io::Error>(()) })
        .await
        .expect_err("open");
    assert_eq!(
        by_call.rejected().map(Rejected::reason),
        Some(RejectReason::Open)
    );
    rig.advance_ms(100);
    let probe = rig.admit("the cooldown is over: a probe");
    assert_eq!(
        rig.reject("the probe's slot is taken").reason(),
        RejectReason::HalfOpenFull
    );
    probe.success();
    rig.cb.force_open(Duration::from_secs(60));
    let forced = rig.reject("forced open");
    assert_eq!(forced.reason(), RejectReason::Forced);
    assert_eq!(forced.state(), Open, "still OPEN");
    assert!(forced
        .retry_after()
        .is_some_and(|d| d <= Duration::from_secs(60)));
    assert_eq!(
        rig.cb.try_acquire_owned().map(|_| ()).unwrap_err().reason(),
        RejectReason::Forced
    );
    assert_eq!(RejectReason::HalfOpenFull.to_string(), "half_open_full");
}

/// A rejection names its key whatever its length: copied up to 30 bytes, shared beyond, and
/// multi-byte characters intact at the boundary.
#[tokio::test]
async fn rejections_carry_keys_of_every_length() {
    let storage = Storage::in_memory();
    for key in [
        "k".to_owned(),
        "i".repeat(23),
        "j".repeat(24),
        format!("{}é", "e".repeat(21)), // 23 bytes, the last two one character
        format!("{}é", "f".repeat(22)), // 24 bytes
        "a".repeat(30),
        "b".repeat(31),
        format!("{}é", "c".repeat(28)), // 30 bytes, the last two one character
        format!("{}é", "d".repeat(29)), // 31 bytes
        "ключ-".repeat(20),
    ] {
        let cb = CircuitBreaker::builder(key.as_str())
            .storage(storage.clone())
            .build()
            .expect("valid key");
        cb.force_open(Duration::from_secs(60));
        let r = cb.try_acquire().expect_err("open");
        assert_eq!(r.key(), key);
        assert_eq!(r.clone().key(), key);
        assert_eq!(
            r.to_string(),
            format!("circuit breaker {key:?} is OPEN: call rejected without running")
        );
    }
}

/// Handles, storages and errors can cross threads; handles and storages are cheap clones.
#[test]
fn static_assertions() {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn send_sync<T: Send + Sync>() {}
    fn send_sync_static<T: Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync_clone::<CircuitBreaker>();
    send_sync_clone::<Storage>();
    send_sync_clone::<ManualClock>();
    send_sync_clone::<Rejected>();
    send_sync_clone::<ConfigError>();
    send_sync_clone::<Change>();
    send_sync_clone::<Ratio>();
    send_sync::<Permit<'static>>();
    send_sync_static::<OwnedPermit>();
    send_sync::<Builder>();
    error::<Rejected>();
    error::<ConfigError>();
    error::<CircuitError<std::io::Error>>();
    // A call future can be spawned on a multi-threaded runtime.
    fn spawnable<F: std::future::Future + Send>(_: F) {}
    let cb = Rig::new("types", r(1, 1), None, 1).cb;
    let owned = cb.acquire_owned();
    spawnable(async move { cb.call(|| async { Ok::<_, std::io::Error>(()) }).await });
    // `acquire_owned`'s future and its permit are `Send + 'static`.
    fn spawnable_static<F: std::future::Future + Send + 'static>(_: F) {}
    spawnable_static(owned);
}
