//! The listener: one task per instance that keeps the local cells in step with the table.
//!
//! It owns a dedicated connection (pools drop notifications) on which it LISTENs to the channel
//! the trigger `rc_notify_change` sends on, or, when the instance follows by polling
//! ([`Follow::Poll`]) or the LISTEN hears nothing (a transaction pooler), on which it reads the
//! change log every poll interval (`poll.rs`). After every (re)connect it LISTENs first, then reloads
//! the whole namespace, because notifications sent while it was away are lost; notifications that
//! repeat what the reload read are dropped by their version (`precedence.rs`). Notifications
//! count only with a valid MAC (`payload.rs`). A heartbeat under a timeout finds a black-holed
//! connection that TCP alone would keep for many minutes, and a periodic reload is the safety net
//! for anything else. No user code runs on this task (`callbacks.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Notification};

use super::payload::{self, NotifyKey, Op};
use super::poll::{self, Polled};
use super::precedence::{Remote, Source};
use super::{configs, statements, Follow, Shared};
use crate::error::{describe_pg_error, StorageError};

/// The channel the trigger notifies on.
pub(crate) const CHANNEL: &str = "rc_circuit_breakers";

/// Notifications applied in one turn of the loop before the timers get a look.
const TURN: usize = 256;

/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How often a listener that cannot reconnect says so at WARN.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A connected, listening listener connection.
pub(crate) struct Live {
    client: Client,
    notes: mpsc::Receiver<Notification>,
    /// Set by the connection task when it had to drop notifications.
    overflowed: Arc<AtomicBool>,
    driver: JoinHandle<()>,
    /// Authenticates notifications; `None` when this role may not read it (notifications are
    /// then confirmed from the table before they count).
    key: Option<NotifyKey>,
    /// The private channel of the self-check (see [`hears_others`]).
    check: String,
    /// A NOTIFY sent from another session did not come back: the listener follows the table
    /// by polling its change log instead.
    deaf: bool,
    /// Where the next poll of the change log starts, when the instance polls (`poll.rs`).
    cursor: Option<poll::Cursor>,
}

/// How long a listener connection being dropped may take to say goodbye before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

impl Drop for Live {
    fn drop(&mut self) {
        // The client is dropped right after this, which lets the connection task close the
        // connection as a client should (Terminate, TLS close_notify): a cut socket makes a TLS
        // server log "could not receive data from client: Connection reset by peer" for every
        // instance that stops or reconnects. A server that does not take the goodbye (a black
        // hole) gets the task aborted after `CLOSE_GRACE`.
        let driver = self.driver.abort_handle();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(CLOSE_GRACE).await;
                    driver.abort();
                });
            }
            Err(_) => driver.abort(),
        }
    }
}

/// Connects, LISTENs, then loads the namespace into the cells. Verifies (or creates) the schema
/// first if that has not succeeded yet (an instance that started while the database was down).
pub(crate) async fn connect_and_sync(shared: &Arc<Shared>) -> Result<Live, StorageError> {
    if !shared.schema_ready.load(Ordering::Relaxed)
    /* see `prepare_schema` */
    {
        shared.prepare_schema().await?;
    }
    let mut live = open(shared).await?;
    sync(shared, &mut live).await?;
    Ok(live)
}

/// Connects and LISTENs. Needs no schema, so `connect` runs it beside the schema check.
pub(crate) async fn open(shared: &Arc<Shared>) -> Result<Live, StorageError> {
    // Each host of the list gets the connect timeout (`hosts.rs`): a silent first host cannot
    // keep the listener from the next one.
    let connect = shared
        .listener_hosts
        .connect(shared.listener_tls.clone(), true);
    let (client, mut connection) = connect.await.map_err(|failed| StorageError::Connect {
        target: shared.opts.listener_target(),
        cause: failed.describe(),
    })?;
    let (tx, notes) = mpsc::channel(shared.opts.notification_buffer);
    let overflowed = Arc::new(AtomicBool::new(false));
    let flag = overflowed.clone();
    // Notifications only surface through poll_message, so the connection is driven here rather
    // than spawned as a plain future.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => match tx.try_send(n) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // The loop cannot keep up: drop, and have it reload everything.
                        // Relaxed: the flag only asks for a reload, which reads the table.
                        flag.store(true, Ordering::Relaxed);
                    }
                    // The listener let go of this connection: keep driving it until it closes
                    // (see `Live`'s drop).
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %describe_pg_error(&e), "listener connection failed");
                    return;
                }
            }
        }
    });
    // The self-check channel is made of our own hex digits: nothing from outside reaches the SQL.
    let check = format!("rc_selfcheck_{:016x}", jitter(u64::MAX));
    let live = Live {
        client,
        notes,
        overflowed,
        driver,
        key: None,
        check,
        deaf: false,
        cursor: None,
    };
    if shared.opts.follow == Follow::Poll {
        return Ok(live);
    }
    let sql = format!(
        "LISTEN rc_circuit_breakers; LISTEN {}; LISTEN {}",
        configs::CHANNEL,
        live.check
    );
    let listen = live.client.batch_execute(&sql);
    match tokio::time::timeout(shared.opts.statement_timeout, listen).await {
        Ok(r) => r.map_err(|e| StorageError::db("listening", e))?,
        Err(_) => {
            return Err(StorageError::Timeout {
                after: shared.opts.statement_timeout,
                during: "listening",
            })
        }
    }
    Ok(live)
}

/// Sends a NOTIFY on the listener's private channel from a pooled session and waits for it. Through
/// a transaction-mode pooler the LISTEN stays on a server session that no client is attached
/// to, and nothing comes back. Other notifications received meanwhile are dropped: the reload
/// that follows every connect covers them. True when the check could not be made (no pooled
/// connection): a reconnect checks again.
async fn hears_others(shared: &Shared, live: &mut Live) -> bool {
    let bound = shared.opts.statement_timeout;
    let channel = live.check.as_str();
    let send = async {
        let client = shared.client("checking the listener").await?;
        client
            .query_typed(
                "SELECT pg_catalog.pg_notify($1, '')",
                &[(&channel, Type::TEXT)],
            )
            .await
            .map_err(|e| StorageError::db("checking the listener", e))
    };
    match tokio::time::timeout(bound, send).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not check that the listener hears other sessions");
            return true;
        }
        Err(_) => return true,
    }
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, live.notes.recv()).await {
            Ok(Some(n)) if n.channel() == channel => return true,
            Ok(Some(_)) => continue,
            // The connection ended: the loop will notice and reconnect.
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Checks that the listener hears other sessions, reads the notification key, then loads the
/// namespace into the cells over a listening connection (after LISTEN, so nothing committed
/// from here on is missed). A polling instance takes its first cursor instead, before the load
/// for the same reason.
pub(crate) async fn sync(shared: &Arc<Shared>, live: &mut Live) -> Result<(), StorageError> {
    let bound = shared.opts.statement_timeout * 4;
    let work = async {
        if shared.opts.follow == Follow::Listen {
            // After the schema check (at start), so that its pooled connection is reused.
            live.deaf = !hears_others(shared, live).await;
            if live.deaf {
                tracing::warn!(
                    target = %shared.opts.listener_target(),
                    "the listener does not hear notifications sent by other sessions: it goes through a pooler in transaction mode (pgbouncer). Set RC_DB_LISTENER_DSN (PostgresOptions::listener_dsn) to PostgreSQL's own address, or follow by polling (RC_DB_FOLLOW=poll); until then this instance polls the change log every {:?}",
                    shared.opts.poll_interval
                );
            }
            live.key = notify_key(&live.client).await?;
        }
        measure_clock(shared, &live.client).await?;
        if shared.opts.follow == Follow::Poll || live.deaf {
            live.cursor = Some(poll::start(shared, &live.client).await?);
        }
        resync(shared, &live.client).await
    };
    match tokio::time::timeout(bound, work).await {
        Ok(r) => r,
        Err(_) => Err(StorageError::Timeout {
            after: bound,
            during: "loading the snapshot",
        }),
    }
}

/// Reads the database's clock, so that notification lag is measured by it: the lag of a change
/// is (local now + offset) − commit time, whatever the two clocks disagree by. Good to half the
/// round trip.
async fn measure_clock(shared: &Shared, client: &Client) -> Result<(), StorageError> {
    let before = unix_micros();
    let row = client
        .query_typed(statements::DATABASE_CLOCK, &[])
        .await
        .map_err(|e| StorageError::db("reading the database's clock", e))?;
    let after = unix_micros();
    let db: i64 = match row.first() {
        Some(row) => row
            .try_get(0)
            .map_err(|e| StorageError::db("reading the database's clock", e))?,
        None => return Ok(()),
    };
    shared.set_clock_offset(db.saturating_sub(before / 2 + after / 2));
    Ok(())
}

/// The local clock in microseconds since the Unix epoch (0 before it).
pub(crate) fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The notification key, or `None` (with a warning) when this role may not read it.
async fn notify_key(client: &Client) -> Result<Option<NotifyKey>, StorageError> {
    match client.query_typed(statements::NOTIFY_KEY, &[]).await {
        Ok(rows) => {
            let bytes: Vec<u8> = match rows.first() {
                Some(row) => row
                    .try_get(0)
                    .map_err(|e| StorageError::db("reading the notification key", e))?,
                None => Vec::new(), // refused below as a key of 0 bytes
            };
            NotifyKey::new(&bytes)
                .map(Some)
                .map_err(|cause| StorageError::Database {
                    during: "reading the notification key",
                    cause,
                    source: None,
                })
        }
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::warn!(error = %describe_pg_error(&e), "this role may not read the notification key: every notification is confirmed from the table before it counts (one extra query each)");
            Ok(None)
        }
        Err(e) => Err(StorageError::db("reading the notification key", e)),
    }
}

/// Loads every row of the namespace into the cells. Keys whose row is gone become CLOSED.
async fn resync(shared: &Arc<Shared>, client: &Client) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    // Before the query: what the cells apply after this is newer than the snapshot.
    let read_at = shared.clock.now_nanos();
    let rows = client
        .query_typed(
            statements::SNAPSHOT,
            &[(&shared.opts.namespace, Type::TEXT)],
        )
        .await;
    shared
        .metrics
        .store_operation("snapshot", started.elapsed(), rows.is_ok());
    let rows = rows.map_err(|e| StorageError::db("loading the snapshot", e))?;
    let Some(storage) = shared.storage.upgrade() else {
        return Ok(());
    };
    let mut seen = HashSet::with_capacity(rows.len());
    for row in &rows {
        let (key, remote) = statements::decode_snapshot(row)?;
        shared.apply_key(&storage, &key, remote, Source::Reload { read_at }, None);
        seen.insert(key);
    }
    // Collected first: applying runs no user code, but nothing runs under the map's locks.
    let gone: Vec<_> = storage
        .cells
        .iter()
        .filter(|e| !seen.contains(&**e.key()))
        .map(|e| e.value().clone())
        .collect();
    for cell in gone {
        shared.apply(&cell, Remote::ABSENT, Source::Reload { read_at }, None);
    }
    // The live configuration too: changes made while this instance was away were not heard.
    configs::refresh(shared, client, None).await?;
    tracing::debug!(rows = rows.len(), elapsed = ?started.elapsed(), "snapshot loaded");
    shared.metrics.resyncs.increment(1);
    Ok(())
}

/// What one notification asks of the loop.
enum Next {
    Nothing,
    /// Not authenticated: read this key's row before believing it.
    Confirm(String),
    /// Reload everything.
    Reload,
    /// Read this key's live configuration.
    Config(String),
    /// Read every live configuration of the namespace.
    ConfigAll,
}

/// Applies one notification; bad or forged payloads are logged and skipped.
fn apply_notification(shared: &Shared, key: Option<&NotifyKey>, n: &Notification) -> Next {
    if n.channel() == configs::CHANNEL {
        return match configs::changed_key(n.payload(), &shared.opts.namespace) {
            Ok(Some(k)) => Next::Config(k),
            Ok(None) => Next::Nothing,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable live configuration notification; reading them all");
                Next::ConfigAll
            }
        };
    }
    if n.channel() != CHANNEL {
        return Next::Nothing;
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
    match key {
        Some(k) if !k.verify(&change) => {
            return bad(&"its MAC does not verify: it was not sent by the table's trigger")
        }
        Some(_) => {}
        None if change.op == Op::Reset => return Next::Reload,
        None if change.namespace == shared.opts.namespace => return Next::Confirm(change.key),
        None => return Next::Nothing,
    }
    if change.op == Op::Reset {
        return Next::Reload;
    }
    // Only a version never seen before counts for the lag: a replayed payload (whose unsigned
    // timestamp anyone listening could edit) carries a version already held.
    let fresh = shared.seen(change.version);
    if change.namespace != shared.opts.namespace {
        return Next::Nothing;
    }
    if let Some(s) = &change.unknown_state {
        tracing::warn!(key = %change.key, state = %s, "row has an unknown state; treating it as CLOSED");
    }
    let Some(storage) = shared.storage.upgrade() else {
        return Next::Nothing;
    };
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
        change.committed_at_us,
    );
    if let (true, Some(at)) = (fresh, change.committed_at_us) {
        shared.lag_since(at);
    }
    Next::Nothing
}

/// Reads the rows of notifications that could not be authenticated and applies them.
async fn confirm(
    shared: &Arc<Shared>,
    client: &Client,
    keys: Vec<String>,
) -> Result<(), StorageError> {
    let read_at = shared.clock.now_nanos(); // see `resync`
    let rows = client
        .query_typed(
            statements::CONFIRM,
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
        shared.apply_key(&storage, &key, remote, Source::Reload { read_at }, None);
        found.insert(key);
    }
    for key in keys.iter().filter(|k| !found.contains(*k)) {
        shared.apply_key(
            &storage,
            key,
            Remote::ABSENT,
            Source::Reload { read_at },
            None,
        );
    }
    Ok(())
}

enum Ended {
    Shutdown,
    Lost(String),
}

/// The listener task: serve, and on loss reconnect with capped, jittered backoff. The backoff
/// grows across connections that die young, so a proxy that keeps killing sessions cannot make
/// it reload in a tight loop.
pub(crate) async fn run(
    shared: Arc<Shared>,
    first: Option<Live>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut live = first;
    let mut backoff = Backoff::new(shared.opts.reconnect_backoff_max);
    let mut failures: u64 = 0;
    let mut last_warn: Option<tokio::time::Instant> = None;
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
                        failures += 1;
                        let wait = backoff.next_delay();
                        let due = match last_warn {
                            None => true,
                            Some(t) => t.elapsed() >= WARN_EVERY,
                        };
                        if due {
                            last_warn = Some(tokio::time::Instant::now());
                            tracing::warn!(error = %e, attempts = failures, "cannot reach PostgreSQL; breakers run on local state and the listener keeps trying");
                        } else {
                            tracing::debug!(error = %e, ?wait, "listener reconnect failed");
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                }
            }
        };
        if failures > 0 {
            tracing::info!(attempts = failures, "listener reconnected");
        }
        failures = 0;
        last_warn = None;
        shared.set_degraded(false);
        let since = tokio::time::Instant::now();
        match serve(&shared, current, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Lost(why) => {
                tracing::warn!(reason = %why, "listener lost its connection; reconnecting");
                shared.metrics.reconnects.increment(1);
                shared.drop_idle_connections();
                shared.set_degraded(true);
                if since.elapsed() >= STABLE_AFTER {
                    backoff = Backoff::new(shared.opts.reconnect_backoff_max);
                }
                // Pause before reconnecting: short after a long healthy spell, longer each
                // time a fresh connection dies again.
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

async fn serve(shared: &Arc<Shared>, mut live: Live, shutdown: &mut watch::Receiver<()>) -> Ended {
    let opts = &shared.opts;
    let start = tokio::time::Instant::now();
    // A polling connection needs no heartbeat (each poll is one), and a polling instance no
    // periodic full load (the change log misses nothing, and a load from a lagging replica
    // would only step back).
    let polling = live.cursor.is_some();
    let never = Duration::from_secs(86_400 * 365);
    let (beat, every) = match (polling, opts.follow) {
        (false, _) => (opts.heartbeat_interval, opts.reconcile_interval),
        (true, Follow::Listen) => (never, opts.reconcile_interval),
        (true, _) => (never, never),
    };
    let mut heartbeat = tokio::time::interval_at(start + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconcile = tokio::time::interval_at(start + every, every);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let poll_every = if polling { opts.poll_interval } else { never };
    // A polling instance hears no configuration change: it reads them every reconcile interval.
    let configs_every = if polling {
        opts.reconcile_interval
    } else {
        never
    };
    let mut configs_tick = tokio::time::interval_at(start + configs_every, configs_every);
    configs_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut polls = tokio::time::interval_at(start + poll_every, poll_every);
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reload_bound = opts.statement_timeout * 4;
    loop {
        // Not biased: under a storm of notifications the heartbeat and the reconcile timer still
        // get their turn (notifications are taken a batch at a time).
        let mut reload = false;
        tokio::select! {
            _ = shutdown.changed() => return Ended::Shutdown,
            note = live.notes.recv() => {
                let Some(first) = note else {
                    return Ended::Lost("connection closed".into());
                };
                let mut to_confirm = Vec::new();
                let mut configured = Vec::new();
                let mut all_configs = false;
                let mut next = Some(first);
                let mut taken = 0;
                while let Some(n) = next.take() {
                    match apply_notification(shared, live.key.as_ref(), &n) {
                        Next::Nothing => {}
                        Next::Confirm(k) => to_confirm.push(k),
                        Next::Reload => reload = true,
                        Next::Config(k) => configured.push(k),
                        Next::ConfigAll => all_configs = true,
                    }
                    taken += 1;
                    if taken < TURN {
                        next = live.notes.try_recv().ok();
                    }
                }
                if !to_confirm.is_empty() {
                    to_confirm.sort();
                    to_confirm.dedup();
                    let work = confirm(shared, &live.client, to_confirm);
                    match tokio::time::timeout(opts.statement_timeout, work).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ended::Lost(format!("confirming notifications failed: {e}")),
                        Err(_) => return Ended::Lost("confirming notifications timed out".into()),
                    }
                }
                if (all_configs || !configured.is_empty()) && !reload {
                    configured.sort();
                    configured.dedup();
                    let keys = (!all_configs).then_some(&configured[..]);
                    let work = configs::refresh(shared, &live.client, keys);
                    match tokio::time::timeout(opts.statement_timeout, work).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Ended::Lost(format!("reading the live configuration failed: {e}")),
                        Err(_) => return Ended::Lost("reading the live configuration timed out".into()),
                    }
                }
            }
            _ = heartbeat.tick() => {
                let ping = tokio::time::timeout(opts.statement_timeout, live.client.simple_query(""));
                match ping.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Ended::Lost(format!("heartbeat failed: {}", describe_pg_error(&e))),
                    Err(_) => return Ended::Lost(format!("heartbeat unanswered for {:?}", opts.statement_timeout)),
                }
            }
            _ = reconcile.tick() => reload = true,
            _ = configs_tick.tick() => {
                let work = configs::refresh(shared, &live.client, None);
                match tokio::time::timeout(opts.statement_timeout, work).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(format!("reading the live configuration failed: {e}")),
                    Err(_) => return Ended::Lost("reading the live configuration timed out".into()),
                }
            }
            _ = polls.tick() => {
                if let Some(cursor) = live.cursor.as_mut() {
                    let work = poll::poll(shared, &live.client, cursor);
                    match tokio::time::timeout(opts.statement_timeout, work).await {
                        Ok(Ok(Polled::Applied)) => {}
                        Ok(Ok(Polled::Reload)) => reload = true,
                        Ok(Err(e)) => return Ended::Lost(format!("polling the change log failed: {e}")),
                        Err(_) => return Ended::Lost(format!("polling the change log unanswered for {:?}", opts.statement_timeout)),
                    }
                }
            }
        }
        if live.overflowed.swap(false, Ordering::Relaxed)
        /* see `open` */
        {
            tracing::warn!(
                "notifications arrived faster than they could be applied; reloading every row"
            );
            reload = true;
        }
        if reload {
            match tokio::time::timeout(reload_bound, resync(shared, &live.client)).await {
                Ok(Ok(())) => shared.outbox_kick(),
                Ok(Err(e)) => return Ended::Lost(format!("reconciliation failed: {e}")),
                Err(_) => return Ended::Lost("reconciliation timed out".into()),
            }
        }
    }
}

/// Capped exponential backoff with jitter: 50 ms doubling to `cap` (`reconnect_backoff_max`,
/// 5 s by default), each delay drawn in [ceiling/2, ceiling].
#[derive(Debug)]
struct Backoff {
    attempt: u32,
    cap: Duration,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(50);

    fn new(cap: Duration) -> Backoff {
        Backoff { attempt: 0, cap }
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter in [ceiling/2, ceiling]: instances restarting together spread out.
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
