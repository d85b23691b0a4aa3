//! Circuit breakers whose state is shared by every instance of a fleet through PostgreSQL.
//!
//! When one pod sees a dependency fail and trips its breaker, every other instance using the same
//! key stops calling it milliseconds later (a Python service, on its next read of the row), and a
//! new pod starts with the fleet's current state. Deciding whether a call may run reads a local
//! snapshot: one atomic load, no lock, no I/O.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use resilient_circuit::{CircuitBreaker, Ratio, Storage};
//! use std::time::Duration;
//!
//! let storage = Storage::in_memory(); // or Storage::from_env().await? for PostgreSQL
//! let cb = CircuitBreaker::builder("stripe_payment_api")
//!     .storage(storage)
//!     .cooldown(Duration::from_secs(300))
//!     .failure_limit(Ratio::new(3, 10))
//!     .build()?;
//! let charged = cb.call(|| async { Ok::<_, std::io::Error>("charged") }).await?;
//! assert_eq!(charged, "charged");
//! # Ok(()) }
//! ```
//!
//! # Reference
//!
//! The README gets you started; the [`docs`] pages tell everything:
//!
//! * [`docs::model`]: how it works, on one page, with the diagram of the two flows — a call
//!   reads the local snapshot; a trip goes through a row-locked function, a trigger and NOTIFY to
//!   every instance's listener and snapshot.
//! * [`docs::settings`]: choosing the failure limit, cooldown, probes and namespaces, and matching
//!   a Python service that shares the table.
//! * [`docs::guarantees`]: what is promised and what can be lost, each with its test.
//! * [`docs::postgres`]: setup, roles, the `RC_DB_*` variables, TLS, pgbouncer, replicas,
//!   failover, several regions, Python services.
//! * [`docs::security`]: the threat model of the shared table.
//! * [`docs::operating`]: the command line, live configuration, fleet policies, the change
//!   stream, every metric, troubleshooting.
//! * [`docs::performance`] and [`docs::scale`]: what it costs, measured, and how large a fleet
//!   one database serves.
//! * [`docs`] itself lists the examples: the distributed-systems guide's scenarios (several
//!   pods, several services, local and shared keys, serverless, the T0–T4 timeline, several
//!   regions), each in `examples/`.
//!
//! # Shared state
//!
//! [`Storage::connect`] (or [`Storage::from_env`]) makes one *instance* of the fleet: a LISTEN
//! connection, a small pool and the local snapshot. Breakers are evaluated locally: an instance
//! trips on its own window, stops its own calls at once and publishes the trip through a
//! row-locked function in the database; every other instance applies it when the trigger's
//! NOTIFY arrives, milliseconds later ([`docs::performance`]). Half-open rounds are fleet-wide:
//! exactly `n` probe leases exist across all instances. A healthy closed breaker sends nothing to
//! the database.
//!
//! When the database is unreachable, breakers keep working on local state
//! ([`Storage::is_degraded`] says so); trips made meanwhile are published when it is back, and the
//! listener reloads every row after each reconnect because notifications sent while it was away
//! are lost.
//!
//! # Metrics
//!
//! Through the [`metrics`] facade; the application installs a recorder (`examples/prometheus.rs`
//! serves them to Prometheus, `dashboards/resilient-circuit.json` charts them). **Install it
//! before making storages and breakers**: their handles are made once and cached, and those made
//! without a recorder stay no-ops. Per-call counts and durations are opt-in
//! ([`Builder::call_metrics`]): a success on a healthy closed breaker is one load and a compare,
//! and counting it would add an atomic increment. [`docs::operating`] describes every metric and
//! label.
//!
//! # Change stream
//!
//! [`Storage::changes`] streams every transition an instance sees, local or remote, with the row
//! version and the database's commit time when known; see [`Changes`].
//!
//! # Layout
//!
//! * [`breaker`]: `CircuitBreaker`, `Permit`, `OwnedPermit`, `Outcome` — what callers touch.
//! * [`changes`]: the change stream of a storage.
//! * `telemetry`: every metric's name, labels and cached handles.
//! * `cell`: one key's state word and private lock — **the hot path**, and every atomic ordering.
//! * `policy`, `window`, `time_window`: the pure decision rules, the outcome ring and the
//!   time window's slices, testable without a clock; `trip_policy`: [`TripPolicy`], who opens a
//!   breaker for the fleet (quorum votes are cast by `storage::postgres::votes` and counted by
//!   `rc_vote` in `sql/objects/`; failure rates are reported by
//!   `storage::postgres::rates` and judged by `rc_report_rates` in `sql/objects/`);
//!   `live_config`: [`LiveConfig`] and [`Mode`], a key's configuration from the table
//!   (`sql/migrations/0013_live_config.sql`), read by `storage::postgres::configs`.
//! * `fleet`: what a store shared by a fleet adds to the core, whatever its backend: who wins
//!   between local decisions and the shared row (`precedence.rs`), what a trip becomes under
//!   each trip policy, and `SharedStore`, the one way the core reaches a shared backend.
//! * [`storage`]: the key map; `storage::postgres` holds the shared backend: its listener
//!   (`listener.rs`), its outbox of transitions (`publish.rs`) and every statement it sends
//!   (`statements.rs`); the SQL itself lives in `sql/`: `migrations/` for tables, `objects/` for
//!   the current definition of every function and trigger.
//! * [`clock`]: monotonic time, injectable for tests.
//! * `tower` (feature `tower`): `CircuitBreakerLayer` for any `tower::Service`, as a tower
//!   middleware folder (`layer.rs`, `service.rs`, `future.rs`, `classify.rs`, `error.rs`).

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
// docs.rs builds with `--cfg docsrs`: feature-gated items say which feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
mod builder;
mod cell;
pub mod changes;
pub mod clock;
pub mod docs;
mod error;
mod fleet;
mod group;
mod jitter;
mod key_copies;
mod live_config;
mod policy;
mod ratio;
mod slow;
mod state;
pub mod storage;
pub use storage::postgres::admin;
mod telemetry;
mod time_window;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
mod trip_policy;
mod window;

pub use breaker::{CircuitBreaker, Outcome, OwnedPermit, Permit};
pub use builder::{validate_key, Builder, MAX_KEY_LEN, MIN_TIME_WINDOW};
pub use changes::{Change, ChangeKind, Changes};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{CircuitError, ConfigError, RejectReason, Rejected, StorageError};
pub use group::{Group, GroupBuilder, GroupState};
pub use live_config::{LiveConfig, Mode};
pub use policy::MAX_DURATION;
pub use ratio::Ratio;
pub use slow::SlowCalls;
#[allow(deprecated)]
pub use state::StatusChange;
pub use state::{ChangeOrigin, State, UnknownState};
pub use storage::Storage;
pub use trip_policy::{TripPolicy, MAX_QUORUM, MIN_RATE_PERIOD};
