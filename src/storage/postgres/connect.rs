//! Making an instance: the pool (with server-side time limits), the schema check or migration,
//! the listener's first connection and the first snapshot, then the listener task and the pool's
//! reaper, all on the process's background I/O thread. The instance shuts down when its last
//! `Storage` is dropped: that drops the shutdown sender, which ends the listener and the reaper,
//! and with them every connection.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio_postgres::types::Type;
use tracing::Instrument;

use super::{
    callbacks, hosts, listener, migrate, publish, rates, reaper, statements, sync, tls, Instance,
    PostgresOptions, Shared,
};
use crate::error::StorageError;
use crate::storage::Storage;

/// Connects an instance: see [`Storage::connect_with`]. The caller must be in a tokio runtime
/// (a typed error otherwise), but the instance lives on the [`background`] runtime. Everything
/// it does there runs inside its `resilient_circuit.instance` span, created here in the
/// caller's context.
pub(crate) async fn connect(opts: PostgresOptions) -> Result<Storage, StorageError> {
    tokio::runtime::Handle::try_current().map_err(|_| StorageError::NoRuntime)?;
    let instance = tracing::info_span!("resilient_circuit.instance", target = %opts.target(), namespace = %opts.namespace);
    let span = tracing::info_span!(parent: &instance, "resilient_circuit.connect", target = %opts.target(), namespace = %opts.namespace);
    match background()?
        .spawn(connect_inner(opts, instance).instrument(span))
        .await
    {
        Ok(r) => r,
        Err(e) => Err(StorageError::Internal {
            during: "connecting",
            what: format!("the connecting task ended early: {e}"),
        }),
    }
}

/// The runtime every PostgreSQL instance of the process does its I/O on (pool connections, the
/// listener, the outbox, lease calls): two worker threads of its own, started with the first
/// instance.
/// A caller's task that computes without yielding, or a runtime whose every worker is busy,
/// cannot hold back a trip's publication, a notification or a heartbeat.
fn background() -> Result<&'static tokio::runtime::Handle, StorageError> {
    static BACKGROUND: std::sync::OnceLock<Result<tokio::runtime::Handle, String>> =
        std::sync::OnceLock::new();
    let started = BACKGROUND.get_or_init(|| {
        // Two workers: one instance's burst of notifications does not hold up another's
        // heartbeat. The runtime is kept by a parked thread for the life of the process.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("resilient-circuit-io")
            .enable_all()
            .build()
            .map_err(|e| format!("building its runtime failed: {e}"))?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("resilient-circuit-io-keeper".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("spawning its thread failed: {e}"))?;
        Ok(handle)
    });
    started.as_ref().map_err(|cause| StorageError::Internal {
        during: "starting the background thread",
        what: cause.clone(),
    })
}

async fn connect_inner(
    opts: PostgresOptions,
    span: tracing::Span,
) -> Result<Storage, StorageError> {
    let runtime = tokio::runtime::Handle::current();
    let tls = tls::make_tls(&opts)?;
    let listener_tls = tls::make_listener_tls(&opts)?;
    // The pool and the listener walk their host lists one host at a time (`hosts.rs`); with one
    // list for both, the host the listener found is the one the pool tries first.
    let pool_hosts = Arc::new(opts.pool_hosts("resilient-circuit")?);
    let listener_hosts = match opts.listener {
        Some(_) => opts.listener_hosts()?,
        None => opts.listener_hosts()?.sharing_preference_with(&pool_hosts),
    };
    let create_timeout = pool_hosts.bound();
    let manager = Manager::from_connect(
        opts.pg_config("resilient-circuit")?,
        hosts::PoolConnect {
            hosts: pool_hosts,
            tls: tls.clone(),
        },
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Server-side limits, so that a call the client gave up on cannot keep a row lock. Not
    // through a transaction pooler: the settings would stay on its server connection for its
    // other clients (the client's timeout still cancels a call on the server).
    // This instance's stable name (its votes: a restarted pod replaces its vote), and its id,
    // unique to this process and start: its probe leases' holder, its rate reports' reporter (a
    // restarted pod's new counts cover another span than its old ones), and, on its pooled
    // sessions, what the change log records as the instance behind each change
    // (`sql/objects/rc_announce.sql`). The id stays under the 255 characters the functions
    // accept.
    let clock = crate::clock::recent::system();
    let name = opts.resolved_instance_name();
    let holder = format!(
        "{}:{}:{:x}",
        name.chars().take(200).collect::<String>(),
        std::process::id(),
        clock.now_nanos()
    );
    let limits = (!opts.transaction_pooler).then(|| {
        format!(
            "SET statement_timeout = {0}; SET lock_timeout = {0}",
            statements::millis(opts.statement_timeout)
        )
    });
    // Not through a transaction pooler either: another client's changes would carry our id.
    let instance = (!opts.transaction_pooler).then(|| holder.clone());
    if opts.transaction_pooler && opts.listener.is_none() {
        tracing::warn!(target = %opts.target(), "RC_DB_TRANSACTION_POOLER is set but no listener address: a LISTEN through a transaction pooler hears nothing; set RC_DB_LISTENER_DSN to PostgreSQL's own address (the listener checks itself and polls the table meanwhile)");
    }
    let pool = Pool::builder(manager)
        .max_size(opts.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(create_timeout))
        .wait_timeout(Some(opts.statement_timeout))
        .post_create(Hook::async_fn(move |client, _| {
            let limits = limits.clone();
            let instance = instance.clone();
            Box::pin(async move {
                if let Some(sql) = limits {
                    client
                        .batch_execute(&sql)
                        .await
                        .map_err(HookError::Backend)?;
                }
                if let Some(id) = instance {
                    client
                        .query_typed(statements::SET_INSTANCE, &[(&id, Type::TEXT)])
                        .await
                        .map_err(HookError::Backend)?;
                }
                Ok(())
            })
        }))
        .build()
        .map_err(|e| StorageError::Internal {
            during: "building the connection pool",
            what: e.to_string(),
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(());
    let mut made = None;
    let capacity = crate::storage::DEFAULT_MEMORY_CAPACITY;
    let storage = Storage::with_shared(capacity, clock.clone(), |weak| {
        let link = Arc::new(crate::fleet::Link::default());
        let shared = Arc::new(Shared {
            opts: opts.clone(),
            listener_tls,
            listener_hosts,
            pool_tls: tls,
            pool,
            prepared: Default::default(),
            storage: weak,
            link: link.clone(),
            schema_ready: AtomicBool::new(false),
            marks: super::watermarks::Watermarks::new(link),
            queue_warned_at: AtomicI64::new(0),
            holder,
            name,
            runtime,
            span,
            outbox: publish::Outbox::default(),
            callbacks: callbacks::Callbacks::start(),
            unanswered: Arc::default(),
            clock,
            judged: dashmap::DashMap::new(),
            metrics: crate::telemetry::InstanceMetrics::new(&opts.namespace),
        });
        made = Some(shared.clone());
        let instance: Box<dyn crate::fleet::SharedStore> = Box::new(Instance {
            shared,
            _shutdown: shutdown_tx,
        });
        Some(instance)
    });
    let Some(shared) = made else {
        return Err(StorageError::Internal {
            during: "starting the instance",
            what: "the backend was not built".into(),
        });
    };
    // Started first: the connection the schema check opens below is idle from then on too.
    if let Some(idle) = opts.pool_reaping() {
        shared.spawn(reaper::run(shared.pool.clone(), idle, shutdown_rx.clone()));
    }
    // Samples fleet-rate keys every interval; sends nothing while none is due.
    shared.spawn(rates::run(shared.clone(), shutdown_rx.clone()));

    // The schema check and the listener's connection at the same time (two round-trip chains,
    // one wait); the snapshot then needs both, since it calls the schema's functions.
    let (schema, opened) = tokio::join!(shared.prepare_schema(), sync::open(&shared));
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
        Ok(mut live) if reachable => sync::sync(&shared, &mut live, sync::Check::Now)
            .await
            .map(|()| live),
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
    let span = tracing::info_span!(parent: &shared.span, "resilient_circuit.listener", namespace = %opts.namespace);
    tokio::spawn(listener::run(shared, first, shutdown_rx).instrument(span));
    Ok(storage)
}

impl Shared {
    /// Verifies the schema, applying the migrations when allowed; remembers success.
    pub(crate) async fn prepare_schema(&self) -> Result<(), StorageError> {
        let mut client = self.client("checking the schema").await?;
        let r = match migrate::verify_schema(&client).await {
            Err(StorageError::SchemaNotReady { .. }) if self.opts.auto_create => {
                migrate::apply(&mut client).await.map(|_| ())
            }
            other => other,
        };
        if r.is_ok() {
            // Relaxed: at worst a reconnect checks the schema once more.
            self.schema_ready.store(true, Ordering::Relaxed);
        }
        r
    }
}
