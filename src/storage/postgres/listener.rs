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
//! A listener checks that it hears other sessions (a transaction pooler would swallow every
//! notification): at start before `connect` returns, after a reconnect only if nothing arrives
//! within a heartbeat (`sync::Check`), so that a fleet reconnecting at once does not NOTIFY once
//! an instance.
//!
//! A heartbeat under a timeout finds a black-holed connection that TCP alone would keep for many
//! minutes (and reads the notification queue's usage and the database's clock), and a periodic
//! reload is the safety net for anything else. No user code runs on this task (`callbacks.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Notification;

use super::backoff::Backoff;
use super::poll::{self, Polled};
use super::{configs, Follow, Shared};
use crate::error::StorageError;

/// How far a notification's commit time may be from the database's clock (by this instance's
/// estimate of it) for the notification to be taken on trust; an older one is confirmed from the
/// table, as a replay would be.
pub(crate) const REPLAY_WINDOW: Duration = Duration::from_secs(2);

/// The notification queue's usage past which the heartbeat warns.
pub(super) const QUEUE_WARN: f64 = 0.5;

/// Notifications applied in one turn of the loop before the timers get a look.
const TURN: usize = 256;

/// A connection that stayed up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How often a listener that cannot reconnect says so at WARN.
const WARN_EVERY: Duration = Duration::from_secs(60);

use super::notifications::{apply_notification, confirm, Next, Unconfirmed};
use super::sync::{connect_and_sync, resync, send_check, server_status, within, Check, Live};

enum Ended {
    Shutdown,
    Lost(String),
    /// A deferred check went unanswered: the listener hears no other session.
    Unheard,
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
    // How the next connection checks that it hears other sessions: later (and only if nothing
    // arrives) after one that heard them, at once after one that did not.
    let mut check = Check::Deferred;
    loop {
        let current = match live.take() {
            Some(l) => l,
            None => {
                let attempt = tokio::select! {
                    r = connect_and_sync(&shared, check) => r,
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
        check = if current.deaf {
            Check::Now
        } else {
            Check::Deferred
        };
        match serve(&shared, current, &mut shutdown).await {
            Ended::Shutdown => return,
            Ended::Unheard => {
                // Connect again at once, to follow by polling (the connect says why).
                check = Check::Failed;
                shared.set_degraded(true);
            }
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
    // A deferred check (`Check::Deferred`): at a random moment within the first heartbeat, if
    // nothing has arrived by then, NOTIFY the check channel, and give up on this connection if
    // nothing arrives within the statement timeout after. Random, so that of a fleet that
    // reconnected at once the first to check answers the others' question too.
    let mut check_due = start
        + Duration::from_nanos(crate::jitter::below(
            crate::clock::duration_nanos(beat).max(1),
        ));
    let mut check_sent = false;
    loop {
        // Not biased: under a storm of notifications the heartbeat and the reconcile timer still
        // get their turn (notifications are taken a batch at a time). Each arm says whether
        // everything must be reloaded, or why the connection is lost.
        let step: Result<bool, String> = tokio::select! {
            _ = shutdown.changed() => return Ended::Shutdown,
            note = live.notes.recv() => match note {
                Some(first) => {
                    if std::mem::take(&mut live.unsure) {
                        shared.main_address_heard(true); // it hears someone
                    }
                    take_notifications(shared, &mut live, first).await
                }
                None => Err("connection closed".into()),
            },
            _ = tokio::time::sleep_until(check_due), if live.unsure => {
                if check_sent {
                    return Ended::Unheard;
                }
                check_sent = send_check(shared).await;
                // Unsent (no pooled connection): try again a heartbeat later.
                check_due = tokio::time::Instant::now()
                    + if check_sent { opts.statement_timeout } else { beat };
                Ok(false)
            }
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
