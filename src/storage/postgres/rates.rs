//! Fleet failure rates ([`TripPolicy::FleetRate`](crate::TripPolicy)): the calls and failures
//! this instance's breakers recorded while their windows held failures, reported to the database
//! at most once per `fleet_rate_interval`, all keys in one statement (`rc_report_rates`, in
//! `sql/objects/rc_report_rates.sql`), which adds up the reports of the period and opens a key when the
//! fleet's rate reaches its limit.
//!
//! A cell counts and queues itself when an outcome lands in a window that holds failures (or
//! just lost its last one); a window without failures is on the one-load fast path and never
//! gets here, so a healthy fleet sends no statement at all. Each report carries the counts since
//! the previous one. Nothing is retried: a failed report's calls are lost to the fleet's sum
//! (they would be stale by the next interval), and the next outcome queues the key again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use super::precedence::Source;
use super::{statements, Instance, ReportInFlight, Shared};
use crate::cell::KeyCell;
use crate::State;

/// The windows waiting for the next report.
#[derive(Default)]
pub(crate) struct RateQueue {
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    cells: Vec<Arc<KeyCell>>,
    /// Counts the queued reports for `Storage::flush` until they are answered.
    in_flight: Option<ReportInFlight>,
    /// A task is sending, or waiting for the interval to pass; at most one.
    running: bool,
    /// When the last report went out: the next waits for the interval.
    last_sent: Option<tokio::time::Instant>,
}

impl RateQueue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Only pushes and takes run under this lock.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Instance {
    /// Queues `cell`'s window for the next report (its `rate_queued` flag is already set).
    pub(crate) fn report_rate(&self, cell: &Arc<KeyCell>) {
        let shared = &self.shared;
        let mut p = shared.rates.lock();
        p.cells.push(cell.clone());
        if p.in_flight.is_none() {
            p.in_flight = Some(shared.report_started());
        }
        if !p.running {
            p.running = true;
            shared.spawn(Shared::send_rates(Running {
                shared: shared.clone(),
                armed: true,
            }));
        }
    }
}

/// Clears the queue's `running` flag if the task is dropped (unrun or mid-send, because the
/// runtime shut down), so a later report starts a new one. A task that ends normally clears it
/// itself, under the lock under which it found the queue empty.
struct Running {
    shared: Arc<Shared>,
    armed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.armed {
            self.shared.rates.lock().running = false;
        }
    }
}

impl Shared {
    /// Sends the queued windows, one statement per interval, until the queue stays empty.
    async fn send_rates(mut running: Running) {
        let this = running.shared.clone();
        loop {
            let next = this
                .rates
                .lock()
                .last_sent
                .map(|t| t + this.opts.fleet_rate_interval);
            if let Some(at) = next {
                tokio::time::sleep_until(at).await; // the interval itself: time, not an event
            }
            let (cells, in_flight) = {
                let mut p = this.rates.lock();
                if p.cells.is_empty() {
                    // Under the lock a new report checks `running` under: it starts a task.
                    p.running = false;
                    running.armed = false;
                    return;
                }
                p.last_sent = Some(tokio::time::Instant::now());
                (std::mem::take(&mut p.cells), p.in_flight.take())
            };
            this.send_rate_batch(cells).await;
            drop(in_flight);
        }
    }

    async fn send_rate_batch(&self, mut cells: Vec<Arc<KeyCell>>) {
        // Sorted, so that two instances lock the same keys in the same order.
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        cells.dedup_by(|a, b| a.key == b.key);
        let mut keys = Vec::with_capacity(cells.len());
        let (mut failures, mut calls) = (Vec::new(), Vec::new());
        let (mut nums, mut dens, mut mins) = (Vec::new(), Vec::new(), Vec::new());
        let (mut periods, mut cooldowns) = (Vec::new(), Vec::new());
        let mut by_key = std::collections::HashMap::with_capacity(cells.len());
        for cell in cells {
            // Release: an outcome counted after this sees the flag clear and queues again; its
            // count goes into the next report.
            cell.rate_queued.store(false, Ordering::Release);
            let policy = cell.policy();
            let Some((limit, min_calls, period)) = policy.trip.fleet_rate() else {
                continue;
            };
            let (f, n) = cell.take_rate_counts();
            if cell.state() != State::Closed || n == 0 {
                continue; // open or probing (the round decides now), or nothing new
            }
            keys.push(cell.key.to_string());
            failures.push(i32::try_from(f).unwrap_or(i32::MAX));
            calls.push(i32::try_from(n).unwrap_or(i32::MAX));
            nums.push(i32::try_from(limit.numerator()).unwrap_or(i32::MAX));
            dens.push(i32::try_from(limit.denominator()).unwrap_or(i32::MAX));
            mins.push(i32::try_from(min_calls).unwrap_or(i32::MAX));
            periods.push(statements::millis(period));
            cooldowns.push(statements::millis(policy.cooldown));
            by_key.insert(cell.key.clone(), cell);
        }
        if keys.is_empty() {
            return;
        }
        let during = "reporting failure rates";
        let rows = match self
            .call_many(
                during,
                statements::REPORT_RATES,
                &[
                    &self.opts.namespace,
                    &self.name,
                    &keys,
                    &failures,
                    &calls,
                    &nums,
                    &dens,
                    &mins,
                    &periods,
                    &cooldowns,
                ],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "could not report failure rates; the next outcome reports them again");
                return;
            }
        };
        for row in &rows {
            match statements::decode_batch(row, during) {
                Ok((key, Ok(state))) => {
                    if let Some(cell) = by_key.get(key.as_str()) {
                        // An OPEN row is the fleet's rate reaching the limit: newer than what
                        // the cell holds, so it applies like any notification.
                        self.apply(cell, state.remote(&cell.key), Source::Answer, None);
                    }
                }
                Ok((key, Err(e))) => {
                    tracing::warn!(key = %key, error = %e, "the database refused a failure rate report");
                }
                Err(e) => tracing::warn!(error = %e, "unreadable answer to a failure rate report"),
            }
        }
    }
}
