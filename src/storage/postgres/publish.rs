//! Publishing this instance's own transitions: trips and manual overrides wait in an outbox and
//! go to the database in batches, one statement and one commit per batch.
//!
//! PostgreSQL serializes the commits of transactions that NOTIFY, so throughput is bounded by
//! commits, not by work. A lone transition is still sent at once (a batch of one); while a batch
//! is in flight, the next transitions gather behind it and share the next commit. Keys are sorted
//! so that instances batching the same keys lock rows in the same order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cell::KeyCell;
use crate::State;

use super::Shared;

/// The largest batch sent in one statement.
const MAX_BATCH: usize = 512;

/// A manual override waiting to be sent.
pub(crate) struct Force {
    pub(crate) cell: Arc<KeyCell>,
    pub(crate) to: State,
    pub(crate) cooldown: Duration,
    /// The cell's `local_decisions` count when the override was made.
    pub(crate) seq: u64,
}

/// One thing to send. Trips and overrides share one queue, so that a key's trip decided after
/// an override reaches the database after it.
pub(crate) enum Job {
    Trip(Arc<KeyCell>),
    Force(Force),
}

/// One queue of pending sends and whether a task is draining it.
struct Lane<T> {
    queue: Mutex<Vec<T>>,
    /// True while a flush task owns the lane; at most one per lane, so batches keep their order.
    draining: AtomicBool,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Lane {
            queue: Mutex::new(Vec::new()),
            draining: AtomicBool::new(false),
        }
    }
}

impl<T> Lane<T> {
    /// Queues `item`; true when the caller must start a flush task.
    fn push(&self, item: T) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(item);
        !self.draining.swap(true, Ordering::AcqRel)
    }

    /// The next batch, or `None` when the lane is empty and released.
    fn next_batch(&self) -> Option<Vec<T>> {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = q.len().min(MAX_BATCH);
                q.drain(..n).collect::<Vec<T>>()
            };
            if !batch.is_empty() {
                return Some(batch);
            }
            self.draining.store(false, Ordering::Release);
            // Something queued between the drain and the release found the lane draining and
            // started no task: take the lane back, unless its own task already did.
            let empty = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            if empty || self.draining.swap(true, Ordering::AcqRel) {
                return None;
            }
        }
    }
}

/// The outbox of one instance.
#[derive(Default)]
pub(crate) struct Outbox {
    jobs: Lane<Job>,
}

impl Shared {
    /// Sends `cell`'s pending trip (see `pending_trips`) with the next batch.
    pub(crate) fn queue_trip(self: &Arc<Self>, cell: Arc<KeyCell>) {
        self.queue(Job::Trip(cell));
    }

    /// Sends a manual override with the next batch.
    pub(crate) fn queue_force(self: &Arc<Self>, force: Force) {
        self.queue(Job::Force(force));
    }

    fn queue(self: &Arc<Self>, job: Job) {
        if self.outbox.jobs.push(job) {
            self.runtime.spawn(self.clone().flush());
        }
    }

    /// Drains the outbox: each batch is split into runs of trips and runs of overrides, sent in
    /// the order they were queued, one statement per run.
    async fn flush(self: Arc<Self>) {
        while let Some(batch) = self.outbox.jobs.next_batch() {
            let mut trips = Vec::new();
            let mut forces = Vec::new();
            for job in batch {
                match job {
                    Job::Trip(cell) => {
                        if !forces.is_empty() {
                            self.send_forces(std::mem::take(&mut forces)).await;
                        }
                        trips.push(cell);
                    }
                    Job::Force(force) => {
                        if !trips.is_empty() {
                            self.send_trips(std::mem::take(&mut trips)).await;
                        }
                        forces.push(force);
                    }
                }
            }
            if !trips.is_empty() {
                self.send_trips(trips).await;
            }
            if !forces.is_empty() {
                self.send_forces(forces).await;
            }
        }
    }

    async fn send_trips(&self, mut cells: Vec<Arc<KeyCell>>) {
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        cells.dedup_by(|a, b| a.key == b.key);
        let now = self.clock.now_nanos();
        let (mut keys, mut cooldowns, mut failures, mut logs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut by_key = HashMap::with_capacity(cells.len());
        for cell in cells {
            // Settled meanwhile (the table moved on, an override, or the cooldown ended).
            let Some(deadline) = self.pending_trips.get(&cell.key).map(|d| *d) else {
                continue;
            };
            let remaining = deadline.saturating_sub(now);
            if remaining == 0 {
                self.pending_trips.remove(&cell.key);
                continue;
            }
            let log = cell.execution_log();
            keys.push(cell.key.to_string());
            cooldowns.push(
                i64::try_from(remaining / 1_000_000)
                    .unwrap_or(i64::MAX)
                    .max(1),
            );
            failures.push(i32::try_from(log.iter().filter(|s| !**s).count()).unwrap_or(i32::MAX));
            logs.push(serde_json::Value::from(log));
            by_key.insert(cell.key.clone(), cell);
        }
        if keys.is_empty() {
            return;
        }
        let r = self
            .call_many(
                "publishing trips",
                "SELECT * FROM public.rc_trip_many($1, $2, $3, $4, $5)",
                &[&self.opts.namespace, &keys, &cooldowns, &failures, &logs],
            )
            .await;
        match r {
            Ok(rows) => {
                for row in &rows {
                    let Some(cell) = row.try_get::<_, &str>(0).ok().and_then(|k| by_key.get(k))
                    else {
                        continue;
                    };
                    self.pending_trips.remove(&cell.key);
                    self.apply_columns(cell, row, 1, false);
                }
            }
            Err(e) => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "could not publish a trip; it stays local and is published when the database is back");
            }
        }
    }

    async fn send_forces(&self, mut forces: Vec<Force>) {
        // The last override of a key wins; sorting keeps the lock order of `send_trips`.
        forces.reverse();
        forces.sort_by(|a, b| a.cell.key.cmp(&b.cell.key));
        forces.dedup_by(|a, b| a.cell.key == b.cell.key);
        let keys: Vec<String> = forces.iter().map(|f| f.cell.key.to_string()).collect();
        let states: Vec<&str> = forces.iter().map(|f| f.to.as_str()).collect();
        let cooldowns: Vec<i64> = forces
            .iter()
            .map(|f| i64::try_from(f.cooldown.as_millis()).unwrap_or(i64::MAX))
            .collect();
        let r = self
            .call_many(
                "forcing states",
                "SELECT * FROM public.rc_force_many($1, $2, $3, $4)",
                &[&self.opts.namespace, &keys, &states, &cooldowns],
            )
            .await;
        match r {
            Ok(rows) => {
                let by_key: HashMap<&str, &Force> =
                    forces.iter().map(|f| (&*f.cell.key, f)).collect();
                for row in &rows {
                    let Some(f) = row.try_get::<_, &str>(0).ok().and_then(|k| by_key.get(k)) else {
                        continue;
                    };
                    if f.cell.local_decisions.load(Ordering::Acquire) == f.seq {
                        // The override's own answer is the truth for this key from now on.
                        self.apply_columns(&f.cell, row, 1, true);
                    } else if let Ok(version) = row.try_get::<_, i64>(2) {
                        // This instance decided again since (a trip, queued behind): keep that
                        // decision, but know the override's version so its NOTIFY is not news.
                        f.cell.raise_version(version);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "could not publish a manual override");
            }
        }
        // Answered or failed: changes from elsewhere may apply again.
        for f in &forces {
            f.cell.force_settled();
        }
    }
}
