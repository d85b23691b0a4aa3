//! What a store shared by a fleet adds to the core, whatever its backend: who wins between this
//! instance's decisions and the shared row, and what a trip this instance decided becomes for the
//! fleet under each trip policy ([`precedence`]); what a cell reads of its store without asking
//! ([`Link`]); and the interface a shared backend implements ([`SharedStore`]). The core (`cell/`, `storage/mod.rs`) knows these and nothing
//! of PostgreSQL; `storage::postgres` implements them.

pub(crate) mod precedence;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cell::{KeyCell, Lease};
use crate::{State, StorageError};

/// What a cell of a shared store reads of it without asking: whether the store reaches the
/// shared state, and the newest row version it has seen, the basis of a decision made now (see
/// [`precedence`]). Shared with the store (one `Arc` per cell, as small as a flag), so that a
/// cell reads both under its own lock, in the step that decides.
#[derive(Debug, Default)]
pub(crate) struct Link {
    /// True while the store reaches the shared state.
    pub(crate) online: AtomicBool,
    /// The newest row version the store has seen, from any key.
    pub(crate) newest_seen: AtomicI64,
}

impl Link {
    /// True while the store reaches the shared state.
    pub(crate) fn is_online(&self) -> bool {
        // Relaxed: a mode hint; a call that reads it just as the connection changes takes either
        // path, and both are safe (a lease reported while offline simply expires).
        self.online.load(Ordering::Relaxed)
    }

    /// The basis of a decision made now: the newest version seen.
    pub(crate) fn basis(&self) -> i64 {
        // Relaxed: a high-water mark; a decision that reads it a moment early only has an older
        // basis, which makes the shared state stricter with it, never wrong.
        self.newest_seen.load(Ordering::Relaxed)
    }
}

/// Told whether the database accepted an override, when the caller asked to hear it.
pub(crate) type Done = tokio::sync::oneshot::Sender<Result<(), StorageError>>;

/// A future a [`SharedStore`] returns (its methods are called through `dyn`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend that shares breaker state with a fleet: the one way the core reaches it. Every
/// method returns at once (work is handed to the backend's own tasks) but `flush`.
pub(crate) trait SharedStore: Send + Sync {
    /// The backend's name, for [`Storage::backend_name`](crate::Storage::backend_name).
    fn name(&self) -> &'static str;
    /// The namespace of its keys, the `namespace` label of its metrics.
    fn namespace(&self) -> &str;
    /// What its cells read of it without asking: whether it reaches the shared state (they
    /// then ask it for probe leases, else judge alone) and the basis of their decisions.
    fn link(&self) -> Arc<Link>;
    /// How many keys have a decision of ours the shared state has not answered yet.
    fn pending(&self) -> usize;
    /// True while it has no working link to the shared state.
    fn is_degraded(&self) -> bool;
    /// Waits, at most `within`, until everything sent was answered; true when nothing is left.
    fn flush(&self, within: Duration) -> BoxFuture<'_, bool>;
    /// Asks for a half-open probe lease for `cell`.
    fn request_lease(&self, cell: &Arc<KeyCell>);
    /// Until when (the storage's clock, nanoseconds) the fleet judges `key`'s rate, if it does:
    /// a breaker built for the key after the judgement was heard reports its rate too.
    fn judged_until(&self, key: &str) -> Option<u64>;
    /// Sends the result of a probe made under `lease`.
    fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool);
    /// Carries out what `cell` opened for on its own judgement, as the hold it registered with
    /// the transition says ([`Hold`](precedence::Hold)): a trip for everyone, a vote, or
    /// nothing beyond this instance.
    fn decided(&self, cell: &Arc<KeyCell>);
    /// Publishes a manual override; `done` hears whether it was accepted.
    fn force(&self, cell: &Arc<KeyCell>, to: State, cooldown: Duration, done: Option<Done>);
    /// Makes `keys` members of `group`, whose cap on open members is `max_open` and whose
    /// threshold is `open_at` ([`Group`](crate::Group)); answers the group's state.
    fn join_group<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [String],
        max_open: crate::Ratio,
        open_at: Option<crate::Ratio>,
    ) -> BoxFuture<'a, Result<crate::GroupState, StorageError>>;
    /// The state of group `group` as the shared state holds it (`None`: no such group).
    fn group_state<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::GroupState>, StorageError>>;
}
