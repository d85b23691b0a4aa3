//! Waiting for the database's answers: what this instance sent and has not heard back about
//! (the outbox's trips and overrides, probe results, votes and rate reports), and the wake-up
//! [`Storage::flush`](crate::Storage::flush) waits on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Calls on their way to the database outside the outbox, and the wake-up for when everything
/// may have been answered.
#[derive(Debug, Default)]
pub(crate) struct Unanswered {
    /// Probe results, votes and rate reports sent and not answered yet.
    reports: AtomicUsize,
    /// Woken when the outbox or the reports may have run empty.
    settled: Notify,
    /// Held by a round of fleet-rate reports: rounds go one at a time, so that their answers
    /// (whether this instance is an outlier, say) apply in the order the database gave them.
    rate_rounds: tokio::sync::Mutex<()>,
}

impl Unanswered {
    /// Counts a report until the returned guard is dropped (answered, failed, or its task
    /// dropped unrun).
    pub(crate) fn started(self: &Arc<Self>) -> ReportInFlight {
        self.reports.fetch_add(1, Ordering::AcqRel);
        ReportInFlight(self.clone())
    }

    /// Waits for the previous round of fleet-rate reports to be answered; the next may start
    /// while the returned guard is held.
    pub(crate) async fn rate_round(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.rate_rounds.lock().await
    }

    /// Reports in flight.
    pub(crate) fn reports(&self) -> usize {
        // Acquire: pairs with the decrement of a finished report.
        self.reports.load(Ordering::Acquire)
    }

    /// Wakes the waiters of [`settled`](Self::settled): something may have run empty.
    pub(crate) fn wake(&self) {
        self.settled.notify_waiters();
    }

    /// Waits for the next [`wake`](Self::wake) (register it before looking at the counts).
    pub(crate) fn settled(&self) -> tokio::sync::futures::Notified<'_> {
        self.settled.notified()
    }
}

/// A report on its way to the database; see [`Unanswered::started`].
#[derive(Debug)]
pub(crate) struct ReportInFlight(Arc<Unanswered>);

impl Drop for ReportInFlight {
    fn drop(&mut self) {
        // AcqRel: `flush` reads the count after registering for the wake-up sent here.
        if self.0.reports.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.wake();
        }
    }
}
