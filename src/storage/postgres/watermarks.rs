//! What this instance knows of the table's progress: the newest row version it has seen (the
//! basis of the trips it decides, see `fleet/precedence.rs`), the database's clock, and when its
//! last full reload was read, which together say whether a notification may be taken on trust.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::fleet::Link;

use super::listener::REPLAY_WINDOW;
use super::sync::unix_micros;

/// High-water marks of the table, shared by the listener and the calling tasks.
#[derive(Debug)]
pub(crate) struct Watermarks {
    /// Holds the newest row version this instance has seen from any key (authenticated
    /// notifications, reloads, answers), where the cells read it as their decisions' basis.
    link: Arc<Link>,
    /// The database's clock minus ours, in microseconds, measured at each (re)connect and
    /// heartbeat: lag and a notification's age are measured by the database's clock.
    clock_offset_us: AtomicI64,
    /// When (database clock, microseconds) the last full reload's query was sent: a
    /// notification committed before is in that reload, or older.
    reloaded_at_us: AtomicI64,
}

impl Watermarks {
    /// Marks that keep the newest version seen in `link`.
    pub(crate) fn new(link: Arc<Link>) -> Watermarks {
        Watermarks {
            link,
            clock_offset_us: AtomicI64::new(0),
            reloaded_at_us: AtomicI64::new(i64::MIN),
        }
    }

    /// Records `version` as seen; true when it is newer than every one seen before.
    pub(crate) fn seen(&self, version: i64) -> bool {
        // Relaxed: a high-water mark; a trip decided a moment later than a version arrived
        // only has an older basis, which makes the database stricter with it, never wrong.
        self.link.newest_seen.fetch_max(version, Ordering::Relaxed) < version
    }

    /// The database's clock minus ours is `us` microseconds.
    pub(crate) fn set_clock_offset(&self, us: i64) {
        // Relaxed: one number, read alone.
        self.clock_offset_us.store(us, Ordering::Relaxed);
    }

    /// The database's clock now, by this instance's estimate (microseconds since the epoch).
    pub(crate) fn database_now_us(&self) -> i64 {
        unix_micros().saturating_add(self.clock_offset_us.load(Ordering::Relaxed))
    }

    /// A full reload's query is being sent now.
    pub(crate) fn reloading(&self) {
        // Relaxed: read by this instance's listener task only, after this store.
        self.reloaded_at_us
            .store(self.database_now_us(), Ordering::Relaxed);
    }

    /// True when a notification committed at `at_us` (database clock) may be taken on trust:
    /// after the last reload's query, and within the replay window of the database's clock.
    pub(crate) fn fresh(&self, at_us: i64) -> bool {
        let window = i64::try_from(REPLAY_WINDOW.as_micros()).unwrap_or(i64::MAX);
        let now = self.database_now_us();
        at_us >= self.reloaded_at_us.load(Ordering::Relaxed) // see `reloading`
            && at_us >= now.saturating_sub(window)
            && at_us <= now.saturating_add(window)
    }
}
