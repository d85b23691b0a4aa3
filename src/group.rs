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

use crate::{Builder, CircuitBreaker, ConfigError, Ratio, Storage, StorageError};

/// How a [`Group`] is declared: `storage.group("payments").max_open(Ratio::new(1, 3))`, then
/// [`join`](Self::join) with its members.
#[derive(Debug, Clone)]
#[must_use = "a group joins nothing until `join` is awaited"]
pub struct GroupBuilder {
    storage: Storage,
    name: String,
    max_open: Ratio,
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
}

impl Storage {
    /// Declares a group of breakers judged together (see [`Group`]); by default at most a third
    /// of its members may be open at once.
    pub fn group(&self, name: impl Into<String>) -> GroupBuilder {
        GroupBuilder {
            storage: self.clone(),
            name: name.into(),
            max_open: DEFAULT_MAX_OPEN,
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

    /// Makes `members` members of the group (created if needed) and returns it. On PostgreSQL
    /// this waits for the database to record them, so that the cap counts them from their
    /// first call.
    ///
    /// # Errors
    /// [`StorageError::Config`] for a group or member name that makes an invalid key, or a cap
    /// that is no ratio k/n with 1 <= k <= n <= 8192; a database error as [`StorageError`]'s
    /// other variants.
    pub async fn join<I, S>(self, members: I) -> Result<Group, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::builder::validate_key(&self.name)?;
        self.max_open.validate("a group's max_open")?;
        let group = Group {
            storage: self.storage,
            name: self.name.into(),
            max_open: self.max_open,
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

    /// The share of members that may be open at once.
    pub fn max_open(&self) -> Ratio {
        self.max_open
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
        match &self.storage.inner.shared {
            Some(shared) => shared.join_group(&self.name, &keys, self.max_open).await,
            None => Ok(keys.len() as u64),
        }
    }
}
