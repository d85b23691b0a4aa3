//! What the page reads: every row of the namespace with its live configuration and groups
//! (`/api/state`), a key's history (`/api/history`) and the timeline (`/api/timeline`), and
//! the shapes they are sent in (also those of the live events' rows).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State as Shared};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use resilient_circuit::admin::{BreakerRow, GroupRow, HistoryEntry};
use resilient_circuit::{LiveConfig, Ratio, State, TripPolicy};
use serde::{Deserialize, Serialize};

use super::{ApiError, App};

/// How many keys' changes the timeline reads at most (the most recently changed).
const TIMELINE_KEYS: usize = 500;
/// An OPEN row held longer than this was forced "until close".
const HELD_MS: u64 = 9 * 365 * 86_400_000;

/// Milliseconds since the Unix epoch.
pub(super) fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A row as the page shows it.
#[derive(Debug, Serialize)]
pub(super) struct RowOut {
    key: String,
    state: &'static str,
    since_ms: Option<u64>,
    /// For an OPEN row, milliseconds until it may go half-open (`held`: forced until close).
    half_open_in_ms: Option<u64>,
    held: bool,
    version: i64,
    failure_count: i32,
    mode: &'static str,
    /// The live configuration, in words (`None`: the code's values).
    config: Option<String>,
    /// The last recorded change, when it was read with the row.
    last: Option<EntryOut>,
}

/// A recorded change as the page shows it.
#[derive(Debug, Serialize)]
pub(super) struct EntryOut {
    at_ms: u64,
    from: Option<&'static str>,
    to: Option<&'static str>,
    version: i64,
    who: String,
    why: String,
}

pub(super) fn row_out(
    r: BreakerRow,
    config: Option<&LiveConfig>,
    last: Option<EntryOut>,
) -> RowOut {
    let half_open_in_ms = r
        .half_open_in
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    RowOut {
        state: r.state.as_str(),
        since_ms: r.since.map(ms),
        held: half_open_in_ms.is_some_and(|ms| ms >= HELD_MS),
        half_open_in_ms,
        version: r.version,
        failure_count: r.failure_count,
        mode: r.mode.as_str(),
        config: config.map(describe),
        last,
        key: r.key,
    }
}

pub(super) fn entry_out(e: &HistoryEntry) -> EntryOut {
    EntryOut {
        at_ms: ms(e.at),
        from: e.from.map(State::as_str),
        to: e.to.map(State::as_str),
        version: e.version,
        who: super::super::history::who(e.actor.as_ref()),
        why: super::super::history::why(e.why.as_ref())
            .trim_start_matches("; ")
            .to_owned(),
    }
}

/// A live configuration in words: `mode forced_open, cooldown 30s, failure limit 3/10`.
pub(super) fn describe(c: &LiveConfig) -> String {
    let mut parts = vec![format!("mode {}", c.mode)];
    if let Some(d) = c.cooldown {
        parts.push(format!("cooldown {}", humantime::format_duration(d)));
    }
    let ratio = |r: Ratio| r.to_string();
    if let Some(r) = c.failure_limit {
        parts.push(format!("failure limit {}", ratio(r)));
    }
    if let Some(r) = c.success_limit {
        parts.push(format!("success limit {}", ratio(r)));
    }
    match c.trip_policy {
        None => {}
        Some(TripPolicy::Quorum { instances, within }) => parts.push(format!(
            "quorum of {instances} within {}",
            humantime::format_duration(within)
        )),
        Some(TripPolicy::FleetRate {
            limit,
            min_calls,
            period,
        }) => parts.push(format!(
            "fleet rate {limit} over {}, at least {min_calls} calls",
            humantime::format_duration(period)
        )),
        Some(p) => parts.push(p.to_string()),
    }
    parts.join(", ")
}

#[derive(Debug, Serialize)]
struct StateOut<'a> {
    namespace: &'a str,
    writes: bool,
    degraded: bool,
    now_ms: u64,
    rows: Vec<RowOut>,
    groups: Vec<GroupOut>,
}

/// A group as the page shows it: members open of how many, its cap, threshold and state.
#[derive(Debug, Serialize)]
pub(super) struct GroupOut {
    name: String,
    members: u32,
    open: u32,
    state: &'static str,
    max_open: String,
    open_at: Option<String>,
}

pub(super) fn group_out(g: GroupRow) -> GroupOut {
    GroupOut {
        name: g.name,
        members: g.members,
        open: g.open,
        state: g.state.as_str(),
        max_open: g.max_open.to_string(),
        open_at: g.open_at.map(|r| r.to_string()),
    }
}

/// `GET /api/state`: every row of the namespace with its live configuration.
#[tracing::instrument(name = "serve.state", skip_all)]
pub(super) async fn state(Shared(app): Shared<Arc<App>>) -> Result<Response, ApiError> {
    let rows = app.status().await?;
    let configs = app.configurations().await?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let c = configs.get(&r.key);
            row_out(r, c, None)
        })
        .collect();
    let groups = app.groups().await?.into_iter().map(group_out).collect();
    Ok(no_store(Json(StateOut {
        namespace: &app.ns,
        writes: app.token.is_some(),
        degraded: app.degraded.load(Ordering::Relaxed),
        now_ms: ms(SystemTime::now()),
        rows,
        groups,
    })))
}

fn no_store(r: impl IntoResponse) -> Response {
    let mut r = r.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Deserialize)]
pub(super) struct KeyQuery {
    key: String,
}

/// `GET /api/history?key=K`: the key's recorded changes, oldest first.
#[tracing::instrument(name = "serve.history", skip_all)]
pub(super) async fn history(
    Shared(app): Shared<Arc<App>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    let entries: Vec<EntryOut> = app
        .history(&q.key, None)
        .await?
        .iter()
        .map(entry_out)
        .collect();
    Ok(no_store(Json(
        serde_json::json!({ "key": q.key, "changes": entries }),
    )))
}

#[derive(Debug, Deserialize)]
pub(super) struct WindowQuery {
    hours: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Lane {
    key: String,
    changes: Vec<EntryOut>,
}

/// `GET /api/timeline?hours=1|24`: the recorded changes of every key that changed state in
/// the window (the most recently changed first, at most [`TIMELINE_KEYS`]).
#[tracing::instrument(name = "serve.timeline", skip_all)]
pub(super) async fn timeline(
    Shared(app): Shared<Arc<App>>,
    Query(q): Query<WindowQuery>,
) -> Result<Response, ApiError> {
    let hours = q.hours.unwrap_or(1).clamp(1, 24);
    let window = Duration::from_secs(hours * 3600);
    let now = SystemTime::now();
    let start = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
    // A key whose state changed in the window has `since` in it: only those have changes to
    // read (the log keeps nothing older than a row's last change that matters here).
    let mut changed: Vec<(SystemTime, String)> = app
        .status()
        .await?
        .into_iter()
        .filter_map(|r| r.since.filter(|s| *s >= start).map(|s| (s, r.key)))
        .collect();
    changed.sort_by_key(|c| std::cmp::Reverse(c.0));
    let truncated = changed.len() > TIMELINE_KEYS;
    changed.truncate(TIMELINE_KEYS);
    let app_ref = &app;
    let lanes: Vec<Result<Lane, ApiError>> = futures_util::stream::iter(changed)
        .map(|(_, key)| async move {
            let changes = app_ref.history(&key, Some(window)).await?;
            Ok(Lane {
                changes: changes.iter().map(entry_out).collect(),
                key,
            })
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let lanes = lanes.into_iter().collect::<Result<Vec<Lane>, ApiError>>()?;
    Ok(no_store(Json(serde_json::json!({
        "now_ms": ms(now),
        "window_ms": ms(UNIX_EPOCH + window),
        "truncated": truncated,
        "keys": lanes,
    }))))
}
