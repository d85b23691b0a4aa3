//! The listener's connection (`Live`): opening it, LISTENing on the secret channel (or finding
//! that this role must poll), checking that it hears other sessions (a transaction pooler would
//! swallow everything), reading the database's clock and queue, and loading the whole namespace
//! after every (re)connect, since notifications sent while it was away are lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Notification};

use super::payload::NotifyKey;
use super::poll::{self};
use super::{configs, statements, Follow, Shared};
use crate::error::{describe_pg_error, StorageError};
use crate::fleet::precedence::{Remote, Source};

use super::listener::QUEUE_WARN;

/// A connected, listening listener connection.
pub(crate) struct Live {
    pub(super) client: Client,
    pub(super) notes: mpsc::Receiver<Notification>,
    /// Set by the connection task when it had to drop notifications.
    pub(super) overflowed: Arc<AtomicBool>,
    pub(super) driver: JoinHandle<()>,
    /// Authenticates notifications; `None` until read, and for a role that may not read it
    /// (which then follows by polling).
    pub(super) key: Option<NotifyKey>,
    /// The secret channel notifications arrive on (with the key).
    pub(super) channel: String,
    /// A NOTIFY sent from another session did not come back: the listener follows the table
    /// by polling its change log instead.
    pub(super) deaf: bool,
    /// Listening, and not yet known to hear other sessions: the check was deferred
    /// ([`Check::Deferred`]) until nothing arrived for a while.
    pub(super) unsure: bool,
    /// Where the next poll of the change log starts, when the instance polls (`poll.rs`).
    pub(super) cursor: Option<poll::Cursor>,
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
pub(crate) async fn connect_and_sync(
    shared: &Arc<Shared>,
    check: Check,
) -> Result<Live, StorageError> {
    if !shared.schema_ready.load(Ordering::Relaxed)
    /* see `prepare_schema` */
    {
        shared.prepare_schema().await?;
    }
    let mut live = open(shared).await?;
    sync(shared, &mut live, check).await?;
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
    Ok(Live {
        client,
        notes,
        overflowed,
        driver,
        key: None,
        channel: String::new(),
        deaf: false,
        unsure: false,
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
    let sql = format!("LISTEN {channel}; LISTEN {CHECK_CHANNEL}");
    let listen = async {
        (live.client.batch_execute(&sql).await).map_err(|e| StorageError::db("listening", e))
    };
    within(shared.opts.statement_timeout, "listening", listen).await?;
    live.key = Some(key);
    live.channel = channel;
    Ok(true)
}

/// The channel every listener of the database LISTENs on to check that it hears other sessions.
/// One channel for all, so that one instance's check tells every listener that heard it: a fleet
/// that reconnects at once sends a few checks, not one each (PostgreSQL before 19 wakes every
/// listening backend for every NOTIFY, so `n` checks would cost `n` × `n` wake-ups). Anyone may
/// NOTIFY it; hearing anyone's is what the check asks.
pub(super) const CHECK_CHANNEL: &str = "rc_listener_check";

/// When a (re)connected listener checks that it hears other sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Before the connect returns: at start, and after a connection that heard nothing.
    Now,
    /// Only if nothing at all arrives within a heartbeat (`listener.rs`): after losing a
    /// connection that heard others, as a whole fleet does at once after a failover.
    Deferred,
    /// Not again: the previous connection, to the same address a moment ago, heard nothing
    /// (its deferred check went unanswered).
    Failed,
}

/// NOTIFYs the check channel from a pooled session. False when it could not be sent (no pooled
/// connection, or no answer within the statement timeout).
pub(super) async fn send_check(shared: &Shared) -> bool {
    let send = async {
        let client = shared.client("checking the listener").await?;
        client
            .query_typed(
                "SELECT pg_catalog.pg_notify($1, '')",
                &[(&CHECK_CHANNEL, Type::TEXT)],
            )
            .await
            .map_err(|e| StorageError::db("checking the listener", e))
    };
    match tokio::time::timeout(shared.opts.statement_timeout, send).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "could not check that the listener hears other sessions");
            false
        }
        Err(_) => false,
    }
}

/// Sends a NOTIFY on the check channel from a pooled session and waits for it (or anyone's).
/// Through a transaction-mode pooler the LISTEN stays on a server session that no client is
/// attached to, and nothing comes back. Other notifications received meanwhile are dropped: the
/// reload that follows every connect covers them. True when the check could not be made (no
/// pooled connection): a reconnect checks again.
async fn hears_others(shared: &Shared, live: &mut Live) -> bool {
    if !send_check(shared).await {
        return true;
    }
    let deadline = tokio::time::Instant::now() + shared.opts.statement_timeout;
    loop {
        match tokio::time::timeout_at(deadline, live.notes.recv()).await {
            Ok(Some(n)) if n.channel() == CHECK_CHANNEL => return true,
            Ok(Some(_)) => continue,
            // The connection ended: the loop will notice and reconnect.
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Reads the notification key and LISTENs, checks that the listener hears other sessions (now,
/// or later: `check`), then loads the namespace into the cells over the listening connection
/// (after LISTEN, so nothing committed from here on is missed). A polling instance takes its first cursor instead, before the load
/// for the same reason.
pub(crate) async fn sync(
    shared: &Arc<Shared>,
    live: &mut Live,
    check: Check,
) -> Result<(), StorageError> {
    let bound = shared.opts.statement_timeout * 4;
    let work = async {
        if shared.opts.follow == Follow::Listen {
            // After the schema check (at start), so that its pooled connection is reused.
            if !listen(shared, live).await? {
                live.deaf = true;
                shared.main_address_heard(false);
                tracing::warn!(
                    "this role may not read the notification secret (grant it an instance's rights with `resilient-circuit setup --grant-to ROLE`): it follows the table by polling the change log every {:?}",
                    shared.opts.poll_interval
                );
            } else {
                live.deaf = match check {
                    Check::Now => !hears_others(shared, live).await,
                    Check::Deferred => {
                        live.unsure = true;
                        false
                    }
                    Check::Failed => true,
                };
                // A check still to come (`unsure`) proves nothing yet.
                shared.main_address_heard(!live.deaf && !live.unsure);
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
pub(super) async fn within<T>(
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
pub(super) async fn server_status(shared: &Shared, client: &Client) -> Result<(), StorageError> {
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
    shared
        .marks
        .set_clock_offset(db.saturating_sub(before / 2 + after / 2));
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
pub(super) async fn resync(shared: &Arc<Shared>, client: &Client) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    // Keys leaving forced-open are read just below with every other row.
    let _released = configs::refresh(shared, client, None).await?;
    // Before the query: what the cells apply after this is newer than the snapshot, and a
    // notification committed before it is in the snapshot (or older still: see `fresh`).
    let read_at = shared.clock.now_nanos();
    shared.marks.reloading();
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
    // A reader may not ask (an instance's function): it reports no rates, so it has none to
    // learn, and its load is complete without them.
    let judged = match client
        .query_typed(statements::JUDGED, &[(&shared.opts.namespace, Type::TEXT)])
        .await
    {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Vec::new(),
        Err(e) => return Err(StorageError::db("reading the judged keys", e)),
    };
    for row in &judged {
        let key: String = row
            .try_get("o_key")
            .map_err(|e| StorageError::db("reading the judged keys", e))?;
        let ms: i64 = row
            .try_get("o_remaining_ms")
            .map_err(|e| StorageError::db("reading the judged keys", e))?;
        shared.judged(&key, statements::remaining(ms));
    }
    // The groups this instance joined: their counts changed unheard while it was away.
    let groups: Vec<String> = storage.groups.iter().map(|g| g.key().to_string()).collect();
    if !groups.is_empty() {
        let during = "reading the groups' states";
        let rows = client
            .query_typed(
                statements::GROUP_STATES.sql,
                &[
                    (&shared.opts.namespace, Type::TEXT),
                    (&groups, Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(|e| StorageError::db(during, e))?;
        for row in &rows {
            let name: String = row
                .try_get("o_group")
                .map_err(|e| StorageError::db(during, e))?;
            crate::group::heard(&storage, &name, statements::decode_group(row, during)?);
        }
    }
    tracing::debug!(rows = rows.len(), elapsed = ?started.elapsed(), "snapshot loaded");
    shared.metrics.resyncs.increment(1);
    Ok(())
}
