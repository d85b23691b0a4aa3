//! Status-change callbacks: when they fire, in which order, outside every lock, and a panicking one harms nothing.

use super::*;

/// Minimal reproduction: the cooldown ending (OPEN -> HALF_OPEN on the next call) fires the
/// on_status_change callback like every other transition.
#[test]
fn callback_fires_on_open_to_half_open() {
    let rig = Rig::new("o-to-h", r(1, 1), None, 10);
    rig.trip(1);
    rig.advance_ms(10);
    let probe = rig.admit("probe");
    assert_eq!(rig.cb.state(), HalfOpen);
    assert_eq!(
        rig.changes(),
        vec![C_O, O_H],
        "OPEN -> HALF_OPEN must be reported"
    );
    probe.success();
}

/// Callbacks see each transition once, in order, with the key, from, to and Local origin; every
/// handle's callback on the key gets them; a dropped handle's callback stops.
#[test]
fn callbacks_order_and_fan_out() {
    let rig = Rig::new("fan-out", r(1, 1), None, 10);
    let other_log: Log = Arc::default();
    let sink = other_log.clone();
    let other = CircuitBreaker::builder("fan-out")
        .storage(rig.storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(move |c| sink.lock().unwrap().push(c.clone()))
        .build()
        .unwrap();

    rig.trip(1);
    other.force_closed();
    other.force_open(Duration::from_millis(5));
    drop(other);
    rig.cb.force_closed();

    let expect = vec![C_O, (Open, Closed), (Closed, Open), (Open, Closed)];
    assert_eq!(rig.changes(), expect);
    let theirs: Vec<_> = other_log
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.from, c.to))
        .collect();
    assert_eq!(
        theirs,
        expect[..3].to_vec(),
        "dropped handle's callback stops"
    );
    for c in rig.log.lock().unwrap().iter() {
        assert_eq!(c.key, "fan-out");
        assert_eq!(c.origin, ChangeOrigin::Local);
    }
}

/// A panicking callback neither breaks the breaker nor stops other callbacks on the key.
#[test]
fn panicking_callback_leaves_the_breaker_working() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let boom = CircuitBreaker::builder("panicky")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(|c| panic!("callback panics on {} -> {}", c.from, c.to))
        .build()
        .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let calm = CircuitBreaker::builder("panicky")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();

    boom.try_acquire().unwrap().failure();
    assert_eq!(boom.state(), Open);
    assert!(boom.try_acquire().is_err());
    clock.advance(Duration::from_millis(10));
    boom.try_acquire().unwrap().success();
    assert_eq!(boom.state(), Closed);
    boom.force_open(Duration::from_secs(1));
    calm.force_closed();
    assert_eq!(calm.state(), Closed);
    calm.try_acquire().unwrap().failure();
    assert_eq!(calm.state(), Open);
    // C->O, (O->H), H->C, C->O, O->C, C->O: the calm callback ran for every one of them.
    assert!(seen.load(Ordering::SeqCst) >= 5);
}

/// Callbacks run outside every lock: one may read state, acquire, report and force the very
/// breaker that is notifying it without deadlocking.
#[test]
fn callbacks_run_outside_locks() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let slot: Arc<OnceLock<CircuitBreaker>> = Arc::default();
    let seen: Log = Arc::default();
    let (slot2, seen2) = (slot.clone(), seen.clone());
    let cb = CircuitBreaker::builder("reentrant")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(move |c| {
            seen2.lock().unwrap().push(c.clone());
            if let Some(me) = slot2.get() {
                assert_eq!(me.state(), c.to, "the new state is visible to the callback");
                let _ = me.cooldown_remaining();
                let _ = me.execution_log();
                if let Ok(p) = me.try_acquire() {
                    drop(p);
                }
                // Building another handle touches the storage map and the callback list.
                let _peer = CircuitBreaker::builder("reentrant")
                    .storage(me.storage().clone())
                    .failure_limit(r(1, 1))
                    .cooldown(Duration::from_millis(10))
                    .build()
                    .unwrap();
                if c.to == Open && c.from == Closed {
                    me.force_closed(); // a nested transition from inside a callback
                }
            }
        })
        .build()
        .unwrap();
    slot.set(cb.clone()).unwrap();
    cb.try_acquire().unwrap().failure();
    assert_eq!(cb.state(), Closed, "the callback's force_closed won");
    let changes: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.from, c.to))
        .collect();
    assert_eq!(changes, vec![C_O, (Open, Closed)]);
}
