//! [`Clock`]: the monotonic time source of cooldowns, injectable for tests.
//!
//! Cooldowns are held as deadlines in nanoseconds of a monotonic clock, never as wall-clock
//! timestamps: a host whose wall clock jumps cannot open or hold a breaker wrongly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub(crate) mod recent;

/// A monotonic clock in nanoseconds since an arbitrary, fixed origin.
///
/// Breakers read it only on the slow paths (an open breaker deciding whether its cooldown is
/// over), never when admitting a call on a closed breaker.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Nanoseconds since this clock's origin; never decreases.
    fn now_nanos(&self) -> u64;

    /// How long until `deadline` (nanoseconds of this clock), or `None` once it has passed: what
    /// an open breaker asks on every rejected call. A clock with a cheaper, coarser reading may
    /// answer from it while the deadline is clearly ahead, understating the time left by at most
    /// its resolution; [`SystemClock`] does (see its docs).
    #[inline]
    fn until(&self, deadline: u64) -> Option<Duration> {
        let now = self.now_nanos();
        (now < deadline).then(|| Duration::from_nanos(deadline - now))
    }

    /// A cheaper reading of the same clock that may lag [`now_nanos`](Self::now_nanos) by up
    /// to [`coarse_resolution`](Self::coarse_resolution), never run ahead of it. By default the
    /// precise reading.
    #[inline]
    fn coarse_nanos(&self) -> u64 {
        self.now_nanos()
    }

    /// How far [`coarse_nanos`](Self::coarse_nanos) may lag; zero (the default) when it is the
    /// precise reading.
    fn coarse_resolution(&self) -> Duration {
        Duration::ZERO
    }
}

/// The process's monotonic clock ([`Instant`]).
///
/// On Linux, [`until`](Clock::until) first reads `CLOCK_MONOTONIC_COARSE` (the time of the
/// kernel's last tick, a few nanoseconds through the vDSO, against some 20 for the precise clock
/// on a VM): while the deadline is more than four ticks (`clock_getres`, typically 1–4 ms each)
/// ahead of it, the answer needs no precise reading. Nearer the deadline it reads the precise
/// clock. The coarse clock never runs ahead, so a cooldown never ends early; it could end late
/// only if the coarse clock lagged by more than four ticks. `retry_after` is then understated
/// by up to four ticks, never overstated.
///
/// The storages' own handle of it also keeps a recent reading in memory for time windows of
/// 5 s and more ([`Builder::time_window`](crate::Builder::time_window)), refreshed by one
/// background thread that starts with the first such window.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// The origin of [`SystemClock`], and the same instant on the coarse clock.
struct Origin {
    instant: Instant,
    /// `CLOCK_MONOTONIC` nanoseconds at `instant` (the clock `Instant` reads on Linux), and
    /// the coarse clock's resolution; `None` where there is no coarse clock.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    coarse: Option<(u64, u64)>,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        let instant = Instant::now();
        Origin {
            instant,
            coarse: coarse::origin(),
        }
    })
}

impl Clock for SystemClock {
    fn now_nanos(&self) -> u64 {
        // u64 nanoseconds last 584 years past the origin; saturate rather than wrap.
        u64::try_from(origin().instant.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    fn until(&self, deadline: u64) -> Option<Duration> {
        if let Some((base, resolution)) = origin().coarse {
            if let Some(coarse) = coarse::now().and_then(|n| n.checked_sub(base)) {
                // The precise clock is normally less than one tick ahead of the coarse one.
                let latest = coarse.saturating_add(resolution.saturating_mul(4));
                if latest < deadline {
                    // Measured from the latest the precise clock can be: never more than the
                    // time really left, so never more than the cooldown.
                    return Some(Duration::from_nanos(deadline - latest));
                }
            }
        }
        let now = self.now_nanos();
        (now < deadline).then(|| Duration::from_nanos(deadline - now))
    }

    /// `CLOCK_MONOTONIC_COARSE` on Linux (the kernel's last tick, read through the vDSO); the
    /// precise clock elsewhere.
    #[inline]
    fn coarse_nanos(&self) -> u64 {
        if let Some((base, _)) = origin().coarse {
            if let Some(coarse) = coarse::now().and_then(|n| n.checked_sub(base)) {
                return coarse;
            }
        }
        self.now_nanos()
    }

    fn coarse_resolution(&self) -> Duration {
        origin().coarse.map_or(Duration::ZERO, |(_, resolution)| {
            Duration::from_nanos(resolution)
        })
    }
}

/// `CLOCK_MONOTONIC_COARSE`, where Linux has it.
mod coarse {
    #[cfg(target_os = "linux")]
    fn read(clock: libc::clockid_t) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        if rc != 0 {
            return None;
        }
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        secs.checked_mul(1_000_000_000)?.checked_add(nanos)
    }

    /// The coarse clock's reading, in nanoseconds of `CLOCK_MONOTONIC`'s origin.
    #[cfg(target_os = "linux")]
    #[inline]
    pub(super) fn now() -> Option<u64> {
        read(libc::CLOCK_MONOTONIC_COARSE)
    }

    /// `CLOCK_MONOTONIC` now (the origin's `Instant` was read just before) and the coarse
    /// clock's resolution (plus 1 µs for the two readings' distance), if both are usable.
    #[cfg(target_os = "linux")]
    pub(super) fn origin() -> Option<(u64, u64)> {
        let base = read(libc::CLOCK_MONOTONIC)?;
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `res` is a valid, writable timespec for the call's duration.
        let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
        if rc != 0 || res.tv_sec != 0 {
            return None; // no coarse clock, or one too coarse to be worth it
        }
        let resolution = u64::try_from(res.tv_nsec).ok()?.checked_add(1_000)?;
        Some((base, resolution))
    }

    #[cfg(not(target_os = "linux"))]
    #[inline]
    pub(super) fn now() -> Option<u64> {
        None
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn origin() -> Option<(u64, u64)> {
        None
    }
}

/// A clock that only moves when told to: cooldown tests run instantly and deterministically.
///
/// ```
/// use resilient_circuit::{Clock, ManualClock};
/// use std::time::Duration;
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now_nanos(), 5_000_000_000);
/// ```
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward (saturating).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: the clock value carries no other data with it.
        let _ = self
            .nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::Relaxed)
    }
}

pub(crate) fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The coarse path agrees with the precise clock: far deadlines are ahead, by about the
    /// right amount; past and present ones are over; near ones are decided precisely.
    #[test]
    fn system_clock_until_matches_the_precise_clock() {
        let c = SystemClock;
        let now = c.now_nanos();
        // Both deadlines are ahead when read: `until` answers `Some` for them.
        let far = c.until(now + 10_000_000_000).expect("10 s ahead");
        // Understated by at most four ticks (a few ms), never overstated.
        assert!(far > Duration::from_millis(9_900), "{far:?}");
        assert!(far <= Duration::from_secs(10), "{far:?}");
        assert_eq!(c.until(now), None);
        assert_eq!(c.until(0), None);
        let near = c.until(c.now_nanos() + 50_000_000).expect("50 ms ahead");
        assert!(near <= Duration::from_millis(50), "{near:?}");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.until(now + 50_000_000), None, "over after it passed");
    }
}
