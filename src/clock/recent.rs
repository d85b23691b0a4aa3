//! A recent reading of the process's [`SystemClock`], kept in one static by a background thread,
//! for the path that reads the time on every call but accepts a known lag: a time window's
//! calls (`cell/tally.rs`). Reading it is one load, where even the coarse clock is a call into
//! the vDSO (4–10 ns on a VM, most of a time-window success).
//!
//! The thread starts with the first window that asks for it and then runs for the process's
//! life. It wakes every `period`, the shortest lag any window asked for (at least [`MIN_LAG`]:
//! a wake-up costs some 30 µs of CPU on a VM, so 20 ms keeps it near 0.15% of a core), and
//! stores a precise reading. The kept reading is therefore never ahead of the clock and lags it
//! by at most the period plus the thread's scheduling delay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

use super::{duration_nanos, Clock, SystemClock};

/// The shortest lag the thread keeps: windows that need less read the clock on every call.
pub(crate) const MIN_LAG: Duration = Duration::from_millis(20);

/// The kept reading, in [`SystemClock`] nanoseconds; 0 until the thread runs.
static NANOS: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds between the thread's readings: the shortest lag asked for.
static PERIOD: AtomicU64 = AtomicU64::new(u64::MAX);
/// The thread, once started; `None` when it could not be.
static KEEPER: OnceLock<Option<Thread>> = OnceLock::new();

/// The kept reading. Only meaningful after [`keep`] returned true.
#[inline]
pub(crate) fn now() -> u64 {
    // Relaxed: the reading carries no other data, and one location's loads never go back.
    NANOS.load(Ordering::Relaxed)
}

/// Keeps the reading at most `lag` (at least [`MIN_LAG`]) behind the clock, starting the thread
/// if it is not running; false when it cannot run (the caller then reads the clock itself).
pub(crate) fn keep(lag: Duration) -> bool {
    let period = duration_nanos(lag.max(MIN_LAG));
    let before = PERIOD.fetch_min(period, Ordering::Relaxed);
    match KEEPER.get_or_init(start) {
        Some(keeper) => {
            if period < before {
                keeper.unpark(); // it may be asleep for the longer period
            }
            true
        }
        None => false,
    }
}

fn start() -> Option<Thread> {
    let spawned = thread::Builder::new()
        .name("resilient-circuit-clock".into())
        .spawn(|| loop {
            thread::park_timeout(Duration::from_nanos(PERIOD.load(Ordering::Relaxed)));
            NANOS.fetch_max(SystemClock.now_nanos(), Ordering::Relaxed);
        });
    match spawned {
        Ok(handle) => {
            // Seeded here, not by the thread: the reading is current when `keep` returns.
            NANOS.fetch_max(SystemClock.now_nanos(), Ordering::Relaxed);
            Some(handle.thread().clone())
        }
        Err(e) => {
            tracing::warn!(error = %e, "no clock thread: time windows read the clock on every call");
            None
        }
    }
}

/// The process's one [`SystemClock`] handle, which the storages give their breakers: a breaker
/// whose clock is this one may count its time window on the kept reading ([`is_system`]).
pub(crate) fn system() -> Arc<dyn Clock> {
    system_handle().clone()
}

fn system_handle() -> &'static Arc<dyn Clock> {
    static SYSTEM: OnceLock<Arc<dyn Clock>> = OnceLock::new();
    SYSTEM.get_or_init(|| Arc::new(SystemClock))
}

/// True when `clock` is [`system`]'s: its nanoseconds are the kept reading's. Another
/// `SystemClock` handle is not recognised and reads the clock itself (correct, only slower).
pub(crate) fn is_system(clock: &dyn Clock) -> bool {
    std::ptr::eq(
        clock as *const dyn Clock as *const (),
        Arc::as_ptr(system_handle()) as *const (),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The kept reading is never ahead of the clock, and moves on with it: after the clock has
    /// passed a later reading, the kept one reaches it within a few periods.
    #[test]
    fn the_kept_reading_follows_the_clock_from_behind() {
        assert!(keep(MIN_LAG));
        let clock = system();
        for _ in 0..1_000 {
            let kept = now();
            assert!(kept <= clock.now_nanos(), "ahead of the clock");
        }
        let target = clock.now_nanos();
        let deadline = Instant::now() + Duration::from_secs(10);
        while now() < target {
            assert!(Instant::now() < deadline, "the kept reading stopped");
            thread::yield_now();
        }
        assert!(now() <= clock.now_nanos());
    }

    #[test]
    fn only_the_shared_handle_is_recognised() {
        assert!(is_system(&*system()));
        assert!(is_system(&*system_handle().clone()));
        assert!(!is_system(&SystemClock));
        assert!(!is_system(&super::super::ManualClock::new()));
    }
}
