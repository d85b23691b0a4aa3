//! `status`, `history`, `open`, `close`, `delete`: the breakers' rows, their change log, and
//! the overrides every instance obeys (through the table's triggers).

use std::time::{Duration, SystemTime};

use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::AdminSession;
use crate::error::StorageError;
use crate::{Mode, State};

/// The longest hold the SQL accepts (`rc_max_ms()`, ten years): an `open` "until close".
const MAX_HOLD_MS: i64 = 315_360_000_000;

/// One breaker row of a namespace, as [`AdminSession::status`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerRow {
    /// The key (`resource_key`).
    pub key: String,
    /// Its state.
    pub state: State,
    /// The failures the row counts (the Python package's bookkeeping).
    pub failure_count: i32,
    /// For an OPEN row, how long until it may go half-open by the database's clock (zero when
    /// due); `None` otherwise.
    pub half_open_in: Option<Duration>,
    /// The row version every change bumps.
    pub version: i64,
    /// The last write, if the row says.
    pub updated_at: Option<SystemTime>,
    /// When the row last changed state.
    pub since: Option<SystemTime>,
    /// The key's live mode ([`Mode::Normal`] without a live configuration).
    pub mode: Mode,
}

/// One change of a key as the change log recorded it ([`AdminSession::history`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// When it committed, by the database's clock.
    pub at: SystemTime,
    /// The state before (`None`: the row was new, or the change is not a state's).
    pub from: Option<State>,
    /// The state after; `None` for a change of the key's live configuration or of its
    /// fleet-rate judgement rather than of its state (`why` says which).
    pub to: Option<State>,
    /// The row version of the change.
    pub version: i64,
    /// Who made it: the instance, user, application and client the session said (a JSON
    /// object; text a client chose).
    pub actor: Option<serde_json::Value>,
    /// Why, when the writer said: the failures, a quorum's votes, a fleet rate, a probe round,
    /// a mode, a note (a JSON object, documented with the command's `history --json`).
    pub why: Option<serde_json::Value>,
}

/// An operator's decree on a key ([`AdminSession::force`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// OPEN for every instance, for `hold` (at most ten years), or until a close when `None`.
    Open {
        /// How long; `None`: until [`Override::Closed`].
        hold: Option<Duration>,
    },
    /// CLOSED for every instance, with an empty window.
    Closed,
}

impl AdminSession {
    /// Every breaker row of namespace `ns`, by key.
    pub async fn status(&self, ns: &str) -> Result<Vec<BreakerRow>, StorageError> {
        let during = "reading the breakers";
        let err = |e| StorageError::db(during, e);
        let rows = self
            .client
            .query_typed("SELECT * FROM public.rc_status($1)", &[(&ns, Type::TEXT)])
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok(BreakerRow {
                    key: r.try_get("o_key").map_err(err)?,
                    state: state(r, "o_state", during)?,
                    failure_count: r.try_get("o_failure_count").map_err(err)?,
                    half_open_in: r
                        .try_get::<_, Option<i64>>("o_remaining_ms")
                        .map_err(err)?
                        .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                    version: r.try_get("o_version").map_err(err)?,
                    updated_at: r.try_get("o_updated_at").map_err(err)?,
                    since: r.try_get("o_state_changed_at").map_err(err)?,
                    mode: r
                        .try_get::<_, String>("o_mode")
                        .map_err(err)?
                        .parse()
                        .map_err(|e: crate::ConfigError| unexpected(during, e.to_string()))?,
                })
            })
            .collect()
    }

    /// The changes of `key` in namespace `ns` the change log keeps (its retention, an hour by
    /// default), oldest first; with `since`, only those that recent.
    pub async fn history(
        &self,
        ns: &str,
        key: &str,
        since: Option<Duration>,
    ) -> Result<Vec<HistoryEntry>, StorageError> {
        let during = "reading the change log";
        let err = |e| StorageError::db(during, e);
        let since_ms = since.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM public.rc_history($1, $2, $3)",
                &[
                    (&ns, Type::TEXT),
                    (&key, Type::TEXT),
                    (&since_ms, Type::INT8),
                ],
            )
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok(HistoryEntry {
                    at: r.try_get("o_at").map_err(err)?,
                    from: maybe_state(r, "o_from", during)?,
                    to: maybe_state(r, "o_to", during)?,
                    version: r.try_get("o_version").map_err(err)?,
                    actor: r.try_get("o_actor").map_err(err)?,
                    why: r.try_get("o_why").map_err(err)?,
                })
            })
            .collect()
    }

    /// Decrees `key`'s state in namespace `ns` for every instance (`rc_force`), with `note`
    /// in the change log; returns the row's new version. Refused for a key whose live mode is
    /// `forced-open`, and for a role that is not an operator.
    pub async fn force(
        &mut self,
        ns: &str,
        key: &str,
        decree: Override,
        note: Option<&str>,
    ) -> Result<i64, StorageError> {
        let during = "forcing the breaker";
        let err = |e| StorageError::db(during, e);
        let (state, ms) = match decree {
            Override::Open { hold } => (
                "OPEN",
                hold.map_or(MAX_HOLD_MS, |d| {
                    i64::try_from(d.as_millis()).map_or(MAX_HOLD_MS, |ms| ms.min(MAX_HOLD_MS))
                }),
            ),
            Override::Closed => ("CLOSED", 0),
        };
        let tx = self.noted(note).await?;
        let rows = tx
            .query_typed(
                "SELECT o_version FROM public.rc_force($1, $2, $3, $4)",
                &[
                    (&ns, Type::TEXT),
                    (&key, Type::TEXT),
                    (&state, Type::TEXT),
                    (&ms, Type::INT8),
                ],
            )
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        match rows.first() {
            Some(r) => r.try_get(0).map_err(err),
            None => Err(unexpected(during, "rc_force returned no row".into())),
        }
    }

    /// Deletes `key`'s row in namespace `ns` (every instance sees it CLOSED), with `note` in the
    /// change log; true when there was a row. What was judged of the key (votes, rate reports)
    /// is spent either way.
    pub async fn delete(
        &mut self,
        ns: &str,
        key: &str,
        note: Option<&str>,
    ) -> Result<bool, StorageError> {
        let during = "deleting the breaker";
        let err = |e| StorageError::db(during, e);
        let tx = self.noted(note).await?;
        let rows = tx
            .query_typed(
                "SELECT o_deleted FROM public.rc_delete($1, $2)",
                &[(&ns, Type::TEXT), (&key, Type::TEXT)],
            )
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        match rows.first() {
            Some(r) => r.try_get(0).map_err(err),
            None => Ok(false),
        }
    }

    /// A transaction whose changes the change log records with `note` (the trigger reads
    /// `resilient_circuit.note` at commit; set for this transaction only).
    async fn noted(
        &mut self,
        note: Option<&str>,
    ) -> Result<tokio_postgres::Transaction<'_>, StorageError> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| StorageError::db("starting a transaction", e))?;
        if let Some(note) = note {
            tx.query_typed(
                "SELECT pg_catalog.set_config('resilient_circuit.note', $1, true)",
                &[(&note, Type::TEXT)],
            )
            .await
            .map_err(|e| StorageError::db("recording the note", e))?;
        }
        Ok(tx)
    }
}

/// The state in `column` of `row`.
fn state(row: &Row, column: &str, during: &'static str) -> Result<State, StorageError> {
    let s: String = row
        .try_get(column)
        .map_err(|e| StorageError::db(during, e))?;
    s.parse()
        .map_err(|_| unexpected(during, format!("state {s:?}")))
}

/// The state in `column` of `row`, if it holds one (NULL or empty: none).
fn maybe_state(
    row: &Row,
    column: &str,
    during: &'static str,
) -> Result<Option<State>, StorageError> {
    let s: Option<String> = row
        .try_get(column)
        .map_err(|e| StorageError::db(during, e))?;
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| unexpected(during, format!("state {s:?}"))),
    }
}

/// An answer the database should not have given.
pub(super) fn unexpected(during: &'static str, what: String) -> StorageError {
    StorageError::Unexpected { during, what }
}
