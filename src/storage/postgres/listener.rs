//! The listener: one task per instance that keeps the local cells in step with the table.
//!
//! It owns a dedicated connection (pools drop notifications) on which it LISTENs to the channel
//! the trigger `rc_notify_change` sends on. After every (re)connect it LISTENs first, then reloads
//! the whole namespace, because notifications sent while it was away are lost; notifications that
//! repeat what the reload read are dropped by their version. A heartbeat under a timeout finds a
//! black-holed connection that TCP alone would keep for many minutes, and a periodic reload is the
//! safety net for anything else.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Notification};

use super::{payload, Shared};
use crate::error::{describe_pg_error, StorageError};

/// The channel the trigger notifies on.
pub(crate) const CHANNEL: &str = "rc_circuit_breakers";

/// A connected, listening, synchronized listener connection.
pub(crate) struct Live {
    client: Client,
    notes: mpsc::UnboundedReceiver<Notification>,
    driver: JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Ends the connection task, which closes the socket.
        self.driver.abort();
    }
}

/// Connects, LISTENs, then loads the namespace into the cells.
pub(crate) async fn connect_and_sync(shared: &Arc<Shared>) -> Result<Live, StorageError> {
    let live = open(shared).await?;
    sync(shared, &live).await?;
    Ok(live)
}

/// Connects and LISTENs. Needs no schema, so `connect` runs it beside the schema check.
pub(crate) async fn open(shared: &Arc<Shared>) -> Result<Live, StorageError> {
    let config = shared.opts.listener_pg_config()?;
    let connect = config.connect(shared.listener_tls.clone());
    let (client, mut connection) =
        match tokio::time::timeout(shared.opts.connect_timeout, connect).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(StorageError::Connect {
                    target: shared.opts.listener_target(),
                    cause: describe_pg_error(&e),
                })
            }
            Err(_) => {
                return Err(StorageError::Connect {
                    target: shared.opts.listener_target(),
                    cause: format!("no answer within {:?}", shared.opts.connect_timeout),
                })
            }
        };
    let (tx, notes) = mpsc::unbounded_channel();
    // Notifications only surface through poll_message, so the connection is driven here rather
    // than spawned as a plain future.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %describe_pg_error(&e), "listener connection failed");
                    return;
                }
            }
        }
    });
    let live = Live {
        client,
        notes,
        driver,
    };
    let listen = live.client.batch_execute("LISTEN rc_circuit_breakers");
    match tokio::time::timeout(shared.opts.statement_timeout, listen).await {
        Ok(r) => r.map_err(|e| StorageError::db("listening", &e))?,
        Err(_) => {
            return Err(StorageError::Timeout(
                shared.opts.statement_timeout,
                "listening",
            ))
        }
    }
    Ok(live)
}

/// Loads the namespace into the cells over a listening connection (after LISTEN, so nothing
/// committed from here on is missed).
pub(crate) async fn sync(shared: &Arc<Shared>, live: &Live) -> Result<(), StorageError> {
    let bound = shared.opts.statement_timeout * 4;
    match tokio::time::timeout(bound, resync(shared, &live.client)).await {
        Ok(r) => r,
        Err(_) => Err(StorageError::Timeout(bound, "loading the snapshot")),
    }
}

/// Loads every row of the namespace into the cells. Keys whose row is gone become CLOSED.
async fn resync(shared: &Arc<Shared>, client: &Client) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    let rows = client
        .query(
            "SELECT o_key, o_state, o_version, o_remaining_ms FROM public.rc_snapshot($1)",
            &[&shared.opts.namespace],
        )
        .await
        .map_err(|e| StorageError::db("loading the snapshot", &e))?;
    let Some(storage) = shared.storage.upgrade() else {
        return Ok(());
    };
    // The reload is the truth: it applies every row whose version differs from the one held,
    // except over a local trip still waiting to be published.
    let mut seen = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        let key: String = row
            .try_get(0)
            .map_err(|e| StorageError::db("reading the snapshot", &e))?;
        let state: String = row
            .try_get(1)
            .map_err(|e| StorageError::db("reading the snapshot", &e))?;
        let version: i64 = row
            .try_get(2)
            .map_err(|e| StorageError::db("reading the snapshot", &e))?;
        let remaining: i64 = row
            .try_get(3)
            .map_err(|e| StorageError::db("reading the snapshot", &e))?;
        let cell = shared.cell(&storage, &key);
        if !shared.ahead_of_table(&key) && !cell.awaiting_force() {
            shared.apply(&cell, &state, version, payload::remaining(remaining), true);
        }
        seen.insert(key);
    }
    for entry in storage.cells.iter() {
        let cell = entry.value();
        if !seen.contains(&*cell.key) && !shared.ahead_of_table(&cell.key) && !cell.awaiting_force()
        {
            // No row: CLOSED (a deleted row means CLOSED), at version 0.
            shared.apply(cell, "CLOSED", 0, Duration::ZERO, true);
        }
    }
    tracing::debug!(rows = rows.len(), elapsed = ?started.elapsed(), "snapshot loaded");
    metrics::counter!("resilient_circuit_resyncs_total").increment(1);
    Ok(())
}

/// Applies one notification; bad payloads are logged and skipped.
fn apply_notification(shared: &Shared, n: &Notification) {
    if n.channel() != CHANNEL {
        return;
    }
    let change = match payload::parse(n.payload()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a notification");
            metrics::counter!("resilient_circuit_bad_notifications_total").increment(1);
            return;
        }
    };
    if change.namespace != shared.opts.namespace {
        return;
    }
    if let Some(s) = &change.unknown_state {
        tracing::warn!(key = %change.key, state = %s, "row has an unknown state; treating it as CLOSED");
    }
    let Some(storage) = shared.storage.upgrade() else {
        return;
    };
    let cell = shared.cell(&storage, &change.key);
    shared.apply(
        &cell,
        change.state.as_str(),
        change.version,
        change.remaining,
        false,
    );
}

enum Ended {
    Shutdown,
    Lost(String),
}

/// The listener task: serve, and on loss reconnect with capped, jittered backoff.
pub(crate) async fn run(
    shared: Arc<Shared>,
    first: Option<Live>,
    mut shutdown: watch::Receiver<()>,
) {
    let span =
        tracing::info_span!("resilient_circuit.listener", namespace = %shared.opts.namespace);
    let _e = span.enter();
    let mut live = first;
    let mut backoff = Backoff::default();
    loop {
        let current = match live.take() {
            Some(l) => l,
            None => {
                let attempt = tokio::select! {
                    r = connect_and_sync(&shared) => r,
                    _ = shutdown.changed() => return,
                };
                match attempt {
                    Ok(l) => l,
                    Err(e) => {
                        let wait = backoff.next_delay();
                        tracing::debug!(error = %e, ?wait, "listener reconnect failed");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
        };
        backoff = Backoff::default();
        shared.set_degraded(false);
        shared.republish_pending();
        match serve(&shared, current, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, "listener lost its connection; reconnecting");
                metrics::counter!("resilient_circuit_listener_reconnects_total").increment(1);
                shared.set_degraded(true);
            }
        }
    }
}

async fn serve(shared: &Arc<Shared>, mut live: Live, shutdown: &mut watch::Receiver<()>) -> Ended {
    let opts = &shared.opts;
    let start = tokio::time::Instant::now();
    let mut heartbeat =
        tokio::time::interval_at(start + opts.heartbeat_interval, opts.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile =
        tokio::time::interval_at(start + opts.reconcile_interval, opts.reconcile_interval);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ended::Shutdown,
            note = live.notes.recv() => match note {
                Some(n) => apply_notification(shared, &n),
                None => return Ended::Lost("connection closed".into()),
            },
            _ = heartbeat.tick() => {
                let ping = tokio::time::timeout(opts.statement_timeout, live.client.simple_query(""));
                match ping.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ended::Lost(format!("heartbeat failed: {}", describe_pg_error(&e))),
                    Err(_) => return Ended::Lost(format!("heartbeat unanswered for {:?}", opts.statement_timeout)),
                }
            }
            _ = reconcile.tick() => {
                match tokio::time::timeout(opts.statement_timeout * 4, resync(shared, &live.client)).await {
                    Ok(Ok(())) => shared.republish_pending(),
                    Ok(Err(e)) => return Ended::Lost(format!("reconciliation failed: {e}")),
                    Err(_) => return Ended::Lost("reconciliation timed out".into()),
                }
            }
        }
    }
}

/// Capped exponential backoff with full jitter: 50 ms doubling to 5 s.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(5);

    fn next_delay(&mut self) -> Duration {
        let ceiling = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(Self::CAP);
        self.attempt = self.attempt.saturating_add(1);
        // Full jitter in [ceiling/2, ceiling]: instances restarting together spread out.
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos / 2 + jitter(nanos / 2 + 1))
    }
}

/// A cheap random number below `bound` (not for cryptography).
fn jitter(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(bound);
    h.finish() % bound.max(1)
}

#[cfg(test)]
#[path = "listener_tests.rs"]
mod tests;
