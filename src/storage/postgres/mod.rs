//! The PostgreSQL backend: one [`Storage`](crate::Storage) made by `connect` is one instance of
//! the fleet. This file is the table of contents and the state the pieces share (`Shared`).
//!
//! | file | what it is for |
//! |---|---|
//! | `connect.rs` | making an instance: pool, schema, first snapshot, listener task; shutdown |
//! | `listener.rs` | **the listener**: its loop, heartbeat, reconnects with backoff |
//! | `sync.rs` | the listener's connection: LISTEN, the secret, the clock, reload after every (re)connect |
//! | `notifications.rs` | one notification: verified, taken on trust or confirmed from the table |
//! | `poll.rs` | following by polling the change log instead (`Follow::Poll`, or a deaf LISTEN) |
//! | `payload.rs` | NOTIFY payloads: parsing and HMAC authentication |
//! | `watermarks.rs` | the newest version seen, the database's clock, the last reload: what is fresh |
//! | `publish.rs` | the outbox: our trips and overrides, one entry per key, batched, retried |
//! | `leases.rs` | fleet-wide half-open probes: leases and reports |
//! | `votes.rs` | quorum votes (`TripPolicy::Quorum`) |
//! | `rates.rs` | the fleet-rate reporter (`TripPolicy::FleetRate`) |
//! | `configs.rs` | live configuration rows, read on (re)load and on a `config` notification |
//! | `settle.rs` | what was sent and not answered yet: what `flush` waits for |
//! | `pool.rs` | one transition call on a pooled connection, bounded and cancellable |
//! | `backoff.rs` | the pause before trying the database again (reconnects, retries) |
//! | `reaper.rs` | closing pooled connections left idle, so an instance at rest holds one |
//! | `hosts.rs` | connecting to a host list as libpq does: one host at a time, each bounded |
//! | `statements.rs` | every statement we send and the columns we read back |
//! | `callbacks.rs` | the thread that runs callbacks of transitions made elsewhere |
//! | `migrate.rs` | the schema: `sql/` applied in order, with checksums |
//! | `roles.rs` | what each kind of role may do, as grants |
//! | `admin/` | the administration API (`setup`, `check`, `status`, `force`, `configure`, …) the command is built on |
//! | `config/`, `tls.rs` | `PostgresOptions`, `RC_DB_*`, the DSN parser; TLS modes |
//!
//! One trip, end to end: `Permit::failure` (`breaker.rs`) → the cell trips locally (`cell/mod.rs`)
//! → `publish_trip` below marks it pending with its basis → the outbox sends `rc_trip_many`
//! (`publish.rs`, SQL in `sql/`) → the row lock, the trigger and the NOTIFY at commit → every
//! listener verifies and applies it (`listener.rs`, `payload.rs`) by the rules of
//! `fleet/precedence.rs` → each instance's cell changes state, and its callbacks run on
//! `callbacks.rs`'s thread.

pub mod admin;
mod backoff;
mod callbacks;
pub(crate) mod config;
mod configs;
mod connect;
mod groups;
pub(crate) mod hosts;
mod leases;
mod listener;
pub mod migrate;
mod notifications;
mod payload;
mod poll;
mod pool;
mod publish;
mod rates;
mod reaper;
pub mod roles;
mod settle;
pub(crate) mod statements;
mod sync;
pub(crate) mod tls;
mod votes;
mod watermarks;

pub(crate) use connect::connect;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use postgres_openssl::MakeTlsConnector;
use tokio::sync::watch;

pub use config::{
    Follow, ParseFollowError, ParseSslModeError, PostgresOptions, SslMode, TargetSessionAttrs,
};

use crate::cell::{KeyCell, Lease, Transition};
use crate::clock::Clock;
use crate::fleet::precedence::{Call, Hold, PendingTrip, Remote, Source};
use crate::fleet::{BoxFuture, Done, Link, SharedStore};
use crate::policy::Policy;
use crate::storage::StorageInner;
use crate::telemetry::InstanceMetrics;
use crate::{ChangeOrigin, State};

/// One instance's link to the shared table; owned by its [`Storage`].
pub(crate) struct Instance {
    pub(crate) shared: Arc<Shared>,
    /// Dropping the storage drops this sender, which stops the listener task and the reaper.
    _shutdown: watch::Sender<()>,
}

/// What the listener task and the publishing tasks share.
pub(crate) struct Shared {
    pub(crate) opts: PostgresOptions,
    /// The LISTEN connection's TLS connector (its own settings when a listener DSN is given).
    pub(crate) listener_tls: MakeTlsConnector,
    /// The LISTEN connection's host list (sharing the pool's memory of the host that answered
    /// last when it is the pool's list).
    pub(crate) listener_hosts: hosts::Hosts,
    /// The pool's TLS connector, also used to cancel a call on the server.
    pool_tls: MakeTlsConnector,
    /// Connections for transition calls, opened on demand; those left idle for
    /// `pool_idle_timeout` are closed by the reaper (`reaper.rs`), so at rest it is empty.
    pool: Pool,
    /// Transition calls are prepared once per pooled connection (`pool.rs`): true once the
    /// listener heard another session on the main address, until it finds itself deaf or a
    /// server refuses a prepared statement.
    prepared: pool::Prepared,
    /// The storage's cells; weak so that dropping the last `Storage` ends everything.
    pub(crate) storage: Weak<StorageInner>,
    /// What the cells read of the instance without asking: whether the listener is connected
    /// (half-open probes are then leased from the database, else counted locally) and the
    /// newest version seen (kept by `marks`), the basis of their decisions.
    pub(crate) link: Arc<Link>,
    /// The schema was verified (or created) on some connection; until then every reconnect
    /// checks it first.
    pub(crate) schema_ready: AtomicBool,
    /// The newest version seen, the database's clock, the last reload (`watermarks.rs`).
    pub(crate) marks: watermarks::Watermarks,
    /// The last warning about the notification queue (whole seconds since the Unix epoch).
    queue_warned_at: AtomicI64,
    /// Identifies this instance's probe leases (`holder` column) and its changes in the log:
    /// `name:pid:start`.
    holder: String,
    /// This instance's stable name: its votes and fleet-rate reports
    /// ([`PostgresOptions::instance_name`]).
    name: String,
    /// The process's background I/O runtime (`connect.rs`), where every task of the instance runs.
    runtime: tokio::runtime::Handle,
    /// The instance's span: every task it spawns runs inside it, so that its log lines carry
    /// its target and namespace whichever thread writes them.
    pub(crate) span: tracing::Span,
    /// Trips and overrides on their way to the database, sent in batches.
    outbox: publish::Outbox,
    /// Callbacks of transitions made elsewhere.
    callbacks: callbacks::Callbacks,
    /// Reports sent outside the outbox and not answered yet, and the wake-up `flush` waits on.
    unanswered: Arc<settle::Unanswered>,
    clock: Arc<dyn Clock>,
    /// The keys the fleet judges now, until when (the storage's clock), heard whether or not a
    /// breaker of ours holds the key: one built later reports its rate from the start.
    pub(crate) judged: dashmap::DashMap<Arc<str>, u64>,
    /// This instance's metric handles (`telemetry.rs`).
    pub(crate) metrics: InstanceMetrics,
}

impl Shared {
    /// Marks the instance connected or not. On a loss, half-open cells start local rounds (a
    /// fleet round needs the database) and callers waiting for a probe lease are woken.
    pub(crate) fn set_degraded(&self, degraded: bool) {
        // Relaxed: a mode flag the cells read as a hint (see `KeyCell::is_fleet`).
        let was = !self.link.online.swap(!degraded, Ordering::Relaxed);
        if was != degraded {
            if degraded {
                tracing::warn!(target = %self.opts.target(), "lost PostgreSQL: breakers run on local state until it is back");
                for cell in self.cells() {
                    cell.go_local();
                }
            } else {
                tracing::info!(target = %self.opts.target(), "PostgreSQL connection established; breakers follow the fleet");
                self.outbox.kick();
            }
        }
        self.metrics.connected(!degraded);
    }

    pub(crate) fn is_degraded(&self) -> bool {
        !self.link.is_online()
    }

    /// Every cell, collected first: nothing may run under the map's shard locks (callbacks and
    /// code that builds breakers would deadlock on them).
    pub(crate) fn cells(&self) -> Vec<Arc<KeyCell>> {
        match self.storage.upgrade() {
            Some(storage) => storage.cells.iter().map(|e| e.value().clone()).collect(),
            None => Vec::new(),
        }
    }

    /// Applies a state of `key`'s row from `source`. A key with no cell here needs one only if
    /// the row is not CLOSED (absence means CLOSED), so CLOSED rows of keys no breaker uses
    /// cost no memory. `committed_at_us`: when the database committed it, if it said.
    pub(crate) fn apply_key(
        &self,
        storage: &StorageInner,
        key: &str,
        remote: Remote,
        source: Source,
        committed_at_us: Option<i64>,
    ) {
        let cell = match storage.cells.get(key).map(|c| c.clone()) {
            Some(c) => c,
            None if remote.state == State::Closed => {
                self.marks.seen(remote.version);
                return;
            }
            None => storage.cell(key.into(), Policy::default()),
        };
        self.apply(&cell, remote, source, committed_at_us);
    }

    /// Applies a state of `cell`'s row from `source`; a transition is streamed at once and its
    /// callbacks are queued.
    pub(crate) fn apply(
        &self,
        cell: &Arc<KeyCell>,
        remote: Remote,
        source: Source,
        committed_at_us: Option<i64>,
    ) {
        self.marks.seen(remote.version);
        if let Some(t) = cell.apply_remote(remote, source) {
            self.transitioned(cell, t, Some(remote.version), committed_at_us);
        }
    }

    /// Applies a transition function's answer to `call` about `cell`'s row: the one place
    /// answers are applied, for every kind of call.
    pub(crate) fn answered(&self, cell: &Arc<KeyCell>, call: Call, row: &statements::RowState) {
        let remote = row.remote(&cell.key);
        self.marks.seen(remote.version);
        if let Some(t) = cell.answered(call, remote) {
            self.transitioned(cell, t, Some(remote.version), None);
        }
    }

    /// Reads `cell`'s row on a pooled connection and applies it as a reload would (a key without
    /// a row is CLOSED, at the version the cell holds). Errors are logged: the listener's next
    /// reload covers what this misses.
    pub(crate) async fn reread(&self, cell: &Arc<KeyCell>) {
        use tokio_postgres::types::Type;
        let read_at = self.clock.now_nanos();
        let keys = vec![cell.key.to_string()];
        let read = async {
            let client = self.client("reading a row").await?;
            client
                .query_typed(
                    statements::ROWS,
                    &[
                        (&self.opts.namespace, Type::TEXT),
                        (&keys, Type::TEXT_ARRAY),
                    ],
                )
                .await
                .map_err(|e| crate::StorageError::db("reading a row", e))
        };
        let rows = match tokio::time::timeout(self.opts.statement_timeout, read).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::debug!(key = %cell.key, error = %e, "could not read a row after a hold ended");
                return;
            }
            Err(_) => return,
        };
        let remote = match rows.first().map(statements::decode_snapshot) {
            Some(Ok((_, remote))) => remote,
            Some(Err(e)) => {
                tracing::debug!(key = %cell.key, error = %e, "unreadable row after a hold ended");
                return;
            }
            None => Remote {
                version: cell.row_version(),
                ..Remote::ABSENT
            },
        };
        self.apply(cell, remote, Source::Reload { read_at }, None);
    }

    /// A transition that did not come from a call of this process (the table's state, applied):
    /// streamed at once, its callbacks queued. `version`: the row version that made it.
    pub(crate) fn transitioned(
        &self,
        cell: &Arc<KeyCell>,
        t: Transition,
        version: Option<i64>,
        committed_at_us: Option<i64>,
    ) {
        cell.feed.send(
            &cell.key,
            t.from,
            t.to,
            ChangeOrigin::Remote,
            version,
            committed_at_us,
        );
        self.callbacks.queue(cell, t, version, committed_at_us);
    }

    /// A notification committed at `at_us` (database clock) is in the snapshot now.
    pub(crate) fn lag_since(&self, at_us: i64) {
        let lag_us = self.marks.database_now_us().saturating_sub(at_us).max(0);
        self.metrics.notification_lag.record(lag_us as f64 / 1e6);
    }

    /// The server's notification queue is this full (0 to 1): a gauge, and a warning (at most
    /// once a minute) past `warn_at`.
    pub(crate) fn queue_usage(&self, usage: f64, warn_at: f64) {
        self.metrics.queue_usage.set(usage);
        if usage < warn_at {
            return;
        }
        let now = sync::unix_micros() / 1_000_000;
        // Relaxed: a rate limit for a log line.
        let last = self.queue_warned_at.load(Ordering::Relaxed);
        if now - last >= 60
            && self
                .queue_warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(usage = format!("{:.0}%", usage * 100.0), "the server's notification queue is filling: at 100% every commit that notifies fails (every breaker transition, and the Python package's writes). A session that LISTENs and sits in an open transaction stops the queue from draining; find it with `resilient-circuit check`, end it with pg_terminate_backend, and set idle_in_transaction_session_timeout");
        }
    }

    /// Runs `task` on the instance's runtime, inside its span.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use tracing::Instrument;
        self.runtime.spawn(task.instrument(self.span.clone()));
    }

    /// Retry the outbox now (the database answered again).
    pub(crate) fn outbox_kick(&self) {
        self.outbox.kick();
    }

    /// How many trips and overrides wait for the database's acceptance.
    pub(crate) fn pending(&self) -> usize {
        self.outbox.len()
    }

    /// Sets the `pending_publications` gauge after the outbox changed, and wakes
    /// [`flush`](Instance::flush) when nothing is left.
    pub(crate) fn pending_changed(&self) {
        let pending = self.outbox.len();
        self.metrics.pending.set(pending as f64);
        if pending == 0 {
            self.unanswered.wake();
        }
    }

    /// Transitions and reports of this instance the database has not answered yet.
    fn unanswered(&self) -> usize {
        self.outbox.len() + self.unanswered.reports()
    }

    /// Counts a report (probe result, vote, rate report) until the returned guard is dropped.
    pub(crate) fn report_started(&self) -> settle::ReportInFlight {
        self.unanswered.started()
    }
}

impl Instance {
    /// Waits until the database answered every transition and probe result this instance sent,
    /// at most `within`; true when nothing is left.
    pub(crate) async fn flush(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        // The fleet-rate counts due now, sent now rather than at the next interval.
        let _ = tokio::time::timeout_at(deadline, self.shared.report_rates()).await;
        loop {
            // Register before looking, so that an answer arriving in between is not missed.
            let settled = self.shared.unanswered.settled();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.shared.unanswered() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.shared.unanswered() == 0;
            }
        }
    }

    /// Keeps the hold `cell` registered when its own judgement opened it
    /// (`KeyCell::open_on_own_judgement`) until its deadline: then, unless something newer ended
    /// it first (an answer, a newer row), the hold is dropped and the row read again, so that no
    /// held state outlives its reason nor waits for a call to end it. (A vote short of its
    /// quorum, or a trip the database never took, would otherwise keep the cell OPEN past its
    /// cooldown while the row says CLOSED.) `None` when a newer row already ended the hold:
    /// nothing is left to hold or to send.
    fn keep_hold(&self, cell: &Arc<KeyCell>) -> Option<PendingTrip> {
        let held = cell.pending_trip()?;
        let wait = held.deadline.saturating_sub(self.shared.clock.now_nanos());
        let shared = self.shared.clone();
        let cell = cell.clone();
        self.shared.spawn(async move {
            // The hold's own end: a time, not an event.
            tokio::time::sleep(Duration::from_nanos(wait)).await;
            if cell.hold_ended(held.seq) {
                shared.reread(&cell).await;
            }
        });
        Some(held)
    }
}

impl SharedStore for Instance {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn namespace(&self) -> &str {
        &self.shared.opts.namespace
    }

    fn link(&self) -> Arc<Link> {
        self.shared.link.clone()
    }

    fn pending(&self) -> usize {
        self.shared.pending()
    }

    fn is_degraded(&self) -> bool {
        self.shared.is_degraded()
    }

    fn flush(&self, within: Duration) -> BoxFuture<'_, bool> {
        Box::pin(Instance::flush(self, within))
    }

    fn request_lease(&self, cell: &Arc<KeyCell>) {
        Instance::request_lease(self, cell);
    }

    fn judged_until(&self, key: &str) -> Option<u64> {
        self.shared.judged.get(key).map(|until| *until)
    }

    fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool) {
        Instance::report_probe(self, cell, lease, success);
    }

    fn decided(&self, cell: &Arc<KeyCell>) {
        let Some(held) = self.keep_hold(cell) else {
            return; // a newer row ended it first: the database would refuse it too
        };
        match held.hold {
            Hold::Trip => self.shared.outbox.trip(&self.shared, cell.clone()),
            Hold::Vote => self.cast_vote(cell, held),
            Hold::Alone => {} // only the fleet's rate opens the key for everyone
        }
    }

    fn join_group<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [String],
        max_open: crate::Ratio,
        open_at: Option<crate::Ratio>,
    ) -> BoxFuture<'a, Result<crate::GroupState, crate::StorageError>> {
        Box::pin(groups::join(
            self.shared.clone(),
            group.to_owned(),
            keys.to_vec(),
            max_open,
            open_at,
        ))
    }

    fn group_state<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::GroupState>, crate::StorageError>> {
        Box::pin(groups::state(self.shared.clone(), group.to_owned()))
    }

    fn force(&self, cell: &Arc<KeyCell>, to: State, cooldown: Duration, done: Option<Done>) {
        let seq = cell.next_decision();
        self.shared.outbox.force(
            &self.shared,
            cell.clone(),
            publish::Force { to, cooldown, seq },
            done,
        );
    }
}
