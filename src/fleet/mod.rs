//! What a store shared by a fleet adds to the core, whatever its backend: who wins between this
//! instance's decisions and the shared row ([`precedence`]), what a trip this instance decided
//! becomes for the fleet under each trip policy ([`route`]), and the interface a shared backend
//! implements ([`SharedStore`]). The core (`cell/`, `storage/mod.rs`) knows these and nothing
//! of PostgreSQL; `storage::postgres` implements them.

pub(crate) mod precedence;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::cell::{KeyCell, Lease, Transition};
use crate::{State, StorageError, TripPolicy};

/// What a trip this instance decided on its own window is for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Open the key for everyone, for `cooldown` (`TripPolicy::AnyInstance`).
    Trip { cooldown: Duration },
    /// One vote towards a quorum of `quorum` instances within `within`; this instance's own
    /// calls stay stopped for `cooldown` (`TripPolicy::Quorum`).
    Vote {
        quorum: u32,
        within: Duration,
        cooldown: Duration,
    },
    /// This instance's calls only, for `cooldown`: a fleet-rate breaker judged its own window
    /// while the database was away, and only the fleet's rate opens the key for everyone
    /// (`TripPolicy::FleetRate`).
    Alone { cooldown: Duration },
}

/// What `t`, a transition this instance decided, is for the fleet under `trip`; `None` when it
/// is nothing to tell (only trips are). `cooldown` says what a trip rests, asked only for one.
pub(crate) fn route(
    trip: TripPolicy,
    t: Transition,
    cooldown: impl FnOnce() -> Duration,
) -> Option<Decision> {
    if t.to != State::Open {
        return None;
    }
    let cooldown = cooldown();
    Some(match trip {
        TripPolicy::Quorum { instances, within } => Decision::Vote {
            quorum: instances,
            within,
            cooldown,
        },
        TripPolicy::FleetRate { .. } => Decision::Alone { cooldown },
        TripPolicy::AnyInstance => Decision::Trip { cooldown },
    })
}

/// Told whether the database accepted an override, when the caller asked to hear it.
pub(crate) type Done = tokio::sync::oneshot::Sender<Result<(), StorageError>>;

/// A future a [`SharedStore`] returns (its methods are called through `dyn`).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend that shares breaker state with a fleet: the one way the core reaches it. Every
/// method returns at once (work is handed to the backend's own tasks) but `flush`.
pub(crate) trait SharedStore: Send + Sync {
    /// The backend's name, for [`Storage::backend_name`](crate::Storage::backend_name).
    fn name(&self) -> &'static str;
    /// The namespace of its keys, the `namespace` label of its metrics.
    fn namespace(&self) -> &str;
    /// True while it reaches the shared state; the cells read it when they decide whether to
    /// ask for a probe lease or judge alone.
    fn online(&self) -> Arc<AtomicBool>;
    /// How many keys have a decision of ours the shared state has not answered yet.
    fn pending(&self) -> usize;
    /// True while it has no working link to the shared state.
    fn is_degraded(&self) -> bool;
    /// Waits, at most `within`, until everything sent was answered; true when nothing is left.
    fn flush(&self, within: Duration) -> BoxFuture<'_, bool>;
    /// Asks for a half-open probe lease for `cell`.
    fn request_lease(&self, cell: &Arc<KeyCell>);
    /// Sends the result of a probe made under `lease`.
    fn report_probe(&self, cell: &Arc<KeyCell>, lease: Lease, success: bool);
    /// Carries out a trip this instance decided (see [`route`]).
    fn decided(&self, cell: &Arc<KeyCell>, decision: Decision);
    /// Publishes a manual override; `done` hears whether it was accepted.
    fn force(&self, cell: &Arc<KeyCell>, to: State, cooldown: Duration, done: Option<Done>);
    /// Makes `keys` members of `group`, whose cap on open members is `max_open` and whose
    /// threshold is `open_at` ([`Group`](crate::Group)); answers the group's state.
    fn join_group<'a>(
        &'a self,
        group: &'a str,
        keys: &'a [String],
        max_open: crate::Ratio,
        open_at: Option<crate::Ratio>,
    ) -> BoxFuture<'a, Result<crate::GroupState, StorageError>>;
    /// The state of group `group` as the shared state holds it (`None`: no such group).
    fn group_state<'a>(
        &'a self,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::GroupState>, StorageError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Ratio;

    const TRIP: Transition = Transition {
        from: State::Closed,
        to: State::Open,
    };

    #[test]
    fn each_trip_policy_routes_a_trip_its_own_way() {
        let rests = || Duration::from_secs(7);
        let cooldown = Duration::from_secs(7);
        assert_eq!(
            route(TripPolicy::AnyInstance, TRIP, rests),
            Some(Decision::Trip { cooldown })
        );
        let within = Duration::from_secs(60);
        assert_eq!(
            route(
                TripPolicy::Quorum {
                    instances: 3,
                    within
                },
                TRIP,
                rests
            ),
            Some(Decision::Vote {
                quorum: 3,
                within,
                cooldown
            })
        );
        let rate = TripPolicy::FleetRate {
            limit: Ratio::new(1, 2),
            min_calls: 10,
            period: within,
        };
        assert_eq!(route(rate, TRIP, rests), Some(Decision::Alone { cooldown }));
    }

    #[test]
    fn only_trips_are_told_and_the_cooldown_is_asked_only_for_them() {
        for (from, to) in [
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
            (State::Open, State::Closed),
        ] {
            let t = Transition { from, to };
            let asked = std::cell::Cell::new(false);
            let cooldown = || {
                asked.set(true);
                Duration::ZERO
            };
            assert_eq!(route(TripPolicy::AnyInstance, t, cooldown), None);
            assert!(!asked.get(), "{from:?} -> {to:?}");
        }
    }
}
