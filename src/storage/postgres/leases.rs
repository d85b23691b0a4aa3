//! Fleet-wide half-open probes: asking the database for a lease, and reporting a probe's result.
//! One request per key at a time; when every slot of the round is leased, the database says until
//! when, and nobody asks again before that or before the state changes.

use std::sync::Arc;
use std::time::Duration;

use super::{statements, Instance};
use crate::cell::{KeyCell, Lease};
use crate::clock::duration_nanos;
use crate::fleet::precedence::Call;

/// How long an instance waits before asking again for a probe lease after an error.
const LEASE_ERROR_PAUSE: Duration = Duration::from_millis(250);

impl Instance {
    /// Fleet mode: asks the database for a probe lease for `cell`, in the background. One
    /// request per key at a time; when every slot of the round is leased, the database says
    /// until when, and no one asks again before that (or before the state changes).
    pub(crate) fn request_lease(&self, cell: &Arc<KeyCell>) {
        if !cell.begin_lease_request() {
            return; // one request in flight per key is enough
        }
        // Clears the flag however the task ends: finished, failed, or dropped unrun because
        // the runtime that connected has shut down.
        let guard = LeaseRequest(cell.clone());
        let shared = self.shared.clone();
        self.shared.spawn(async move {
            let cell = &guard.0;
            let policy = cell.policy();
            let probes = i32::try_from(policy.probe_count()).unwrap_or(i32::MAX);
            let close_at = i32::try_from(policy.probe_close_threshold()).unwrap_or(i32::MAX);
            let lease_ms = statements::millis(shared.opts.lease_timeout);
            // The lease's life counts from the request: a slow answer must not make it look
            // younger than the database's.
            let asked_at = shared.clock.now_nanos();
            let r = shared
                .call_one(
                    "leasing a probe",
                    statements::ACQUIRE_PROBE,
                    &[
                        &shared.opts.namespace,
                        &&*cell.key,
                        &shared.holder,
                        &lease_ms,
                        &probes,
                        &close_at,
                    ],
                )
                .await;
            match r {
                Ok(row) => {
                    shared.answered(cell, Call::Other, &row);
                    match row.lease_id {
                        Some(id) => {
                            // Keep a margin so we never start a probe on a lease about to expire.
                            let life = duration_nanos(shared.opts.lease_timeout) / 10 * 9;
                            cell.add_leases([Lease {
                                id,
                                expires_at: asked_at.saturating_add(life),
                            }]);
                        }
                        None => {
                            // Every slot is leased (until the first lease expires), or the
                            // cooldown is not over by the database's clock.
                            let wait = row.retry_ms.unwrap_or(row.remaining_ms).max(1);
                            cell.lease_refused_for(statements::remaining(wait));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(key = %cell.key, error = %e, "could not lease a probe");
                    cell.lease_refused_for(LEASE_ERROR_PAUSE);
                }
            }
        });
    }

    pub(crate) fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool) {
        let shared = self.shared.clone();
        let cell = cell.clone();
        // Counted from now until answered, so that `Storage::flush` waits for it.
        let in_flight = shared.report_started();
        self.shared.spawn(async move {
            let _in_flight = in_flight;
            let policy = cell.policy();
            let probes = i32::try_from(policy.probe_count()).unwrap_or(i32::MAX);
            let close_at = i32::try_from(policy.probe_close_threshold()).unwrap_or(i32::MAX);
            let cooldown_ms = statements::millis(policy.cooldown);
            // The database grows the cooldown of a failed round up to this (None: fixed).
            let max_cooldown_ms = policy.max_cooldown.map(statements::millis);
            let r = shared
                .call_one(
                    "reporting a probe",
                    statements::REPORT_PROBE,
                    &[
                        &shared.opts.namespace,
                        &&*cell.key,
                        &lease.id,
                        &success,
                        &probes,
                        &close_at,
                        &cooldown_ms,
                        &max_cooldown_ms,
                    ],
                )
                .await;
            match r {
                Ok(row) => shared.answered(&cell, Call::Other, &row),
                Err(e) => tracing::warn!(key = %cell.key, error = %e, "could not report a probe result; its lease will expire"),
            }
        });
    }
}

/// Clears a cell's lease-request flag when dropped.
struct LeaseRequest(Arc<KeyCell>);

impl Drop for LeaseRequest {
    fn drop(&mut self) {
        self.0.end_lease_request();
    }
}
