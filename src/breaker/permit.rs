//! [`Permit`] and [`OwnedPermit`]: leave to run one call, borrowing the breaker or owning a handle
//! to it, as tokio pairs `SemaphorePermit<'a>` with `OwnedSemaphorePermit`.
//!
//! Both are a [`Ticket`], generic over how it holds its breaker, so reporting, cancelling and the
//! call metrics are written once; the two public types only add their names and docs.

use std::borrow::Borrow;
use std::time::Duration;

use crate::cell::{Lease, Recorded, StateWord};
use crate::telemetry::CallOutcome;
use crate::{CircuitBreaker, Outcome};

/// One admitted call, holding its breaker as `B`: `&CircuitBreaker` or `CircuitBreaker`.
pub(super) struct Ticket<B: Borrow<CircuitBreaker>> {
    breaker: B,
    /// The state word the call was admitted under.
    admitted: StateWord,
    lease: Option<Lease>,
    /// Set once the outcome is reported (or the parts were moved to another ticket), so that
    /// `Drop` does not cancel.
    reported: bool,
}

impl<B: Borrow<CircuitBreaker>> Ticket<B> {
    #[inline]
    pub(super) fn new(breaker: B, admitted: StateWord, lease: Option<Lease>) -> Self {
        Ticket {
            breaker,
            admitted,
            lease,
            reported: false,
        }
    }

    #[inline]
    fn is_probe(&self) -> bool {
        !self.admitted.is_closed()
    }

    // `always`: without it the owned form (whose drop glue releases the handle) was not inlined
    // and cost a call and a spill more than the borrowed one.
    #[inline(always)]
    fn record(self, outcome: Outcome) {
        self.record_as(outcome, false);
    }

    /// Reports a call that took `elapsed`: judged slow or not by the breaker's threshold.
    #[inline]
    fn record_timed(self, outcome: Outcome, elapsed: Duration) {
        match self.breaker.borrow().inner.slow_call {
            Some(s) if elapsed >= s.threshold => {
                let outcome = if s.as_failure {
                    Outcome::Failure
                } else {
                    outcome
                };
                self.record_as(outcome, true);
            }
            _ => self.record(outcome),
        }
    }

    /// Reports a call timed from `started` (a clock reading), or untimed.
    #[inline(always)]
    fn record_since(self, outcome: Outcome, started: Option<u64>) {
        match started {
            None => self.record(outcome),
            Some(t) => {
                let elapsed = self.breaker.borrow().elapsed_since(t);
                self.record_timed(outcome, elapsed);
            }
        }
    }

    // `slow` is a constant where this is inlined, so the plain path keeps its one-load form.
    #[inline(always)]
    fn record_as(mut self, outcome: Outcome, slow: bool) {
        self.reported = true;
        let breaker = self.breaker.borrow();
        let cell = breaker.cell();
        let success = outcome == Outcome::Success;
        let recorded = if slow {
            cell.record_slow_call(self.admitted, self.lease, success)
        } else {
            cell.record(self.admitted, self.lease, success)
        };
        match recorded {
            Recorded::Nothing => {}
            other => breaker.after_record(other),
        }
        if let Some(calls) = &breaker.inner.calls {
            calls.call(match outcome {
                Outcome::Success => CallOutcome::Success,
                Outcome::Failure => CallOutcome::Failure,
            });
        }
    }

    /// What the ticket was admitted with, for a ticket holding the breaker another way; this one
    /// then neither reports nor cancels.
    pub(super) fn into_parts(mut self) -> (StateWord, Option<Lease>) {
        self.reported = true;
        (self.admitted, self.lease)
    }

    /// Dropped without an outcome: a probe gives its slot back, and the call counts as
    /// cancelled.
    #[cold]
    fn dropped_unreported(&self) {
        let breaker = self.breaker.borrow();
        if self.is_probe() || self.lease.is_some() {
            breaker.cell().cancel(self.admitted, self.lease);
        }
        if let Some(calls) = &breaker.inner.calls {
            calls.call(CallOutcome::Cancelled);
        }
    }

    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("key", &self.breaker.borrow().key())
            .field("admitted", &self.admitted)
            .field("probe", &self.is_probe())
            .field("lease", &self.lease)
            .finish()
    }
}

impl<B: Borrow<CircuitBreaker>> Drop for Ticket<B> {
    #[inline]
    fn drop(&mut self) {
        if !self.reported {
            self.dropped_unreported();
        }
    }
}

/// Leave to run one call, borrowed from its [`CircuitBreaker`]
/// ([`try_acquire`](CircuitBreaker::try_acquire), [`acquire`](CircuitBreaker::acquire)); report
/// how it went with [`success`](Self::success) or [`failure`](Self::failure), or, for a breaker
/// with a slow-call threshold, with [`record_timed`](Self::record_timed).
///
/// Dropping a permit without reporting (a cancelled future) counts as neither; a half-open probe
/// gives its slot back. A permit that must outlive the borrow (moved into `tokio::spawn`, kept in
/// a `'static` future) is an [`OwnedPermit`].
#[must_use = "report the call's outcome with success() or failure(); a dropped permit counts as neither"]
pub struct Permit<'a> {
    ticket: Ticket<&'a CircuitBreaker>,
}

impl<'a> Permit<'a> {
    #[inline]
    pub(super) fn new(
        breaker: &'a CircuitBreaker,
        admitted: StateWord,
        lease: Option<Lease>,
    ) -> Self {
        Permit {
            ticket: Ticket::new(breaker, admitted, lease),
        }
    }

    pub(super) fn into_parts(self) -> (StateWord, Option<Lease>) {
        self.ticket.into_parts()
    }

    /// True when this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_probe()
    }

    /// The call succeeded. On a closed, healthy breaker this is one atomic load.
    #[inline]
    pub fn success(self) {
        self.ticket.record(Outcome::Success);
    }

    /// The call failed.
    #[inline]
    pub fn failure(self) {
        self.ticket.record(Outcome::Failure);
    }

    /// Reports `outcome`.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        self.ticket.record(outcome);
    }

    /// Reports `outcome` of a call that took `elapsed`, for a breaker with a slow-call threshold
    /// ([`Builder::slow_call`](crate::Builder::slow_call)): a call at least that long is slow,
    /// and counts as the breaker's [`SlowCalls`](crate::SlowCalls) says. Without a threshold this
    /// is [`record`](Self::record). The plain `success`, `failure` and `record` report a call of
    /// unknown duration, which is never slow.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Outcome, Ratio, SlowCalls, State, Storage};
    /// use std::time::{Duration, Instant};
    /// let cb = CircuitBreaker::builder("permit_timed_doc")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(1, 1))
    ///     .slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    ///     .build()?;
    /// let permit = cb.try_acquire()?;
    /// let started = Instant::now();
    /// // ... the protected call ...
    /// permit.record_timed(Outcome::Success, started.elapsed());
    /// assert_eq!(cb.state(), State::Closed, "fast enough");
    /// cb.try_acquire()?.record_timed(Outcome::Success, Duration::from_secs(1));
    /// assert_eq!(cb.state(), State::Open, "a slow success is a failure here");
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn record_timed(self, outcome: Outcome, elapsed: Duration) {
        self.ticket.record_timed(outcome, elapsed);
    }

    /// Reports a call timed by the crate (`call`), or untimed.
    #[inline(always)]
    pub(crate) fn record_since(self, outcome: Outcome, started: Option<u64>) {
        self.ticket.record_since(outcome, started);
    }
}

impl std::fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ticket.debug("Permit", f)
    }
}

/// A [`Permit`] that owns a handle to its breaker: `Send + 'static`, so it can be moved into
/// `tokio::spawn`, kept in a `'static` future or stored in a struct, as tokio's
/// `OwnedSemaphorePermit`. From [`try_acquire_owned`](CircuitBreaker::try_acquire_owned) or
/// [`acquire_owned`](CircuitBreaker::acquire_owned).
///
/// It means the same as a `Permit`: report with [`success`](Self::success),
/// [`failure`](Self::failure) or [`record`](Self::record); dropped without a report it counts as
/// neither (cancelled, in the call metrics) and a half-open probe gives its slot back. It costs
/// one reference-count increment when taken and one decrement when done, nothing else. It keeps
/// the breaker's handle alive until it is reported or dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use resilient_circuit::{CircuitBreaker, Storage};
/// let cb = CircuitBreaker::builder("owned_doc").storage(Storage::in_memory()).build()?;
/// let permit = cb.try_acquire_owned()?;
/// let task = tokio::spawn(async move {
///     // ... the protected call ...
///     permit.success();
/// });
/// task.await?;
/// # Ok(()) }
/// ```
#[must_use = "report the call's outcome with success() or failure(); a dropped permit counts as neither"]
pub struct OwnedPermit {
    ticket: Ticket<CircuitBreaker>,
}

impl OwnedPermit {
    #[inline]
    pub(super) fn new(breaker: CircuitBreaker, admitted: StateWord, lease: Option<Lease>) -> Self {
        OwnedPermit {
            ticket: Ticket::new(breaker, admitted, lease),
        }
    }

    /// True when this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_probe()
    }

    /// The call succeeded. On a closed, healthy breaker this is one atomic load (and the handle's
    /// reference-count decrement).
    #[inline]
    pub fn success(self) {
        self.ticket.record(Outcome::Success);
    }

    /// The call failed.
    #[inline]
    pub fn failure(self) {
        self.ticket.record(Outcome::Failure);
    }

    /// Reports `outcome`.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        self.ticket.record(outcome);
    }

    /// Reports `outcome` of a call that took `elapsed`, as
    /// [`Permit::record_timed`](crate::Permit::record_timed) does: slow when at least the
    /// breaker's slow-call threshold, and counted as its [`SlowCalls`](crate::SlowCalls) says.
    /// The plain `success`, `failure` and `record` report a call of unknown duration, never slow.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use resilient_circuit::{CircuitBreaker, Outcome, Ratio, SlowCalls, State, Storage};
    /// use std::time::Duration;
    /// let cb = CircuitBreaker::builder("owned_timed_doc")
    ///     .storage(Storage::in_memory())
    ///     .failure_limit(Ratio::new(1, 1))
    ///     .slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    ///     .build()?;
    /// cb.try_acquire_owned()?.record_timed(Outcome::Success, Duration::from_millis(250));
    /// assert_eq!(cb.state(), State::Open);
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn record_timed(self, outcome: Outcome, elapsed: Duration) {
        self.ticket.record_timed(outcome, elapsed);
    }

    /// Reports a call timed by the crate (the tower layer), or untimed.
    #[cfg(feature = "tower")]
    #[inline]
    pub(crate) fn record_since(self, outcome: Outcome, started: Option<u64>) {
        self.ticket.record_since(outcome, started);
    }

    /// The breaker this permit belongs to.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.ticket.breaker
    }
}

impl std::fmt::Debug for OwnedPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ticket.debug("OwnedPermit", f)
    }
}
