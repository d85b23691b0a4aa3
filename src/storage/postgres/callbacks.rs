//! Status-change callbacks of transitions made elsewhere (notifications, reloads, answers) run on
//! a thread of their own, in the order the transitions were applied.
//!
//! User code must never run on the listener task or under a lock of ours: a callback that blocks,
//! sleeps or builds breakers would otherwise stall every key of the instance (or deadlock on the
//! key map). A slow callback now only delays the callbacks behind it.

use std::sync::mpsc;
use std::sync::Arc;

use crate::cell::{KeyCell, Transition};
use crate::ChangeOrigin;

/// A remote transition waiting for its callbacks: the cell, the transition, the row version
/// and the database's commit time.
type Queued = (Arc<KeyCell>, Transition, Option<i64>, Option<i64>);

/// The sending side; the thread ends when the last sender is dropped (with the instance).
#[derive(Debug)]
pub(crate) struct Callbacks {
    tx: mpsc::Sender<Queued>,
}

impl Callbacks {
    /// Starts the thread. Falls back to running callbacks inline (logged) if no thread can be
    /// made, which only happens when the process is out of resources.
    pub(crate) fn start() -> Callbacks {
        let (tx, rx) = mpsc::channel::<Queued>();
        let spawned = std::thread::Builder::new()
            .name("resilient-circuit-callbacks".into())
            .spawn(move || {
                while let Ok((cell, t, version, committed_at_us)) = rx.recv() {
                    cell.notify_remote(t, version, committed_at_us);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the callback thread; callbacks of remote transitions will not run");
        }
        Callbacks { tx }
    }

    /// Queues the callbacks (and the log line and metric) of a remote transition made by row
    /// `version`, committed at `committed_at_us` (database clock) when known.
    pub(crate) fn queue(
        &self,
        cell: &Arc<KeyCell>,
        t: Transition,
        version: Option<i64>,
        committed_at_us: Option<i64>,
    ) {
        if t.from == t.to {
            return;
        }
        if !cell.has_callbacks() {
            // No user code to run: the log line and the metric need no thread hop. (A callback
            // registered at this very moment misses this one transition, as if registered after.)
            cell.announce(t, ChangeOrigin::Remote);
            return;
        }
        if self
            .tx
            .send((cell.clone(), t, version, committed_at_us))
            .is_err()
        {
            // The thread could not be started: log at least.
            tracing::info!(key = %cell.key, from = %t.from, to = %t.to, "circuit breaker changed state (remote)");
        }
    }
}
