//! The listener: one task per instance that keeps the local cells in step with the table.
//!
//! It owns a dedicated connection (pools drop notifications) on which it LISTENs to the secret
//! channel the trigger `rc_announce` sends on, or, when the instance follows by polling
//! ([`Follow::Poll`]), the LISTEN hears nothing (a transaction pooler) or its role may not read
//! the channel's name, on which it reads the change log every poll interval (`poll.rs`). After
//! every (re)connect it LISTENs first, then reloads the whole namespace, because notifications
//! sent while it was away are lost; notifications that repeat what the reload read are dropped
//! by their version (`precedence.rs`).
//!
//! A notification counts only with a valid MAC (`payload.rs`), and is taken on trust only when
//! it is fresh (committed after the last reload was read, and within [`REPLAY_WINDOW`] of the
//! database's clock) and does not lower a state (a close, a half-open round): otherwise the
//! row is read first (`confirm`). So a payload captured and sent again later, or forged by a role
//! that holds the key but may not close a breaker, changes nothing the table does not say.
//!
//! A heartbeat under a timeout finds a black-holed connection that TCP alone would keep for many
//! minutes (and reads the notification queue's usage and the database's clock), and a periodic
//! reload is the safety net for anything else. No user code runs on this task (`callbacks.rs`).

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

use super::backoff::Backoff;
use super::payload::{self, NotifyKey, Op};
use super::poll::{self, Polled};
use super::{configs, statements, Follow, Shared};
use crate::error::{describe_pg_error, StorageError};
use crate::fleet::precedence::{Remote, Source};
use crate::State;

/// How far a notification's commit time may be from the database's clock (by this instance's
/// estimate of it) for the notification to be taken on trust; an older one is confirmed from the
/// table, as a replay would be.
pub(crate) const REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// The notification queue's usage past which the heartbeat warns.
const QUEUE_WARN: f64 = 0.5;

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
    /// Authenticates notifications; `None` until read, and for a role that may not read it
    /// (which then follows by polling).
    key: Option<NotifyKey>,
    /// The secret channel notifications arrive on (with the key).
    channel: String,
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
    let check = format!("rc_selfcheck_{:016x}", crate::jitter::below(u64::MAX));
    Ok(Live {
        client,
        notes,
        overflowed,
        driver,
        key: None,
        channel: String::new(),
        check,
        deaf: false,
        cursor: None,
    })
}

/// Reads the notification secret and LISTENs on its channel and on the self-check channel.
/// False when this role may not read the secret: it hears nothing, and follows by polling.
async fn listen(shared: &Shared, live: &mut Live) -> Result<bool, StorageError> {
    let Some((key, channel)) = notify_secret(&live.client).await? else {
        return Ok(false);
    };
    // Both names are made of fixed letters and hex digits (the channel's by `rc_notify_key`):
    // checked here all the same, since they go into the statement as identifiers.
    if !channel
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || channel.is_empty()
        || channel.len() > 63
    {
        return Err(StorageError::Unexpected {
            during: "listening",
            what: "the notification channel in rc_notify_key is not a plain name".into(),
        });
    }
    let sql = format!("LISTEN {channel}; LISTEN {}", live.check);
    let listen = async {
        (live.client.batch_execute(&sql).await).map_err(|e| StorageError::db("listening", e))
    };
    within(shared.opts.statement_timeout, "listening", listen).await?;
    live.key = Some(key);
    live.channel = channel;
    Ok(true)
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
            if !listen(shared, live).await? {
                live.deaf = true;
                tracing::warn!(
                    "this role may not read the notification secret (grant it an instance's rights with `resilient-circuit setup --grant-to ROLE`): it follows the table by polling the change log every {:?}",
                    shared.opts.poll_interval
                );
            } else {
                live.deaf = !hears_others(shared, live).await;
                if live.deaf {
                    tracing::warn!(
                        target = %shared.opts.listener_target(),
                        "the listener does not hear notifications sent by other sessions: it goes through a pooler in transaction mode (pgbouncer). Set RC_DB_LISTENER_DSN (PostgresOptions::listener_dsn) to PostgreSQL's own address, or follow by polling (RC_DB_FOLLOW=poll); until then this instance polls the change log every {:?}",
                        shared.opts.poll_interval
                    );
                }
            }
        }
        server_status(shared, &live.client).await?;
        if shared.opts.follow == Follow::Poll || live.deaf {
            live.cursor = Some(poll::start(shared, &live.client).await?);
        }
        resync(shared, &live.client).await
    };
    within(bound, "loading the snapshot", work).await
}

/// `work`, or a [`StorageError::Timeout`] when it takes longer than `bound`.
async fn within<T>(
    bound: Duration,
    during: &'static str,
    work: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(bound, work)
        .await
        .unwrap_or(Err(StorageError::Timeout {
            after: bound,
            during,
        }))
}

/// Reads the database's clock and the notification queue's usage (`rc_server_status`): the
/// clock so that lag and a notification's age are measured by it (the lag of a change is
/// (local now + offset) − commit time, whatever the two clocks disagree by; good to half the
/// round trip), the queue so that an instance says when it fills. The heartbeat, too.
async fn server_status(shared: &Shared, client: &Client) -> Result<(), StorageError> {
    let during = "reading the server's status";
    let before = unix_micros();
    let rows = client
        .query_typed(statements::SERVER_STATUS, &[])
        .await
        .map_err(|e| StorageError::db(during, e))?;
    let after = unix_micros();
    let Some(row) = rows.first() else {
        return Ok(());
    };
    let db: i64 = row
        .try_get("o_now_us")
        .map_err(|e| StorageError::db(during, e))?;
    let usage: f64 = row
        .try_get("o_queue_usage")
        .map_err(|e| StorageError::db(during, e))?;
    shared.set_clock_offset(db.saturating_sub(before / 2 + after / 2));
    shared.queue_usage(usage, QUEUE_WARN);
    Ok(())
}

/// The local clock in microseconds since the Unix epoch (0 before it).
pub(crate) fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The notification key and channel, or `None` when this role may not read them.
async fn notify_secret(client: &Client) -> Result<Option<(NotifyKey, String)>, StorageError> {
    let during = "reading the notification secret";
    match client.query_typed(statements::NOTIFY_SECRET, &[]).await {
        Ok(rows) => {
            let Some(row) = rows.first() else {
                return Err(StorageError::Unexpected {
                    during,
                    what: "rc_notify_key holds no key".into(),
                });
            };
            let bytes: Vec<u8> = row
                .try_get("o_key")
                .map_err(|e| StorageError::db(during, e))?;
            let channel: String = row
                .try_get("o_channel")
                .map_err(|e| StorageError::db(during, e))?;
            let key =
                NotifyKey::new(&bytes).map_err(|what| StorageError::Unexpected { during, what })?;
            Ok(Some((key, channel)))
        }
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(None),
        Err(e) => Err(StorageError::db(during, e)),
    }
}

/// Loads every row of the namespace into the cells. Keys whose row is gone become CLOSED. The
/// live configuration is read first (changes made while this instance was away were not heard),
/// so the rows apply under the modes in force.
async fn resync(shared: &Arc<Shared>, client: &Client) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    // Keys leaving forced-open are read just below with every other row.
    let _released = configs::refresh(shared, client, None).await?;
    // Before the query: what the cells apply after this is newer than the snapshot, and a
    // notification committed before it is in the snapshot (or older still: see `fresh`).
    let read_at = shared.clock.now_nanos();
    shared.reloading();
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
    // The keys the fleet judges now: their breakers report every interval like the others'.
    let judged = client
        .query_typed(statements::JUDGED, &[(&shared.opts.namespace, Type::TEXT)])
        .await
        .map_err(|e| StorageError::db("reading the judged keys", e))?;
    for row in &judged {
        let key: String = row
            .try_get("o_key")
            .map_err(|e| StorageError::db("reading the judged keys", e))?;
        let ms: i64 = row
            .try_get("o_remaining_ms")
            .map_err(|e| StorageError::db("reading the judged keys", e))?;
        shared.judged(&key, statements::remaining(ms));
    }
    tracing::debug!(rows = rows.len(), elapsed = ?started.elapsed(), "snapshot loaded");
    shared.metrics.resyncs.increment(1);
    Ok(())
}

/// What one notification asks of the loop.
enum Next {
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
fn apply_notification(shared: &Shared, live: &Live, n: &Notification) -> Next {
    let Some(key) = live.key.as_ref() else {
        return Next::Nothing;
    };
    if n.channel() != live.channel {
        return Next::Nothing; // the self-check's, or another channel this session listens to
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
    if !shared.fresh(change.committed_at_us) {
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
    let lag = shared.seen(change.version);
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
    fn key(key: String) -> Unconfirmed {
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
async fn confirm(
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
                    backoff.reset();
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

/// Runs one step of the listener's work within the statement timeout; a failure or a timeout
/// ends the connection (the reconnect reloads everything).
async fn bounded<T>(
    shared: &Shared,
    during: &'static str,
    work: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, String> {
    within(shared.opts.statement_timeout, during, work)
        .await
        .map_err(|e| match e {
            StorageError::Timeout { after, .. } => format!("{during} unanswered for {after:?}"),
            e => format!("{during} failed: {e}"),
        })
}

/// Applies `first` and the notifications queued behind it (up to a turn), then reads what they
/// asked to read: live configurations first (a key leaving forced-open reads its row again),
/// then the rows not taken on trust. True when everything must be reloaded.
async fn take_notifications(
    shared: &Arc<Shared>,
    live: &mut Live,
    first: Notification,
) -> Result<bool, String> {
    let mut reload = false;
    let mut to_confirm = Vec::new();
    let mut configured = Vec::new();
    let mut judged = false;
    let mut next = Some(first);
    let mut taken = 0;
    while let Some(n) = next.take() {
        match apply_notification(shared, live, &n) {
            Next::Nothing => {}
            Next::Confirm(k) => to_confirm.push(k),
            Next::Reload => reload = true,
            Next::Config(k) => configured.push(k),
            Next::Judged => judged = true,
        }
        taken += 1;
        if taken < TURN {
            next = live.notes.try_recv().ok();
        }
    }
    if judged {
        shared.spawn(shared.clone().report_rates_now());
    }
    if reload {
        return Ok(true); // the reload reads every row and configuration
    }
    if !configured.is_empty() {
        configured.sort();
        configured.dedup();
        let work = configs::refresh(shared, &live.client, Some(&configured[..]));
        let released = bounded(shared, "reading the live configuration", work).await?;
        to_confirm.extend(released.into_iter().map(Unconfirmed::key));
    }
    if !to_confirm.is_empty() {
        let work = confirm(shared, &live.client, to_confirm);
        bounded(shared, "confirming notifications", work).await?;
    }
    Ok(false)
}

/// Polls the change log and reads what it asked to read (the live configurations that changed,
/// then the rows of keys leaving forced-open). True when everything must be reloaded.
async fn take_poll(shared: &Arc<Shared>, live: &mut Live) -> Result<bool, String> {
    let Some(cursor) = live.cursor.as_mut() else {
        return Ok(false);
    };
    let work = poll::poll(shared, &live.client, cursor);
    let polled: Polled = bounded(shared, "polling the change log", work).await?;
    if polled.judged {
        shared.spawn(shared.clone().report_rates_now());
    }
    if polled.reload {
        return Ok(true);
    }
    if !polled.configured.is_empty() {
        let work = configs::refresh(shared, &live.client, Some(&polled.configured[..]));
        let released = bounded(shared, "reading the live configuration", work).await?;
        if !released.is_empty() {
            let keys = released.into_iter().map(Unconfirmed::key).collect();
            bounded(
                shared,
                "reading released rows",
                confirm(shared, &live.client, keys),
            )
            .await?;
        }
    }
    Ok(false)
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
    // A polling instance reads configuration changes and judgements from the change log too.
    let poll_every = if polling { opts.poll_interval } else { never };
    let mut polls = tokio::time::interval_at(start + poll_every, poll_every);
    polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reload_bound = opts.statement_timeout * 4;
    loop {
        // Not biased: under a storm of notifications the heartbeat and the reconcile timer still
        // get their turn (notifications are taken a batch at a time). Each arm says whether
        // everything must be reloaded, or why the connection is lost.
        let step: Result<bool, String> = tokio::select! {
            _ = shutdown.changed() => return Ended::Shutdown,
            note = live.notes.recv() => match note {
                Some(first) => take_notifications(shared, &mut live, first).await,
                None => Err("connection closed".into()),
            },
            _ = heartbeat.tick() => {
                bounded(shared, "the heartbeat", server_status(shared, &live.client)).await.map(|()| false)
            }
            _ = reconcile.tick() => Ok(true),
            _ = polls.tick() => take_poll(shared, &mut live).await,
        };
        let mut reload = match step {
            Ok(reload) => reload,
            Err(why) => return Ended::Lost(why),
        };
        if live.overflowed.swap(false, Ordering::Relaxed)
        /* see `open` */
        {
            tracing::warn!(
                "notifications arrived faster than they could be applied; reloading every row"
            );
            reload = true;
        }
        if reload {
            match within(reload_bound, "reconciliation", resync(shared, &live.client)).await {
                Ok(()) => shared.outbox_kick(),
                Err(e) => return Ended::Lost(format!("reconciliation failed: {e}")),
            }
        }
    }
}
