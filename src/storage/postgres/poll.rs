//! Following the table without LISTEN: every interval, one statement asks the change log
//! (`sql/objects/rc_changes_since.sql`) for the changes this instance has not seen: rows, resets,
//! live configurations and fleet-rate judgements, all that a listener hears.
//!
//! The cursor is not a version. Versions are taken when a row is written and commits come
//! later, so a change with a lower version can become visible after one with a higher version
//! was read. The cursor is the database snapshot of the last poll: a change is new exactly when
//! its transaction had not finished in that snapshot, and the function returns those, read in
//! the snapshot it hands back for the next poll. A change read twice is harmless (its version is
//! no longer newer, `precedence.rs`); none is missed. The first cursor is taken *before* the
//! full load that every (re)connect makes, as the listener LISTENs before it loads.
//!
//! One statement, unnamed, with no session state: it works through pgbouncer in transaction
//! mode and on a hot standby (`Follow::Poll`), and it is what a listener that hears nothing
//! falls back to.

use std::time::Duration;

use tokio_postgres::{Client, Row};

use super::{statements, Shared};
use crate::error::StorageError;
use crate::fleet::precedence::{Remote, Source};

/// A poll this long after the last good one (the process was stopped, the machine slept) is
/// followed by a full load: the log keeps changes for its retention (10 minutes at least), and a
/// gap that long should not be trusted to it.
const GAP_RELOAD: Duration = Duration::from_secs(60);

/// Where the next poll starts: the snapshot of the last one.
#[derive(Debug)]
pub(crate) struct Cursor {
    snapshot: String,
    polled: tokio::time::Instant,
}

/// What a poll asks of the caller.
#[derive(Debug, PartialEq, Eq, Default)]
pub(crate) struct Polled {
    /// Reload everything: the table was truncated, or polls were too far apart.
    pub(crate) reload: bool,
    /// Keys whose live configuration changed: read them again.
    pub(crate) configured: Vec<String>,
    /// The fleet judges some key's rate: report now.
    pub(crate) judged: bool,
}

async fn changes_since(
    shared: &Shared,
    client: &Client,
    after: Option<&str>,
) -> Result<Vec<Row>, StorageError> {
    let started = std::time::Instant::now();
    let typed = [
        (
            &shared.opts.namespace as &(dyn tokio_postgres::types::ToSql + Sync),
            statements::CHANGES_SINCE.types[0].clone(),
        ),
        (&after, statements::CHANGES_SINCE.types[1].clone()),
    ];
    let rows = client
        .query_typed(statements::CHANGES_SINCE.sql, &typed)
        .await;
    shared
        .metrics
        .store_operation("poll", started.elapsed(), rows.is_ok());
    rows.map_err(|e| StorageError::db("polling the change log", e))
}

fn snapshot_of(row: &Row) -> Result<String, StorageError> {
    row.try_get("o_snapshot")
        .map_err(|e| StorageError::db("polling the change log", e))
}

/// The current snapshot: the cursor to take before a full load.
pub(crate) async fn start(shared: &Shared, client: &Client) -> Result<Cursor, StorageError> {
    let rows = changes_since(shared, client, None).await?;
    let row = rows.first().ok_or(StorageError::Unexpected {
        during: "polling the change log",
        what: "rc_changes_since returned no row".into(),
    })?;
    Ok(Cursor {
        snapshot: snapshot_of(row)?,
        polled: tokio::time::Instant::now(),
    })
}

/// Reads and applies the changes not visible to `cursor`'s snapshot, and moves the cursor on.
pub(crate) async fn poll(
    shared: &Shared,
    client: &Client,
    cursor: &mut Cursor,
) -> Result<Polled, StorageError> {
    let gap = cursor.polled.elapsed() > GAP_RELOAD;
    let rows = changes_since(shared, client, Some(&cursor.snapshot)).await?;
    let mut outcome = Polled {
        reload: gap,
        ..Polled::default()
    };
    if gap {
        tracing::info!(since = ?cursor.polled.elapsed(), "polls were too far apart; reloading every row");
    }
    let storage = shared.storage.upgrade();
    let err = |e| StorageError::db("polling the change log", e);
    for row in &rows {
        let Some(key) = row.try_get::<_, Option<String>>("o_key").map_err(err)? else {
            continue; // no change: the row only carries the snapshot
        };
        match row
            .try_get::<_, Option<String>>("o_kind")
            .map_err(err)?
            .as_deref()
        {
            Some("reset") => {
                outcome.reload = true;
                continue;
            }
            Some("config") => {
                outcome.configured.push(key);
                continue;
            }
            // A refused entry into a full group, an instance judged an outlier or no longer
            // one (its own report's answer tells it): the row stayed as it was.
            Some("group" | "outlier") => continue,
            Some("judge") => {
                let ms = row.try_get("o_remaining_ms").map_err(err)?;
                shared.judged(&key, statements::remaining(ms));
                outcome.judged = true;
                continue;
            }
            _ => {}
        }
        let state: String = row.try_get("o_state").map_err(err)?;
        let remote = Remote {
            state: statements::parse_state(&key, &state),
            version: row.try_get("o_version").map_err(err)?,
            remaining: statements::remaining(row.try_get("o_remaining_ms").map_err(err)?),
        };
        let at: Option<i64> = row.try_get("o_at_us").map_err(err)?;
        let fresh = shared.marks.seen(remote.version);
        if let Some(storage) = &storage {
            shared.apply_key(storage, &key, remote, Source::Notification, at);
        }
        if let (true, Some(at)) = (fresh, at) {
            shared.lag_since(at);
        }
    }
    if let Some(row) = rows.first() {
        cursor.snapshot = snapshot_of(row)?;
    }
    cursor.polled = tokio::time::Instant::now();
    Ok(outcome)
}
