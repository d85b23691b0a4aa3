//! [`Storage`]: where breaker state lives — in memory, or shared by a fleet through PostgreSQL.
//!
//! A storage owns the map from key to `KeyCell` (`src/cell/`). Breakers look their cell up once, at build
//! time, and keep it. The in-memory backend stops there; the PostgreSQL backend
//! ([`postgres`]) also keeps the cells in step with the shared table and
//! publishes this instance's transitions.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;

use crate::cell::{KeyCell, Lease, Transition};
use crate::changes::{Changes, Feed};
use crate::clock::Clock;
use crate::fleet::SharedStore;
use crate::policy::Policy;
use crate::telemetry::MEMORY_NAMESPACE;
use crate::LiveConfig;
use crate::{ConfigError, State, StorageError};

/// Shared state over PostgreSQL (see the crate docs, "Shared state").
pub mod postgres;

/// How many keys an in-memory store keeps before dropping idle ones (as the Python package).
pub const DEFAULT_MEMORY_CAPACITY: usize = 8192;

/// Where breaker state lives; cheap to clone (an `Arc`), `Send + Sync`.
///
/// ```
/// # fn main() -> Result<(), resilient_circuit::ConfigError> {
/// use resilient_circuit::{CircuitBreaker, State, Storage};
/// let storage = Storage::in_memory();
/// assert_eq!(storage.backend_name(), "in-memory");
/// let a = CircuitBreaker::builder("shared").storage(storage.clone()).build()?;
/// let b = CircuitBreaker::builder("shared").storage(storage.clone()).build()?;
/// a.force_open(std::time::Duration::from_secs(60));
/// assert_eq!(b.state(), State::Open); // same key, same storage: one state
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Storage {
    pub(crate) inner: Arc<StorageInner>,
}

pub(crate) struct StorageInner {
    pub(crate) cells: DashMap<Arc<str>, Arc<KeyCell>>,
    pub(crate) clock: Arc<dyn Clock>,
    /// About how many keys to keep: past it, idle CLOSED keys are dropped.
    capacity: usize,
    /// The map's size at which the next scan for idle keys is worth making (see `make_room`).
    next_scan: std::sync::atomic::AtomicUsize,
    /// The fleet's shared state, when the store has one (`None`: in memory, this process's
    /// alone).
    pub(crate) shared: Option<Box<dyn SharedStore>>,
    /// Every transition of every cell, for [`Storage::changes`].
    pub(crate) feed: Feed,
    /// The live configurations the table holds (PostgreSQL only), also for keys with no cell
    /// yet: a breaker built later starts with its key's.
    pub(crate) live: DashMap<Arc<str>, Arc<LiveConfig>>,
    /// The state of each group this storage joined, as the fleet last told it.
    pub(crate) groups: crate::group::GroupStates,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend_name())
            .field("keys", &self.inner.cells.len())
            .finish()
    }
}

impl Storage {
    /// A new, empty, process-local store with the default capacity and the system clock: its
    /// breakers are this storage's alone (two `in_memory()` stores share nothing), for keys that
    /// are one instance's own, like a local cache (`examples/local_and_shared_keys.rs`).
    pub fn in_memory() -> Storage {
        Storage::in_memory_with(DEFAULT_MEMORY_CAPACITY, crate::clock::recent::system())
    }

    /// A process-local store keeping about `capacity` keys, with `clock` for cooldowns (a
    /// [`ManualClock`](crate::ManualClock) in tests).
    ///
    /// Only the clock the crate's storages make themselves ([`in_memory`](Self::in_memory)'s
    /// and PostgreSQL's) has a reading kept in memory for time windows
    /// ([`Builder::time_window`](crate::Builder::time_window)): with `clock`, a
    /// [`SystemClock`](crate::SystemClock) included, they read it on every call.
    ///
    /// Past `capacity`, idle keys (no live handle, not open) are dropped; a key with a live handle
    /// or an open breaker is never dropped, so the store may exceed the bound rather than forget
    /// an open breaker.
    pub fn in_memory_with(capacity: usize, clock: Arc<dyn Clock>) -> Storage {
        Storage::with_shared(capacity.max(1), clock, |_| None)
    }

    /// Builds a storage whose shared backend (if any) keeps a weak reference to it (the
    /// listener does).
    pub(crate) fn with_shared(
        capacity: usize,
        clock: Arc<dyn Clock>,
        shared: impl FnOnce(std::sync::Weak<StorageInner>) -> Option<Box<dyn SharedStore>>,
    ) -> Self {
        Storage {
            inner: Arc::new_cyclic(|weak| {
                let shared = shared(weak.clone());
                let feed = Feed::new(shared.as_ref().map_or(MEMORY_NAMESPACE, |s| s.namespace()));
                StorageInner {
                    cells: DashMap::new(),
                    clock,
                    next_scan: std::sync::atomic::AtomicUsize::new(capacity),
                    capacity,
                    shared,
                    feed,
                    live: DashMap::new(),
                    groups: DashMap::new(),
                }
            }),
        }
    }

    /// Storage from the environment: PostgreSQL when `RC_DB_DSN`, or `RC_DB_HOST` with
    /// `RC_DB_PASSWORD`, is set (see [`PostgresOptions::from_env`](postgres::PostgresOptions::from_env));
    /// otherwise a new in-memory store.
    ///
    /// When PostgreSQL is configured but unreachable this logs a warning and returns a storage
    /// that runs on local state and connects in the background, unless `RC_DB_STRICT=1`, which
    /// makes it an error.
    pub async fn from_env() -> Result<Storage, StorageError> {
        match postgres::PostgresOptions::from_env()? {
            Some(opts) => Storage::connect_with(opts).await,
            None => Ok(Storage::in_memory()),
        }
    }

    /// Connects to PostgreSQL at `dsn` (a `postgresql://` URL or `key=value` conninfo) with
    /// default options. See [`connect_with`](Self::connect_with).
    pub async fn connect(dsn: &str) -> Result<Storage, StorageError> {
        Storage::connect_with(postgres::PostgresOptions::from_dsn(dsn)?).await
    }

    /// Connects one instance to the shared table: verifies the schema (or applies it with
    /// `auto_create`), opens the listener, and loads every row of the namespace before returning,
    /// so that a breaker built afterwards is OPEN on its first call if the fleet's is.
    ///
    /// Must be called inside a tokio runtime. The instance's own work (its connections, the
    /// listener, publishing trips) runs on a small background runtime shared by every instance
    /// of the process, so a caller's task that computes without yielding cannot delay it, and
    /// the instance outlives the runtime that connected it.
    pub async fn connect_with(options: postgres::PostgresOptions) -> Result<Storage, StorageError> {
        postgres::connect(options).await
    }

    /// Every transition this instance sees from now on, local or remote, as a stream: each with
    /// its origin and, for remote ones, the row version and the database's commit time. A
    /// receiver that falls more than [`CHANGE_BUFFER`](crate::changes::CHANGE_BUFFER) changes
    /// behind is told how many it missed ([`Lagged`](crate::changes::Lagged)); it never slows
    /// the listener. Status-change callbacks ([`Builder::on_status_change`](crate::Builder::on_status_change))
    /// see the same transitions, per key.
    ///
    /// A PostgreSQL instance sees the transitions of keys it holds a breaker for, and of every
    /// key of its namespace that leaves CLOSED (a key absent here is CLOSED, so that is every
    /// transition that matters to it). See [`Changes`] for an example.
    pub fn changes(&self) -> Changes {
        self.inner.feed.subscribe()
    }

    /// How many keys have a transition this instance decided (a trip, an override, or both) that
    /// the database has not answered yet: in flight, or waiting to be retried. One per key however
    /// often it tripped. Always 0 in memory.
    pub fn pending_publications(&self) -> usize {
        self.inner.shared.as_ref().map_or(0, |s| s.pending())
    }

    /// Waits, at most `within`, until the database has answered everything this instance sent
    /// it: trips, overrides, half-open probe results, quorum votes, and the fleet-rate counts
    /// due now (sent at once rather than at the next interval), accepted or refused for good.
    /// True when nothing is left; at once (true) in memory.
    ///
    /// Transitions are published in the background, so a breaker call never waits for the
    /// database. A short-lived process — a serverless function, a batch job, a command — calls
    /// this before it returns or exits: one that is frozen or ends first keeps its trip to itself,
    /// and a probe result it never sent holds the half-open slot until the lease expires. On
    /// `false` (the database is slow or unreachable) what is left stays pending, and is retried
    /// for as long as the process lives.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Storage};
    /// use std::time::Duration;
    ///
    /// async fn handler(storage: &Storage) -> Result<(), Box<dyn std::error::Error>> {
    ///     let cb = CircuitBreaker::builder("third_party_api").storage(storage.clone()).build()?;
    ///     let result = cb.call(|| async { Ok::<_, std::io::Error>("done") }).await;
    ///     // Before the function returns: let the fleet hear what this call decided.
    ///     if !storage.flush(Duration::from_millis(500)).await {
    ///         eprintln!("{} transition(s) not published yet", storage.pending_publications());
    ///     }
    ///     result?;
    ///     Ok(())
    /// }
    /// handler(&Storage::in_memory()).await?; // Storage::from_env().await? in a function
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self, within: Duration) -> bool {
        match &self.inner.shared {
            None => true,
            Some(s) => s.flush(within).await,
        }
    }

    /// True while a PostgreSQL storage has no working listener connection: breakers then run on
    /// local state, and catch up when it is back. Always false in memory.
    pub fn is_degraded(&self) -> bool {
        self.inner.shared.as_ref().is_some_and(|s| s.is_degraded())
    }

    /// The process-wide in-memory store that breakers use when no storage is given. It is not
    /// shared with other processes and does not read `RC_DB_*`.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, Storage};
    /// let cb = CircuitBreaker::builder("no_storage_given").build()?;
    /// assert_eq!(cb.storage().backend_name(), "in-memory");
    /// assert!(Storage::global().state_of("no_storage_given").is_some());
    /// # Ok(()) }
    /// ```
    pub fn global() -> &'static Storage {
        static GLOBAL: OnceLock<Storage> = OnceLock::new();
        GLOBAL.get_or_init(Storage::in_memory)
    }

    /// The `namespace` label of this storage's metrics: the PostgreSQL namespace, or
    /// `"in-memory"`.
    pub(crate) fn metrics_namespace(&self) -> &str {
        self.inner
            .shared
            .as_ref()
            .map_or(MEMORY_NAMESPACE, |s| s.namespace())
    }

    /// `"in-memory"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        self.inner.shared.as_ref().map_or("in-memory", |s| s.name())
    }

    /// The state this storage holds for `key`, if it knows the key: a breaker was built for it,
    /// or (PostgreSQL) the namespace's row of it is not CLOSED. A key it does not know is CLOSED.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, State, Storage};
    /// let storage = Storage::in_memory();
    /// let cb = CircuitBreaker::builder("known").storage(storage.clone()).build()?;
    /// cb.force_open(std::time::Duration::from_secs(5));
    /// assert_eq!(storage.state_of("known"), Some(State::Open));
    /// assert_eq!(storage.state_of("never_built"), None);
    /// assert_eq!(storage.states(), [("known".to_owned(), State::Open)]);
    /// # Ok(()) }
    /// ```
    pub fn state_of(&self, key: &str) -> Option<State> {
        self.inner.cells.get(key).map(|c| c.state())
    }

    /// Every key this storage knows with its state, in no particular order (see
    /// [`state_of`](Self::state_of) for which keys it knows).
    pub fn states(&self) -> Vec<(String, State)> {
        self.inner
            .cells
            .iter()
            .map(|e| (e.key().to_string(), e.value().state()))
            .collect()
    }

    /// How many keys this storage holds.
    pub fn len(&self) -> usize {
        self.inner.cells.len()
    }

    /// True when it holds no key.
    pub fn is_empty(&self) -> bool {
        self.inner.cells.is_empty()
    }

    /// The cell of `key`, made if needed, claimed with `policy`.
    pub(crate) fn cell_for(&self, key: &str, policy: Policy) -> Result<Arc<KeyCell>, ConfigError> {
        let cell = match self.inner.cells.get(key) {
            Some(c) => c.clone(),
            None => self.inner.cell(key.into(), policy),
        };
        let claimed = cell.claim(policy);
        if let (Ok(()), Some(shared), Some(rate)) = (&claimed, &self.inner.shared, cell.rate()) {
            // The fleet judged the key before this breaker was built: it reports too.
            if let Some(until) = shared.judged_until(key) {
                rate.judged_until(until);
            }
        }
        claimed
            .map_err(|existing| ConfigError::ConflictingPolicy {
                key: key.to_owned(),
                existing: format!(
                    "failure_limit {}, success_limit {}, cooldown {:?}, max_cooldown {}, trip policy {}",
                    existing.failure_limit,
                    existing
                        .success_limit
                        .map_or_else(|| "none".to_owned(), |r| r.to_string()),
                    existing.cooldown,
                    existing
                        .max_cooldown
                        .map_or_else(|| "none (fixed)".to_owned(), |d| format!("{d:?}")),
                    existing.trip
                ) + &crate::builder::describe_windows(&existing),
            })?;
        Ok(cell)
    }

    /// Fleet mode: ask the shared state for a probe lease for `cell`.
    pub(crate) fn request_lease(&self, cell: &Arc<KeyCell>) {
        if let Some(s) = &self.inner.shared {
            s.request_lease(cell);
        }
    }

    /// Fleet mode: send a probe's result to the shared state.
    pub(crate) fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool) {
        if let Some(s) = &self.inner.shared {
            s.report_probe(cell, lease, success);
        }
    }

    /// Tells the fleet of a transition this instance decided on its own window: a trip is
    /// carried out as the hold the cell registered with it says (`Hold::of` its trip policy);
    /// the other transitions are nothing to tell.
    pub(crate) fn publish_transition(&self, cell: &Arc<KeyCell>, t: Transition) {
        if let (Some(s), State::Open) = (&self.inner.shared, t.to) {
            s.decided(cell);
        }
    }

    /// Publishes a manual override; the returned receiver (shared stores only) hears whether
    /// the database accepted it.
    pub(crate) fn publish_force(
        &self,
        cell: &Arc<KeyCell>,
        to: State,
        cooldown: Duration,
        confirm: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), StorageError>>> {
        let s = self.inner.shared.as_ref()?;
        let (tx, rx) = if confirm {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        s.force(cell, to, cooldown, tx);
        rx
    }
}

impl StorageInner {
    /// Makes the cell of `key` with `policy` (unclaimed), or returns the one another thread made
    /// first. The one place cells are made, for breakers and for rows alike.
    pub(crate) fn cell(&self, key: Arc<str>, policy: Policy) -> Arc<KeyCell> {
        self.make_room();
        self.cells
            .entry(key.clone())
            .or_insert_with(|| {
                let (link, namespace) = match &self.shared {
                    None => (None, MEMORY_NAMESPACE),
                    Some(s) => (Some(s.link()), s.namespace()),
                };
                let cell = Arc::new(KeyCell::new(
                    key.clone(),
                    policy,
                    self.clock.clone(),
                    link,
                    namespace,
                    self.feed.clone(),
                ));
                if let Some(live) = self.live.get(&key) {
                    // A new cell: nothing to announce, no row to read again.
                    let _ = cell.set_live(Some(live.clone()));
                }
                cell
            })
            .clone()
    }

    /// Keeps the map near its capacity by dropping idle keys (no handle, CLOSED), an eighth at a
    /// time so the scan is amortized over many insertions. A scan that finds nothing to drop
    /// (a map full of live or non-closed keys) is not repeated until the map has grown by
    /// another eighth: without that, 10,000 keys opening at once (a burst of notifications)
    /// scanned the whole map for each new key. Making cells is not a hot path.
    fn make_room(&self) {
        use std::sync::atomic::Ordering;
        let cells = &self.cells;
        let capacity = self.capacity;
        let len = cells.len();
        // Relaxed: a hint of when to look; a stale value only moves one scan a little.
        if len < capacity || len < self.next_scan.load(Ordering::Relaxed) {
            return;
        }
        let step = (capacity / 8).max(1);
        let excess = len + 1 - capacity.saturating_sub(step);
        let victims: Vec<Arc<str>> = cells
            .iter()
            .filter(|e| e.value().evictable())
            .take(excess)
            .map(|e| e.key().clone())
            .collect();
        if victims.is_empty() {
            tracing::warn!(
                capacity,
                keys = len,
                "circuit breaker store is full of live or non-closed breakers; growing past its capacity"
            );
            self.next_scan.store(len + step, Ordering::Relaxed);
        } else {
            self.next_scan.store(capacity, Ordering::Relaxed);
        }
        for k in victims {
            cells.remove_if(&k, |_, c| c.evictable());
        }
    }
}
