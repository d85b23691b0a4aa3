//! The outbox: this instance's trips and manual overrides on their way to the database, sent in
//! batches, one statement and one commit per batch, and retried until the database answers.
//!
//! PostgreSQL serializes the commits of transactions that NOTIFY, so throughput is bounded by
//! commits, not by work. A lone transition is still sent at once (a batch of one); while a batch
//! is in flight, the next transitions gather behind it and share the next commit.
//!
//! The outbox holds at most one entry per key: the key's latest override, and whether a trip
//! was decided after it. So it is bounded by the number of keys however fast a key trips (a zero
//! cooldown during an outage), and a key's trip decided after an override still reaches the
//! database after it. Keys are sorted in each statement so that instances batching the same keys
//! lock rows in the same order. A batch that fails is retried with capped backoff (and at once
//! when the listener reconnects); a key the database refuses is dropped with a warning and never
//! sinks the other keys of its batch.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::backoff::Backoff;
use super::statements::{self, RowState};
use super::Shared;
use crate::cell::KeyCell;
use crate::error::StorageError;
use crate::fleet::precedence::Call;
use crate::State;

/// The largest batch sent in one statement.
const MAX_BATCH: usize = 512;
/// Longest pause between tries of a failed batch (see `backoff.rs`).
const RETRY_CAP: Duration = Duration::from_secs(5);

pub(crate) use crate::fleet::Done;

/// A manual override waiting to be sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Force {
    pub(crate) to: State,
    pub(crate) cooldown: Duration,
    /// The cell's `local_decisions` count when the override was made.
    pub(crate) seq: u64,
}

/// What one key has to send.
struct Entry {
    cell: Arc<KeyCell>,
    force: Option<Force>,
    /// Callers waiting to hear that the override (or a later one of the key) was accepted.
    done: Vec<Done>,
    /// A trip decided after `force` (its data is the cell's pending trip).
    trip: bool,
}

#[derive(Default)]
struct Queue {
    /// Keys in the order their entries were made.
    order: VecDeque<Arc<str>>,
    entries: HashMap<Arc<str>, Entry>,
    /// Keys of the batch being sent (a key may also have a newer entry waiting meanwhile).
    in_flight: Vec<Arc<str>>,
}

/// The outbox of one instance.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    /// True while a flush task owns the outbox; at most one, so batches keep their order.
    draining: AtomicBool,
    /// Cuts a retry pause short (the listener reconnected).
    kick: Notify,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing but pushes and pops run under this lock.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys with an entry waiting or being sent (each an override, a trip, or both): a key
    /// being sent that already has a newer entry waiting counts once.
    pub(crate) fn len(&self) -> usize {
        let q = self.lock();
        let sending_only = q
            .in_flight
            .iter()
            .filter(|k| !q.entries.contains_key(*k))
            .count();
        q.entries.len() + sending_only
    }

    /// The batch being sent is answered: its keys are no longer in flight.
    fn sent(&self) {
        self.lock().in_flight.clear();
    }

    /// Retry now rather than at the end of the current pause.
    pub(crate) fn kick(&self) {
        self.kick.notify_one();
    }

    /// Queues `cell`'s pending trip.
    pub(crate) fn trip(&self, shared: &Arc<Shared>, cell: Arc<KeyCell>) {
        {
            let mut q = self.lock();
            let key = cell.key.clone();
            match q.entries.get_mut(&key) {
                Some(e) => e.trip = true,
                None => {
                    q.order.push_back(key.clone());
                    q.entries.insert(
                        key,
                        Entry {
                            cell,
                            force: None,
                            done: Vec::new(),
                            trip: true,
                        },
                    );
                }
            }
        }
        self.start(shared);
    }

    /// Queues an override; it replaces an earlier override and trip of the key still waiting
    /// (a later decision), whose waiters then hear about this one.
    pub(crate) fn force(
        &self,
        shared: &Arc<Shared>,
        cell: Arc<KeyCell>,
        force: Force,
        done: Option<Done>,
    ) {
        {
            let mut q = self.lock();
            let key = cell.key.clone();
            match q.entries.get_mut(&key) {
                Some(e) => {
                    if e.force.is_some() {
                        // The replaced override will never be answered.
                        let _ = e.cell.override_abandoned();
                    }
                    e.force = Some(force);
                    e.trip = false;
                    e.done.extend(done);
                }
                None => {
                    q.order.push_back(key.clone());
                    q.entries.insert(
                        key,
                        Entry {
                            cell,
                            force: Some(force),
                            done: done.into_iter().collect(),
                            trip: false,
                        },
                    );
                }
            }
        }
        self.start(shared);
    }

    /// Starts a flush task unless one is running.
    fn start(&self, shared: &Arc<Shared>) {
        shared.pending_changed();
        // AcqRel: exactly one caller wins the outbox and starts a task.
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let guard = Draining {
            shared: shared.clone(),
            armed: true,
        };
        shared.spawn(Shared::flush(guard));
    }

    /// The next batch, oldest keys first; `None` when the outbox is empty.
    fn next_batch(&self) -> Option<Vec<Entry>> {
        let mut q = self.lock();
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some(key) = q.order.pop_front() else {
                break;
            };
            if let Some(e) = q.entries.remove(&key) {
                batch.push(e);
            }
        }
        // Under the queue's lock, so `len` never sees an entry in neither place.
        q.in_flight = batch.iter().map(|e| e.cell.key.clone()).collect();
        (!batch.is_empty()).then_some(batch)
    }

    /// Puts entries that could not be sent back in front, unless the key got a newer entry
    /// meanwhile (which then wins: an override replaces, a trip merges).
    fn requeue(&self, entries: Vec<Entry>) {
        let mut q = self.lock();
        q.in_flight.clear();
        for mut e in entries.into_iter().rev() {
            let key = e.cell.key.clone();
            match q.entries.remove(&key) {
                Some(newer) => {
                    if newer.force.is_some() {
                        if e.force.is_some() {
                            let _ = e.cell.override_abandoned();
                        }
                        let mut newer = newer;
                        newer.done.append(&mut e.done);
                        q.entries.insert(key, newer);
                    } else {
                        e.trip |= newer.trip;
                        q.entries.insert(key, e);
                    }
                }
                None => {
                    q.order.push_front(key.clone());
                    q.entries.insert(key, e);
                }
            }
        }
    }
}

/// Releases the outbox when the flush task ends, however it ends (finished, or dropped unrun
/// because the runtime shut down), so a later transition starts a new one.
struct Draining {
    shared: Arc<Shared>,
    /// False once the flag was released by hand (it may belong to another task by then).
    armed: bool,
}

impl Drop for Draining {
    fn drop(&mut self) {
        if self.armed {
            // A batch dropped mid-send (the task was dropped) is gone: stop counting it.
            self.shared.outbox.sent();
            self.shared.outbox.draining.store(false, Ordering::Release);
        }
    }
}

impl Shared {
    /// Drains the outbox: each batch sends its overrides, then its trips (a key's trip was
    /// decided after its override), one statement each.
    async fn flush(mut guard: Draining) {
        let this = guard.shared.clone();
        let mut backoff = Backoff::new(RETRY_CAP);
        loop {
            let Some(batch) = this.outbox.next_batch() else {
                // Release, then look again: something queued between the last look and the
                // release found the outbox draining and started no task.
                guard.armed = false;
                this.outbox.draining.store(false, Ordering::Release);
                if this.outbox.lock().entries.is_empty()
                    || this.outbox.draining.swap(true, Ordering::AcqRel)
                {
                    return; // empty, or another task owns it now
                }
                guard.armed = true;
                continue;
            };
            let failed = this.send(batch).await;
            if failed.is_empty() {
                this.outbox.sent();
                this.pending_changed();
                backoff.reset();
                continue;
            }
            this.outbox.requeue(failed);
            this.pending_changed();
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = this.outbox.kick.notified() => {}
            }
        }
    }

    /// Sends one batch; returns the entries to try again.
    async fn send(&self, batch: Vec<Entry>) -> Vec<Entry> {
        let mut forces: Vec<Entry> = Vec::new();
        let mut trips_only: Vec<Entry> = Vec::new();
        for e in batch {
            if e.force.is_some() {
                forces.push(e);
            } else {
                trips_only.push(e);
            }
        }
        let mut retry = Vec::new();
        let mut trips: Vec<Arc<KeyCell>> = Vec::new();
        if !forces.is_empty() {
            let (sent, failed) = self.send_forces(forces).await;
            for e in sent {
                if e.trip {
                    trips.push(e.cell);
                }
            }
            retry.extend(failed);
        }
        trips.extend(trips_only.into_iter().map(|e| e.cell));
        if !trips.is_empty() {
            for cell in self.send_trips(trips).await {
                retry.push(Entry {
                    cell,
                    force: None,
                    done: Vec::new(),
                    trip: true,
                });
            }
        }
        retry
    }

    /// Sends pending trips; returns the cells to try again.
    async fn send_trips(&self, mut cells: Vec<Arc<KeyCell>>) -> Vec<Arc<KeyCell>> {
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        cells.dedup_by(|a, b| a.key == b.key);
        let now = self.clock.now_nanos();
        let (mut keys, mut cooldowns, mut failures, mut logs, mut bases) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut by_key = HashMap::with_capacity(cells.len());
        for cell in cells {
            // Settled meanwhile (the table moved on, an override) or not worth sending.
            let Some(pending) = cell.pending_trip() else {
                continue;
            };
            if !pending.hold.is_published() {
                continue; // held here only: a quorum vote (`votes.rs` sent it) or a fleet rate
            }
            let remaining = pending.deadline.saturating_sub(now);
            if remaining < 1_000_000 {
                cell.drop_pending_trip(pending.seq); // its cooldown is over
                continue;
            }
            let log = cell.execution_log();
            keys.push(cell.key.to_string());
            cooldowns.push(i64::try_from(remaining / 1_000_000).unwrap_or(i64::MAX));
            failures.push(i32::try_from(log.iter().filter(|s| !**s).count()).unwrap_or(i32::MAX));
            logs.push(serde_json::Value::from(log));
            bases.push(pending.basis);
            by_key.insert(cell.key.clone(), (cell, pending.seq));
        }
        if keys.is_empty() {
            return Vec::new();
        }
        let during = "publishing trips";
        let r = self
            .call_many(
                during,
                statements::TRIP_MANY,
                &[
                    &self.opts.namespace,
                    &keys,
                    &cooldowns,
                    &failures,
                    &logs,
                    &bases,
                ],
            )
            .await;
        let rows = match r {
            Ok(rows) => rows,
            Err(e) if e.is_permanent() => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "the database refused to publish trips; they stay local");
                for (cell, seq) in by_key.into_values() {
                    cell.drop_pending_trip(seq);
                }
                return Vec::new();
            }
            Err(e) => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "could not publish a trip; it stays local and is sent again");
                return by_key.into_values().map(|(c, _)| c).collect();
            }
        };
        for row in &rows {
            match statements::decode_batch(row, during) {
                Ok((key, answer)) => {
                    let Some((cell, seq)) = by_key.remove(key.as_str()) else {
                        continue;
                    };
                    match answer {
                        Ok(state) => self.answered(&cell, Call::Trip { seq }, &state),
                        Err(e) => {
                            tracing::warn!(key = %cell.key, error = %e, "the database refused a trip; it stays local");
                            cell.drop_pending_trip(seq);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable answer to a trip"),
            }
        }
        // Keys the answer did not mention: try again.
        by_key.into_values().map(|(c, _)| c).collect()
    }

    /// Sends overrides; returns (entries sent, entries to try again).
    async fn send_forces(&self, mut entries: Vec<Entry>) -> (Vec<Entry>, Vec<Entry>) {
        entries.sort_by(|a, b| a.cell.key.cmp(&b.cell.key));
        let mut keys = Vec::with_capacity(entries.len());
        let mut states = Vec::with_capacity(entries.len());
        let mut cooldowns = Vec::with_capacity(entries.len());
        for e in &entries {
            let Some(f) = e.force else { continue };
            keys.push(e.cell.key.to_string());
            states.push(f.to.as_str());
            cooldowns.push(statements::millis(f.cooldown));
        }
        let during = "forcing states";
        let r = self
            .call_many(
                during,
                statements::FORCE_MANY,
                &[&self.opts.namespace, &keys, &states, &cooldowns],
            )
            .await;
        let rows = match r {
            Ok(rows) => rows,
            Err(e) if e.is_permanent() => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "the database refused manual overrides");
                let (cause, source) = match e {
                    StorageError::Database { cause, source, .. } => (cause, source),
                    other => (other.to_string(), None),
                };
                for e in &mut entries {
                    if let Some(t) = e.cell.override_abandoned() {
                        self.transitioned(&e.cell, t, None, None);
                    }
                    for d in e.done.drain(..) {
                        let _ = d.send(Err(StorageError::Database {
                            during: "forcing a state",
                            cause: cause.clone(),
                            source: source.clone(),
                        }));
                    }
                }
                return (entries, Vec::new());
            }
            Err(e) => {
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "could not publish a manual override; it is sent again");
                return (Vec::new(), entries);
            }
        };
        let mut answers: HashMap<String, Result<RowState, String>> = HashMap::new();
        for row in &rows {
            match statements::decode_batch(row, during) {
                Ok((key, answer)) => {
                    answers.insert(key, answer);
                }
                Err(e) => tracing::warn!(error = %e, "unreadable answer to an override"),
            }
        }
        let (mut sent, mut retry) = (Vec::new(), Vec::new());
        for mut e in entries {
            let Some(f) = e.force else { continue };
            match answers.remove(&*e.cell.key) {
                Some(Ok(row)) => {
                    self.answered(&e.cell, Call::Override { seq: f.seq }, &row);
                    for d in e.done.drain(..) {
                        let _ = d.send(Ok(()));
                    }
                    sent.push(e);
                }
                Some(Err(cause)) => {
                    // Refused for good (bad input, no privilege): say so, and stop holding
                    // the key against the fleet.
                    tracing::warn!(key = %e.cell.key, error = %cause, "the database refused a manual override");
                    if let Some(t) = e.cell.override_abandoned() {
                        self.transitioned(&e.cell, t, None, None);
                    }
                    for d in e.done.drain(..) {
                        let _ = d.send(Err(StorageError::Database {
                            during: "forcing a state",
                            cause: cause.clone(),
                            source: None,
                        }));
                    }
                    sent.push(e);
                }
                None => retry.push(e),
            }
        }
        (sent, retry)
    }
}
