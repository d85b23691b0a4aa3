//! The page kept live: the server-sent events every viewer receives (`/events`), fed by the
//! server's own instance of the fleet ([`Storage::changes`]), and the rounds that read the
//! changed keys' rows once for all viewers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as Shared;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::StreamExt as _;
use resilient_circuit::admin::BreakerRow;
use resilient_circuit::{Change, ChangeKind, Storage};
use serde::Serialize;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::page::{entry_out, group_out, ms, row_out, EntryOut, GroupOut};
use super::{ApiError, App};

/// How many keys one round of row updates reads the history of at most.
const ROUND_KEYS: usize = 200;
/// The least time between two rounds of row updates (each reads every row once).
const ROUND_EVERY: Duration = Duration::from_millis(250);

/// `GET /events`: server-sent events: `hello`, then `change` (a transition, as it is seen),
/// `row` (a changed key's row and last recorded change, read after), `health` (the database
/// lost or back) and `reload` (this viewer fell behind: read `/api/state` again).
pub(super) async fn events(Shared(app): Shared<Arc<App>>) -> impl IntoResponse {
    let hello = serde_json::json!({
        "namespace": app.ns,
        "degraded": app.degraded.load(Ordering::Relaxed),
    })
    .to_string();
    let first = futures_util::stream::once(async move {
        Ok::<Event, std::convert::Infallible>(Event::default().event("hello").data(hello))
    });
    let rest = BroadcastStream::new(app.events.subscribe()).map(|item| {
        Ok(match item {
            Ok(sent) => Event::default().event(sent.name).data(&*sent.data),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Event::default()
                .event("reload")
                .data(format!("{{\"missed\":{missed}}}")),
        })
    });
    let mut response = Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Serialize)]
struct ChangeOut<'a> {
    key: &'a str,
    from: &'static str,
    to: &'static str,
    version: Option<i64>,
    at_ms: u64,
}

/// Forwards every change the storage sees to the viewers, and marks its key for a round of row
/// updates; tells them when the database is lost and back.
pub(super) async fn follow(app: Arc<App>, storage: Storage) {
    let mut changes = storage.changes();
    let mut health = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            _ = health.tick() => {
                let now = storage.is_degraded();
                if app.degraded.swap(now, Ordering::Relaxed) != now {
                    app.send("health", &serde_json::json!({ "degraded": now }));
                }
                continue;
            }
            next = changes.next() => next,
        };
        match next {
            None => return,
            Some(Err(_lagged)) => app.send("reload", &serde_json::json!({})),
            // Transitions only: the news of outliers and groups are not a key's state.
            Some(Ok(change)) if change.kind == ChangeKind::Transition => {
                forward(&app, &change);
                if let Ok(mut dirty) = app.dirty.lock() {
                    dirty.insert(change.key);
                }
                app.wake.notify_one();
            }
            Some(Ok(_)) => {}
        }
    }
}

fn forward(app: &App, c: &Change) {
    app.send(
        "change",
        &ChangeOut {
            key: &c.key,
            from: c.from.as_str(),
            to: c.to.as_str(),
            version: c.version,
            at_ms: ms(c.committed_at.unwrap_or(c.seen_at)),
        },
    );
}

/// Rounds of row updates: the changed keys' rows (cooldown left, mode) and last recorded
/// change (who, why), read once for every viewer, at most every [`ROUND_EVERY`].
pub(super) async fn rounds(app: Arc<App>) {
    loop {
        app.wake.notified().await;
        let keys: Vec<String> = match app.dirty.lock() {
            Ok(mut dirty) => dirty.drain().collect(),
            Err(_) => return,
        };
        if keys.is_empty() {
            continue;
        }
        if let Err(e) = round(&app, keys).await {
            tracing::warn!(error = ?e, "reading the changed rows failed");
        }
        tokio::time::sleep(ROUND_EVERY).await;
    }
}

#[tracing::instrument(name = "serve.round", skip_all, fields(keys = keys.len()))]
async fn round(app: &App, mut keys: Vec<String>) -> Result<(), ApiError> {
    keys.sort();
    let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let rows: Vec<BreakerRow> = app
        .status()
        .await?
        .into_iter()
        .filter(|r| wanted.contains(r.key.as_str()))
        .collect();
    let configs = app.configurations().await?;
    let wanted: Vec<String> = rows
        .iter()
        .take(ROUND_KEYS)
        .map(|r| r.key.clone())
        .collect();
    let found: Vec<(String, Option<EntryOut>)> = futures_util::stream::iter(wanted)
        .map(|key| async move {
            // Without its last change, the row is still worth sending.
            let last = app
                .history(&key, Some(Duration::from_secs(3600)))
                .await
                .ok()
                .and_then(|h| h.last().map(entry_out));
            (key, last)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut lasts: HashMap<String, EntryOut> = found
        .into_iter()
        .filter_map(|(k, last)| last.map(|l| (k, l)))
        .collect();
    for r in rows {
        let last = lasts.remove(&r.key);
        let c = configs.get(&r.key);
        app.send("row", &row_out(r, c, last));
    }
    // A changed key may be a member: the groups' counts, read once for every viewer.
    let groups: Vec<GroupOut> = app.groups().await?.into_iter().map(group_out).collect();
    if !groups.is_empty() {
        app.send("groups", &groups);
    }
    Ok(())
}
