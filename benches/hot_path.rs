//! Hot-path benchmarks: what a breaker costs a caller when nothing is going wrong, and what a
//! rejection costs when something is, for `resilient_circuit` next to `recloser` and `failsafe`.
//!
//! Included:
//!
//! * `closed_single_thread`: one thread, one closed and healthy breaker. For `resilient_circuit`
//!   the window is first filled with successes, so the breaker is *clean* and a success is the
//!   documented one-load fast path. Measured: `try_acquire` + `success`, `state`,
//!   `acquire_run_record` (public API only: `try_acquire`, run the operation, `record` its
//!   `Outcome::from_result`; what the async `call` does, without a future, and the same shape as
//!   the peers' synchronous `call`), and the public async `call` polled on a current-thread Tokio
//!   runtime; `recloser`'s and `failsafe`'s `call` with an `Ok` result.
//! * `closed_two_threads`: the same operations (`acquire_run_record` for this crate, `call` for
//!   the peers), with two threads
//!   hammering *one shared* breaker. Each `iter_custom` sample spawns two scoped threads that
//!   meet at a barrier and then each run `iters` operations; each thread times itself from the
//!   barrier's release, and the sample is the slower thread's time. Per-call figures are thus
//!   `elapsed / iters`: the wall time of one call *per thread* while the other thread does the
//!   same (the two threads together complete `2 / figure` calls per second). Thread spawn and
//!   join are outside the timed region.
//! * `open_reject`: the cost of being refused by an open breaker whose cooldown is far from over,
//!   single-threaded and with two threads sharing the breaker.
//!
//! * Owned permits, next to the borrowed ones in each group: `try_acquire_owned_success`,
//!   `acquire_owned_run_record` and (open) `try_acquire_owned`, the same operations through
//!   `try_acquire_owned`, whose `OwnedPermit` holds a clone of the breaker handle (one
//!   reference-count increment when admitted, one decrement when reported);
//!   `handle_clone_drop` measures that clone and drop alone. With two threads the count is one
//!   cache line both threads write, as with any `Arc` cloned per call.
//!
//! * `closed_single_thread/resilient_circuit/try_acquire_success_call_metrics`: the same with the
//!   opt-in per-call metrics (`Builder::call_metrics(true)`) counted by a real recorder
//!   (`metrics-exporter-prometheus`'s, installed for that breaker only with
//!   `metrics::with_local_recorder`): what counting every success costs.
//!
//! * `closed_single_thread/resilient_circuit/try_acquire_success_time_window`: a success on a
//!   breaker with a `time_window` (a success is counted without the key's lock: a clock
//!   reading, coarse at this period, and one compare-and-swap, `cell/tally.rs`);
//!   `try_acquire_record_timed_slow_calls` and `call_async_slow_calls`: a breaker with a
//!   slow-call threshold (1 s), reporting a duration through the permit, and timed by `call`
//!   (two coarse clock readings), each call under the threshold; `call_async_slow_calls_precise`
//!   the same with a 10 ms threshold, too short for the coarse clock (two precise readings).
//!
//! * `error_rate`: `acquire_run_record` (the peers' `call`) where one call in 100, or one in 20,
//!   fails: below the trip threshold (5 in 10), so the breaker stays closed, but its window is
//!   rarely clean and outcomes take the slow path. One thread and two (each thread counts its
//!   own calls, so each fails one in N).
//! * `windows`: recording at windows of 10, 100 and 1,000 outcomes and failure rates of 0.1%,
//!   1%, 5% and 50% (below an 80% limit), next to `recloser` with the same window and limit, on
//!   one thread and two.
//! * `half_open`: an in-memory breaker in HALF_OPEN whose probe slots are all taken
//!   (`try_acquire` rejected as `half_open_full`), and a whole probe cycle on a manual clock:
//!   trip, cooldown over, probe admitted and reported, closed again (two transitions).
//! * `postgres`: the same paths on a breaker of a PostgreSQL storage (a database of its own on
//!   the test server, see `tests/support`; the instance runs as a role that owns nothing).
//!   Admission and recording read the same local cell; only transitions reach the database.
//!   `quorum/…`: the same on a breaker with `TripPolicy::Quorum` (the policy is read only when
//!   the window trips, so these should match the default policy's figures); `fleet_rate/…` with
//!   `TripPolicy::FleetRate` (every call is counted for the fleet's rate, the healthy ones on the
//!   fast path too, a load and a store on a counter of the calling thread's; one thread and
//!   two; its `min_calls` is set out of reach so that the key never opens during the run);
//!   `group_member/…` on a member of a group with a cap (`Storage::group`), which only the
//!   database consults, when a member trips.
//!
//! Excluded: key lookup (`Storage::cell_for` runs once per `build`, never per call), and
//! metrics/tracing recorders (none is installed, so the rejection counter is the no-op
//! recorder's).
//!
//! The protected operation is the same trivial `black_box`'d `Ok` in every closure, so the
//! differences are the breakers' own. Each library is configured alike where it can be: a window
//! of 10 outcomes tripping at a 50% failure rate and a 30 s cooldown (`failsafe` has no such
//! window; its cheapest policy, `consecutive_failures(5, constant(30 s))`, is used, and its
//! default policy is measured separately as `call_default_policy`).
//!
//! Run with `cargo bench --bench hot_path`; `cargo test --bench hot_path` runs every routine once.

#[allow(dead_code, unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, Bencher, BenchmarkGroup, Criterion, Throughput};

/// The protected operation: the same in every benchmark, so only the breaker differs.
#[inline(always)]
fn work() -> Result<u64, ()> {
    Ok(black_box(42))
}

const WINDOW: u32 = 10;
const FAILURES_TO_TRIP: u32 = 5;
const COOLDOWN: Duration = Duration::from_secs(30);
/// Far longer than any run, so an opened breaker stays open throughout.
const LONG_COOLDOWN: Duration = Duration::from_secs(3600);

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group
}

/// Runs `op` `iters` times on each of two threads released together; returns the slower
/// thread's time (see the module docs).
fn two_threads<F: Fn() + Sync>(b: &mut Bencher<'_>, op: F) {
    b.iter_custom(|iters| {
        let barrier = Barrier::new(2);
        thread::scope(|s| {
            let run = || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    op();
                }
                start.elapsed()
            };
            let a = s.spawn(run);
            let b = s.spawn(run);
            a.join().unwrap().max(b.join().unwrap())
        })
    });
}

/// True on every `n`th call on this thread.
#[inline(always)]
fn nth(n: u32) -> bool {
    thread_local!(static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    CALLS.with(|c| {
        let i = c.get().wrapping_add(1);
        c.set(if i >= n { 0 } else { i });
        i >= n
    })
}

mod rc {
    use super::*;
    use resilient_circuit::{CircuitBreaker, CircuitError, Outcome, Ratio, State, Storage};

    /// A closed breaker whose window is full of successes ("clean").
    pub fn healthy(key: &str) -> CircuitBreaker {
        healthy_with(key, false)
    }

    /// [`healthy`], with the opt-in per-call metrics or not.
    pub fn healthy_with(key: &str, call_metrics: bool) -> CircuitBreaker {
        clean(
            key,
            Storage::in_memory(),
            WINDOW,
            FAILURES_TO_TRIP,
            call_metrics,
        )
    }

    /// A closed breaker on `storage` with a window of `window` outcomes tripping at
    /// `to_trip` failures, the window filled with successes.
    fn clean(
        key: &str,
        storage: Storage,
        window: u32,
        to_trip: u32,
        call_metrics: bool,
    ) -> CircuitBreaker {
        let cb = CircuitBreaker::builder(key)
            .storage(storage)
            .call_metrics(call_metrics)
            .failure_limit(Ratio::new(to_trip, window))
            .cooldown(COOLDOWN)
            .build()
            .expect("valid breaker");
        for _ in 0..2 * window {
            cb.try_acquire().expect("closed").success();
        }
        assert_eq!(cb.state(), State::Closed);
        assert_eq!(cb.execution_log(), vec![true; window as usize]);
        cb
    }

    pub fn open(key: &str) -> CircuitBreaker {
        let cb = healthy(key);
        cb.force_open(LONG_COOLDOWN);
        assert!(cb.try_acquire().is_err());
        cb
    }

    #[inline(always)]
    pub fn acquire_success(cb: &CircuitBreaker) {
        let permit = cb.try_acquire().expect("closed breaker admits");
        let r = work();
        permit.success();
        black_box(r).ok();
    }

    /// [`acquire_success`] with an owned permit.
    #[inline(always)]
    pub fn acquire_owned_success(cb: &CircuitBreaker) {
        let permit = cb.try_acquire_owned().expect("closed breaker admits");
        let r = work();
        permit.success();
        black_box(r).ok();
    }

    /// Public API only: admit, run, classify the `Result`, record. What `call` does, without the
    /// future; not itself a function of the crate.
    #[inline(always)]
    pub fn acquire_run_record(cb: &CircuitBreaker) -> Result<u64, CircuitError<()>> {
        let permit = cb.try_acquire()?;
        let r = work();
        permit.record(Outcome::from_result(&r));
        r.map_err(CircuitError::Inner)
    }

    /// [`acquire_run_record`] with an owned permit.
    #[inline(always)]
    pub fn acquire_owned_run_record(cb: &CircuitBreaker) -> Result<u64, CircuitError<()>> {
        let permit = cb.try_acquire_owned()?;
        let r = work();
        permit.record(Outcome::from_result(&r));
        r.map_err(CircuitError::Inner)
    }

    /// [`acquire_run_record`] where every `n`th call of this thread fails.
    #[inline(always)]
    pub fn acquire_run_record_failing(
        cb: &CircuitBreaker,
        n: u32,
    ) -> Result<u64, CircuitError<()>> {
        let permit = cb.try_acquire()?;
        let r = if super::nth(n) { Err(()) } else { work() };
        permit.record(Outcome::from_result(&r));
        r.map_err(CircuitError::Inner)
    }

    /// A breaker with a window of `window` outcomes tripping at 80%, filled with successes.
    /// (Two threads each failing every second call can put 6 failures in 10 consecutive
    /// outcomes, and a count taken while the other thread's slot is claimed and not yet written
    /// sees the outcome that slot held a lap before, so 7 (`cell/ring.rs`): 80% keeps every
    /// case closed.)
    pub fn window_at(key: &str, window: u32) -> CircuitBreaker {
        clean(key, Storage::in_memory(), window, window * 8 / 10, false)
    }

    /// A breaker like [`healthy`] with a window of `window` outcomes, tripping at half.
    pub fn healthy_window(key: &str, window: u32) -> CircuitBreaker {
        clean(key, Storage::in_memory(), window, window / 2, false)
    }

    /// A breaker like [`healthy`] on `storage`, configured further by `f` (a time window, slow
    /// calls, a trip policy), its window filled with successes.
    pub fn healthy_configured(
        key: &str,
        storage: Storage,
        f: impl FnOnce(resilient_circuit::Builder) -> resilient_circuit::Builder,
    ) -> CircuitBreaker {
        let cb = f(CircuitBreaker::builder(key)
            .storage(storage)
            .failure_limit(Ratio::new(FAILURES_TO_TRIP, WINDOW))
            .cooldown(COOLDOWN))
        .build()
        .expect("valid breaker");
        for _ in 0..2 * WINDOW {
            cb.try_acquire().expect("closed").success();
        }
        assert_eq!(cb.state(), State::Closed);
        cb
    }

    /// [`healthy_configured`] in memory with a slow-call threshold (slow calls as failures).
    pub fn slow_calls(key: &str, threshold: Duration) -> CircuitBreaker {
        healthy_configured(key, Storage::in_memory(), |b| {
            b.slow_call(threshold, resilient_circuit::SlowCalls::AsFailure)
        })
    }

    /// [`acquire_success`] reporting a duration under the slow-call threshold.
    #[inline(always)]
    pub fn acquire_record_timed(cb: &CircuitBreaker) {
        let permit = cb.try_acquire().expect("closed breaker admits");
        let r = work();
        permit.record_timed(Outcome::Success, Duration::from_millis(1));
        black_box(r).ok();
    }

    /// A breaker like [`healthy`] on `storage`.
    pub fn healthy_on(key: &str, storage: Storage) -> CircuitBreaker {
        clean(key, storage, WINDOW, FAILURES_TO_TRIP, false)
    }

    #[inline(always)]
    pub fn reject(cb: &CircuitBreaker) {
        let r = cb.try_acquire().map(|p| p.success());
        debug_assert!(r.is_err());
        black_box(r).ok();
    }

    /// [`reject`] through `try_acquire_owned`.
    #[inline(always)]
    pub fn reject_owned(cb: &CircuitBreaker) {
        let r = cb.try_acquire_owned().map(|p| p.success());
        debug_assert!(r.is_err());
        black_box(r).ok();
    }
}

mod rl {
    use super::*;
    use recloser::{Error, Recloser};

    pub fn healthy() -> Recloser {
        let r = Recloser::custom()
            .error_rate(FAILURES_TO_TRIP as f32 / WINDOW as f32)
            .closed_len(WINDOW as usize)
            .half_open_len(WINDOW as usize)
            .open_wait(COOLDOWN)
            .build();
        for _ in 0..2 * WINDOW {
            r.call(work).expect("closed");
        }
        r
    }

    /// [`healthy`] with a window of `window` outcomes.
    pub fn healthy_window(window: u32) -> Recloser {
        let r = Recloser::custom()
            .error_rate(0.5)
            .closed_len(window as usize)
            .half_open_len(window as usize)
            .open_wait(COOLDOWN)
            .build();
        for _ in 0..2 * window {
            r.call(work).expect("closed");
        }
        r
    }

    /// A window of `window` outcomes tripping at 80%, as [`rc::window_at`](super::rc::window_at).
    pub fn window_at(window: u32) -> Recloser {
        let r = Recloser::custom()
            .error_rate(0.8)
            .closed_len(window as usize)
            .half_open_len(window as usize)
            .open_wait(COOLDOWN)
            .build();
        for _ in 0..2 * window {
            r.call(work).expect("closed");
        }
        r
    }

    pub fn open() -> Recloser {
        let r = Recloser::custom()
            .error_rate(0.5)
            .closed_len(WINDOW as usize)
            .half_open_len(WINDOW as usize)
            .open_wait(LONG_COOLDOWN)
            .build();
        for _ in 0..=WINDOW {
            let _ = r.call(|| Err::<(), ()>(()));
        }
        assert!(matches!(r.call(work), Err(Error::Rejected)));
        r
    }

    #[inline(always)]
    pub fn call(r: &Recloser) -> Result<u64, Error<()>> {
        r.call(work)
    }

    /// [`call`] where every `n`th call of this thread fails.
    #[inline(always)]
    pub fn call_failing(r: &Recloser, n: u32) -> Result<u64, Error<()>> {
        r.call(|| if super::nth(n) { Err(()) } else { work() })
    }

    /// Calls recloser rejected in [`call_failing_counted`]: recloser has no public state, so
    /// its rejections are how a bench sees that it opened (its row then times rejections).
    pub static REJECTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    /// [`call_failing`], counting rejections in [`REJECTED`] (an add only on a rejection).
    #[inline(always)]
    pub fn call_failing_counted(r: &Recloser, n: u32) -> Result<u64, Error<()>> {
        let result = call_failing(r, n);
        if matches!(result, Err(Error::Rejected)) {
            REJECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }
}

mod fs {
    use super::*;
    use failsafe::{backoff, failure_policy, CircuitBreaker, Config, Error};

    pub fn healthy() -> impl CircuitBreaker + Sync {
        let cb = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                FAILURES_TO_TRIP,
                backoff::constant(COOLDOWN),
            ))
            .build();
        for _ in 0..2 * WINDOW {
            cb.call(work).expect("closed");
        }
        cb
    }

    /// The out-of-the-box policy: success rate over a time window, or else consecutive failures.
    pub fn healthy_default_policy() -> impl CircuitBreaker + Sync {
        let cb = Config::new().build();
        for _ in 0..2 * WINDOW {
            cb.call(work).expect("closed");
        }
        cb
    }

    pub fn open() -> impl CircuitBreaker + Sync {
        let cb = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                1,
                backoff::constant(LONG_COOLDOWN),
            ))
            .build();
        let _ = cb.call(|| Err::<(), ()>(()));
        assert!(matches!(cb.call(work), Err(Error::Rejected)));
        cb
    }

    #[inline(always)]
    pub fn call(cb: &impl CircuitBreaker) -> Result<u64, Error<()>> {
        cb.call(work)
    }

    /// [`call`] where every `n`th call of this thread fails.
    #[inline(always)]
    pub fn call_failing(cb: &impl CircuitBreaker, n: u32) -> Result<u64, Error<()>> {
        cb.call(|| if super::nth(n) { Err(()) } else { work() })
    }
}

/// One thread, one closed healthy breaker.
mod closed_single_thread {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let mut group = configure(c, "closed_single_thread");

        let cb = rc::healthy("closed_single_thread");
        group.bench_function("resilient_circuit/try_acquire_success", |b| {
            b.iter(|| rc::acquire_success(black_box(&cb)))
        });
        group.bench_function("resilient_circuit/try_acquire_owned_success", |b| {
            b.iter(|| rc::acquire_owned_success(black_box(&cb)))
        });
        // What an owned permit adds to a borrowed one, measured alone.
        group.bench_function("resilient_circuit/handle_clone_drop", |b| {
            b.iter(|| drop(black_box(black_box(&cb).clone())))
        });
        // A real recorder for this breaker's handles only: the rest of the bench keeps none.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let counted = metrics::with_local_recorder(&recorder, || {
            rc::healthy_with("closed_single_thread_counted", true)
        });
        group.bench_function("resilient_circuit/try_acquire_success_call_metrics", |b| {
            b.iter(|| rc::acquire_success(black_box(&counted)))
        });
        group.bench_function("resilient_circuit/state", |b| {
            b.iter(|| black_box(black_box(&cb).state()))
        });
        group.bench_function("resilient_circuit/acquire_run_record", |b| {
            b.iter(|| black_box(rc::acquire_run_record(black_box(&cb))).ok())
        });
        group.bench_function("resilient_circuit/acquire_owned_run_record", |b| {
            b.iter(|| black_box(rc::acquire_owned_run_record(black_box(&cb))).ok())
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime");
        group.bench_function("resilient_circuit/call_async", |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(black_box(&cb).call(|| async { work() }).await).ok() })
        });
        // The opt-in windows: a time window counts every success with a clock reading (for this
        // 60 s period, the load of one a background thread keeps) and one compare-and-swap
        // (`cell/tally.rs`); a slow-call threshold makes `call` read the clock
        // twice.
        let timed = rc::healthy_configured(
            "closed_single_thread_time_window",
            resilient_circuit::Storage::in_memory(),
            |b| b.time_window(Duration::from_secs(60)).minimum_calls(WINDOW),
        );
        group.bench_function("resilient_circuit/try_acquire_success_time_window", |b| {
            b.iter(|| rc::acquire_success(black_box(&timed)))
        });
        // The same period with 1 call in 100 failing: failures are recorded under the lock,
        // successes still without it.
        let timed_failing = rc::healthy_configured(
            "closed_single_thread_time_window_failing",
            resilient_circuit::Storage::in_memory(),
            |b| b.time_window(Duration::from_secs(60)).minimum_calls(WINDOW),
        );
        group.bench_function(
            "resilient_circuit/acquire_run_record_time_window_1_in_100",
            |b| {
                b.iter(|| {
                    black_box(rc::acquire_run_record_failing(
                        black_box(&timed_failing),
                        100,
                    ))
                    .ok()
                })
            },
        );
        let slow = rc::slow_calls("closed_single_thread_slow_calls", Duration::from_secs(1));
        group.bench_function(
            "resilient_circuit/try_acquire_record_timed_slow_calls",
            |b| b.iter(|| rc::acquire_record_timed(black_box(&slow))),
        );
        group.bench_function("resilient_circuit/call_async_slow_calls", |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(black_box(&slow).call(|| async { work() }).await).ok() })
        });
        // A threshold under 25 coarse ticks: timed on the precise clock.
        let precise = rc::slow_calls(
            "closed_single_thread_slow_calls_precise",
            Duration::from_millis(10),
        );
        group.bench_function("resilient_circuit/call_async_slow_calls_precise", |b| {
            b.to_async(&rt).iter(|| async {
                black_box(black_box(&precise).call(|| async { work() }).await).ok()
            })
        });

        let r = rl::healthy();
        group.bench_function("recloser/call", |b| {
            b.iter(|| black_box(rl::call(black_box(&r))).ok())
        });

        let f = fs::healthy();
        group.bench_function("failsafe/call", |b| {
            b.iter(|| black_box(fs::call(black_box(&f))).ok())
        });
        let f = fs::healthy_default_policy();
        group.bench_function("failsafe/call_default_policy", |b| {
            b.iter(|| black_box(fs::call(black_box(&f))).ok())
        });

        group.finish();
    }
}

/// Two threads, one shared closed healthy breaker.
mod closed_two_threads {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let mut group = configure(c, "closed_two_threads");

        let cb = rc::healthy("closed_two_threads");
        group.bench_function("resilient_circuit/try_acquire_success", |b| {
            two_threads(b, || rc::acquire_success(black_box(&cb)))
        });
        group.bench_function("resilient_circuit/try_acquire_owned_success", |b| {
            two_threads(b, || rc::acquire_owned_success(black_box(&cb)))
        });
        group.bench_function("resilient_circuit/acquire_run_record", |b| {
            two_threads(b, || {
                black_box(rc::acquire_run_record(black_box(&cb))).ok();
            })
        });
        group.bench_function("resilient_circuit/acquire_owned_run_record", |b| {
            two_threads(b, || {
                black_box(rc::acquire_owned_run_record(black_box(&cb))).ok();
            })
        });

        let r = rl::healthy();
        group.bench_function("recloser/call", |b| {
            two_threads(b, || {
                black_box(rl::call(black_box(&r))).ok();
            })
        });

        let f = fs::healthy();
        group.bench_function("failsafe/call", |b| {
            two_threads(b, || {
                black_box(fs::call(black_box(&f))).ok();
            })
        });

        group.finish();
    }
}

/// Refusals by an open breaker, one thread and two.
mod open_reject {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let mut group = configure(c, "open_reject");

        let cb = rc::open("open_reject");
        let r = rl::open();
        let f = fs::open();

        group.bench_function("resilient_circuit/try_acquire", |b| {
            b.iter(|| rc::reject(black_box(&cb)))
        });
        group.bench_function("resilient_circuit/try_acquire_owned", |b| {
            b.iter(|| rc::reject_owned(black_box(&cb)))
        });
        group.bench_function("recloser/call", |b| {
            b.iter(|| black_box(rl::call(black_box(&r))).ok())
        });
        group.bench_function("failsafe/call", |b| {
            b.iter(|| black_box(fs::call(black_box(&f))).ok())
        });

        group.bench_function("two_threads/resilient_circuit/try_acquire", |b| {
            two_threads(b, || rc::reject(black_box(&cb)))
        });
        group.bench_function("two_threads/resilient_circuit/try_acquire_owned", |b| {
            two_threads(b, || rc::reject_owned(black_box(&cb)))
        });
        group.bench_function("two_threads/recloser/call", |b| {
            two_threads(b, || {
                black_box(rl::call(black_box(&r))).ok();
            })
        });
        group.bench_function("two_threads/failsafe/call", |b| {
            two_threads(b, || {
                black_box(fs::call(black_box(&f))).ok();
            })
        });

        group.finish();
    }
}

/// Outcomes at realistic error rates, below the trip threshold.
mod error_rate {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let mut group = configure(c, "error_rate");
        for n in [100, 20] {
            let cb = rc::healthy(&format!("error_rate_{n}"));
            let r = rl::healthy();
            let f = fs::healthy();
            group.bench_function(
                format!("1_in_{n}/resilient_circuit/acquire_run_record"),
                |b| b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok()),
            );
            group.bench_function(format!("1_in_{n}/recloser/call"), |b| {
                b.iter(|| black_box(rl::call_failing(black_box(&r), n)).ok())
            });
            group.bench_function(format!("1_in_{n}/failsafe/call"), |b| {
                b.iter(|| black_box(fs::call_failing(black_box(&f), n)).ok())
            });
            group.bench_function(
                format!("two_threads/1_in_{n}/resilient_circuit/acquire_run_record"),
                |b| {
                    two_threads(b, || {
                        black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok();
                    })
                },
            );
            group.bench_function(format!("two_threads/1_in_{n}/recloser/call"), |b| {
                two_threads(b, || {
                    black_box(rl::call_failing(black_box(&r), n)).ok();
                })
            });
            group.bench_function(format!("two_threads/1_in_{n}/failsafe/call"), |b| {
                two_threads(b, || {
                    black_box(fs::call_failing(black_box(&f), n)).ok();
                })
            });
            assert_eq!(
                cb.state(),
                resilient_circuit::State::Closed,
                "1 in {n} stays below the threshold"
            );
        }
        // A window of 100 (50 failures to trip): at these rates it nearly always holds a
        // failure, so no outcome takes the clean fast path.
        for n in [100, 20] {
            let cb = rc::healthy_window(&format!("error_rate_w100_{n}"), 100);
            let r = rl::healthy_window(100);
            group.bench_function(
                format!("window_100/1_in_{n}/resilient_circuit/acquire_run_record"),
                |b| b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok()),
            );
            group.bench_function(format!("window_100/1_in_{n}/recloser/call"), |b| {
                b.iter(|| black_box(rl::call_failing(black_box(&r), n)).ok())
            });
            group.bench_function(
                format!("window_100/two_threads/1_in_{n}/resilient_circuit/acquire_run_record"),
                |b| {
                    two_threads(b, || {
                        black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok();
                    })
                },
            );
            group.bench_function(
                format!("window_100/two_threads/1_in_{n}/recloser/call"),
                |b| {
                    two_threads(b, || {
                        black_box(rl::call_failing(black_box(&r), n)).ok();
                    })
                },
            );
            assert_eq!(cb.state(), resilient_circuit::State::Closed);
        }
        group.finish();
    }
}

/// Half-open admission and probe reporting, in memory.
mod half_open {
    use super::*;
    use resilient_circuit::{CircuitBreaker, ManualClock, Ratio, State, Storage};
    use std::sync::Arc;

    pub fn bench(c: &mut Criterion) {
        let mut group = configure(c, "half_open");

        // Every probe slot taken: callers are refused as half_open_full.
        let clock = Arc::new(ManualClock::new());
        let full = CircuitBreaker::builder("half_open_full")
            .storage(Storage::in_memory_with(16, clock.clone()))
            .failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(1, 1))
            .cooldown(COOLDOWN)
            .build()
            .expect("valid");
        let _ = full.try_acquire().map(|p| p.failure());
        clock.advance(COOLDOWN);
        let held = full.try_acquire().expect("the one probe");
        assert_eq!(full.state(), State::HalfOpen);
        group.bench_function("resilient_circuit/try_acquire_full", |b| {
            b.iter(|| black_box(black_box(&full).try_acquire().map(|p| p.success())).ok())
        });
        group.bench_function("two_threads/resilient_circuit/try_acquire_full", |b| {
            two_threads(b, || {
                black_box(black_box(&full).try_acquire().map(|p| p.success())).ok();
            })
        });
        drop(held);

        // Trip, wait out the cooldown (a manual clock), probe, close: two transitions a cycle.
        let clock = Arc::new(ManualClock::new());
        let cycle = CircuitBreaker::builder("half_open_cycle")
            .storage(Storage::in_memory_with(16, clock.clone()))
            .failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(1, 1))
            .cooldown(COOLDOWN)
            .build()
            .expect("valid");
        group.bench_function("resilient_circuit/probe_cycle", |b| {
            b.iter(|| {
                cycle.try_acquire().expect("closed").failure();
                clock.advance(COOLDOWN);
                let probe = cycle.try_acquire().expect("a probe");
                probe.success();
            })
        });
        assert_eq!(cycle.state(), State::Closed);
        group.finish();
    }
}

/// The same paths on a breaker of a PostgreSQL storage.
mod postgres {
    use super::*;
    use resilient_circuit::storage::postgres::PostgresOptions;
    use resilient_circuit::Storage;

    pub fn bench(c: &mut Criterion) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the listener");
        let (db, storage) = rt.block_on(async {
            let db = support::test_db().await;
            let opts = PostgresOptions::from_dsn(&db.app_conninfo().await).expect("dsn");
            let storage = Storage::connect_with(opts).await.expect("connects");
            (db, storage)
        });
        let mut group = configure(c, "postgres");
        let healthy = rc::healthy_on("pg_healthy", storage.clone());
        group.bench_function("resilient_circuit/try_acquire_success", |b| {
            b.iter(|| rc::acquire_success(black_box(&healthy)))
        });
        group.bench_function("two_threads/resilient_circuit/acquire_run_record", |b| {
            two_threads(b, || {
                black_box(rc::acquire_run_record(black_box(&healthy))).ok();
            })
        });
        for n in [100, 20] {
            let cb = rc::healthy_on(&format!("pg_error_rate_{n}"), storage.clone());
            group.bench_function(
                format!("1_in_{n}/resilient_circuit/acquire_run_record"),
                |b| b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok()),
            );
            group.bench_function(
                format!("two_threads/1_in_{n}/resilient_circuit/acquire_run_record"),
                |b| {
                    two_threads(b, || {
                        black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok();
                    })
                },
            );
        }
        // The trip policy is read only when the window trips: a quorum breaker's calls take
        // the same paths as the default's.
        let quorum = rc::healthy_configured("pg_quorum", storage.clone(), |b| {
            b.trip_policy(resilient_circuit::TripPolicy::Quorum {
                instances: 3,
                within: Duration::from_secs(60),
            })
        });
        group.bench_function("quorum/resilient_circuit/try_acquire_success", |b| {
            b.iter(|| rc::acquire_success(black_box(&quorum)))
        });
        group.bench_function("quorum/1_in_20/resilient_circuit/acquire_run_record", |b| {
            b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&quorum), 20)).ok())
        });
        // A fleet-rate breaker counts every call (a load and a store on a counter of the calling
        // thread's, on the fast path too) for the fleet's rate: the cost of that count on the
        // calls. Its reports are sent by a task, off the calls' paths.
        let rate = rc::healthy_configured("pg_fleet_rate", storage.clone(), |b| {
            b.trip_policy(resilient_circuit::TripPolicy::FleetRate {
                limit: resilient_circuit::Ratio::new(1, 2),
                min_calls: 1_000_000,
                period: Duration::from_secs(60),
            })
        });
        group.bench_function("fleet_rate/resilient_circuit/try_acquire_success", |b| {
            b.iter(|| rc::acquire_success(black_box(&rate)))
        });
        group.bench_function(
            "fleet_rate/two_threads/resilient_circuit/try_acquire_success",
            |b| two_threads(b, || rc::acquire_success(black_box(&rate))),
        );
        group.bench_function(
            "fleet_rate/1_in_20/resilient_circuit/acquire_run_record",
            |b| b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&rate), 20)).ok()),
        );
        // A member of a group with a cap: an ordinary breaker on key `group/member`, the group
        // consulted only by the database when it trips.
        let hosts = rt
            .block_on(storage.group("bench_group").join(["member"]))
            .expect("joins a group");
        let member = rc::healthy_on(&hosts.key("member"), storage.clone());
        group.bench_function("group_member/resilient_circuit/try_acquire_success", |b| {
            b.iter(|| rc::acquire_success(black_box(&member)))
        });
        group.bench_function(
            "group_member/1_in_20/resilient_circuit/acquire_run_record",
            |b| b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&member), 20)).ok()),
        );
        let open = rc::healthy_on("pg_open", storage.clone());
        open.force_open(LONG_COOLDOWN);
        group.bench_function("resilient_circuit/try_acquire_rejected", |b| {
            b.iter(|| rc::reject(black_box(&open)))
        });
        group.bench_function("two_threads/resilient_circuit/try_acquire_rejected", |b| {
            two_threads(b, || rc::reject(black_box(&open)))
        });
        group.finish();
        drop((healthy, quorum, rate, open, storage));
        rt.block_on(async move { drop(db) });
    }
}

/// Recording outcomes at the window sizes users configure (10, 100, 1,000) and failure rates of
/// 0.1%, 1%, 5% and 50%, all below an 80% limit, for this crate and `recloser` configured alike
/// (the same window, the same limit), on one thread and on two sharing the breaker. The breaker
/// goes through `black_box` on every call, so nothing about it is hoisted out of the loop.
mod windows {
    use super::*;

    pub fn bench(c: &mut Criterion) {
        let mut group = configure(c, "windows");
        let mut opened = PeerRejections::new();
        for window in [10u32, 100, 1000] {
            for n in [1000u32, 100, 20, 2] {
                let cb = rc::window_at(&format!("windows_{window}_1_in_{n}"), window);
                let r = rl::window_at(window);
                let case = format!("{window}/1_in_{n}");
                group.bench_function(format!("{case}/resilient_circuit"), |b| {
                    b.iter(|| black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok())
                });
                opened.run(&format!("{case}/recloser"), || {
                    group.bench_function(format!("{case}/recloser"), |b| {
                        b.iter(|| black_box(rl::call_failing_counted(black_box(&r), n)).ok())
                    });
                });
                group.bench_function(format!("two_threads/{case}/resilient_circuit"), |b| {
                    two_threads(b, || {
                        black_box(rc::acquire_run_record_failing(black_box(&cb), n)).ok();
                    })
                });
                opened.run(&format!("two_threads/{case}/recloser"), || {
                    group.bench_function(format!("two_threads/{case}/recloser"), |b| {
                        two_threads(b, || {
                            black_box(rl::call_failing_counted(black_box(&r), n)).ok();
                        })
                    });
                });
                assert_eq!(
                    cb.state(),
                    resilient_circuit::State::Closed,
                    "{case} stays under the limit"
                );
            }
        }
        group.finish();
        opened.write();
    }

    /// The recloser cases in which recloser opened, with how many calls it rejected: written
    /// beside criterion's results (`windows/peer-rejections.tsv`), where `scripts/perf-table`
    /// marks those rows, and printed.
    struct PeerRejections(Vec<(String, u64)>);

    impl PeerRejections {
        fn new() -> Self {
            PeerRejections(Vec::new())
        }

        /// Runs one recloser case, counting its rejections.
        fn run(&mut self, case: &str, bench: impl FnOnce()) {
            use std::sync::atomic::Ordering;
            let before = rl::REJECTED.load(Ordering::Relaxed);
            bench();
            let rejected = rl::REJECTED.load(Ordering::Relaxed) - before;
            if rejected > 0 {
                eprintln!("windows/{case}: recloser opened and rejected {rejected} calls");
                self.0.push((case.to_owned(), rejected));
            }
        }

        fn write(&self) {
            let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
            let dir = std::path::Path::new(&target)
                .join("criterion")
                .join("windows");
            let lines: String = self.0.iter().map(|(c, n)| format!("{c}\t{n}\n")).collect();
            if let Err(e) = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join("peer-rejections.tsv"), lines))
            {
                eprintln!("windows: could not write peer-rejections.tsv: {e}");
            }
        }
    }
}

criterion_group! {
    name = benches;
    // Plots (plotters, as gnuplot is rarely installed) cost more time than the measurements.
    config = Criterion::default().without_plots();
    targets = closed_single_thread::bench, closed_two_threads::bench, open_reject::bench,
        error_rate::bench, windows::bench, half_open::bench, postgres::bench
}
criterion_main!(benches);
