//! Quorum votes ([`TripPolicy::Quorum`](crate::TripPolicy)): an instance whose own window tripped
//! stops its own calls for the cooldown and sends its vote; the database counts the live votes of
//! distinct instances and opens the key on the quorum's last one (`rc_vote`, in
//! `sql/objects/rc_vote.sql`).
//!
//! A vote is sent once, not queued in the outbox and retried like a trip: it is a judgement of
//! this moment, and replayed after an outage it would count a failure long past. An instance that
//! cannot reach the database keeps its own calls stopped for the cooldown all the same, and sends
//! nothing while it knows the database is away; a vote that meets an outage unnoticed waits at
//! most the statement timeout.

use std::sync::Arc;
use std::time::Duration;

use super::{statements, Instance};
use crate::cell::KeyCell;
use crate::fleet::precedence::{Call, PendingTrip};
use crate::TripPolicy;

impl Instance {
    /// Casts this instance's vote for `cell`, whose window just tripped and which holds itself
    /// open against the table's older rows (`held`): asks the database to count the vote, on the
    /// hold's basis, for the quorum of the breaker's policy.
    pub(crate) fn cast_vote(&self, cell: &Arc<KeyCell>, held: PendingTrip) {
        let TripPolicy::Quorum {
            instances: quorum,
            within,
        } = cell.policy().trip
        else {
            return; // the live configuration changed the policy since: not a vote any more
        };
        let shared = self.shared.clone();
        // As for a trip: the basis the database checks the vote against. The cooldown the
        // quorum's last vote rests is what the hold has left.
        let basis = held.basis;
        let cooldown = Duration::from_nanos(held.deadline.saturating_sub(shared.clock.now_nanos()));
        if shared.is_degraded() {
            // Not sent at all: the connection attempts of a call would wait for the database to
            // come back and count this failure then, long past its moment.
            tracing::debug!(key = %cell.key, "database unreachable: this instance's vote stops only its own calls");
            return;
        }
        let (failures, calls) = cell.tripped_counts();
        let cell = cell.clone();
        // Counted until answered, so that `Storage::flush` waits for the vote.
        let in_flight = shared.report_started();
        self.shared.spawn(async move {
            let _in_flight = in_flight;
            let quorum = i32::try_from(quorum).unwrap_or(i32::MAX);
            let failures = i32::try_from(failures).unwrap_or(i32::MAX);
            let calls = i32::try_from(calls).unwrap_or(i32::MAX);
            let within_ms = statements::millis(within);
            let cooldown_ms = statements::millis(cooldown);
            let answer = shared
                .call_many(
                    "casting a vote",
                    statements::VOTE,
                    &[
                        &shared.opts.namespace,
                        &&*cell.key,
                        &shared.name,
                        &failures,
                        &calls,
                        &quorum,
                        &within_ms,
                        &cooldown_ms,
                        &basis,
                    ],
                )
                .await
                .and_then(|rows| match rows.first() {
                    Some(row) => statements::decode_vote(row),
                    None => Err(crate::StorageError::Unexpected {
                        during: "casting a vote",
                        what: "rc_vote returned no row".into(),
                    }),
                });
            match answer {
                Ok((row, votes)) => {
                    tracing::debug!(key = %cell.key, votes, quorum, state = %row.state, "vote cast");
                    // Judged like any answer: the CLOSED row of a vote short of the quorum is
                    // older than the vote's basis and leaves the hold alone; the OPEN row of the
                    // quorum's last vote is newer and brings the database's cooldown.
                    shared.answered(&cell, Call::Other, &row);
                }
                Err(e) => {
                    tracing::warn!(key = %cell.key, error = %e, "could not cast a quorum vote; this instance still stops its own calls for the cooldown");
                }
            }
        });
    }
}
