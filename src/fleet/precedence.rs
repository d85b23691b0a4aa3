//! Who wins: the rules that decide between what this instance decided on its own (trips,
//! manual overrides) and what arrives from the table (notifications, reloads, the answers of the
//! transition functions). Every such decision in the crate is made by [`FleetView::judge`], under
//! the key's private lock; nothing else compares versions.
//!
//! Versions come from one database sequence and, for one key, follow commit order (migration
//! `0006`), so a higher version is a later decision.
//!
//! | case | rule | test |
//! |---|---|---|
//! | notification not newer than the version held | ignored: a repeat, or covered by a reload or an answer | `postgres::stale_notifications_are_ignored` |
//! | notification newer | applied, except over a local trip not yet accepted that was decided after it (its version is at most the trip's basis); a trip decided before it is dropped, as the database refuses it too | `postgres::trip_on_a_is_seen_on_b` |
//! | notification while an override of ours is in flight | the newest is kept and applied after the override's answer, if newer than it | `convergence::notification_during_override_is_not_lost` |
//! | answer to our own override | applied unless older than the version held; a later local decision (a trip queued behind) keeps the state, the version is raised | `faults::force_closed_is_not_undone_by_a_late_trip`, `postgres::trip_after_force_closed_wins` |
//! | any other answer (our trip, a probe lease or report) | applied unless older than the version held: an answer never lowers a newer version | `precedence::tests::answers_never_lower_a_newer_version` |
//! | reload row (or no row: CLOSED at version 0) | authoritative, even if older (it is the table now), except over a local trip not yet accepted and not older than the row, an override in flight, or a newer version this cell applied after the reload's query was sent (the snapshot predates it) | `faults::restart_under_traffic_converges`, `convergence::stale_trip_is_not_replayed_over_a_later_close`, `precedence::tests::a_reload_read_before_an_answer_does_not_undo_it` |
//! | a trip, vote or judgement made alone, from the moment it opens the cell | held in the same step, under the key's lock, with the basis read there (`KeyCell::open_on_own_judgement`): no row applied before the store takes it up undoes it; one newer than the basis that ends it first leaves nothing to send | `cell::fleet::tests::a_decision_is_held_from_the_step_that_opens_the_cell` |
//! | local trip published | carries the newest version this instance had seen when it decided (`basis`); the database refuses it over a row with a newer version | `convergence::stale_trip_is_not_replayed_over_a_later_close` |
//! | quorum vote cast, or a fleet-rate breaker's own trip (while the database was away) | held like a local trip not yet accepted (same rules, same basis) until its cooldown ends, so the table's CLOSED row does not reopen this instance's calls; a newer row (the quorum opened the key, an operator acted) wins. Never sent as a trip | `quorum::a_voter_stops_its_own_calls_until_its_cooldown_ends`, `quorum::an_operator_close_ends_a_vote_hold` |
//! | a hold (trip, vote, judgement made alone) reaching its deadline with nothing newer | dropped, and the row read again at once (`Instance::hold_trip`): no held state outlives its reason, nor waits for a call to end | `convergence::a_hold_ends_with_its_cooldown_without_waiting_for_a_call` |
//! | an operator's decree (`rc_force`) on a row already in that state | takes a new version all the same, so every instance hears it and ends what it held against the row | `convergence::an_operators_close_ends_a_vote_held_short_of_its_quorum` |
//! | a notification older than the last reload or the replay window, or closing an open cell | not judged here: the listener reads the row first and judges that as a reload (a key without a row is CLOSED at the newest version notified) | `security::a_replayed_open_after_a_delete_changes_nothing`, `security::a_forged_close_is_read_from_the_table` |
//! | any row that is not OPEN while the key's live mode is `ForcedOpen` | not carried out (`KeyCell::carry_out`): the database refuses every write that ends the hold, so such a row predates the mode; leaving the mode reads the row again | `security::forced_open_holds_against_every_writer` |

use std::time::Duration;

use crate::{State, TripPolicy};

/// A state of the shared row, as some source reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remote {
    pub(crate) state: State,
    pub(crate) version: i64,
    /// Cooldown left, by the database's clock, when the source read it.
    pub(crate) remaining: Duration,
}

impl Remote {
    /// A key without a row: CLOSED at version 0.
    pub(crate) const ABSENT: Remote = Remote {
        state: State::Closed,
        version: 0,
        remaining: Duration::ZERO,
    };
}

/// Where a [`Remote`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A NOTIFY from the trigger (authenticated), or a row confirmed after one.
    Notification,
    /// The full reload after a (re)connect or on the reconcile timer, or a row read to confirm a
    /// notification. `read_at`: clock nanoseconds when the query was sent.
    Reload { read_at: u64 },
    /// A transition function's answer to a call of ours that is not an override.
    Answer,
    /// The answer to our own manual override. `superseded`: this instance decided again for the
    /// key after making it (a trip queued behind it).
    OverrideAnswer { superseded: bool },
}

/// Which call of ours an answer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Our trip, made as local decision `seq`: no longer pending once answered.
    Trip { seq: u64 },
    /// Our manual override, made as local decision `seq` ([`Source::OverrideAnswer`]).
    Override { seq: u64 },
    /// Any other (a probe lease or report, a vote, a rate report): [`Source::Answer`].
    Other,
}

/// A local trip the database has not accepted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingTrip {
    /// Clock nanoseconds at which its cooldown ends; past it the trip is not worth publishing.
    pub(crate) deadline: u64,
    /// The newest version this instance had seen when it decided.
    pub(crate) basis: i64,
    /// Tells this trip from a later one of the same key.
    pub(crate) seq: u64,
    /// What the decision is for the fleet; every kind holds this instance's own state against
    /// older rows until its deadline.
    pub(crate) hold: Hold,
}

/// Why this instance holds its own OPEN against older rows: what its trip is for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// A trip on its way to the database, which opens the key for everyone (the outbox sends
    /// it).
    Trip,
    /// A quorum vote (`TripPolicy::Quorum`): sent as a vote, never as a trip; the quorum's
    /// last vote opens the key.
    Vote,
    /// A fleet-rate breaker's own judgement while the database was away
    /// (`TripPolicy::FleetRate`): never sent, since only the fleet's rate opens the key for all.
    Alone,
}

impl Hold {
    /// What a trip this instance decides on its own window is for the fleet under `trip`.
    pub(crate) fn of(trip: TripPolicy) -> Hold {
        match trip {
            TripPolicy::AnyInstance => Hold::Trip,
            TripPolicy::Quorum { .. } => Hold::Vote,
            TripPolicy::FleetRate { .. } => Hold::Alone,
        }
    }

    /// True when the outbox sends it to the database as a trip.
    pub(crate) fn is_published(self) -> bool {
        self == Hold::Trip
    }
}

/// What to do with a [`Remote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Make the cell's state this one.
    Apply(Remote),
    /// Nothing to change.
    Ignore,
}

/// What one key's cell knows of the shared row, beside its state word.
#[derive(Debug, Default)]
pub(crate) struct FleetView {
    /// Version of the row last applied (0: none).
    pub(crate) version: i64,
    /// Overrides of ours on their way to the database.
    pub(crate) overrides_in_flight: u32,
    /// The newest notification received while an override was in flight.
    pub(crate) deferred: Option<Remote>,
    /// Our trip not yet accepted by the database.
    pub(crate) pending_trip: Option<PendingTrip>,
    /// Clock nanoseconds when a notification or an answer last set `version`: a reload read
    /// before then may be older than what the cell holds.
    pub(crate) applied_at: u64,
}

impl FleetView {
    /// Judges `incoming` from `source` at clock time `now`, and updates the bookkeeping (version,
    /// pending trip, deferred notification) as if the verdict is carried out.
    pub(crate) fn judge(&mut self, incoming: Remote, source: Source, now: u64) -> Verdict {
        match source {
            Source::Notification | Source::Answer => {
                if self.overrides_in_flight > 0 {
                    let newest = self.deferred.map_or(self.version, |d| d.version);
                    if incoming.version > newest {
                        self.deferred = Some(incoming);
                    }
                    return Verdict::Ignore;
                }
                let newer = match source {
                    Source::Notification => incoming.version > self.version,
                    _ => incoming.version >= self.version,
                };
                if !newer {
                    return Verdict::Ignore;
                }
                self.accept(incoming, now)
            }
            Source::OverrideAnswer { superseded } => {
                self.overrides_in_flight = self.overrides_in_flight.saturating_sub(1);
                let mut best =
                    (incoming.version >= self.version && !superseded).then_some(incoming);
                if superseded {
                    self.version = self.version.max(incoming.version);
                    // The trip behind was decided after this override: it knows of it.
                    if let Some(p) = &mut self.pending_trip {
                        p.basis = p.basis.max(incoming.version);
                    }
                }
                if self.overrides_in_flight == 0 {
                    if let Some(d) = self.deferred.take() {
                        if d.version > best.map_or(self.version, |b| b.version) {
                            best = Some(d);
                        }
                    }
                }
                match best {
                    Some(r) => self.accept(r, now),
                    None => Verdict::Ignore,
                }
            }
            Source::Reload { read_at } => {
                if self.overrides_in_flight > 0 {
                    return Verdict::Ignore;
                }
                if incoming.version < self.version && self.applied_at >= read_at {
                    // Read before a change this cell applied since (an override's answer that
                    // arrived while the snapshot was on its way): the snapshot is the older.
                    return Verdict::Ignore;
                }
                if let Some(p) = self.pending_trip {
                    if p.deadline > now && incoming.version <= p.basis {
                        return Verdict::Ignore; // we are ahead of the table: published next
                    }
                    self.pending_trip = None;
                }
                self.version = incoming.version;
                Verdict::Apply(incoming)
            }
        }
    }

    /// `incoming` is newer than anything held: take it, unless our own trip not yet accepted
    /// was decided after it (the database will accept that trip over it).
    fn accept(&mut self, incoming: Remote, now: u64) -> Verdict {
        self.version = incoming.version;
        self.applied_at = now;
        if let Some(p) = self.pending_trip {
            if p.deadline > now && incoming.version <= p.basis {
                return Verdict::Ignore;
            }
            // The table moved on after our decision (the database refuses the trip), or the
            // trip's cooldown is over: follow the table.
            self.pending_trip = None;
        }
        Verdict::Apply(incoming)
    }

    /// The database answered our trip `seq` (accepted or refused): it is no longer pending.
    pub(crate) fn trip_answered(&mut self, seq: u64) {
        if self.pending_trip.is_some_and(|p| p.seq == seq) {
            self.pending_trip = None;
        }
    }

    /// An override of ours failed for good: stop waiting for its answer, and apply what arrived
    /// meanwhile.
    pub(crate) fn override_abandoned(&mut self, now: u64) -> Verdict {
        self.overrides_in_flight = self.overrides_in_flight.saturating_sub(1);
        if self.overrides_in_flight == 0 {
            if let Some(d) = self.deferred.take() {
                if d.version > self.version {
                    return self.accept(d, now);
                }
            }
        }
        Verdict::Ignore
    }
}

#[cfg(test)]
#[path = "precedence_tests.rs"]
mod tests;
