//! [`Builder`]: validated configuration of a [`CircuitBreaker`].

use std::sync::Arc;
use std::time::Duration;

use crate::cell::Callback;
use crate::policy::{Policy, MAX_DURATION};
use crate::{Change, CircuitBreaker, ConfigError, Ratio, SlowCalls, Storage, TripPolicy};

/// The longest key the shared table holds (`varchar(255)`), in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The shortest period [`Builder::time_window`] accepts: ten slices of 1 ms.
pub const MIN_TIME_WINDOW: Duration = Duration::from_millis(10);

/// Configures a [`CircuitBreaker`]; made by [`CircuitBreaker::builder`].
///
/// Defaults: the process-wide in-memory storage, a failure limit of 5 failures in the last 10
/// calls, a 30 s cooldown, no success limit (half-open uses the failure window), and up to 1 s of
/// waiting in [`call`](CircuitBreaker::call) for a fleet-wide probe permit. The Python package
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
    /// [`minimum_calls`](Self::minimum_calls) lets a window that is not full yet trip at the
    /// same rate; [`time_window`](Self::time_window) judges a period instead.
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

    /// How many outcomes the closed window must hold before it may trip. Below it the breaker
    /// never trips; from it on it trips when the window's failures reach the failure limit
    /// **read as a rate**: with `failure_limit(5/10)` and `minimum_calls(4)`, 2 failures in
    /// the first 4 calls trip, as 5 in a full window of 10 do.
    ///
    /// Default: the failure limit's denominator, i.e. a full count window (the behaviour before
    /// this setting existed). At least 1; with the count window at most the denominator (the
    /// window never holds more), with a [`time_window`](Self::time_window) any number: calls
    /// within the period.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, Ratio, Storage};
    /// let cb = CircuitBreaker::builder("min_calls_doc")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(50, 100))
    ///     .minimum_calls(20) // judge after 20 calls, not only once 100 were seen
    ///     .build()?;
    /// # let _ = cb;
    /// # Ok(()) }
    /// ```
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.policy.minimum_calls = Some(calls);
        self
    }

    /// Judges the outcomes of the last `period` instead of the last `denominator` ones (one or
    /// the other per breaker): the breaker trips when the period holds at least
    /// [`minimum_calls`](Self::minimum_calls) calls (default: the failure limit's denominator)
    /// and the failure limit, read as a rate, is reached: `Ratio::new(1, 2)` trips when half the
    /// calls of the period failed.
    ///
    /// The period is kept in ten slices of `period / 10`, as Resilience4j does: an outcome stops
    /// counting between 0.9 and 1 `period` after it was recorded. Time comes from the storage's
    /// [`Clock`](crate::Clock), read once per recorded outcome, on the cheapest reading that
    /// keeps an outcome within 1/25 of a slice of its time: with the default storages' clock
    /// and a period of 5 s or more, a reading kept in memory by one background thread (started
    /// with the first such window, waking every slice / 25 of the shortest such window), one load
    /// a call; else the coarse reading when a slice spans at least 25 of its ticks (100 ms on
    /// Linux's 4 ms tick); else the precise one. A success is counted without a lock: that
    /// reading and one compare-and-swap, instead of the single load of a count window full of
    /// successes; failures and slow calls are counted under the key's lock, where the verdict
    /// is made, as is a success when the period may have reached its limit. Half-open rounds
    /// are unchanged (`denominator` probes, or the success limit's); the window starts empty
    /// when the breaker closes.
    ///
    /// At least [`MIN_TIME_WINDOW`] (10 ms), at most [`MAX_DURATION`]; `build` refuses others.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, Ratio, Storage};
    /// use std::time::Duration;
    /// // Trip when at least half of the calls of the last minute failed, once there were 20.
    /// let cb = CircuitBreaker::builder("time_window_doc")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(1, 2))
    ///     .time_window(Duration::from_secs(60))
    ///     .minimum_calls(20)
    ///     .build()?;
    /// # let _ = cb;
    /// # Ok(()) }
    /// ```
    pub fn time_window(mut self, period: Duration) -> Self {
        self.policy.time_window = Some(period);
        self
    }

    /// Calls that take at least `threshold` are *slow*, and count as `counts_as` says: as
    /// failures ([`SlowCalls::AsFailure`]) or toward a slow-call rate of their own
    /// ([`SlowCalls::Rate`]), judged over the same window and minimum number of calls as the
    /// failure limit.
    ///
    /// Durations are measured where the crate runs the call:
    /// [`call`](CircuitBreaker::call), [`call_with`](CircuitBreaker::call_with) and the tower
    /// layer, with the storage's [`Clock`](crate::Clock) (read twice per call, only on breakers
    /// with a threshold). A threshold of at least 25 ticks of the clock's coarse reading (on
    /// Linux `CLOCK_MONOTONIC_COARSE`, whose tick is typically 1–4 ms: thresholds from 25–100
    /// ms) is timed on that reading, a few nanoseconds instead of some 20 on a VM; a duration
    /// is then known to within one tick, 1/25 of the threshold at worst. Shorter thresholds are
    /// timed on the precise clock. A [`Permit`](crate::Permit) reports one with
    /// [`record_timed`](crate::Permit::record_timed); its plain `success`, `failure` and
    /// `record` report a call of unknown duration, never counted as slow.
    ///
    /// The threshold must be above zero and at most [`MAX_DURATION`]; a rate is validated as a
    /// failure limit is.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Ratio, SlowCalls, Storage};
    /// use std::time::Duration;
    /// let cb = CircuitBreaker::builder("slow_doc")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(1, 1))
    ///     .slow_call(Duration::from_millis(50), SlowCalls::AsFailure)
    ///     .build()?;
    /// cb.call(|| async {
    ///     tokio::time::sleep(Duration::from_millis(60)).await;
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .await?;
    /// assert_eq!(cb.state(), resilient_circuit::State::Open, "one slow call is one failure");
    /// # Ok(()) }
    /// ```
    pub fn slow_call(mut self, threshold: Duration, counts_as: SlowCalls) -> Self {
        self.policy.slow_call = Some((threshold, counts_as));
        self
    }

    /// Calls `f` after every transition of this key on its storage, including those another
    /// instance made, with the same [`Change`] that [`Storage::changes`] streams (a remote one
    /// with its row version and commit time). It runs outside every lock; a panic in it is
    /// caught and logged. It lives as long as the breaker handle (and its clones).
    pub fn on_status_change(mut self, f: impl Fn(&Change) + Send + Sync + 'static) -> Self {
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
    /// [`max_cooldown`](Self::max_cooldown) below the cooldown or over [`MAX_DURATION`], an
    /// unusable [`minimum_calls`](Self::minimum_calls), [`time_window`](Self::time_window) or
    /// [`slow_call`](Self::slow_call), a trip policy with unusable numbers ([`TripPolicy`]), or
    /// limits (all of these settings) that differ from
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
        validate_windows(&self.policy)?;
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

/// Checks the minimum number of calls, the time window and the slow-call threshold.
fn validate_windows(policy: &Policy) -> Result<(), ConfigError> {
    if let Some(given) = policy.minimum_calls {
        let reason = if given == 0 {
            Some("zero; at least one call must be seen before a window is judged")
        } else if policy.time_window.is_none() && given > policy.failure_limit.denominator() {
            Some("above the failure limit's denominator, the size of the count window, which never holds that many calls; raise the denominator or use a time_window")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ConfigError::InvalidMinimumCalls { given, reason });
        }
    }
    if let Some(given) = policy.time_window {
        if given > MAX_DURATION {
            return Err(ConfigError::DurationTooLong {
                name: "time_window",
                given,
                max: MAX_DURATION,
            });
        }
        if given < MIN_TIME_WINDOW {
            return Err(ConfigError::InvalidTimeWindow {
                given,
                reason: "shorter than MIN_TIME_WINDOW (10 ms, ten slices of 1 ms)",
            });
        }
    }
    if let Some((given, counts_as)) = policy.slow_call {
        if given.is_zero() {
            return Err(ConfigError::InvalidSlowCallThreshold {
                given,
                reason: "zero, so every call would be slow",
            });
        }
        if given > MAX_DURATION {
            return Err(ConfigError::DurationTooLong {
                name: "slow_call threshold",
                given,
                max: MAX_DURATION,
            });
        }
        if let SlowCalls::Rate(r) = counts_as {
            r.validate("slow_call rate")?;
        }
    }
    Ok(())
}

/// The window settings of `policy` as the conflicting-policy error lists them.
pub(crate) fn describe_windows(policy: &Policy) -> String {
    let window = match policy.time_window {
        Some(p) => format!("time_window {p:?}"),
        None => format!("count window of {}", policy.failure_limit.denominator()),
    };
    let slow = match policy.slow_call {
        Some((t, counts_as)) => format!("slow_call over {t:?} {counts_as}"),
        None => "no slow_call".to_owned(),
    };
    format!(
        ", {window}, minimum_calls {}, {slow}",
        policy.minimum_calls()
    )
}

/// Checks a key as [`CircuitBreaker::builder`](crate::CircuitBreaker::builder) does: non-empty,
/// at most [`MAX_KEY_LEN`] bytes, no control characters. For tools that take a key from a
/// person (the command's `serve` page) and should refuse what no breaker could be built for.
///
/// ```
/// use resilient_circuit::validate_key;
/// assert!(validate_key("payments").is_ok());
/// assert!(validate_key("").is_err());
/// assert!(validate_key("a\nb").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), ConfigError> {
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
