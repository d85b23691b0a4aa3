//! [`CircuitBreaker`], its [`Permit`]s (borrowed, or [`OwnedPermit`]) and [`Outcome`]: what
//! callers touch on every call. The permits live in `breaker/permit.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cell::{Admission, Callback, KeyCell, Lease, Recorded, StateWord};
use crate::telemetry::CallMetrics;
use timing::SlowCall;

mod permit;
mod timing;

use crate::{Builder, CircuitError, Rejected, State, Storage, StorageError, MAX_DURATION};
pub use permit::{OwnedPermit, Permit};

/// Whether a finished call counts as a success or a failure of the protected resource.
///
/// ```
/// use resilient_circuit::Outcome;
/// let ok: Result<u16, ()> = Ok(503);
/// assert_eq!(Outcome::from_result(&ok), Outcome::Success);
/// assert_eq!(Outcome::failure_if(matches!(ok, Ok(503))), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The resource worked (or failed in a way that says nothing about its health).
    Success,
    /// The resource failed.
    Failure,
}

impl Outcome {
    /// The default classification: every `Err` is a failure, every `Ok` a success.
    pub fn from_result<T, E>(r: &Result<T, E>) -> Outcome {
        Outcome::failure_if(r.is_err())
    }

    /// `Failure` when `failed`, else `Success`.
    pub fn failure_if(failed: bool) -> Outcome {
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

/// A circuit breaker for one key: cheap to clone, `Send + Sync`, usable from async code and plain
/// threads alike.
///
/// Build one with [`CircuitBreaker::builder`]. Every handle built with the same key on the same
/// [`Storage`] shares one state; with a PostgreSQL storage, so does every instance of the fleet.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), resilient_circuit::ConfigError> {
/// use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
/// use std::time::Duration;
///
/// let cb = CircuitBreaker::builder("doc_example")
///     .storage(Storage::in_memory())
///     .failure_limit(Ratio::new(2, 2))
///     .cooldown(Duration::from_secs(60))
///     .build()?;
///
/// for _ in 0..2 {
///     let r: Result<(), _> = cb.call(|| async { Err::<(), _>("down") }).await;
///     assert!(r.is_err_and(|e| !e.is_rejected()));
/// }
/// assert_eq!(cb.state(), State::Open);
/// let r = cb.call(|| async { Ok::<_, &str>(()) }).await;
/// assert!(r.is_err_and(|e| e.is_rejected()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

struct Inner {
    /// The key's shared state; held here so a call never hashes the key.
    cell: Arc<KeyCell>,
    storage: Storage,
    /// Keeps this handle's callback alive; the cell holds it weakly.
    _callback: Option<Arc<Callback>>,
    probe_wait: Duration,
    /// The opt-in per-call metrics ([`Builder::call_metrics`]); `None` costs the success path
    /// one predictable branch, no metrics call.
    calls: Option<CallMetrics>,
    /// The policy's slow-call threshold, copied here so that a call reads it without the key's
    /// lock; `None` (the usual case) costs `call` one predictable branch and no clock reading.
    slow_call: Option<SlowCall>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cell.unclaim();
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("key", &self.key())
            .field("state", &self.state())
            .field("storage", &self.inner.storage.backend_name())
            .finish()
    }
}

impl CircuitBreaker {
    /// Starts building a breaker for `key`: a dependency's name, at most [`MAX_KEY_LEN`](crate::MAX_KEY_LEN)
    /// bytes. See [`Builder`] for the settings and their defaults.
    pub fn builder(key: impl Into<String>) -> Builder {
        Builder::new(key.into())
    }

    pub(crate) fn from_parts(
        cell: Arc<KeyCell>,
        storage: Storage,
        callback: Option<Arc<Callback>>,
        probe_wait: Duration,
        call_metrics: bool,
    ) -> Self {
        let calls = call_metrics.then(|| CallMetrics::new(&cell.key, storage.metrics_namespace()));
        // The cell was just claimed with the builder's policy, so this is the breaker's.
        let slow_call = cell
            .policy()
            .slow_call
            .map(|(threshold, counts_as)| SlowCall::new(threshold, counts_as, &*cell.clock));
        CircuitBreaker {
            inner: Arc::new(Inner {
                cell,
                storage,
                _callback: callback,
                probe_wait,
                calls,
                slow_call,
            }),
        }
    }

    /// Counts a rejection handed to the caller (once per call, whichever path rejected it).
    #[cold]
    pub(crate) fn counted(&self, r: Rejected) -> Rejected {
        let cell = &self.inner.cell;
        let reason = cell.rejection_reason(r.state());
        cell.metrics.rejected(reason);
        r.with_reason(reason)
    }

    /// The breaker's key.
    pub fn key(&self) -> &str {
        &self.inner.cell.key
    }

    /// The current state, from the local snapshot: one atomic load, no lock, no I/O.
    ///
    /// An open breaker whose cooldown has ended still reports `Open` until a call moves it to
    /// half-open.
    #[inline]
    pub fn state(&self) -> State {
        self.inner.cell.state()
    }

    /// Time left before an open breaker lets a probe through (zero otherwise).
    ///
    /// With a PostgreSQL storage the cooldown ends by the database's clock: when the answer to
    /// this instance's own trip arrives, the end it carries can be a few milliseconds later than
    /// the local estimate made at the trip. To wait for the end, look again after sleeping:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, State, Storage};
    /// use std::time::Duration;
    /// let cb = CircuitBreaker::builder("resting").storage(Storage::in_memory()).build()?;
    /// cb.force_open(Duration::from_millis(20));
    /// while !cb.cooldown_remaining().is_zero() {
    ///     tokio::time::sleep(cb.cooldown_remaining()).await;
    /// }
    /// assert!(cb.try_acquire().is_ok_and(|p| p.is_probe())); // the next call probes
    /// # Ok(()) }
    /// ```
    pub fn cooldown_remaining(&self) -> Duration {
        self.inner.cell.cooldown_remaining()
    }

    /// The key's live configuration, if the shared table holds one (`resilient-circuit config
    /// KEY ...`, migration `0013`): the values that override the builder's, and the mode. Read
    /// without a lock; `None` in memory and for keys without one.
    pub fn live_config(&self) -> Option<Arc<crate::LiveConfig>> {
        self.inner.cell.live_config()
    }

    /// The mode the key's live configuration sets ([`Mode::Normal`](crate::Mode::Normal)
    /// without one).
    pub fn mode(&self) -> crate::Mode {
        self.inner.cell.mode()
    }

    /// The storage this breaker lives in.
    pub fn storage(&self) -> &Storage {
        &self.inner.storage
    }

    /// Asks to run one call now. Synchronous and never blocks: on a closed breaker this is one
    /// atomic load.
    ///
    /// Report the result through the [`Permit`]; a permit dropped without a result (a cancelled
    /// future) counts as neither, and a half-open probe gives its slot back.
    ///
    /// With a PostgreSQL storage, a probe permit of a fleet-wide half-open round must come from the
    /// database: this rejects, asks for one in the background, and a later caller takes it.
    /// [`call`](Self::call) waits for it instead.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, Ratio, Storage};
    /// let cb = CircuitBreaker::builder("sync_api")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(1, 1))
    ///     .build()?;
    /// match cb.try_acquire() {
    ///     Ok(permit) => {
    ///         let worked = false; // run the call here, from any thread
    ///         if worked { permit.success() } else { permit.failure() }
    ///     }
    ///     Err(rejected) => println!("not now: {rejected}"),
    /// }
    /// let rejected = cb.try_acquire().expect_err("1 failure in 1 call opened it");
    /// assert!(rejected.retry_after().is_some());
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejected> {
        match self.inner.cell.admit() {
            Admission::Closed(word) => Ok(Permit::new(self, word, None)),
            admission => match self.admission_slow(admission) {
                Ok((word, lease)) => Ok(Permit::new(self, word, lease)),
                Err(r) => Err(self.counted(r)),
            },
        }
    }

    /// [`try_acquire`](Self::try_acquire), returning an [`OwnedPermit`]: `Send + 'static`, for a
    /// permit moved into `tokio::spawn` or kept in a `'static` future (tokio's
    /// `Semaphore::try_acquire_owned`). Same semantics; it also costs one reference-count
    /// increment of this handle, taken only when the call is admitted.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, OwnedPermit, Storage};
    /// let cb = CircuitBreaker::builder("owned").storage(Storage::in_memory()).build()?;
    /// let permit: OwnedPermit = cb.try_acquire_owned()?;
    /// // `join` fails only if the thread panicked; reporting a success does not panic.
    /// std::thread::spawn(move || permit.success()).join().expect("no panic");
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn try_acquire_owned(&self) -> Result<OwnedPermit, Rejected> {
        self.try_admit_owned().map_err(|r| self.counted(r))
    }

    /// [`try_acquire_owned`](Self::try_acquire_owned) without counting a rejection: for callers
    /// that may still turn it into a wait (the tower layer), and count what they return.
    #[inline]
    pub(crate) fn try_admit_owned(&self) -> Result<OwnedPermit, Rejected> {
        match self.inner.cell.admit() {
            Admission::Closed(word) => Ok(OwnedPermit::new(self.clone(), word, None)),
            admission => self
                .admission_slow(admission)
                .map(|(word, lease)| OwnedPermit::new(self.clone(), word, lease)),
        }
    }

    /// The slow paths of admission: the word admitted under and the probe's lease, if any. A
    /// rejection is not counted yet (the caller counts what it returns, once). The caller wraps
    /// an admission in a permit at once, with nothing in between that could drop it.
    #[cold]
    fn admission_slow(&self, admission: Admission) -> Result<(StateWord, Option<Lease>), Rejected> {
        match admission {
            Admission::Closed(word) => Ok((word, None)),
            Admission::Probe(word, lease) => {
                // Ended in `KeyCell::record_slow` or `KeyCell::cancel`, on the same condition.
                if !word.is_closed() || lease.is_some() {
                    self.inner.cell.metrics.probe_started();
                }
                Ok((word, lease))
            }
            Admission::Rejected {
                state,
                retry_after,
                wants_lease,
            } => {
                if wants_lease {
                    self.inner.storage.request_lease(&self.inner.cell);
                }
                Err(Rejected::new(&self.inner.cell.key, state, retry_after))
            }
        }
    }

    /// Like [`try_acquire`](Self::try_acquire), but when this caller could become a fleet-wide
    /// probe (a lease is being asked of the database, or may be asked), waits for it up to the
    /// builder's `probe_wait`. Callers that cannot (every slot of the round is leased elsewhere,
    /// the cooldown is not over) are rejected at once.
    pub async fn acquire(&self) -> Result<Permit<'_>, Rejected> {
        self.acquire_uncounted().await.map_err(|r| self.counted(r))
    }

    /// [`acquire`](Self::acquire), returning an [`OwnedPermit`]. The future owns a handle to the
    /// breaker too, so it is `'static` like the permit: it can be spawned or stored.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Storage};
    /// let cb = CircuitBreaker::builder("owned_async").storage(Storage::in_memory()).build()?;
    /// let permit = tokio::spawn(cb.acquire_owned()).await??;
    /// permit.success();
    /// # Ok(()) }
    /// ```
    pub fn acquire_owned(
        &self,
    ) -> impl Future<Output = Result<OwnedPermit, Rejected>> + Send + Sync + 'static {
        let breaker = self.clone();
        async move {
            // The borrowed permit hands its admission over without reporting or cancelling.
            let (word, lease) = breaker.acquire().await?.into_parts();
            Ok(OwnedPermit::new(breaker, word, lease))
        }
    }

    async fn acquire_uncounted(&self) -> Result<Permit<'_>, Rejected> {
        let cell = &self.inner.cell;
        let deadline = tokio::time::Instant::now() + self.inner.probe_wait;
        loop {
            // Register for wake-ups before looking, so a lease arriving in between is not missed.
            let notified = cell.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let rejected = match cell.admit() {
                Admission::Closed(word) => return Ok(Permit::new(self, word, None)),
                admission => match self.admission_slow(admission) {
                    Ok((word, lease)) => return Ok(Permit::new(self, word, lease)),
                    Err(r) => r,
                },
            };
            if !self.may_wait(&rejected)
                || tokio::time::timeout_at(deadline, notified).await.is_err()
            {
                return Err(rejected);
            }
        }
    }

    /// Only a lease request in flight, or a lease it brought, can turn a rejected caller into a
    /// probe.
    pub(crate) fn may_wait(&self, rejected: &Rejected) -> bool {
        let cell = &self.inner.cell;
        cell.is_fleet() && rejected.retry_after().is_none() && cell.probe_may_come()
    }

    /// Runs `f` if the breaker admits it; every `Err` counts as a failure, every `Ok` as a
    /// success. See [`call_with`](Self::call_with) to decide otherwise. With a slow-call
    /// threshold ([`Builder::slow_call`]) the call is timed, from just before `f` is called until
    /// its future completes, on the storage's clock.
    pub async fn call<T, E, F, Fut>(&self, f: F) -> Result<T, CircuitError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(Outcome::from_result, f).await
    }

    /// Runs `f` if the breaker admits it and lets `classify` decide what its result means for the
    /// resource's health: the Python package's `should_handle`, or an HTTP 503 returned as `Ok`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Outcome, Storage};
    /// let cb = CircuitBreaker::builder("http_api").storage(Storage::in_memory()).build()?;
    /// let status = cb
    ///     .call_with(
    ///         |r: &Result<u16, std::io::Error>| Outcome::failure_if(matches!(r, Ok(500..) | Err(_))),
    ///         || async { Ok(503) },
    ///     )
    ///     .await;
    /// assert_eq!(status?, 503);
    /// # Ok(()) }
    /// ```
    pub async fn call_with<T, E, F, Fut, C>(&self, classify: C, f: F) -> Result<T, CircuitError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: FnOnce(&Result<T, E>) -> Outcome,
    {
        let permit = match self.inner.cell.admit() {
            Admission::Closed(word) => Permit::new(self, word, None),
            admission => match self.admission_slow(admission) {
                Ok((word, lease)) => Permit::new(self, word, lease),
                Err(r) if self.may_wait(&r) => self.acquire().await?,
                Err(r) => return Err(self.counted(r).into()),
            },
        };
        let timed = self.timing_started();
        let Some(calls) = &self.inner.calls else {
            let result = f().await;
            permit.record_since(classify(&result), timed);
            return result.map_err(CircuitError::Inner);
        };
        let started = std::time::Instant::now();
        let result = f().await;
        calls.duration(started.elapsed());
        permit.record_since(classify(&result), timed);
        result.map_err(CircuitError::Inner)
    }

    /// Opens the breaker now for `cooldown` (at most [`MAX_DURATION`];
    /// longer is clamped), whatever its window says: an operator's override. With a PostgreSQL
    /// storage the whole fleet follows: the override is sent in the background and retried
    /// until the database takes it. [`force_open_confirmed`](Self::force_open_confirmed) says
    /// when it did.
    pub fn force_open(&self, cooldown: Duration) {
        self.force(State::Open, cooldown, false);
    }

    /// Closes the breaker now and empties its window. With a PostgreSQL storage the whole fleet
    /// follows (see [`force_open`](Self::force_open)).
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::ConfigError> {
    /// use resilient_circuit::{CircuitBreaker, State, Storage};
    /// use std::time::Duration;
    /// let cb = CircuitBreaker::builder("maintenance").storage(Storage::in_memory()).build()?;
    /// cb.force_open(Duration::from_secs(15 * 60)); // the dependency's maintenance window
    /// assert!(cb.try_acquire().is_err());
    /// cb.force_closed(); // it ended early
    /// assert_eq!(cb.state(), State::Closed);
    /// # Ok(()) }
    /// ```
    pub fn force_closed(&self) {
        self.force(State::Closed, Duration::ZERO, false);
    }

    /// [`force_open`](Self::force_open), then waits until the database accepted the override
    /// (at once in memory). While the database is unreachable the override stays in force here
    /// and is retried, so this waits as long; bound it with `tokio::time::timeout`. An error
    /// means the database refused it for good (a role that may not write the table, say).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, State, Storage};
    /// use std::time::Duration;
    /// let cb = CircuitBreaker::builder("confirmed").storage(Storage::in_memory()).build()?;
    /// cb.force_open_confirmed(Duration::from_secs(60)).await?;
    /// assert_eq!(cb.state(), State::Open);
    /// # Ok(()) }
    /// ```
    pub async fn force_open_confirmed(&self, cooldown: Duration) -> Result<(), StorageError> {
        self.force_confirmed(State::Open, cooldown).await
    }

    /// [`force_closed`](Self::force_closed), then waits until the database accepted it; see
    /// [`force_open_confirmed`](Self::force_open_confirmed).
    pub async fn force_closed_confirmed(&self) -> Result<(), StorageError> {
        self.force_confirmed(State::Closed, Duration::ZERO).await
    }

    async fn force_confirmed(&self, to: State, cooldown: Duration) -> Result<(), StorageError> {
        match self.force(to, cooldown, true) {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(StorageError::Internal {
                during: "forcing a state",
                what: "the storage shut down before the database answered".into(),
            })),
        }
    }

    fn force(
        &self,
        to: State,
        cooldown: Duration,
        confirm: bool,
    ) -> Option<tokio::sync::oneshot::Receiver<Result<(), StorageError>>> {
        let cooldown = cooldown.min(MAX_DURATION);
        let cell = &self.inner.cell;
        if let Some(t) = cell.force(to, cooldown) {
            cell.notify(t);
        }
        self.inner
            .storage
            .publish_force(cell, to, cooldown, confirm)
    }

    /// The outcomes in the closed window, oldest first (`true` = success), as the Python package's
    /// `execution_log` column. The window is this instance's own (see
    /// [`docs::model`](crate::docs::model)); it is written to the row when the instance trips.
    /// With a [`time_window`](Builder::time_window) it is the last `denominator` outcomes, kept
    /// beside the period's counts for this log; a slow call counted
    /// [`AsFailure`](crate::SlowCalls::AsFailure) shows as a failure.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Storage};
    /// let cb = CircuitBreaker::builder("logged").storage(Storage::in_memory()).build()?;
    /// cb.try_acquire()?.success();
    /// cb.try_acquire()?.failure();
    /// assert_eq!(cb.execution_log(), [true, false]);
    /// # Ok(()) }
    /// ```
    pub fn execution_log(&self) -> Vec<bool> {
        self.inner.cell.execution_log()
    }

    pub(crate) fn cell(&self) -> &Arc<KeyCell> {
        &self.inner.cell
    }

    /// How long a caller that may become a fleet-wide probe waits for its lease (the builder's
    /// `probe_wait`).
    #[cfg(feature = "tower")]
    pub(crate) fn probe_wait(&self) -> Duration {
        self.inner.probe_wait
    }

    /// A future that completes at the cell's next change: a transition, a lease arriving, a
    /// probe slot given back. It owns a handle to the cell; it registers on its first poll, so
    /// poll it once before looking at the state, as `acquire` enables its `Notified`.
    #[cfg(feature = "tower")]
    pub(crate) fn changed(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        let cell = self.inner.cell.clone();
        Box::pin(async move { cell.changed.notified().await })
    }

    /// The start of a call whose duration the opt-in call metrics record; `None` when they are
    /// off, so that an unmeasured call reads no clock.
    #[cfg(feature = "tower")]
    pub(crate) fn call_started(&self) -> Option<std::time::Instant> {
        self.inner.calls.as_ref().map(|_| std::time::Instant::now())
    }

    /// Records the duration of a call started at `started` (see [`Self::call_started`]).
    #[cfg(feature = "tower")]
    pub(crate) fn call_ended(&self, started: std::time::Instant) {
        if let Some(calls) = &self.inner.calls {
            calls.duration(started.elapsed());
        }
    }
}

impl CircuitBreaker {
    #[cold]
    fn after_record(&self, recorded: Recorded) {
        let cell = &self.inner.cell;
        match recorded {
            Recorded::Nothing => {}
            Recorded::Changed(t) => {
                cell.notify(t);
                self.inner.storage.publish_transition(cell, t);
            }
            Recorded::Report(lease, success) => {
                self.inner.storage.report_probe(cell, lease, success)
            }
        }
    }
}
