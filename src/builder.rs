//! [`Builder`]: validated configuration of a [`CircuitBreaker`].

use std::sync::Arc;
use std::time::Duration;

use crate::cell::Callback;
use crate::policy::{Policy, MAX_DURATION};
use crate::{CircuitBreaker, ConfigError, Ratio, StatusChange, Storage, TripPolicy};

/// The longest key the shared table holds (`varchar(255)`), in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Configures a [`CircuitBreaker`]; made by [`CircuitBreaker::builder`].
///
/// Defaults: the process-wide in-memory storage, a failure limit of 5 failures in the last 10
/// calls, a 30 s cooldown, no success limit (half-open uses the failure window), and up to 1 s of
/// waiting in [`call`](CircuitBreaker::call) for a fleet-wide probe permit. The Python ancestor
/// defaults to `1/1` and no cooldown, which trips on any single error and never rests; pass those
/// explicitly if you need identical behaviour.
#[must_use = "a builder does nothing until build() is called"]
pub struct Builder {
    key: String,
    storage: Option<Storage>,
    policy: Policy,
    callback: Option<Arc<Callback>>,
    probe_wait: Duration,
    call_metrics: bool,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("key", &self.key)
            .field("policy", &self.policy)
            .field("probe_wait", &self.probe_wait)
            .field("call_metrics", &self.call_metrics)
            .finish_non_exhaustive()
    }
}

impl Builder {
    pub(crate) fn new(key: String) -> Self {
        Builder {
            key,
            storage: None,
            policy: Policy::default(),
            callback: None,
            probe_wait: Duration::from_secs(1),
            call_metrics: false,
        }
    }

    /// Where the state lives. Default: [`Storage::global`], one in-memory store per process,
    /// which is **not shared** with other processes and ignores the `RC_DB_*` variables; for
    /// state shared by the fleet pass `Storage::from_env().await?` (or
    /// [`Storage::connect`]). The first breaker built without a storage says so at INFO.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = Some(storage);
        self
    }

    /// How long the breaker stays open before it lets probes through. At most
    /// [`MAX_DURATION`] (ten years); `build` refuses a longer one.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.policy.cooldown = cooldown;
        self
    }

    /// Turns on growing cooldowns: each time a half-open round fails and the breaker opens
    /// again without having closed in between, its cooldown doubles, up to `max`.
    ///
    /// After the `n`-th such reopen the breaker rests `min(max, cooldown × 2^n)`, shortened by a
    /// random fraction of at most 10% (so `max` is never exceeded, and keys that reopened
    /// together do not all probe at the same instant). A trip from CLOSED rests the base
    /// [`cooldown`](Self::cooldown); a round that closes, or a manual close
    /// ([`force_closed`](CircuitBreaker::force_closed)), starts the count again. With a
    /// PostgreSQL storage the database computes the grown cooldown by its own clock, and counts
    /// reopens in the row, so the whole fleet agrees on it.
    ///
    /// Default: off (every reopen rests the base cooldown). `build` refuses a `max` shorter than
    /// the cooldown or longer than [`MAX_DURATION`].
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, ConfigError, Ratio, Storage};
    /// use std::time::Duration;
    /// // Rests 10 s after a trip, then about 20 s, 40 s, 80 s, ... and at most 5 minutes while
    /// // probes keep failing.
    /// let cb = CircuitBreaker::builder("search_api")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(5, 10))
    ///     .cooldown(Duration::from_secs(10))
    ///     .max_cooldown(Duration::from_secs(300))
    ///     .build()?;
    /// # drop(cb);
    /// let too_short = CircuitBreaker::builder("search_api_2")
    ///     .cooldown(Duration::from_secs(10))
    ///     .max_cooldown(Duration::from_secs(5))
    ///     .build();
    /// assert!(matches!(too_short, Err(ConfigError::MaxCooldownBelowCooldown { .. })));
    /// # Ok(()) }
    /// ```
    pub fn max_cooldown(mut self, max: Duration) -> Self {
        self.policy.max_cooldown = Some(max);
        self
    }

    /// Trip when the window of the last `denominator` outcomes is full and holds at least
    /// `numerator` failures.
    pub fn failure_limit(mut self, limit: Ratio) -> Self {
        self.policy.failure_limit = limit;
        self
    }

    /// In half-open, admit `denominator` probes and close when at least `numerator` succeed;
    /// otherwise open again. Without it, half-open uses the failure limit's window and ratio.
    pub fn success_limit(mut self, limit: Ratio) -> Self {
        self.policy.success_limit = Some(limit);
        self
    }

    /// Who opens the breaker for the whole fleet when this instance's window trips. Default:
    /// [`TripPolicy::AnyInstance`]. With [`TripPolicy::Quorum`] an instance that trips stops its
    /// own calls for the cooldown and votes; the fleet opens on the quorum's last vote. The
    /// numbers are checked by `build`.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, ConfigError, Storage, TripPolicy};
    /// use std::time::Duration;
    /// let nobody = CircuitBreaker::builder("search")
    ///     .storage(Storage::in_memory())
    ///     .trip_policy(TripPolicy::Quorum { instances: 0, within: Duration::from_secs(30) })
    ///     .build();
    /// assert!(matches!(nobody, Err(ConfigError::InvalidTripPolicy { .. })));
    /// # Ok(()) }
    /// ```
    pub fn trip_policy(mut self, policy: TripPolicy) -> Self {
        self.policy.trip = policy;
        self
    }

    /// Calls `f` after every transition of this key on its storage, including those another
    /// instance made. It runs outside every lock; a panic in it is caught and logged. It lives as
    /// long as the breaker handle (and its clones).
    pub fn on_status_change(mut self, f: impl Fn(&StatusChange) + Send + Sync + 'static) -> Self {
        self.callback = Some(Arc::new(f));
        self
    }

    /// How long [`call`](CircuitBreaker::call) may wait for a fleet-wide probe permit from the
    /// database before rejecting. Has no effect on in-memory storage.
    pub fn probe_wait(mut self, wait: Duration) -> Self {
        self.probe_wait = wait;
        self
    }

    /// Counts every call of this handle (and its clones) in `resilient_circuit_calls_total`
    /// by outcome, and times those run through [`call`](CircuitBreaker::call),
    /// [`call_with`](CircuitBreaker::call_with) and the tower layer (feature `tower`) in
    /// `resilient_circuit_call_duration_seconds`.
    /// Default: off, since counting every success adds an atomic increment to a path that is
    /// otherwise one load and a compare (see the crate docs, "Metrics"). Rejections, states and
    /// transitions are always counted.
    pub fn call_metrics(mut self, on: bool) -> Self {
        self.call_metrics = on;
        self
    }

    /// Validates and builds. Breakers with the same key on the same storage share one state.
    ///
    /// Fails with a [`ConfigError`] for an empty key, a key over [`MAX_KEY_LEN`] bytes or with a
    /// control character, an unusable ratio (zero, numerator above denominator, window over
    /// [`Ratio::MAX_DENOMINATOR`]), a cooldown over [`MAX_DURATION`], a
    /// [`max_cooldown`](Self::max_cooldown) below the cooldown or over [`MAX_DURATION`], a trip
    /// policy with unusable numbers ([`TripPolicy`]), or limits that differ from
    /// those of a breaker of the same key already on this storage. Sends nothing to the database:
    /// a PostgreSQL storage already holds the key's state.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        validate_key(&self.key)?;
        if self.policy.cooldown > MAX_DURATION {
            return Err(ConfigError::DurationTooLong {
                name: "cooldown",
                given: self.policy.cooldown,
                max: MAX_DURATION,
            });
        }
        if let Some(max) = self.policy.max_cooldown {
            if max > MAX_DURATION {
                return Err(ConfigError::DurationTooLong {
                    name: "max_cooldown",
                    given: max,
                    max: MAX_DURATION,
                });
            }
            if max < self.policy.cooldown {
                return Err(ConfigError::MaxCooldownBelowCooldown {
                    max_cooldown: max,
                    cooldown: self.policy.cooldown,
                });
            }
        }
        self.policy.failure_limit.validate("failure_limit")?;
        if let Some(s) = self.policy.success_limit {
            s.validate("success_limit")?;
        }
        self.policy.trip.validate()?;
        let storage = self.storage.unwrap_or_else(|| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::info!(key = %self.key, "a breaker built without .storage() uses the process-wide in-memory store: its state is not shared with other instances (RC_DB_* is read only by Storage::from_env)");
            });
            Storage::global().clone()
        });
        let cell = storage.cell_for(&self.key, self.policy)?;
        if let Some(cb) = &self.callback {
            cell.add_callback(cb);
        }
        cell.publish_state();
        Ok(CircuitBreaker::from_parts(
            cell,
            storage,
            self.callback,
            self.probe_wait,
            self.call_metrics,
        ))
    }
}

/// Checks a key: non-empty, at most 255 bytes, no control characters.
pub(crate) fn validate_key(key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ConfigError::KeyTooLong { len: key.len() });
    }
    if let Some((index, _)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ConfigError::KeyControlCharacter {
            key: key.to_owned(),
            index,
        });
    }
    Ok(())
}
