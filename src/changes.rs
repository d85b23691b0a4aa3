//! The change stream: every transition a [`Storage`](crate::Storage) sees, local or remote, as a
//! [`Stream`] ([`Storage::changes`](crate::Storage::changes)), and the fleet's news of a breaker
//! that changes no state ([`ChangeKind`]).
//!
//! A storage keeps one broadcast channel. Sending never waits: a receiver that falls more than
//! [`CHANGE_BUFFER`] changes behind loses the oldest ones and is told how many
//! ([`Lagged`]) instead of slowing the listener or the caller that tripped. Nothing is sent, and
//! nothing is built, while no one subscribes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
pub use tokio_stream::Stream;

use crate::{ChangeOrigin, State};

/// How many changes a receiver may fall behind before it loses the oldest.
pub const CHANGE_BUFFER: usize = 1024;

/// One transition of one breaker, as this instance saw it, or news of it ([`kind`](Self::kind)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The breaker's key.
    pub key: String,
    /// The PostgreSQL namespace of the storage, or `in-memory`.
    pub namespace: String,
    /// The state before, in this instance's snapshot.
    pub from: State,
    /// The state after.
    pub to: State,
    /// [`Local`](ChangeOrigin::Local): this process decided it (its window, its probes, an
    /// override through it). [`Remote`](ChangeOrigin::Remote): it came from the shared table.
    pub origin: ChangeOrigin,
    /// The row version that made it, for remote changes. `None` for a local decision: its
    /// version exists only once the database takes it, and the notification of that version
    /// changes nothing here, so it is not streamed again.
    pub version: Option<i64>,
    /// When the database committed it, by the database's clock: for remote changes announced
    /// by a notification of a schema at migration 7 or later. `None` for local decisions and for
    /// changes learned by a reload (after a reconnect) or a function's answer.
    pub committed_at: Option<SystemTime>,
    /// When this instance applied it to its snapshot, by the local clock.
    pub seen_at: SystemTime,
    /// A transition, or news that changes no state (then `from` and `to` are both the state the
    /// breaker is in). Callbacks receive transitions only.
    pub kind: ChangeKind,
}

/// What a [`Change`] tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// The breaker went from `from` to `to`.
    Transition,
    /// The fleet judged this instance an outlier of the key (`outlier: true`): its failure rate
    /// is far above the rest of the fleet's, so its reports no longer count towards opening the
    /// key for everyone, and its own breaker judges its own window
    /// ([`docs::outliers`](crate::docs::outliers)). `false`: it no longer is one. A process that
    /// sees itself an outlier of many keys may be the sick one, and drain or restart itself.
    Outlier {
        /// True from when the fleet judged it an outlier, false once it no longer does.
        outlier: bool,
    },
    /// The counts of a [`Group`](crate::Group) this instance joined changed: `key` is the
    /// group's name, `from` and `to` its own state ([`GroupState`](crate::GroupState)), which
    /// is OPEN past its threshold. `version` orders these changes of one group.
    Group {
        /// Members OPEN or HALF_OPEN.
        open: u32,
        /// Members.
        members: u32,
    },
}

impl Change {
    /// How long the change took from the database's commit to this instance's snapshot, when
    /// the database said when it committed. Mixes the two clocks: see
    /// `resilient_circuit_notification_lag_seconds` for the corrected figure.
    pub fn delay(&self) -> Option<Duration> {
        let committed = self.committed_at?;
        Some(
            self.seen_at
                .duration_since(committed)
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// A receiver fell behind and lost the `missed` oldest changes; the stream goes on with the
/// oldest it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the change stream fell behind and missed {missed} changes")]
pub struct Lagged {
    /// How many changes were lost.
    pub missed: u64,
}

/// The stream of [`Storage::changes`](crate::Storage::changes): `Ok` for each change, `Err`
/// where some were lost. Ends when the storage is dropped by every other holder.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resilient_circuit::{ChangeOrigin, CircuitBreaker, State, Storage};
/// use tokio_stream::StreamExt;
///
/// let storage = Storage::in_memory();
/// let mut changes = storage.changes();
/// let cb = CircuitBreaker::builder("api").storage(storage.clone()).build()?;
/// cb.force_open(std::time::Duration::from_secs(60));
/// // `None` only once every handle to the storage is gone; `storage` is alive here.
/// let change = changes.next().await.expect("the storage is alive")?;
/// assert_eq!((change.from, change.to), (State::Closed, State::Open));
/// assert_eq!(change.origin, ChangeOrigin::Local);
/// # Ok(()) }
/// ```
#[must_use = "a stream does nothing unless polled"]
pub struct Changes {
    inner: BroadcastStream<Change>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Stream for Changes {
    type Item = Result<Change, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| r.map_err(|BroadcastStreamRecvError::Lagged(missed)| Lagged { missed }))
        })
    }
}

/// The sending side, one per storage; each cell holds a clone to announce its transitions.
#[derive(Clone)]
pub(crate) struct Feed {
    tx: broadcast::Sender<Change>,
    namespace: Arc<str>,
}

impl Feed {
    pub(crate) fn new(namespace: &str) -> Feed {
        Feed {
            tx: broadcast::channel(CHANGE_BUFFER).0,
            namespace: namespace.into(),
        }
    }

    pub(crate) fn subscribe(&self) -> Changes {
        Changes {
            inner: BroadcastStream::new(self.tx.subscribe()),
        }
    }

    /// Streams one transition; free while no one listens. `committed_at_us`: the database's
    /// commit time in microseconds since the Unix epoch.
    pub(crate) fn send(
        &self,
        key: &str,
        from: State,
        to: State,
        origin: ChangeOrigin,
        version: Option<i64>,
        committed_at_us: Option<i64>,
    ) {
        if from == to || self.tx.receiver_count() == 0 {
            return;
        }
        // An error only means every receiver went away meanwhile.
        let _ = self
            .tx
            .send(self.change(key, from, to, origin, version, committed_at_us));
    }

    /// The [`Change`] of a transition seen now: what the stream sends and callbacks receive.
    pub(crate) fn change(
        &self,
        key: &str,
        from: State,
        to: State,
        origin: ChangeOrigin,
        version: Option<i64>,
        committed_at_us: Option<i64>,
    ) -> Change {
        let committed_at = committed_at_us
            .and_then(|us| u64::try_from(us).ok())
            .and_then(|us| UNIX_EPOCH.checked_add(Duration::from_micros(us)));
        Change {
            key: key.to_owned(),
            namespace: self.namespace.to_string(),
            from,
            to,
            origin,
            version,
            committed_at,
            seen_at: SystemTime::now(),
            kind: ChangeKind::Transition,
        }
    }

    /// The namespace its changes carry.
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Streams the new counts of group `name`, whose own state went from `from`; free while no
    /// one listens.
    pub(crate) fn group_news(&self, name: &str, from: State, now: &crate::GroupState) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let mut change = self.change(name, from, now.state, ChangeOrigin::Remote, None, None);
        change.version = Some(now.version);
        change.kind = ChangeKind::Group {
            open: now.open,
            members: now.members,
        };
        // An error only means every receiver went away meanwhile.
        let _ = self.tx.send(change);
    }

    /// Streams news of `key`, in `state`, that changes no state; free while no one listens.
    pub(crate) fn news(&self, key: &str, state: State, kind: ChangeKind) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let mut change = self.change(key, state, state, ChangeOrigin::Remote, None, None);
        change.kind = kind;
        // An error only means every receiver went away meanwhile.
        let _ = self.tx.send(change);
    }
}
