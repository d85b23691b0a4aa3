//! Cooldowns that grow per failed round, cap and reset, and jitter that spreads keys.

use super::*;

/// A breaker that trips on one failure, rests `base` ms, and grows to at most `max` ms.
pub(super) fn growing(storage: &Storage, key: &str, base: u64, max: u64) -> CircuitBreaker {
    CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(base))
        .max_cooldown(Duration::from_millis(max))
        .build()
        .expect("valid growing breaker")
}

/// Lets the cooldown pass on `clock`, fails the probe, and returns the new cooldown.
fn fail_round(clock: &ManualClock, cb: &CircuitBreaker) -> Duration {
    clock.advance(cb.cooldown_remaining());
    cb.try_acquire()
        .expect("a probe after the cooldown")
        .failure();
    assert_eq!(cb.state(), Open, "a failed round reopens");
    cb.cooldown_remaining()
}

/// True when `d` is `want_ms` less at most 10% (the jitter), never more.
fn jittered(d: Duration, want_ms: u64) -> bool {
    let want = Duration::from_millis(want_ms);
    d <= want && d >= want - want / 10
}

/// Each failed half-open round doubles the cooldown (less at most 10% of jitter) up to the
/// maximum; a trip from CLOSED rests the base. A round that closes, and `force_closed`, start
/// the count again; `force_open` neither counts nor resets.
#[test]
fn cooldown_grows_per_reopen_caps_and_resets() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let cb = growing(&storage, "growing", 100, 500);
    cb.try_acquire().unwrap().failure();
    assert_eq!(
        cb.cooldown_remaining(),
        Duration::from_millis(100),
        "a trip rests the base"
    );
    for want in [200, 400, 500, 500] {
        let left = fail_round(&clock, &cb);
        assert!(
            jittered(left, want),
            "expected about {want} ms, got {left:?}"
        );
        let rejected = cb.try_acquire().expect_err("open");
        assert_eq!(
            rejected.retry_after(),
            Some(left),
            "retry_after says the grown cooldown"
        );
    }

    // A round that closes: the next trip rests the base, and growth starts again.
    clock.advance(cb.cooldown_remaining());
    cb.try_acquire().expect("probe").success();
    assert_eq!(cb.state(), Closed);
    cb.try_acquire().unwrap().failure();
    assert_eq!(cb.cooldown_remaining(), Duration::from_millis(100));
    let left = fail_round(&clock, &cb);
    assert!(
        jittered(left, 200),
        "after a close, the first reopen rests ~200 ms: {left:?}"
    );
    let left = fail_round(&clock, &cb);
    assert!(jittered(left, 400), "{left:?}");

    // A manual open in between neither counts nor resets.
    cb.force_open(Duration::from_millis(50));
    assert_eq!(cb.cooldown_remaining(), Duration::from_millis(50));
    let left = fail_round(&clock, &cb);
    assert!(jittered(left, 500), "the third reopen, capped: {left:?}");

    // A manual close resets it too.
    cb.force_closed();
    cb.try_acquire().unwrap().failure();
    assert_eq!(cb.cooldown_remaining(), Duration::from_millis(100));
    let left = fail_round(&clock, &cb);
    assert!(
        jittered(left, 200),
        "after force_closed, ~200 ms again: {left:?}"
    );
}

/// Without `max_cooldown` every reopen rests the base cooldown exactly (today's behaviour), and
/// with it, keys reopened at the same instant get different cooldowns (the jitter spreads their
/// probes), each within 10% under the cap.
#[test]
fn fixed_by_default_and_jitter_spreads_keys() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(64, Arc::new(clock.clone()));
    let fixed = Rig::new("fixed", r(1, 1), None, 100);
    fixed.admit("trip").failure();
    for _ in 0..3 {
        fixed.advance_ms(100);
        fixed.admit("probe").failure();
        assert_eq!(fixed.cb.cooldown_remaining(), Duration::from_millis(100));
    }

    let keys: Vec<CircuitBreaker> = (0..8)
        .map(|i| growing(&storage, &format!("spread{i}"), 100, 150))
        .collect();
    for cb in &keys {
        cb.try_acquire().unwrap().failure();
    }
    clock.advance(Duration::from_millis(100));
    let mut left: Vec<Duration> = keys
        .iter()
        .map(|cb| {
            cb.try_acquire().expect("probe").failure();
            cb.cooldown_remaining()
        })
        .collect();
    for d in &left {
        assert!(jittered(*d, 150), "capped at 150 ms, less jitter: {d:?}");
    }
    left.sort();
    left.dedup();
    assert!(
        left.len() > 1,
        "eight keys reopened together all rest {left:?}"
    );
}
