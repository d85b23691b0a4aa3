//! The PostgreSQL backend: one [`Storage`] made by `connect` is one instance of the fleet.
//!
//! An instance has
//! * a dedicated LISTEN connection (`application_name` `resilient-circuit-listener`) driven by the
//!   task in `listener.rs`, which applies every change to the local cells and
//!   reloads the whole namespace after each (re)connect;
//! * a small deadpool pool (`application_name` `resilient-circuit`) for the transition functions
//!   (`statements.rs` lists every statement; the SQL is in `sql/`). deadpool because it is
//!   async-native, small, recycles broken connections and its `prepare_cached` keeps each
//!   function call to one round trip;
//! * the storage's map of cells, which is the snapshot every breaker reads.
//!
//! Transitions decided here are applied locally first (the instance stops its own calls at once)
//! and then published through the outbox (`publish.rs`); the database's answer is applied as
//! soon as it arrives, and the other instances follow by NOTIFY. Which of two conflicting
//! versions of a key wins is decided in one place, `precedence.rs`. Callbacks of transitions
//! made elsewhere run on their own thread (`callbacks.rs`).

mod callbacks;
pub(crate) mod config;
mod listener;
pub mod migrate;
mod payload;
pub(crate) mod precedence;
mod publish;
pub mod statements;
pub(crate) mod tls;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use postgres_openssl::MakeTlsConnector;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::Instrument;

pub use config::{ParseSslModeError, PostgresOptions, SslMode, TargetSessionAttrs};

use crate::cell::{KeyCell, Lease, Transition};
use crate::clock::{duration_nanos, Clock, SystemClock};
use crate::error::{describe_pg_error, StorageError};
use crate::policy::Policy;
use crate::storage::{Backend, Storage, StorageInner};
use crate::State;
use precedence::{Remote, Source};

/// How long an instance waits before asking again for a probe lease after an error.
const LEASE_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// One instance's link to the shared table; owned by its [`Storage`].
pub(crate) struct Instance {
    pub(crate) shared: Arc<Shared>,
    /// Dropping the storage drops this sender, which stops the listener task.
    _shutdown: watch::Sender<()>,
}

/// What the listener task and the publishing tasks share.
pub(crate) struct Shared {
    pub(crate) opts: PostgresOptions,
    /// The LISTEN connection's TLS connector (its own settings when a listener DSN is given).
    pub(crate) listener_tls: MakeTlsConnector,
    /// The pool's TLS connector, also used to cancel a call on the server.
    pool_tls: MakeTlsConnector,
    pool: Pool,
    /// The storage's cells; weak so that dropping the last `Storage` ends everything.
    pub(crate) storage: Weak<StorageInner>,
    /// True while the listener is connected; the cells read it to decide whether half-open
    /// probes are leased from the database or counted locally.
    pub(crate) online: Arc<AtomicBool>,
    /// The schema was verified (or created) on some connection; until then every reconnect
    /// checks it first.
    pub(crate) schema_ready: AtomicBool,
    /// The newest row version this instance has seen from any key (authenticated notifications,
    /// reloads, answers): the `basis` of the trips it decides (see `precedence.rs`).
    max_seen: AtomicI64,
    /// Identifies this instance's probe leases (`holder` column).
    holder: String,
    runtime: tokio::runtime::Handle,
    /// Trips and overrides on their way to the database, sent in batches.
    outbox: publish::Outbox,
    /// Callbacks of transitions made elsewhere.
    callbacks: callbacks::Callbacks,
    clock: Arc<dyn Clock>,
}

/// Connects an instance: see [`Storage::connect_with`].
pub(crate) async fn connect(opts: PostgresOptions) -> Result<Storage, StorageError> {
    let span = tracing::info_span!("resilient_circuit.connect", target = %opts.target(), namespace = %opts.namespace);
    connect_inner(opts).instrument(span).await
}

async fn connect_inner(opts: PostgresOptions) -> Result<Storage, StorageError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| StorageError::NoRuntime)?;
    let tls = tls::make_tls(&opts)?;
    let listener_tls = tls::make_listener_tls(&opts)?;
    let manager = Manager::from_config(
        opts.pg_config("resilient-circuit")?,
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Server-side limits, so that a call the client gave up on cannot keep a row lock.
    let limits = format!(
        "SET statement_timeout = {0}; SET lock_timeout = {0}",
        statements::millis(opts.statement_timeout)
    );
    let pool = Pool::builder(manager)
        .max_size(opts.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(opts.connect_timeout))
        .wait_timeout(Some(opts.statement_timeout))
        .post_create(Hook::async_fn(move |client, _| {
            let limits = limits.clone();
            Box::pin(async move {
                client
                    .batch_execute(&limits)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| StorageError::Database {
            during: "building the connection pool",
            cause: e.to_string(),
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let holder = format!(
        "{}:{}:{:x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
        std::process::id(),
        clock.now_nanos()
    );
    let mut made = None;
    let capacity = super::DEFAULT_MEMORY_CAPACITY;
    let storage = Storage::with_backend_cyclic(capacity, clock.clone(), |weak| {
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            listener_tls,
            pool_tls: tls,
            pool,
            storage: weak,
            online: Arc::new(AtomicBool::new(false)),
            schema_ready: AtomicBool::new(false),
            max_seen: AtomicI64::new(0),
            holder,
            runtime,
            outbox: publish::Outbox::default(),
            callbacks: callbacks::Callbacks::start(),
            clock,
        });
        made = Some(shared.clone());
        Backend::Postgres(Instance {
            shared,
            _shutdown: shutdown_tx,
        })
    });
    let Some(shared) = made else {
        return Err(StorageError::Database {
            during: "starting the instance",
            cause: "internal: backend not built".into(),
        });
    };

    // The schema check and the listener's connection at the same time (two round-trip chains,
    // one wait); the snapshot then needs both, since it calls the schema's functions.
    let (schema, opened) = tokio::join!(shared.prepare_schema(), listener::open(&shared));
    let reachable = match schema {
        Ok(()) => true,
        Err(e @ StorageError::SchemaNotReady { .. }) => return Err(e),
        Err(e) if opts.strict => return Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "PostgreSQL is unreachable: breakers run on local state and reconnect in the background");
            false
        }
    };
    // The listener loads every row of the namespace before we return, so that a breaker built
    // next is OPEN on its first call if the fleet's is.
    let synced = match opened {
        Ok(mut live) if reachable => listener::sync(&shared, &mut live).await.map(|()| live),
        Ok(_) => Err(StorageError::Connect {
            target: opts.target(),
            cause: "the schema check failed".into(),
        }),
        Err(e) => Err(e),
    };
    let first = match synced {
        Ok(live) => Some(live),
        Err(e) if opts.strict => return Err(e),
        Err(e) => {
            if reachable {
                tracing::warn!(error = %e, "the listener could not start: breakers run on local state and reconnect in the background");
            }
            None
        }
    };
    shared.set_degraded(first.is_none());
    let span = tracing::info_span!("resilient_circuit.listener", namespace = %opts.namespace);
    tokio::spawn(listener::run(shared, first, shutdown_rx).instrument(span));
    Ok(storage)
}

impl Shared {
    /// Verifies the schema, applying the migrations when allowed; remembers success.
    pub(crate) async fn prepare_schema(&self) -> Result<(), StorageError> {
        let mut client = self.client("checking the schema").await?;
        let r = match migrate::verify(&client).await {
            Err(StorageError::SchemaNotReady { .. }) if self.opts.auto_create => {
                migrate::migrate(&mut client).await.map(|_| ())
            }
            other => other,
        };
        if r.is_ok() {
            self.schema_ready.store(true, Ordering::Relaxed);
        }
        r
    }

    /// A pooled connection, with errors that name the target and never the password.
    async fn client(
        &self,
        during: &'static str,
    ) -> Result<deadpool_postgres::Object, StorageError> {
        self.pool.get().await.map_err(|e| {
            let cause = match &e {
                deadpool_postgres::PoolError::Backend(pg) => describe_pg_error(pg),
                other => other.to_string(),
            };
            tracing::debug!(during, %cause, "no database connection");
            StorageError::Connect {
                target: self.opts.target(),
                cause,
            }
        })
    }

    /// Runs one transition function: one round trip on a pooled connection (its statement
    /// prepared once per connection), bounded by the statement timeout. A call the timeout
    /// abandons is cancelled on the server too, so it does not keep a row lock.
    async fn call_many(
        &self,
        during: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        let mut cancel = None;
        let work = async {
            let client = self.client(during).await?;
            cancel = Some(client.cancel_token());
            let stmt = client
                .prepare_cached(sql)
                .await
                .map_err(|e| StorageError::db(during, &e))?;
            client
                .query(&stmt, params)
                .await
                .map_err(|e| StorageError::db(during, &e))
        };
        let result = tokio::time::timeout(self.opts.statement_timeout, work).await;
        match result {
            Ok(r) => r,
            Err(_) => {
                if let Some(token) = cancel {
                    let tls = self.pool_tls.clone();
                    self.runtime.spawn(async move {
                        let _ = token.cancel_query(tls).await;
                    });
                }
                Err(StorageError::Timeout {
                    after: self.opts.statement_timeout,
                    during,
                })
            }
        }
    }

    /// Runs one transition function that answers one row, decoded.
    async fn call_one(
        &self,
        during: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<statements::RowState, StorageError> {
        let rows = self.call_many(during, sql, params).await?;
        let row = rows.first().ok_or(StorageError::Database {
            during,
            cause: "the function returned no row".into(),
        })?;
        statements::decode(row, during)
    }

    /// Marks the instance connected or not. On a loss, half-open cells start local rounds (a
    /// fleet round needs the database) and callers waiting for a probe lease are woken.
    pub(crate) fn set_degraded(&self, degraded: bool) {
        let was = !self.online.swap(!degraded, Ordering::Relaxed);
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
        metrics::gauge!("resilient_circuit_degraded", "namespace" => self.opts.namespace.clone())
            .set(if degraded { 1.0 } else { 0.0 });
    }

    pub(crate) fn is_degraded(&self) -> bool {
        !self.online.load(Ordering::Relaxed)
    }

    /// Every cell, collected first: nothing may run under the map's shard locks (callbacks and
    /// code that builds breakers would deadlock on them).
    pub(crate) fn cells(&self) -> Vec<Arc<KeyCell>> {
        match self.storage.upgrade() {
            Some(storage) => storage.cells.iter().map(|e| e.value().clone()).collect(),
            None => Vec::new(),
        }
    }

    /// The newest version seen from any key.
    pub(crate) fn seen(&self, version: i64) {
        self.max_seen.fetch_max(version, Ordering::Relaxed);
    }

    /// Applies a state of `key`'s row from `source`. A key with no cell here needs one only if
    /// the row is not CLOSED (absence means CLOSED), so CLOSED rows of keys no breaker uses
    /// cost no memory.
    pub(crate) fn apply_key(
        &self,
        storage: &StorageInner,
        key: &str,
        remote: Remote,
        source: Source,
    ) {
        self.seen(remote.version);
        let cell = match storage.cells.get(key).map(|c| c.clone()) {
            Some(c) => c,
            None if remote.state == State::Closed => return,
            None => storage.cell(key.into(), Policy::default()),
        };
        self.apply(&cell, remote, source);
    }

    /// Applies a state of `cell`'s row from `source`; callbacks of a transition are queued.
    pub(crate) fn apply(&self, cell: &Arc<KeyCell>, remote: Remote, source: Source) {
        self.seen(remote.version);
        if let Some(t) = cell.apply_remote(remote, source) {
            self.transitioned(cell, t);
        }
    }

    /// Queues the callbacks of a transition that did not come from a call of this process.
    pub(crate) fn transitioned(&self, cell: &Arc<KeyCell>, t: Transition) {
        self.callbacks.queue(cell, t);
    }

    /// Retry the outbox now (the database answered again).
    pub(crate) fn outbox_kick(&self) {
        self.outbox.kick();
    }

    /// How many trips and overrides wait for the database's acceptance.
    pub(crate) fn pending(&self) -> usize {
        self.outbox.len()
    }
}

impl Instance {
    pub(crate) fn is_degraded(&self) -> bool {
        self.shared.is_degraded()
    }

    /// Fleet mode: asks the database for a probe lease for `cell`, in the background. One
    /// request per key at a time; when every slot of the round is leased, the database says
    /// until when, and no one asks again before that (or before the state changes).
    pub(crate) fn request_lease(&self, cell: &Arc<KeyCell>) {
        // A plain load first: rejected callers arrive in crowds, and an unconditional swap would
        // write to the cell on every one of them.
        if cell.lease_requested.load(Ordering::Relaxed)
            || cell.lease_requested.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Clears the flag however the task ends: finished, failed, or dropped unrun because
        // the runtime that connected has shut down.
        let guard = LeaseRequest(cell.clone());
        let shared = self.shared.clone();
        self.shared.runtime.spawn(async move {
            let cell = &guard.0;
            let policy = cell.policy();
            let probes = i32::try_from(policy.probe_count()).unwrap_or(i32::MAX);
            let close_at = i32::try_from(policy.probe_close_threshold()).unwrap_or(i32::MAX);
            let lease_ms = statements::millis(shared.opts.lease_timeout);
            // The lease's life counts from the request: a slow answer must not make it look
            // younger than the database's.
            let asked_at = shared.clock.now_nanos();
            let r = shared
                .call_one(
                    "leasing a probe",
                    statements::ACQUIRE_PROBE,
                    &[
                        &shared.opts.namespace,
                        &&*cell.key,
                        &shared.holder,
                        &lease_ms,
                        &probes,
                        &close_at,
                    ],
                )
                .await;
            match r {
                Ok(row) => {
                    shared.apply(cell, row.remote(&cell.key), Source::Answer);
                    match row.lease_id {
                        Some(id) => {
                            // Keep a margin so we never start a probe on a lease about to expire.
                            let life = duration_nanos(shared.opts.lease_timeout) / 10 * 9;
                            cell.add_leases([Lease {
                                id,
                                expires_at: asked_at.saturating_add(life),
                            }]);
                        }
                        None => {
                            // Every slot is leased (until the first lease expires), or the
                            // cooldown is not over by the database's clock.
                            let wait = row.retry_ms.unwrap_or(row.remaining_ms).max(1);
                            cell.lease_refused_for(statements::remaining(wait));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %cell.key, error = %e, "could not lease a probe");
                    cell.lease_refused_for(LEASE_ERROR_PAUSE);
                }
            }
        });
    }

    pub(crate) fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool) {
        let shared = self.shared.clone();
        let cell = cell.clone();
        self.shared.runtime.spawn(async move {
            let policy = cell.policy();
            let probes = i32::try_from(policy.probe_count()).unwrap_or(i32::MAX);
            let close_at = i32::try_from(policy.probe_close_threshold()).unwrap_or(i32::MAX);
            let cooldown_ms = statements::millis(policy.cooldown);
            let r = shared
                .call_one(
                    "reporting a probe",
                    statements::REPORT_PROBE,
                    &[
                        &shared.opts.namespace,
                        &&*cell.key,
                        &lease.id,
                        &success,
                        &probes,
                        &close_at,
                        &cooldown_ms,
                    ],
                )
                .await;
            match r {
                Ok(row) => shared.apply(&cell, row.remote(&cell.key), Source::Answer),
                Err(e) => tracing::warn!(key = %cell.key, error = %e, "could not report a probe result; its lease will expire"),
            }
        });
    }

    /// Publishes a trip this instance decided: pending until the database answers, with the
    /// newest version seen as its basis (see `precedence.rs`).
    pub(crate) fn publish_trip(&self, cell: &Arc<KeyCell>, cooldown: Duration) {
        let deadline = self
            .shared
            .clock
            .now_nanos()
            .saturating_add(duration_nanos(cooldown));
        let basis = self.shared.max_seen.load(Ordering::Relaxed);
        cell.trip_pending(deadline, basis);
        self.shared.outbox.trip(&self.shared, cell.clone());
    }

    /// Publishes a manual override; `done` hears whether the database accepted it.
    pub(crate) fn publish_force(
        &self,
        cell: &Arc<KeyCell>,
        to: State,
        cooldown: Duration,
        done: Option<publish::Done>,
    ) {
        let seq = cell.local_decisions.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.outbox.force(
            &self.shared,
            cell.clone(),
            publish::Force { to, cooldown, seq },
            done,
        );
    }
}

/// Clears a cell's lease-request flag when dropped.
struct LeaseRequest(Arc<KeyCell>);

impl Drop for LeaseRequest {
    fn drop(&mut self) {
        self.0.lease_requested.store(false, Ordering::Release);
        self.0.changed.notify_waiters();
    }
}
