//! Error types: [`CircuitError`] for calls, [`Rejected`] for refused admissions,
//! [`ConfigError`] for bad settings and [`StorageError`] for the shared store.

use std::sync::Arc;
use std::time::Duration;

use crate::cell::{mark_forced, pack_rejection, unpack_rejection};
use crate::key_copies::{copy_of, KeyCopy};
use crate::{Ratio, State};

/// A call refused by an open (or busy half-open) breaker: the protected operation did not run.
///
/// Two words (the key and a packed state and time), so that `Result`s carrying it stay small on
/// the call path; cloning it is a reference-count increment, on a copy of the key private to
/// the thread that was refused (`key_copies.rs`), so threads rejected at once do not contend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), resilient_circuit::ConfigError> {
/// use resilient_circuit::{CircuitBreaker, State, Storage};
/// use std::time::Duration;
/// let cb = CircuitBreaker::builder("payments").storage(Storage::in_memory()).build()?;
/// cb.force_open(Duration::from_secs(60));
/// // Forced open: the call is refused without running, so `call` returns the rejection.
/// let err = cb.call(|| async { Ok::<_, std::io::Error>(()) }).await.unwrap_err();
/// let rejected = err.rejected().expect("did not run");
/// assert_eq!((rejected.key(), rejected.state()), ("payments", State::Open));
/// assert!(rejected.retry_after().is_some_and(|d| d <= Duration::from_secs(60)));
/// // e.g. answer HTTP 503 with Retry-After: rejected.retry_after()
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Rejected {
    key: KeyCopy,
    /// The state and `retry_after`, packed by `cell/word.rs`.
    packed: u64,
}

impl Rejected {
    pub(crate) fn new(key: &Arc<str>, state: State, retry_after: Option<Duration>) -> Self {
        Rejected {
            key: copy_of(key),
            packed: pack_rejection(state, retry_after),
        }
    }

    /// The breaker's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The state that refused the call: `Open`, or `HalfOpen` when every probe slot is taken.
    pub fn state(&self) -> State {
        unpack_rejection(self.packed).0
    }

    /// How long until the cooldown ends, when the breaker is open and the time is known.
    pub fn retry_after(&self) -> Option<Duration> {
        unpack_rejection(self.packed).1
    }

    /// Why the call was refused, as the `reason` label of `resilient_circuit_rejected_calls_total`
    /// says it.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, RejectReason, Storage};
    /// let cb = CircuitBreaker::builder("billing").storage(Storage::in_memory()).build()?;
    /// cb.force_open(std::time::Duration::from_secs(60));
    /// let rejected = cb.try_acquire().unwrap_err();
    /// assert_eq!(rejected.reason(), RejectReason::Forced);
    /// # Ok(()) }
    /// ```
    pub fn reason(&self) -> RejectReason {
        match unpack_rejection(self.packed) {
            (State::HalfOpen, _, _) => RejectReason::HalfOpenFull,
            (_, _, true) => RejectReason::Forced,
            _ => RejectReason::Open,
        }
    }

    /// This rejection with its reason (only [`RejectReason::Forced`] changes it).
    pub(crate) fn with_reason(mut self, reason: RejectReason) -> Self {
        if reason == RejectReason::Forced {
            self.packed = mark_forced(self.packed);
        }
        self
    }
}

/// Why a call was refused ([`Rejected::reason`]); also the `reason` label of
/// `resilient_circuit_rejected_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// Open and cooling down after failures.
    Open,
    /// Half-open, with every probe slot of the round taken.
    HalfOpenFull,
    /// Open on purpose: [`force_open`](crate::CircuitBreaker::force_open) on this instance, or
    /// the key's live mode `forced-open`. (An override made elsewhere, another instance's or the
    /// command's `open`, reaches this instance as a row like any trip: `Open`.)
    Forced,
}

impl RejectReason {
    /// Every reason, in the order of their metric handles.
    pub(crate) const ALL: [RejectReason; 3] = [
        RejectReason::Open,
        RejectReason::HalfOpenFull,
        RejectReason::Forced,
    ];

    /// `"open"`, `"half_open_full"` or `"forced"`: the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Open => "open",
            RejectReason::HalfOpenFull => "half_open_full",
            RejectReason::Forced => "forced",
        }
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Rejected {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key() && self.packed == other.packed
    }
}

impl Eq for Rejected {}

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rejected")
            .field("key", &self.key())
            .field("state", &self.state())
            .field("retry_after", &self.retry_after())
            .field("reason", &self.reason())
            .finish()
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "circuit breaker {:?} is {}: call rejected without running",
            self.key(),
            self.state()
        )
    }
}

impl std::error::Error for Rejected {}

/// The error of [`CircuitBreaker::call`](crate::CircuitBreaker::call): the breaker refused the
/// call, or the call ran and failed with its own error.
///
/// ```
/// use resilient_circuit::CircuitError;
/// let e: CircuitError<std::io::Error> = CircuitError::Inner(std::io::Error::other("boom"));
/// assert!(!e.is_rejected());
/// assert_eq!(e.into_inner().map(|e| e.to_string()), Some("boom".to_owned()));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum CircuitError<E> {
    /// The breaker did not let the call run.
    #[error(transparent)]
    Rejected(#[from] Rejected),
    /// The call ran and returned this error.
    #[error("{0}")]
    Inner(E),
}

impl<E> CircuitError<E> {
    /// True when the call did not run because the breaker refused it.
    pub fn is_rejected(&self) -> bool {
        matches!(self, CircuitError::Rejected(_))
    }

    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CircuitError::Inner(e) => Some(e),
            CircuitError::Rejected(_) => None,
        }
    }

    /// The rejection, if the call did not run.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            CircuitError::Rejected(r) => Some(r),
            CircuitError::Inner(_) => None,
        }
    }
}

/// A breaker or storage setting that cannot work, with which one and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A failure or success limit that cannot be used.
    #[error("invalid {which} {ratio}: {reason}")]
    InvalidRatio {
        /// `failure_limit`, `success_limit` or `slow_call rate`.
        which: &'static str,
        /// The ratio given.
        ratio: Ratio,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The key is empty.
    #[error("invalid breaker key: it is empty")]
    EmptyKey,
    /// The key is longer than the table's `varchar(255)`.
    #[error("invalid breaker key: {len} bytes, the limit is 255")]
    KeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The key contains a control character (invisible in logs and dashboards).
    #[error("invalid breaker key {key:?}: control character at byte {index}")]
    KeyControlCharacter {
        /// The key, escaped by `Debug`.
        key: String,
        /// Byte offset of the first control character.
        index: usize,
    },
    /// A second breaker for the same key on the same storage asked for different limits.
    #[error("breaker {key:?} already exists on this storage with other limits ({existing}); breakers sharing a key share one window, so they must agree")]
    ConflictingPolicy {
        /// The key.
        key: String,
        /// The limits in force.
        existing: String,
    },
    /// A duration (cooldown, lease) longer than the crate accepts.
    #[error("{name} of {given:?} is longer than the maximum of {max:?} (ten years)")]
    DurationTooLong {
        /// Which setting.
        name: &'static str,
        /// What was given.
        given: Duration,
        /// The maximum, [`MAX_DURATION`](crate::MAX_DURATION).
        max: Duration,
    },
    /// A [`TripPolicy`](crate::TripPolicy) with numbers that cannot work.
    #[error("invalid trip policy: {reason}")]
    InvalidTripPolicy {
        /// What was given and what is allowed.
        reason: String,
    },
    /// A [`max_cooldown`](crate::Builder::max_cooldown) shorter than the base cooldown: the
    /// cooldown could never grow.
    #[error("max_cooldown of {max_cooldown:?} is shorter than the cooldown of {cooldown:?}; growing cooldowns start at the cooldown and grow up to max_cooldown, so it must be at least as long")]
    MaxCooldownBelowCooldown {
        /// The maximum given.
        max_cooldown: Duration,
        /// The base cooldown.
        cooldown: Duration,
    },
    /// An environment variable or option holds a value that cannot be used.
    #[error("invalid {name}: {reason}")]
    InvalidSetting {
        /// The variable or option, e.g. `RC_DB_PORT`.
        name: &'static str,
        /// Why, never including a password.
        reason: String,
    },
    /// A minimum number of calls ([`Builder::minimum_calls`](crate::Builder::minimum_calls))
    /// that cannot be used.
    #[error("invalid minimum_calls {given}: {reason}")]
    InvalidMinimumCalls {
        /// What was given.
        given: u32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A time window ([`Builder::time_window`](crate::Builder::time_window)) that cannot be
    /// used. One over [`MAX_DURATION`](crate::MAX_DURATION) is a
    /// [`DurationTooLong`](Self::DurationTooLong).
    #[error("invalid time_window {given:?}: {reason}")]
    InvalidTimeWindow {
        /// What was given.
        given: Duration,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A slow-call threshold ([`Builder::slow_call`](crate::Builder::slow_call)) that cannot be
    /// used. One over [`MAX_DURATION`](crate::MAX_DURATION) is a
    /// [`DurationTooLong`](Self::DurationTooLong); an unusable rate an
    /// [`InvalidRatio`](Self::InvalidRatio).
    #[error("invalid slow_call threshold {given:?}: {reason}")]
    InvalidSlowCallThreshold {
        /// What was given.
        given: Duration,
        /// Why it was refused.
        reason: &'static str,
    },
}

/// Failures of the shared (PostgreSQL) store.
///
/// [`Storage::connect`](crate::Storage::connect) (and `connect_with`, `from_env`) returns
/// `Config` for unusable settings and `SchemaNotReady` when the migrations are missing; with
/// `strict` also `Connect`, `Tls` or `Timeout` when the database cannot be reached (without it,
/// the storage starts on local state instead). Once running, breakers never return a
/// `StorageError`: database trouble is logged and retried in the background, and only
/// [`force_open_confirmed`](crate::CircuitBreaker::force_open_confirmed) and
/// [`force_closed_confirmed`](crate::CircuitBreaker::force_closed_confirmed) report a refusal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The schema is missing or older than this crate needs.
    #[error("the resilient-circuit schema is not ready: {reason}. Fix: run the migrations once with RC_DB_AUTO_CREATE=1 (or PostgresOptions::auto_create(true)) as a role that may create tables, or apply the files in sql/ in order")]
    SchemaNotReady {
        /// What is missing.
        reason: String,
    },
    /// PostgreSQL could not be reached or refused the connection.
    #[error("cannot connect to PostgreSQL at {target}: {cause}")]
    Connect {
        /// host:port/database, never the password.
        target: String,
        /// The cause, with the server's message where there is one.
        cause: String,
    },
    /// A statement failed.
    #[error("PostgreSQL error during {during}: {cause}")]
    Database {
        /// What we were doing.
        during: &'static str,
        /// The server's message, or the client's.
        cause: String,
        /// The driver's error, when there is one (a statement's error never holds a password):
        /// match its SQLSTATE with [`StorageError::sqlstate`].
        #[source]
        source: Option<Arc<tokio_postgres::Error>>,
    },
    /// PostgreSQL answered something this crate cannot use (no row where one is due, a
    /// notification secret of the wrong shape): a schema changed by hand, or another version's.
    #[error("unexpected answer from PostgreSQL during {during}: {what}")]
    Unexpected {
        /// What we were doing.
        during: &'static str,
        /// What came back.
        what: String,
    },
    /// The library's own machinery failed (its background thread, a task, the shutdown of
    /// the storage before an answer came): not the database's doing.
    #[error("resilient-circuit could not finish {during}: {what}")]
    Internal {
        /// What we were doing.
        during: &'static str,
        /// What failed.
        what: String,
    },
    /// The TLS setup failed (certificate files, verification mode).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A statement did not complete in time.
    #[error("PostgreSQL did not answer within {after:?} during {during}")]
    Timeout {
        /// The limit that passed.
        after: Duration,
        /// What we were doing.
        during: &'static str,
    },
    /// [`Storage::connect`](crate::Storage::connect) was called outside a tokio runtime (the
    /// instance then runs on the library's own I/O thread, but breakers waiting for a probe
    /// need the caller's tokio timers).
    #[error("resilient-circuit's PostgreSQL storage must be connected inside a tokio runtime")]
    NoRuntime,
}

impl StorageError {
    /// The SQLSTATE of a statement the server refused (e.g. `42501`, insufficient privilege),
    /// when this error carries one.
    pub fn sqlstate(&self) -> Option<&str> {
        let StorageError::Database { cause, source, .. } = self else {
            return None;
        };
        if let Some(code) = source.as_ref().and_then(|e| e.code()) {
            return Some(code.code());
        }
        let at = cause.rfind("(SQLSTATE ")? + "(SQLSTATE ".len();
        cause.get(at..at + 5)
    }

    /// True when trying again cannot help: the server refused the statement itself (bad input,
    /// no privilege, missing schema), as opposed to a lost connection or a timeout.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self.sqlstate().and_then(|s| s.get(..2)),
            Some("22" | "23" | "42" | "P0" | "2B" | "28")
        )
    }

    pub(crate) fn db(during: &'static str, e: tokio_postgres::Error) -> Self {
        StorageError::Database {
            during,
            cause: describe_pg_error(&e),
            source: Some(Arc::new(e)),
        }
    }
}

/// The most useful text of a tokio-postgres error: since 0.7.15 its `Display` says only "db
/// error", so prefer the server's message, with its detail and hint (the way out, when the
/// server gives one).
pub(crate) fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str("; detail: ");
            s.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(hint);
        }
        return s;
    }
    describe_chain(e)
}

/// `e` and its sources joined by `: `, each said once: a source whose text is already in the
/// line is left out. Wrappers often repeat their source: postgres-openssl's handshake error
/// shows the OpenSSL error that is its source, which shows the error stack that is its own, so
/// without this "certificate verify failed" came three times in one line.
pub(crate) fn describe_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        let text = cause.to_string();
        if !text.is_empty() && !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = cause.source();
    }
    s
}

#[cfg(test)]
#[path = "error_tests.rs"]
mod tests;
