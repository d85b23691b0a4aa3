//! Many threads on one breaker, and many threads on many keys: the probe limit holds, every call
//! is accounted for, open breakers are never forgotten, nothing panics or deadlocks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_circuit::{CircuitBreaker, ManualClock, Ratio, State, Storage};

const THREADS: usize = 8;

/// A tiny deterministic xorshift generator, one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Default)]
struct Counts {
    attempts: AtomicU64,
    admitted: AtomicU64,
    rejected: AtomicU64,
    reported: AtomicU64,
    dropped: AtomicU64,
    probes: AtomicU64,
    probes_in_flight: AtomicI64,
    max_probes_in_flight: AtomicI64,
    probe_limit_violations: AtomicU64,
    rejected_while_closed: AtomicU64,
}

/// Eight threads hammer one breaker while one of them advances a manual clock: never more than
/// `den` probes of a round are in flight, every attempt is admitted or rejected, every admitted
/// permit is reported or dropped, callbacks only report legal transitions, and nothing panics.
///
/// A round ends as soon as closing has become impossible, and the probes it leaves running no
/// longer count for the breaker: a round begun after the cooldown may run beside them. So that
/// the in-flight count is that of one round, the clock moves only while no probe is in flight,
/// and admissions (with their count) and the clock's moves take turns: a new round never starts
/// while a probe of an earlier one runs.
#[test]
fn eight_threads_one_breaker() {
    let configs = [
        (Ratio::new(3, 6), Some(Ratio::new(2, 3))),
        (Ratio::new(2, 4), None),
        (Ratio::new(1, 1), Some(Ratio::new(1, 1))),
        (Ratio::new(1, 2), Some(Ratio::new(4, 5))),
    ];
    for (failure, success) in configs {
        let started = Instant::now();
        let den = success.unwrap_or(failure).denominator() as i64;
        let clock = ManualClock::new();
        let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
        let transitions = Arc::new(AtomicUsize::new(0));
        let illegal = Arc::new(Mutex::new(Vec::new()));
        let (t2, i2) = (transitions.clone(), illegal.clone());
        let mut b = CircuitBreaker::builder("hammered")
            .storage(storage)
            .failure_limit(failure)
            .cooldown(Duration::from_millis(3))
            .on_status_change(move |c| {
                t2.fetch_add(1, Ordering::Relaxed);
                let legal = matches!(
                    (c.from, c.to),
                    (State::Closed, State::Open)
                        | (State::Open, State::HalfOpen)
                        | (State::HalfOpen, State::Open)
                        | (State::HalfOpen, State::Closed)
                );
                if !legal {
                    i2.lock().unwrap().push((c.from, c.to));
                }
            });
        if let Some(s) = success {
            b = b.success_limit(s);
        }
        let cb = b.build().unwrap();
        let counts = Counts::default();
        let iterations = 10_000u64;
        // Workers still running; thread 0 keeps the clock moving until the others are done.
        let running = AtomicUsize::new(THREADS - 1);
        let start = std::sync::Barrier::new(THREADS);
        // Read: an admission and its count; write: a move of the clock (see the doc).
        let turns = std::sync::RwLock::new(());

        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (cb, counts, clock, running, start, turns) =
                    (&cb, &counts, &clock, &running, &start, &turns);
                s.spawn(move || {
                    start.wait();
                    let mut rng = Rng::new(t as u64 + 1);
                    let mut i = 0u64;
                    while i < iterations || (t == 0 && running.load(Ordering::SeqCst) > 0) {
                        i += 1;
                        if t == 0 && i % 8 == 0 {
                            let _turn = turns.write().unwrap();
                            if counts.probes_in_flight.load(Ordering::SeqCst) == 0 {
                                clock.advance(Duration::from_millis(1));
                            }
                        }
                        counts.attempts.fetch_add(1, Ordering::Relaxed);
                        let admitted = {
                            let _turn = turns.read().unwrap();
                            let admitted = cb.try_acquire();
                            if admitted.as_ref().is_ok_and(|p| p.is_probe()) {
                                counts.probes.fetch_add(1, Ordering::Relaxed);
                                let n = counts.probes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                                counts.max_probes_in_flight.fetch_max(n, Ordering::Relaxed);
                                if n > den {
                                    counts
                                        .probe_limit_violations
                                        .fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            admitted
                        };
                        let permit = match admitted {
                            Ok(p) => p,
                            Err(r) => {
                                counts.rejected.fetch_add(1, Ordering::Relaxed);
                                // Let the clock thread run: only it can end a cooldown.
                                std::thread::yield_now();
                                if r.state() == State::Closed {
                                    counts.rejected_while_closed.fetch_add(1, Ordering::Relaxed);
                                }
                                continue;
                            }
                        };
                        counts.admitted.fetch_add(1, Ordering::Relaxed);
                        let probe = permit.is_probe();
                        // Hold the permit a little (probes longer) so probes overlap.
                        let holds = if probe { 4 } else { rng.below(2) };
                        for _ in 0..holds {
                            std::thread::yield_now();
                        }
                        let roll = rng.below(10);
                        if probe {
                            counts.probes_in_flight.fetch_sub(1, Ordering::SeqCst);
                        }
                        match roll {
                            0 => {
                                drop(permit);
                                counts.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            1..=4 => {
                                permit.failure();
                                counts.reported.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                permit.success();
                                counts.reported.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if t != 0 {
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });

        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        let label = format!("failure {failure}, success {success:?}");
        assert!(
            get(&counts.attempts) >= THREADS as u64 * iterations,
            "{label}"
        );
        assert_eq!(
            get(&counts.attempts),
            get(&counts.admitted) + get(&counts.rejected),
            "{label}: every attempt admitted or rejected"
        );
        assert_eq!(
            get(&counts.admitted),
            get(&counts.reported) + get(&counts.dropped),
            "{label}: every admitted permit reported or dropped"
        );
        assert_eq!(
            get(&counts.probe_limit_violations),
            0,
            "{label}: more than {den} probes of a round in flight (max {})",
            counts.max_probes_in_flight.load(Ordering::SeqCst)
        );
        assert_eq!(counts.probes_in_flight.load(Ordering::SeqCst), 0);
        assert!(
            get(&counts.probes) > 0,
            "{label}: half-open was never reached"
        );
        assert!(
            get(&counts.rejected) > 0,
            "{label}: nothing was ever rejected"
        );
        assert!(
            illegal.lock().unwrap().is_empty(),
            "{label}: illegal transitions {:?}",
            illegal.lock().unwrap()
        );
        assert!(transitions.load(Ordering::SeqCst) > 0);

        // Still a working breaker afterwards.
        cb.force_closed();
        cb.try_acquire().unwrap().success();
        assert_eq!(cb.state(), State::Closed);
        eprintln!(
            "{label}: {} attempts, {} admitted ({} probes, max {} in flight of {den}), {} rejected ({} of them as CLOSED, see rejections_name_a_refusing_state), {} transitions, {:?}",
            get(&counts.attempts),
            get(&counts.admitted),
            get(&counts.probes),
            counts.max_probes_in_flight.load(Ordering::SeqCst),
            get(&counts.rejected),
            get(&counts.rejected_while_closed),
            transitions.load(Ordering::SeqCst),
            started.elapsed()
        );
    }
}

/// Eight threads build, use, hold and drop breakers for many keys on one small bounded store at
/// once: builds never conflict, an open key is never forgotten (it stays open, the clock never
/// moves), handles of one key share one state, and the store respects its bound afterwards.
#[test]
fn many_keys_many_threads() {
    const KEYS: u64 = 1_000;
    const CAPACITY: usize = 32;
    let started = Instant::now();
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(CAPACITY, Arc::new(clock.clone()));
    let build = |key: &str| {
        CircuitBreaker::builder(key)
            .storage(storage.clone())
            .failure_limit(Ratio::new(2, 2))
            .cooldown(Duration::from_secs(3600))
            .build()
            .unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let seen_open: Mutex<HashSet<String>> = Mutex::default();
    let lost_open = AtomicBool::new(false);
    let shared_keys: Vec<String> = (0..4).map(|i| format!("shared-{i}")).collect();

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (build, seen_open, lost_open, shared_keys) =
                (&build, &seen_open, &lost_open, &shared_keys);
            s.spawn(move || {
                let mut rng = Rng::new(100 + t as u64);
                // Every thread holds a handle on each shared key for the whole test.
                let shared: Vec<CircuitBreaker> = shared_keys.iter().map(|k| build(k)).collect();
                let mut live: Vec<CircuitBreaker> = Vec::new();
                for _ in 0..2_000 {
                    let k = rng.below(KEYS);
                    // Keys divisible by 10 always fail (and so open for good); others succeed.
                    let doomed = k % 10 == 0;
                    let key = format!("key-{k}");
                    let cb = build(&key);
                    for _ in 0..=rng.below(3) {
                        match cb.try_acquire() {
                            Ok(p) if doomed => p.failure(),
                            Ok(p) => p.success(),
                            Err(r) => {
                                assert!(doomed, "{key}: a healthy key was rejected: {r}");
                                assert_eq!(r.state(), State::Open);
                            }
                        }
                    }
                    if cb.state() == State::Open {
                        seen_open.lock().unwrap().insert(key.clone());
                    } else if seen_open.lock().unwrap().contains(&key) {
                        lost_open.store(true, Ordering::SeqCst);
                    }
                    if rng.below(4) == 0 {
                        live.push(cb);
                        if live.len() > 4 {
                            live.remove(0);
                        }
                    }
                    let sh = &shared[rng.below(shared.len() as u64) as usize];
                    if let Ok(p) = sh.try_acquire() {
                        p.failure();
                    }
                }
                for (k, sh) in shared_keys.iter().zip(&shared) {
                    assert_eq!(sh.state(), State::Open, "{k}");
                }
            });
        }
    });

    assert!(
        !lost_open.load(Ordering::SeqCst),
        "an open key came back closed"
    );
    let seen_open = seen_open.into_inner().unwrap();
    assert!(!seen_open.is_empty());
    for key in &seen_open {
        assert_eq!(
            storage.state_of(key),
            Some(State::Open),
            "{key} was forgotten"
        );
        assert_eq!(build(key).state(), State::Open, "{key}");
    }
    for k in &shared_keys {
        assert_eq!(storage.state_of(k), Some(State::Open), "{k}");
    }

    // No handle is left: one more insertion brings the idle keys back under the bound.
    build("one-more");
    let open = storage
        .states()
        .iter()
        .filter(|(_, s)| *s == State::Open)
        .count();
    assert_eq!(open, seen_open.len() + shared_keys.len());
    let len = storage.len();
    assert!(
        len <= CAPACITY.max(open + 1),
        "{len} keys held: {open} open, capacity {CAPACITY}"
    );
    eprintln!(
        "many keys: {open} open keys kept, {len} keys held, capacity {CAPACITY}, {:?}",
        started.elapsed()
    );
}

/// A rejection always names the state that refused the call: never CLOSED (a closed breaker
/// admits every call), and an OPEN rejection on an in-memory store always knows its time left.
#[test]
fn rejections_name_a_refusing_state() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    // Cooldown zero and one probe: rounds start and finish as fast as threads can race.
    let cb = CircuitBreaker::builder("racy-rejections")
        .storage(storage)
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::ZERO)
        .build()
        .unwrap();
    let closed = AtomicU64::new(0);
    let open_without_time = AtomicU64::new(0);
    let rejected = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cb, closed, open_without_time, rejected, started) =
                (&cb, &closed, &open_without_time, &rejected, started);
            s.spawn(move || {
                let mut rng = Rng::new(7 + t as u64);
                // Until a bad rejection shows up (then every thread stops) or 1.5 s pass.
                let until = started + Duration::from_millis(1_500);
                while Instant::now() < until
                    && closed.load(Ordering::Relaxed) + open_without_time.load(Ordering::Relaxed)
                        == 0
                {
                    match cb.try_acquire() {
                        Ok(p) if rng.below(2) == 0 => p.failure(),
                        Ok(p) => p.success(),
                        Err(r) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                            match (r.state(), r.retry_after()) {
                                (State::Closed, _) => closed.fetch_add(1, Ordering::Relaxed),
                                (State::Open, None) => {
                                    open_without_time.fetch_add(1, Ordering::Relaxed)
                                }
                                _ => 0,
                            };
                        }
                    }
                }
            });
        }
    });
    let (c, o, r) = (
        closed.load(Ordering::SeqCst),
        open_without_time.load(Ordering::SeqCst),
        rejected.load(Ordering::SeqCst),
    );
    eprintln!(
        "{r} rejections: {c} as CLOSED, {o} as OPEN without retry_after, {:?}",
        started.elapsed()
    );
    assert_eq!(
        (c, o),
        (0, 0),
        "of {r} rejections, {c} said CLOSED and {o} said OPEN with no time left"
    );
}

/// A window of `window` calls tripping at `failures` of them, with a cooldown of an hour.
fn windowed(key: &str, failures: u32, window: u32) -> CircuitBreaker {
    CircuitBreaker::builder(key)
        .storage(Storage::in_memory())
        .failure_limit(Ratio::new(failures, window))
        .cooldown(Duration::from_secs(3600))
        .build()
        .expect("valid breaker")
}

/// Runs `per_thread(thread, i)` outcomes on `THREADS` threads at once (true = success).
fn race(cb: &CircuitBreaker, calls: u32, per_thread: impl Fn(usize, u32) -> bool + Sync) {
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (cb, start, per_thread) = (cb.clone(), &start, &per_thread);
            s.spawn(move || {
                start.wait();
                for i in 0..calls {
                    if let Ok(p) = cb.try_acquire() {
                        p.record(if per_thread(t, i) {
                            resilient_circuit::Outcome::Success
                        } else {
                            resilient_circuit::Outcome::Failure
                        });
                    }
                }
            });
        }
    });
}

/// Outcomes are recorded without the key's lock. However successes and failures race, a
/// failure never hides behind the "window full of successes" bit (successes would then skip
/// the window, and the failure would stay in it for ever): after each race, one window of
/// successes on one thread leaves nothing but successes.
#[test]
fn racing_outcomes_never_leave_a_failure_behind_a_clean_window() {
    for window in [10u32, 100, 1000] {
        let cb = windowed(&format!("clean-race-{window}"), window, window);
        for round in 0..50u32 {
            race(&cb, 2_000, |t, i| (i + t as u32 + round) % 13 != 0);
            assert_eq!(cb.state(), State::Closed, "never all failures");
            for _ in 0..window {
                cb.try_acquire().expect("closed").success();
            }
            let log = cb.execution_log();
            assert_eq!(log.len() as u32, window);
            assert!(
                log.iter().all(|s| *s),
                "window {window}, round {round}: a failure survived a window of successes"
            );
        }
    }
}

/// The trip decision stays exact when threads record at once: a window that ends with the
/// limit met is open, and one that never met it is closed.
#[test]
fn racing_outcomes_trip_exactly_at_the_limit() {
    for window in [10u32, 100, 1000] {
        let per_thread = window / THREADS as u32 + 1;
        // Every outcome a failure: the window meets the limit the moment it fills.
        let cb = windowed(&format!("trip-race-{window}"), window / 2, window);
        race(&cb, per_thread, |_, _| false);
        assert_eq!(cb.state(), State::Open, "window {window}: all failures");

        // Just under half failures, whatever the order: never meets half of the window.
        let cb = windowed(&format!("hold-race-{window}"), window / 2 + 1, window);
        let failing = (window / 2) / THREADS as u32;
        race(&cb, per_thread, |_, i| i >= failing);
        assert_eq!(
            cb.state(),
            State::Closed,
            "window {window}: under the limit"
        );
        let failures = cb.execution_log().iter().filter(|s| !**s).count() as u32;
        assert!(
            failures <= window / 2,
            "window {window}: {failures} failures"
        );
    }
}

/// A time window counts successes without the lock, failures under it. Whatever the order in
/// which they race, the outcome that brings the period to its minimum of calls with the
/// failures at the limit trips it, and a period that never meets the limit stays closed.
#[test]
fn racing_outcomes_on_a_time_window_trip_exactly_at_the_minimum() {
    let per_thread = 16u32;
    let total = per_thread * THREADS as u32;
    let timed = |key: &str, failures: u32| {
        CircuitBreaker::builder(key)
            .storage(Storage::in_memory())
            .failure_limit(Ratio::new(failures, total))
            .minimum_calls(total)
            .time_window(Duration::from_secs(3600))
            .cooldown(Duration::from_secs(3600))
            .build()
            .expect("valid breaker")
    };
    for round in 0..50 {
        // Every other call fails: the limit (half the calls) is met only by the last outcome,
        // a success or a failure, whichever thread comes last.
        let cb = timed(&format!("timed-trip-{round}"), total / 2);
        race(&cb, per_thread, |t, i| (t as u32 + i) % 2 == 0);
        assert_eq!(cb.state(), State::Open, "round {round}: half failures");
        // One failure fewer than the limit: closed whatever the order.
        let cb = timed(&format!("timed-hold-{round}"), total / 2 + 1);
        race(&cb, per_thread, |t, i| (t as u32 + i) % 2 == 0);
        assert_eq!(cb.state(), State::Closed, "round {round}: under the limit");
    }
}
