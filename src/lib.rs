//! Circuit breakers whose state is shared by every instance of a fleet through PostgreSQL.
//!
//! When one pod sees a dependency fail and trips its breaker, every other pod and every other
//! service using the same key stops calling it within milliseconds, and a new pod starts with the
//! fleet's current state. Deciding whether a call may run reads a local snapshot: one atomic load,
//! no lock, no I/O.
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
//! # Layout
//!
//! * [`breaker`]: `CircuitBreaker`, `Permit`, `Outcome` — what callers touch.
//! * `cell`: one key's state word and private lock — **the hot path**, and every atomic ordering.
//! * `policy`, `window`: the pure decision rules and the outcome ring, testable without a clock.
//! * [`storage`]: the key map; `storage::postgres` holds the shared backend, its listener and its
//!   SQL calls; the SQL itself lives in `sql/` as numbered migrations.
//! * [`clock`]: monotonic time, injectable for tests.

#![warn(missing_docs)]

pub mod breaker;
mod builder;
mod cell;
pub mod clock;
mod error;
mod policy;
mod ratio;
mod state;
pub mod storage;
mod window;

pub use breaker::{CircuitBreaker, Outcome, Permit};
pub use builder::{Builder, MAX_KEY_LEN};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{CircuitError, ConfigError, Rejected, StorageError};
pub use ratio::Ratio;
pub use state::{ChangeOrigin, State, StatusChange, UnknownState};
pub use storage::Storage;
