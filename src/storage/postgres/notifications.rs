//! One notification, as the listener applies it: verified by its MAC (`payload.rs`), taken on
//! trust only when fresh and not lowering a state, and otherwise confirmed from the table first
//! (see the module doc of `listener.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Notification};

use super::payload::{self, Op};
use super::{statements, Shared};
use crate::error::StorageError;
use crate::fleet::precedence::{Remote, Source};
use crate::State;

use super::sync::Live;

/// What one notification asks of the loop.
pub(super) enum Next {
    Nothing,
    /// Not taken on trust: read this key's row before believing it.
    Confirm(Unconfirmed),
    /// Reload everything.
    Reload,
    /// Read this key's live configuration.
    Config(String),
    /// The fleet judges a key's rate: report it now rather than at the next interval.
    Judged,
}

/// Applies one notification; bad or forged payloads are logged and skipped, and those not to
/// be taken on trust are handed back to be confirmed (see the module doc).
pub(super) fn apply_notification(shared: &Shared, live: &Live, n: &Notification) -> Next {
    let Some(key) = live.key.as_ref() else {
        return Next::Nothing;
    };
    if n.channel() != live.channel {
        return Next::Nothing; // the listeners' check channel, or another this session listens to
    }
    shared.metrics.notifications.increment(1);
    let bad = |why: &dyn std::fmt::Display| {
        tracing::warn!(error = %why, "ignoring a notification");
        shared.metrics.bad_notifications.increment(1);
        Next::Nothing
    };
    let change = match payload::parse(n.payload()) {
        Ok(c) => c,
        Err(e) => return bad(&e),
    };
    if !key.verify(&change) {
        return bad(&"its MAC does not verify: it was not sent by the table's trigger");
    }
    if change.op == Op::Reset {
        return Next::Reload;
    }
    if change.namespace != shared.opts.namespace {
        return Next::Nothing;
    }
    match change.op {
        Op::Config => return Next::Config(change.key),
        Op::Judge => {
            shared.judged(&change.key, change.remaining);
            return Next::Judged;
        }
        Op::Group => {
            // Counts, not a state to hold against anything: a stale one (a replay) is left
            // for the next reload, which reads every group of ours again.
            if let (Some((open, members)), true, Some(storage)) = (
                change.group,
                shared.marks.fresh(change.committed_at_us),
                shared.storage.upgrade(),
            ) {
                crate::group::heard(
                    &storage,
                    &change.key,
                    crate::GroupState {
                        open,
                        members,
                        state: change.state,
                        version: change.version,
                    },
                );
            }
            return Next::Nothing;
        }
        Op::Row | Op::Reset => {}
    }
    let confirm = |shared: &Shared, change: payload::Change| {
        shared.metrics.confirmed.increment(1);
        Next::Confirm(Unconfirmed {
            key: change.key,
            version: change.version,
            committed_at_us: Some(change.committed_at_us),
        })
    };
    if !shared.marks.fresh(change.committed_at_us) {
        return confirm(shared, change); // a replay, or delayed past trust: read the row
    }
    let Some(storage) = shared.storage.upgrade() else {
        return Next::Nothing;
    };
    if change.state == State::Closed {
        // A close is taken from the table: a role that holds the key but may not close a
        // breaker could sign one. Unless it changes nothing here.
        let lowers = storage
            .cells
            .get(&*change.key)
            .is_some_and(|c| c.state() != State::Closed && c.row_version() < change.version);
        if lowers {
            return confirm(shared, change);
        }
    }
    if let Some(s) = &change.unknown_state {
        tracing::warn!(key = %change.key, state = %s, "row has an unknown state; treating it as CLOSED");
    }
    let lag = shared.marks.seen(change.version);
    let remote = Remote {
        state: change.state,
        version: change.version,
        remaining: change.remaining,
    };
    shared.apply_key(
        &storage,
        &change.key,
        remote,
        Source::Notification,
        Some(change.committed_at_us),
    );
    if lag {
        shared.lag_since(change.committed_at_us);
    }
    Next::Nothing
}

/// A notification not taken on trust, to confirm from the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Unconfirmed {
    key: String,
    /// The notification's version (0: none, a key whose row must simply be read again).
    version: i64,
    /// Its commit time, streamed with the change when the row read is the one it announced.
    committed_at_us: Option<i64>,
}

impl Unconfirmed {
    /// A key whose row must be read again, with no notification behind it.
    pub(super) fn key(key: String) -> Unconfirmed {
        Unconfirmed {
            key,
            version: 0,
            committed_at_us: None,
        }
    }
}

/// Reads the rows of notifications not taken on trust and applies them. A key without a row is
/// CLOSED at the newest version notified for it (not 0): the row was read after those commits,
/// so a payload of them sent again later is older than what the cell holds.
pub(super) async fn confirm(
    shared: &Arc<Shared>,
    client: &Client,
    mut asked: Vec<Unconfirmed>,
) -> Result<(), StorageError> {
    // Per key, the newest notification only.
    asked.sort_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
    asked.dedup_by(|a, b| a.key == b.key);
    let keys: Vec<&str> = asked.iter().map(|u| u.key.as_str()).collect();
    let read_at = shared.clock.now_nanos(); // see `resync`
    let rows = client
        .query_typed(
            statements::ROWS,
            &[
                (&shared.opts.namespace, Type::TEXT),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| StorageError::db("confirming notifications", e))?;
    let Some(storage) = shared.storage.upgrade() else {
        return Ok(());
    };
    let mut found = HashSet::new();
    for row in &rows {
        let (key, remote) = statements::decode_snapshot(row)?;
        let committed = asked
            .iter()
            .find(|u| u.key == key && u.version == remote.version)
            .and_then(|u| u.committed_at_us);
        shared.apply_key(
            &storage,
            &key,
            remote,
            Source::Reload { read_at },
            committed,
        );
        found.insert(key);
    }
    for u in asked.iter().filter(|u| !found.contains(&u.key)) {
        let absent = Remote {
            version: u.version.max(0),
            ..Remote::ABSENT
        };
        shared.apply_key(
            &storage,
            &u.key,
            absent,
            Source::Reload { read_at },
            u.committed_at_us,
        );
    }
    Ok(())
}
