//! The PostgreSQL backend: one [`Storage`] made by `connect` is one instance of the fleet.
//!
//! An instance has
//! * a dedicated LISTEN connection (`application_name` `resilient-circuit-listener`) driven by the
//!   task in `listener.rs`, which applies every change to the local cells and
//!   reloads the whole namespace after each (re)connect;
//! * a small deadpool pool (`application_name` `resilient-circuit`) for the transition functions
//!   of `sql/0003_transitions.sql`. deadpool because it is async-native, small, recycles broken
//!   connections and its `prepare_cached` keeps each function call to one round trip;
//! * the storage's map of cells, which is the snapshot every breaker reads.
//!
//! Transitions decided here are applied locally first (the instance stops its own calls at once)
//! and then published; the database's answer is applied as soon as it arrives, and the other
//! instances follow by NOTIFY.

pub(crate) mod config;
mod listener;
pub mod migrate;
mod payload;
mod publish;
pub(crate) mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use postgres_openssl::MakeTlsConnector;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::Instrument;

pub use config::{ParseSslModeError, PostgresOptions, SslMode, TargetSessionAttrs};

use crate::cell::{KeyCell, Lease};
use crate::clock::{duration_nanos, Clock, SystemClock};
use crate::error::{describe_pg_error, StorageError};
use crate::policy::Policy;
use crate::storage::{Backend, Storage, StorageInner};
use crate::{ChangeOrigin, State};

/// How long an instance waits before asking again for a probe lease the database refused.
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(25);

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
    pool: Pool,
    /// The storage's cells; weak so that dropping the last `Storage` ends everything.
    pub(crate) storage: Weak<StorageInner>,
    /// True while the listener is connected; the cells read it to decide whether half-open
    /// probes are leased from the database or counted locally.
    pub(crate) online: Arc<AtomicBool>,
    /// Identifies this instance's probe leases (`holder` column).
    holder: String,
    runtime: tokio::runtime::Handle,
    /// Trips decided locally that the database has not accepted yet, with their local deadline.
    /// Published again after a reconnect if their cooldown has not ended.
    pub(crate) pending_trips: DashMap<Arc<str>, u64>,
    /// Trips and overrides on their way to the database, sent in batches.
    outbox: publish::Outbox,
    clock: Arc<dyn Clock>,
}

/// Connects an instance: see [`Storage::connect_with`].
pub(crate) async fn connect(opts: PostgresOptions) -> Result<Storage, StorageError> {
    let span = tracing::info_span!("resilient_circuit.connect", target = %opts.target(), namespace = %opts.namespace);
    connect_inner(opts).instrument(span).await
}

async fn connect_inner(opts: PostgresOptions) -> Result<Storage, StorageError> {
    let tls = tls::make_tls(&opts)?;
    let listener_tls = tls::make_listener_tls(&opts)?;
    let manager = Manager::from_config(
        opts.pg_config("resilient-circuit")?,
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(opts.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(opts.connect_timeout))
        .wait_timeout(Some(opts.statement_timeout))
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
    let storage = Storage::with_backend_cyclic(usize::MAX, clock.clone(), |weak| {
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            listener_tls,
            pool,
            storage: weak,
            online: Arc::new(AtomicBool::new(false)),
            holder,
            runtime: tokio::runtime::Handle::current(),
            pending_trips: DashMap::new(),
            outbox: publish::Outbox::default(),
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
        Ok(live) if reachable => listener::sync(&shared, &live).await.map(|()| live),
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
    /// Verifies the schema, applying the migrations when allowed.
    async fn prepare_schema(&self) -> Result<(), StorageError> {
        let mut client = self.client("checking the schema").await?;
        match migrate::verify(&client).await {
            Err(StorageError::SchemaNotReady { .. }) if self.opts.auto_create => {
                migrate::migrate(&mut client).await?;
                Ok(())
            }
            other => other,
        }
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

    /// Runs one transition function returning one row: see [`call_many`](Self::call_many).
    async fn call(
        &self,
        during: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, StorageError> {
        self.call_many(during, sql, params)
            .await?
            .into_iter()
            .next()
            .ok_or(StorageError::Database {
                during,
                cause: "the function returned no row".into(),
            })
    }

    /// Runs one transition function: one round trip on a pooled connection (its statement
    /// prepared once per connection), bounded by the statement timeout.
    async fn call_many(
        &self,
        during: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        let work = async {
            let client = self.client(during).await?;
            let stmt = client
                .prepare_cached(sql)
                .await
                .map_err(|e| StorageError::db(during, &e))?;
            client
                .query(&stmt, params)
                .await
                .map_err(|e| StorageError::db(during, &e))
        };
        match tokio::time::timeout(self.opts.statement_timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Timeout(self.opts.statement_timeout, during)),
        }
    }

    pub(crate) fn set_degraded(&self, degraded: bool) {
        let was = !self.online.swap(!degraded, Ordering::Relaxed);
        if was != degraded {
            if degraded {
                tracing::warn!(target = %self.opts.target(), "lost PostgreSQL: breakers run on local state until it is back");
            } else {
                tracing::info!(target = %self.opts.target(), "PostgreSQL connection established; breakers follow the fleet");
            }
        }
        metrics::gauge!("resilient_circuit_degraded", "namespace" => self.opts.namespace.clone())
            .set(if degraded { 1.0 } else { 0.0 });
    }

    pub(crate) fn is_degraded(&self) -> bool {
        !self.online.load(Ordering::Relaxed)
    }

    /// The cell of `key`, made unclaimed (default policy) when a row names a key no breaker here
    /// has asked for yet.
    pub(crate) fn cell(&self, storage: &StorageInner, key: &str) -> Arc<KeyCell> {
        if let Some(c) = storage.cells.get(key) {
            return c.clone();
        }
        let key: Arc<str> = key.into();
        storage
            .cells
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(KeyCell::new(
                    key,
                    Policy::default(),
                    storage.clock.clone(),
                    Some(self.online.clone()),
                ))
            })
            .clone()
    }

    /// Applies a row returned by a transition function (o_state, o_version, o_remaining_ms) and
    /// returns the lease it granted, if any.
    fn apply_row(&self, cell: &KeyCell, row: &Row) -> Option<i64> {
        self.apply_columns(cell, row, 0, false)
    }

    /// Applies a function's answer whose state columns start at `first`; `authoritative` as in
    /// [`KeyCell::apply_remote`].
    pub(crate) fn apply_columns(
        &self,
        cell: &KeyCell,
        row: &Row,
        first: usize,
        authoritative: bool,
    ) -> Option<i64> {
        let state: String = row.try_get(first).ok()?;
        let version: i64 = row.try_get(first + 1).ok()?;
        let remaining: i64 = row.try_get(first + 2).ok()?;
        let lease: Option<i64> = row.try_get(first + 3).ok()?;
        self.apply(
            cell,
            &state,
            version,
            payload::remaining(remaining),
            authoritative,
        );
        lease
    }

    /// Applies one known state of a row to its cell and runs callbacks on a transition. See
    /// [`KeyCell::apply_remote`] for `authoritative`.
    pub(crate) fn apply(
        &self,
        cell: &KeyCell,
        state: &str,
        version: i64,
        remaining: Duration,
        authoritative: bool,
    ) {
        let to = state.parse::<State>().unwrap_or_else(|_| {
            tracing::warn!(key = %cell.key, state, "row has an unknown state; treating it as CLOSED");
            State::Closed
        });
        let (t, applied) = cell.apply_remote(to, version, remaining, authoritative);
        if applied {
            // The table moved past whatever this instance had decided and not yet published:
            // replaying that trip later would undo a newer decision (an operator's close, say).
            self.pending_trips.remove(&cell.key);
        }
        if let Some(t) = t {
            cell.notify(t, ChangeOrigin::Remote);
        }
    }

    /// True while `key` holds a local trip the database has not accepted and whose cooldown has
    /// not ended: a reload must not overwrite it. Expired ones are forgotten here.
    pub(crate) fn ahead_of_table(&self, key: &str) -> bool {
        let now = self.clock.now_nanos();
        let ahead = self.pending_trips.get(key).is_some_and(|d| *d > now);
        if !ahead {
            self.pending_trips.remove(key);
        }
        ahead
    }

    /// Publishes the trips decided while the database was unreachable, if still in cooldown.
    pub(crate) fn republish_pending(self: &Arc<Self>) {
        let Some(storage) = self.storage.upgrade() else {
            return;
        };
        let now = self.clock.now_nanos();
        self.pending_trips.retain(|_, deadline| *deadline > now);
        let keys: Vec<Arc<str>> = self.pending_trips.iter().map(|e| e.key().clone()).collect();
        for key in keys {
            if let Some(cell) = storage.cells.get(&key).map(|c| c.clone()) {
                self.queue_trip(cell);
            }
        }
    }
}

impl Instance {
    pub(crate) fn is_degraded(&self) -> bool {
        self.shared.is_degraded()
    }

    pub(crate) fn request_lease(&self, cell: &Arc<KeyCell>) {
        // A plain load first: rejected callers arrive in crowds, and an unconditional swap would
        // write to the cell on every one of them.
        if cell.lease_requested.load(Ordering::Relaxed)
            || cell.lease_requested.swap(true, Ordering::AcqRel)
        {
            return; // one request in flight per key is enough
        }
        let shared = self.shared.clone();
        let cell = cell.clone();
        self.shared.runtime.spawn(async move {
            let policy = cell.policy();
            let probes = i32::try_from(policy.probe_count()).unwrap_or(i32::MAX);
            let lease_ms = i64::try_from(shared.opts.lease_timeout.as_millis()).unwrap_or(i64::MAX);
            let r = shared
                .call(
                    "leasing a probe",
                    "SELECT * FROM public.rc_acquire_probe($1, $2, $3, $4, $5)",
                    &[
                        &shared.opts.namespace,
                        &&*cell.key,
                        &shared.holder,
                        &lease_ms,
                        &probes,
                    ],
                )
                .await;
            match r {
                Ok(row) => {
                    if let Some(id) = shared.apply_row(&cell, &row) {
                        // Keep a margin so we never start a probe on a lease about to expire.
                        let life = duration_nanos(shared.opts.lease_timeout) / 10 * 9;
                        let expires_at = shared.clock.now_nanos().saturating_add(life);
                        cell.add_leases([Lease { id, expires_at }]);
                    } else {
                        // Every slot of the round is taken elsewhere: ask again only after a
                        // pause, so rejected callers do not keep a statement in flight.
                        tokio::time::sleep(LEASE_RETRY_PAUSE).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %cell.key, error = %e, "could not lease a probe");
                    tokio::time::sleep(LEASE_RETRY_PAUSE).await;
                }
            }
            cell.lease_requested.store(false, Ordering::Release);
            cell.changed.notify_waiters();
        });
    }

    pub(crate) fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool) {
        let shared = self.shared.clone();
        let cell = cell.clone();
        self.shared.runtime.spawn(async move {
            let policy = cell.policy();
            let probes = policy.probe_count();
            let close_at = match policy.success_limit {
                Some(s) => s.numerator(),
                None => probes - policy.failure_limit.numerator() + 1,
            };
            let (probes, close_at) = (
                i32::try_from(probes).unwrap_or(i32::MAX),
                i32::try_from(close_at).unwrap_or(i32::MAX),
            );
            let cooldown_ms = i64::try_from(policy.cooldown.as_millis()).unwrap_or(i64::MAX);
            let r = shared
                .call(
                    "reporting a probe",
                    "SELECT * FROM public.rc_report_probe($1, $2, $3, $4, $5, $6, $7)",
                    &[&shared.opts.namespace, &&*cell.key, &lease.id, &success, &probes, &close_at, &cooldown_ms],
                )
                .await;
            match r {
                Ok(row) => {
                    shared.apply_row(&cell, &row);
                }
                Err(e) => tracing::warn!(key = %cell.key, error = %e, "could not report a probe result; its lease will expire"),
            }
        });
    }

    pub(crate) fn publish_trip(&self, cell: &Arc<KeyCell>, cooldown: Duration) {
        let deadline = self
            .shared
            .clock
            .now_nanos()
            .saturating_add(duration_nanos(cooldown));
        self.shared.pending_trips.insert(cell.key.clone(), deadline);
        cell.local_decisions.fetch_add(1, Ordering::AcqRel);
        self.shared.queue_trip(cell.clone());
    }

    pub(crate) fn publish_force(&self, cell: &Arc<KeyCell>, to: State, cooldown: Duration) {
        self.shared.pending_trips.remove(&cell.key);
        let seq = cell.local_decisions.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.queue_force(publish::Force {
            cell: cell.clone(),
            to,
            cooldown,
            seq,
        });
    }
}
