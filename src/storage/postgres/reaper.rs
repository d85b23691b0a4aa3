//! The reaper: one small task per instance that closes pooled connections left idle for
//! [`pool_idle_timeout`](super::PostgresOptions::pool_idle_timeout), so that an instance at rest
//! holds one server connection (its listener's) instead of one more for every pooled connection
//! it ever opened. A transition after that opens a connection on demand: one connect more on the
//! first call after a quiet spell (the propagation bench, phase 10, measures it).
//!
//! Connections in use are not in the pool's idle set, so a call is never cut short. Idle time
//! is deadpool's `Metrics::last_used`: counted from when a call last took the connection (its
//! last recycle), so a connection returned by a long call counts that call as idle time too; a
//! call is bounded by the statement timeout, which keeps the error small.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;

/// The reaper never wakes more often than this, whatever the timeout: a tiny timeout must not
/// turn into a busy loop on the runtime every instance of the process shares.
pub(crate) const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Closes `pool`'s connections idle for `idle` or longer until `shutdown` fires (the instance's
/// sender is dropped with its last `Storage`).
pub(crate) async fn run(pool: Pool, idle: Duration, mut shutdown: watch::Receiver<()>) {
    let mut wait = next_wake(idle, None);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let (closed, oldest) = reap(&pool, idle);
        if closed > 0 {
            tracing::debug!(closed, ?idle, "closed pooled connections left idle");
        }
        wait = next_wake(idle, oldest);
    }
}

/// Closes the idle connections of `pool` unused for `idle` or more. Returns how many it closed
/// and the longest time one of the others has been unused (`None`: no idle connection is left).
fn reap(pool: &Pool, idle: Duration) -> (usize, Option<Duration>) {
    let mut oldest: Option<Duration> = None;
    // Under the pool's lock: a few comparisons per idle connection (at most `pool_size`).
    let removed = pool.retain(|_, metrics| {
        let unused = metrics.last_used();
        if unused >= idle {
            return false;
        }
        oldest = Some(oldest.map_or(unused, |o| o.max(unused)));
        true
    });
    // Dropping them closes them (their connection tasks end).
    (removed.removed.len(), oldest)
}

/// How long the reaper sleeps: until the idle connection unused the longest (`oldest`) reaches
/// `idle`, but at most `idle / 2` (a connection in use now comes back later with an idle time
/// counted from before, so it may be due sooner than a full `idle` from now), and never less
/// than [`MIN_PERIOD`].
fn next_wake(idle: Duration, oldest: Option<Duration>) -> Duration {
    let half = idle / 2;
    let due = match oldest {
        Some(unused) => idle.saturating_sub(unused).min(half),
        None => half,
    };
    due.max(MIN_PERIOD)
}

#[cfg(test)]
#[path = "reaper_tests.rs"]
mod tests;
