//! `group`: the groups of a namespace as the database counts them (`rc_group_states`), and an
//! operator's live configuration of one (`rc_group_configure`): its cap on open members and the
//! threshold past which it is OPEN as a whole.

use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::breakers::unexpected;
use super::AdminSession;
use crate::error::StorageError;
use crate::{Ratio, State};

/// One group of a namespace ([`AdminSession::groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupRow {
    /// The group's name.
    pub name: String,
    /// Its members.
    pub members: u32,
    /// Its members OPEN or HALF_OPEN.
    pub open: u32,
    /// The group as a whole: OPEN while `open` reaches `open_at`.
    pub state: State,
    /// The cap in force (an operator's live one, else the instances' declaration).
    pub max_open: Ratio,
    /// The threshold in force; `None`: the group never opens as a whole.
    pub open_at: Option<Ratio>,
    /// Grows with every change of the counts.
    pub version: i64,
}

/// An operator's change to a group's live configuration ([`AdminSession::configure_group`]).
/// Live values win over what the instances declare, until reset.
///
/// ```
/// use resilient_circuit::admin::GroupChange;
/// use resilient_circuit::Ratio;
/// let change = GroupChange::new()
///     .max_open(Ratio::new(1, 2))
///     .open_at(Ratio::new(2, 3))
///     .note("zone b drained");
/// # let _ = change;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupChange {
    max_open: Option<Ratio>,
    /// `Some(None)`: no threshold.
    open_at: Option<Option<Ratio>>,
    reset: bool,
    note: Option<String>,
}

impl GroupChange {
    /// No change yet.
    pub fn new() -> GroupChange {
        GroupChange::default()
    }

    /// A new cap: at most this share of the members OPEN or HALF_OPEN at once.
    pub fn max_open(mut self, share: Ratio) -> Self {
        self.max_open = Some(share);
        self
    }

    /// A new threshold: the group is OPEN as a whole while this share of its members is open.
    pub fn open_at(mut self, share: Ratio) -> Self {
        self.open_at = Some(Some(share));
        self
    }

    /// No threshold: the group never opens as a whole, whatever the instances declare.
    pub fn never_open(mut self) -> Self {
        self.open_at = Some(None);
        self
    }

    /// Clears the live values first: back to what the instances declare (then the others
    /// given apply).
    pub fn reset(mut self) -> Self {
        self.reset = true;
        self
    }

    /// Why, kept with the group and in the change log (at most 1000 characters).
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// Checks the ratios and the note before anything is sent.
    ///
    /// # Errors
    /// [`StorageError::Config`] for a ratio that is not k/n with 1 <= k <= n <= 8192, or a note
    /// over 1000 characters.
    pub fn validate(&self) -> Result<(), StorageError> {
        if let Some(r) = self.max_open {
            r.validate("a group's max_open")?;
        }
        if let Some(Some(r)) = self.open_at {
            r.validate("a group's open_at")?;
        }
        if self.note.as_ref().is_some_and(|n| n.chars().count() > 1000) {
            return Err(crate::ConfigError::InvalidSetting {
                name: "note",
                reason: "at most 1000 characters".into(),
            }
            .into());
        }
        Ok(())
    }
}

impl AdminSession {
    /// Every group of namespace `ns`, by name.
    pub async fn groups(&self, ns: &str) -> Result<Vec<GroupRow>, StorageError> {
        let during = "reading the groups";
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM public.rc_group_states($1, NULL)",
                &[(&ns, Type::TEXT)],
            )
            .await
            .map_err(|e| StorageError::db(during, e))?;
        rows.iter().map(|r| group_row(r, None, during)).collect()
    }

    /// Changes group `name`'s live configuration in namespace `ns` for every instance, and
    /// returns the group as counted again. Checked first ([`GroupChange::validate`]); refused
    /// for a role that is not an operator, and for a group no instance joined.
    pub async fn configure_group(
        &self,
        ns: &str,
        name: &str,
        change: &GroupChange,
    ) -> Result<GroupRow, StorageError> {
        let during = "changing a group's live configuration";
        change.validate()?;
        let term = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let (max_num, max_den) = match change.max_open {
            Some(r) => (Some(term(r.numerator())), Some(term(r.denominator()))),
            None => (None, None),
        };
        let (open_num, open_den) = match change.open_at {
            Some(Some(r)) => (Some(term(r.numerator())), Some(term(r.denominator()))),
            Some(None) => (Some(0), Some(1)),
            None => (None, None),
        };
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM public.rc_group_configure($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    (&ns, Type::TEXT),
                    (&name, Type::TEXT),
                    (&max_num, Type::INT4),
                    (&max_den, Type::INT4),
                    (&open_num, Type::INT4),
                    (&open_den, Type::INT4),
                    (&change.reset, Type::BOOL),
                    (&change.note, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| StorageError::db(during, e))?;
        let row = rows
            .first()
            .ok_or_else(|| unexpected(during, "rc_group_configure returned no row".into()))?;
        group_row(row, Some(name), during)
    }
}

/// A row of `rc_group_view`'s columns (with `o_group`, unless `name` is given).
fn group_row(
    row: &Row,
    name: Option<&str>,
    during: &'static str,
) -> Result<GroupRow, StorageError> {
    let err = |e| StorageError::db(during, e);
    let name = match name {
        Some(n) => n.to_owned(),
        None => row.try_get("o_group").map_err(err)?,
    };
    let ratio = |text: &str| -> Result<Ratio, StorageError> {
        let bad = || unexpected(during, format!("a ratio {text:?}"));
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        Ok(Ratio::new(
            k.parse().map_err(|_| bad())?,
            n.parse().map_err(|_| bad())?,
        ))
    };
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    let state: String = row.try_get("o_state").map_err(err)?;
    Ok(GroupRow {
        name,
        members: count(row.try_get("o_members").map_err(err)?),
        open: count(row.try_get("o_open").map_err(err)?),
        state: state
            .parse()
            .map_err(|_| unexpected(during, format!("a group state {state:?}")))?,
        max_open: ratio(&row.try_get::<_, String>("o_max_open").map_err(err)?)?,
        open_at: row
            .try_get::<_, Option<String>>("o_open_at")
            .map_err(err)?
            .as_deref()
            .map(ratio)
            .transpose()?,
        version: row.try_get("o_version").map_err(err)?,
    })
}
