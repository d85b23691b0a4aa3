//! The bounded in-memory store: idle keys are evicted past the capacity, open and live ones are spared.

use super::*;

fn idle_key(storage: &Storage, key: &str) {
    CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .build()
        .unwrap()
        .try_acquire()
        .unwrap()
        .success();
}

/// Past its capacity the store drops idle keys and never holds more than `capacity` of them.
#[test]
fn eviction_respects_capacity() {
    let mut over = Vec::new();
    for capacity in [1usize, 2, 4, 7, 8, 16, 64] {
        let storage = Storage::in_memory_with(capacity, Arc::new(ManualClock::new()));
        let mut max = 0;
        for i in 0..capacity * 10 {
            idle_key(&storage, &format!("idle-{i}"));
            max = max.max(storage.len());
        }
        if max > capacity {
            over.push(format!("capacity {capacity}: held {max} idle keys"));
        }
        assert!(!storage.is_empty());
    }
    assert!(over.is_empty(), "{}", over.join("; "));
}

/// An open breaker is never evicted, even with no live handle and long past its cooldown; keys
/// with live handles are never evicted either; the store grows past capacity rather than forget.
#[test]
fn eviction_spares_open_and_live_keys() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(8, Arc::new(clock.clone()));
    for i in 0..3 {
        let cb = CircuitBreaker::builder(format!("open-{i}"))
            .storage(storage.clone())
            .failure_limit(r(1, 1))
            .cooldown(Duration::from_secs(60))
            .build()
            .unwrap();
        cb.try_acquire().unwrap().failure();
    }
    let live: Vec<CircuitBreaker> = (0..3)
        .map(|i| {
            let cb = CircuitBreaker::builder(format!("live-{i}"))
                .storage(storage.clone())
                .failure_limit(r(2, 2))
                .build()
                .unwrap();
            cb.try_acquire().unwrap().failure(); // remembered: one failure of two
            cb
        })
        .collect();
    clock.advance(Duration::from_secs(3600));
    for i in 0..200 {
        idle_key(&storage, &format!("idle-{i}"));
    }
    for i in 0..3 {
        assert_eq!(storage.state_of(&format!("open-{i}")), Some(Open));
    }
    for (i, cb) in live.iter().enumerate() {
        let again = CircuitBreaker::builder(format!("live-{i}"))
            .storage(storage.clone())
            .failure_limit(r(2, 2))
            .build()
            .unwrap();
        assert_eq!(
            again.execution_log(),
            vec![false],
            "live key kept its window"
        );
        again.try_acquire().unwrap().failure();
        assert_eq!(cb.state(), Open, "same cell as the live handle");
    }
    assert!(storage.len() <= 8 + 1, "len {}", storage.len());

    // Full of open keys: the store grows rather than evict one.
    let storage = Storage::in_memory_with(8, Arc::new(ManualClock::new()));
    for i in 0..20 {
        let cb = CircuitBreaker::builder(format!("o{i}"))
            .storage(storage.clone())
            .build()
            .unwrap();
        cb.force_open(Duration::from_secs(1));
    }
    assert_eq!(storage.len(), 20);
    assert!(storage.states().iter().all(|(_, s)| *s == Open));
}

/// `Storage::in_memory()` is bounded at `DEFAULT_MEMORY_CAPACITY` (8,192) keys: three times as
/// many idle keys never make it hold more, it stays near the bound (it drops an eighth at a
/// time), and open keys and keys with live handles made before them are all kept.
#[test]
fn default_store_is_bounded_at_8192_keys() {
    use resilient_circuit::storage::DEFAULT_MEMORY_CAPACITY as CAPACITY;
    assert_eq!(CAPACITY, 8192, "the documentation promises 8,192");
    let storage = Storage::in_memory();
    let open: Vec<String> = (0..50).map(|i| format!("open-{i}")).collect();
    for key in &open {
        // No handle is kept: only being open protects it.
        CircuitBreaker::builder(key.as_str())
            .storage(storage.clone())
            .build()
            .unwrap()
            .force_open(Duration::from_secs(3600));
    }
    let live: Vec<CircuitBreaker> = (0..50)
        .map(|i| {
            let cb = CircuitBreaker::builder(format!("live-{i}"))
                .storage(storage.clone())
                .failure_limit(r(2, 2))
                .build()
                .unwrap();
            cb.try_acquire().unwrap().failure(); // one failure remembered, still closed
            cb
        })
        .collect();
    let idle_total = 3 * CAPACITY;
    let mut max = 0;
    for i in 0..idle_total {
        idle_key(&storage, &format!("idle-{i}"));
        max = max.max(storage.len());
    }
    assert!(max <= CAPACITY, "held {max} keys, capacity {CAPACITY}");
    let len = storage.len();
    assert!(
        len >= CAPACITY - CAPACITY / 8 - 1,
        "idle keys are dropped an eighth at a time, not all at once: {len} held"
    );
    let states = storage.states();
    let idle_held = states
        .iter()
        .filter(|(k, _)| k.starts_with("idle-"))
        .count();
    assert!(
        idle_held < idle_total && idle_held + open.len() + live.len() == len,
        "{idle_held} of {idle_total} idle keys held, {len} keys in all"
    );
    for key in &open {
        assert_eq!(storage.state_of(key), Some(Open), "{key} was dropped");
    }
    for (i, cb) in live.iter().enumerate() {
        let again = CircuitBreaker::builder(format!("live-{i}"))
            .storage(storage.clone())
            .failure_limit(r(2, 2))
            .build()
            .unwrap();
        assert_eq!(
            again.execution_log(),
            vec![false],
            "live-{i} kept its window"
        );
        assert_eq!(cb.state(), Closed);
    }
}
