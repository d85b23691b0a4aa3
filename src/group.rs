//! [`Group`]: breakers judged together, e.g. one per host of a service, with a fleet-wide cap on
//! how many of them may be open at once (see [`docs::groups`](crate::docs::groups)).
//!
//! A member is an ordinary breaker whose key is `group/member`. What makes it a member is a row
//! of the shared table's group membership, written by [`GroupBuilder::join`] and
//! [`Group::join`]: from then on the database refuses a member's entry into OPEN while as many
//! members as the cap allows are OPEN or HALF_OPEN, whoever writes it (this crate, the Python
//! package, an operator's UPDATE), and records the refusal; the member stays CLOSED. An
//! operator's `open` is not refused. Breakers of an in-memory storage share nothing with a
//! fleet, so a group of one has no cap: each member is its own breaker.

use std::sync::Arc;

use crate::{Builder, CircuitBreaker, ConfigError, Ratio, State, Storage, StorageError};

/// A group's own state: how many of its members are open, and whether the group as a whole is.
///
/// On PostgreSQL the database counts it whenever a member enters or leaves the open set,
/// whoever wrote the member's row, and tells every instance that joined the group (the change
/// stream's [`ChangeKind::Group`](crate::ChangeKind::Group), the `resilient_circuit_group_*` metrics); an instance reads
/// it again after every reload. In memory it counts this process's breakers named under the
/// group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupState {
    /// Members OPEN or HALF_OPEN.
    pub open: u32,
    /// Members.
    pub members: u32,
    /// The group as a whole: [`State::Open`] while `open` reaches its threshold
    /// ([`GroupBuilder::open_at`]), else [`State::Closed`] (never half-open).
    pub state: State,
    /// Orders what the database said: only a newer state replaces the one held.
    pub(crate) version: i64,
}

impl GroupState {
    /// Nothing heard yet: no members, CLOSED.
    const UNKNOWN: GroupState = GroupState {
        open: 0,
        members: 0,
        state: State::Closed,
        version: 0,
    };

    /// The share of members open, 0 to 1 (0 for a group with no members).
    pub fn open_share(&self) -> f64 {
        if self.members == 0 {
            0.0
        } else {
            f64::from(self.open) / f64::from(self.members)
        }
    }
}

/// What this storage holds of the groups it joined: their last known state.
pub(crate) type GroupStates = dashmap::DashMap<Arc<str>, GroupState>;

/// The fleet told this storage `state` of group `name`: held, metered and streamed when it is
/// newer than what is held, and `name` is a group this storage joined.
pub(crate) fn heard(inner: &crate::storage::StorageInner, name: &str, state: GroupState) {
    let Some(mut held) = inner.groups.get_mut(name) else {
        return; // not a group of ours
    };
    if state.version <= held.version {
        return;
    }
    let before = *held;
    *held = state;
    drop(held);
    crate::telemetry::group(inner.feed.namespace(), name, &state);
    if (before.open, before.members, before.state) != (state.open, state.members, state.state) {
        inner.feed.group_news(name, before.state, &state);
    }
}

/// How a [`Group`] is declared: `storage.group("payments").max_open(Ratio::new(1, 3))`, then
/// [`join`](Self::join) with its members.
#[derive(Debug, Clone)]
#[must_use = "a group joins nothing until `join` is awaited"]
pub struct GroupBuilder {
    storage: Storage,
    name: String,
    max_open: Ratio,
    open_at: Option<Ratio>,
}

/// Breakers judged together: one per host of a service, with a fleet-wide cap on how many may
/// be OPEN or HALF_OPEN at once, kept by the database whoever trips them; a member's key is
/// `group/member`. See [`docs::groups`](crate::docs::groups).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use resilient_circuit::{Ratio, Storage};
/// let storage = Storage::from_env().await?;
/// // At most one in three of the hosts' breakers open at once, fleet-wide.
/// let payments = storage
///     .group("payments")
///     .max_open(Ratio::new(1, 3))
///     .join(["host-a", "host-b", "host-c"])
///     .await?;
/// let host_a = payments.member("host-a").build()?; // key "payments/host-a"
/// # let _ = host_a;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Group {
    storage: Storage,
    name: Arc<str>,
    max_open: Ratio,
    open_at: Option<Ratio>,
}

impl Storage {
    /// Declares a group of breakers judged together (see [`Group`]); by default at most a third
    /// of its members may be open at once.
    pub fn group(&self, name: impl Into<String>) -> GroupBuilder {
        GroupBuilder {
            storage: self.clone(),
            name: name.into(),
            max_open: DEFAULT_MAX_OPEN,
            open_at: None,
        }
    }
}

/// A third: enough open hosts to shed a bad minority, never so many that nothing is left to call.
const DEFAULT_MAX_OPEN: Ratio = Ratio::new(1, 3);

impl GroupBuilder {
    /// At most this share of the group's members may be OPEN or HALF_OPEN at once, fleet-wide,
    /// rounded down but at least one member. The latest declaration of the group wins, so the
    /// instances of a service should declare the same.
    pub fn max_open(mut self, share: Ratio) -> Self {
        self.max_open = share;
        self
    }

    /// The group as a whole is OPEN while at least this share of its members is open (its
    /// [`GroupState::state`], [`Group::is_open`]): for callers that check only the group, e.g.
    /// to fail over to another region while most hosts are down. None by default. As with the
    /// cap, the latest declaration wins, and an operator's live configuration
    /// (`resilient-circuit group NAME --open-at`) wins over declarations.
    pub fn open_at(mut self, share: Ratio) -> Self {
        self.open_at = Some(share);
        self
    }

    /// The group without joining anything or declaring its cap: for a process that only
    /// checks the group ([`Group::is_open`], [`Group::state`]) or watches it (the change
    /// stream's group news). On PostgreSQL this reads the group's state once; from then on the
    /// fleet's news keep it.
    ///
    /// # Errors
    /// [`StorageError::Config`] for a name that makes an invalid key; a database error as
    /// [`StorageError`]'s other variants (a group no instance has joined yet is not one: it has
    /// no members, and its news come once it has).
    pub async fn follow(self) -> Result<Group, StorageError> {
        crate::builder::validate_key(&self.name)?;
        let group = Group {
            storage: self.storage,
            name: self.name.into(),
            max_open: self.max_open,
            open_at: self.open_at,
        };
        if let Some(shared) = &group.storage.inner.shared {
            let state = shared.group_state(&group.name).await?;
            let inner = &group.storage.inner;
            inner
                .groups
                .entry(group.name.clone())
                .or_insert(GroupState::UNKNOWN);
            if let Some(state) = state {
                heard(inner, &group.name, state);
            }
        }
        Ok(group)
    }

    /// Makes `members` members of the group (created if needed) and returns it. On PostgreSQL
    /// this waits for the database to record them, so that the cap counts them from their
    /// first call.
    ///
    /// # Errors
    /// [`StorageError::Config`] for a group or member name that makes an invalid key, or a cap
    /// or threshold that is no ratio k/n with 1 <= k <= n <= 8192; a database error as
    /// [`StorageError`]'s other variants.
    pub async fn join<I, S>(self, members: I) -> Result<Group, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::builder::validate_key(&self.name)?;
        self.max_open.validate("a group's max_open")?;
        if let Some(open_at) = self.open_at {
            open_at.validate("a group's open_at")?;
        }
        let group = Group {
            storage: self.storage,
            name: self.name.into(),
            max_open: self.max_open,
            open_at: self.open_at,
        };
        group.join(members).await?;
        Ok(group)
    }
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The share of members that may be open at once, as declared here (an operator's live
    /// configuration may have set another; see [`docs::groups`](crate::docs::groups)).
    pub fn max_open(&self) -> Ratio {
        self.max_open
    }

    /// The group's own state as this instance last heard it (see [`GroupState`]): on
    /// PostgreSQL the fleet's, read from a local copy (no statement).
    pub fn state(&self) -> GroupState {
        match &self.storage.inner.shared {
            Some(_) => self
                .storage
                .inner
                .groups
                .get(&*self.name)
                .map_or(GroupState::UNKNOWN, |s| *s),
            None => self.counted_here(),
        }
    }

    /// True while the group as a whole is OPEN: at least its threshold's share of its members
    /// are open ([`GroupBuilder::open_at`]).
    pub fn is_open(&self) -> bool {
        self.state().state == State::Open
    }

    /// In memory: this process's breakers named under the group.
    fn counted_here(&self) -> GroupState {
        let prefix = format!("{}/", self.name);
        let (mut open, mut members) = (0u32, 0u32);
        for cell in self.storage.inner.cells.iter() {
            if cell.key().starts_with(&prefix) && cell.key().len() > prefix.len() {
                members = members.saturating_add(1);
                if cell.value().state() != State::Closed {
                    open = open.saturating_add(1);
                }
            }
        }
        let past = self.open_at.is_some_and(|r| {
            members > 0
                && u64::from(open) * u64::from(r.denominator())
                    >= u64::from(r.numerator()) * u64::from(members)
        });
        GroupState {
            open,
            members,
            state: if past { State::Open } else { State::Closed },
            version: 0,
        }
    }

    /// The key of `member`'s breaker: `group/member`.
    pub fn key(&self, member: &str) -> String {
        format!("{}/{member}", self.name)
    }

    /// A builder for `member`'s breaker, on the group's storage. A member not yet
    /// [joined](Self::join) is an ordinary breaker, outside the cap.
    pub fn member(&self, member: &str) -> Builder {
        CircuitBreaker::builder(self.key(member)).storage(self.storage.clone())
    }

    /// Makes `members` members too; answers how many the group has (on an in-memory storage,
    /// which keeps no membership, how many were given).
    ///
    /// # Errors
    /// As [`GroupBuilder::join`].
    pub async fn join<I, S>(&self, members: I) -> Result<u64, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = members
            .into_iter()
            .map(|m| {
                let key = self.key(m.as_ref());
                crate::builder::validate_key(&key).map(|()| key)
            })
            .collect::<Result<Vec<String>, ConfigError>>()?;
        let Some(shared) = &self.storage.inner.shared else {
            return Ok(keys.len() as u64);
        };
        let state = shared
            .join_group(&self.name, &keys, self.max_open, self.open_at)
            .await?;
        self.storage
            .inner
            .groups
            .entry(self.name.clone())
            .or_insert(GroupState {
                version: -1,
                ..state
            });
        heard(&self.storage.inner, &self.name, state);
        Ok(u64::from(state.members))
    }
}
