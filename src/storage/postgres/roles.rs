//! What each kind of role may do, as PostgreSQL grants: the rights half of the threat model
//! ([`docs::security`](crate::docs::security)). `resilient-circuit setup --grant-*` grants them
//! and records each role's kinds in `rc_role_grants`, so that a later setup grants a recorded
//! role again what a new definition of a function needs, and `check` compares a role's rights
//! with its kinds (what is missing, and what it holds beyond them).
//!
//! Rights are EXECUTE on the functions, which PostgreSQL checks on `current_user` (so a login
//! that `SET ROLE`s to a reader has a reader's rights), plus SELECT on the tables a reader
//! reads. Only a role that runs the Python package writes the table itself.

use std::collections::BTreeSet;
use std::fmt;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, GenericClient};

use crate::error::StorageError;

/// A kind of role, from least to most trusted; each holds the rights of those it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RoleKind {
    /// Reads every row, the change log and the live configuration (`status`, `history`, a
    /// dashboard, an instance that follows by polling). Changes nothing, hears no notification.
    Reader,
    /// A reader that also runs instances of this crate: trips a CLOSED key, leases and reports
    /// probes of a half-open round, votes, reports failure rates, and hears and verifies
    /// notifications. Cannot close an OPEN key before its round, force a state or configure.
    Instance,
    /// An instance that also runs the Python package `resilient-circuit`, which writes the table
    /// itself (INSERT, UPDATE, DELETE). Its writes still go through the table's triggers.
    Python,
    /// An instance that may also decree: `open`, `close` and `delete` a key, change its live
    /// configuration (the library's `force_open` and `force_closed` too).
    Operator,
}

impl RoleKind {
    /// Every kind, least trusted first.
    pub const ALL: [RoleKind; 4] = [
        RoleKind::Reader,
        RoleKind::Instance,
        RoleKind::Python,
        RoleKind::Operator,
    ];

    /// The name `rc_role_grants` and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Reader => "reader",
            RoleKind::Instance => "instance",
            RoleKind::Python => "python",
            RoleKind::Operator => "operator",
        }
    }

    /// The kind named `name` ([`as_str`](Self::as_str)).
    pub fn from_name(name: &str) -> Option<RoleKind> {
        RoleKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The kinds whose rights this one holds, itself included.
    fn includes(self) -> &'static [RoleKind] {
        match self {
            RoleKind::Reader => &[RoleKind::Reader],
            RoleKind::Instance => &[RoleKind::Reader, RoleKind::Instance],
            RoleKind::Python => &[RoleKind::Reader, RoleKind::Instance, RoleKind::Python],
            RoleKind::Operator => &[RoleKind::Reader, RoleKind::Instance, RoleKind::Operator],
        }
    }

    /// What this kind adds to those it includes.
    fn own(
        self,
    ) -> (
        &'static [(&'static str, &'static str)],
        &'static [&'static str],
    ) {
        match self {
            RoleKind::Reader => (READER_TABLES, READER_FUNCTIONS),
            RoleKind::Instance => (&[], INSTANCE_FUNCTIONS),
            RoleKind::Python => (PYTHON_TABLES, &[]),
            RoleKind::Operator => (&[], OPERATOR_FUNCTIONS),
        }
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reader's table rights. (`rc_changes` and `rc_breaker_config` are readable by every role
/// that may read the breaker table, by row security.)
const READER_TABLES: &[(&str, &str)] = &[
    ("rc_circuit_breakers", "SELECT"),
    ("rc_schema_migrations", "SELECT"),
    ("rc_schema_objects", "SELECT"),
];

/// A reader's functions: they run with its own rights.
const READER_FUNCTIONS: &[&str] = &[
    "rc_remaining_ms(timestamp with time zone)",
    "rc_snapshot(text)",
    "rc_rows(text,text[])",
    "rc_configs(text,text[])",
    "rc_status(text)",
    "rc_history(text,text,bigint)",
    "rc_changes_since(text,text)",
    "rc_server_status()",
    "rc_group_states(text,text[])",
];

/// What an instance adds: the fleet's protocol.
const INSTANCE_FUNCTIONS: &[&str] = &[
    "rc_notify_secret()",
    "rc_judged(text)",
    "rc_trip_many(text,text[],bigint[],integer[],jsonb[],bigint[])",
    "rc_acquire_probe(text,text,text,bigint,integer,integer)",
    "rc_report_probe(text,text,bigint,boolean,integer,integer,bigint,bigint)",
    "rc_vote(text,text,text,integer,integer,integer,bigint,bigint,bigint)",
    "rc_report_rates(text,text,bigint,text[],bigint[],bigint[],integer[],integer[],integer[],bigint[],bigint[])",
    "rc_group_join(text,text,text[],integer,integer,integer,integer)",
];

/// What the Python package adds: it writes the table.
const PYTHON_TABLES: &[(&str, &str)] = &[
    ("rc_circuit_breakers", "INSERT"),
    ("rc_circuit_breakers", "UPDATE"),
    ("rc_circuit_breakers", "DELETE"),
];

/// What an operator adds: decrees.
const OPERATOR_FUNCTIONS: &[&str] = &[
    "rc_force(text,text,text,bigint)",
    "rc_force_many(text,text[],text[],bigint[])",
    "rc_delete(text,text)",
    "rc_configure(text,text,text,bigint,integer,integer,integer,integer,boolean,text,text,integer,bigint,integer,integer,integer,bigint)",
    "rc_group_configure(text,text,integer,integer,integer,integer,boolean,text)",
];

/// The rights a role holds on this crate's objects, or should.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    /// `(table, privilege)`, e.g. `("rc_circuit_breakers", "SELECT")`.
    pub tables: BTreeSet<(String, String)>,
    /// Functions it may execute, as `name(argument types)`.
    pub functions: BTreeSet<String>,
}

impl Rights {
    /// The rights of a role with `kinds`.
    pub fn of(kinds: &[RoleKind]) -> Rights {
        let mut rights = Rights::default();
        for kind in kinds.iter().flat_map(|k| k.includes()) {
            let (tables, functions) = kind.own();
            for (t, p) in tables {
                rights.tables.insert(((*t).to_owned(), (*p).to_owned()));
            }
            for f in functions {
                rights.functions.insert((*f).to_owned());
            }
        }
        rights
    }

    /// What `self` holds and `other` does not.
    pub fn beyond(&self, other: &Rights) -> Rights {
        Rights {
            tables: self.tables.difference(&other.tables).cloned().collect(),
            functions: self
                .functions
                .difference(&other.functions)
                .cloned()
                .collect(),
        }
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.functions.is_empty()
    }

    /// One line: `SELECT on rc_x, EXECUTE on rc_f(text)`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .tables
            .iter()
            .map(|(t, p)| format!("{p} on {t}"))
            .collect();
        parts.extend(self.functions.iter().map(|f| format!("EXECUTE on {f}")));
        parts.join(", ")
    }
}

/// A name that cannot be a role: empty, with a NUL, or longer than PostgreSQL's 63 bytes (it
/// would silently cut the name, and grant to another role).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRoleName(String);

/// A name that can be a role's, checked: its `Display` is the name as a double-quoted SQL
/// identifier (what `setup` prints and grants to).
///
/// ```
/// # fn main() -> Result<(), resilient_circuit::admin::InvalidRoleName> {
/// use resilient_circuit::admin::RoleName;
/// assert_eq!(RoleName::new("app")?.to_string(), r#""app""#);
/// assert_eq!(RoleName::new(r#"a"b"#)?.to_string(), r#""a""b""#);
/// assert!(RoleName::new("").is_err());
/// assert!(RoleName::new(&"x".repeat(64)).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleName {
    name: String,
    quoted: String,
}

impl RoleName {
    /// `name`, or why it cannot name a role.
    pub fn new(name: &str) -> Result<RoleName, InvalidRoleName> {
        Ok(RoleName {
            quoted: quoted(name)?,
            name: name.to_owned(),
        })
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The statements that give this role the rights of `kind` (and of the kinds it
    /// includes): what [`AdminSession::grant`](super::admin::AdminSession::grant) runs.
    ///
    /// ```
    /// # fn main() -> Result<(), resilient_circuit::admin::InvalidRoleName> {
    /// use resilient_circuit::admin::{RoleKind, RoleName};
    /// let sql = RoleName::new("app")?.grant_statements(RoleKind::Reader);
    /// assert!(sql.contains(&r#"GRANT SELECT ON public.rc_circuit_breakers TO "app""#.to_owned()));
    /// assert!(sql.contains(&r#"GRANT EXECUTE ON FUNCTION public.rc_snapshot(text) TO "app""#.to_owned()));
    /// # Ok(()) }
    /// ```
    pub fn grant_statements(&self, kind: RoleKind) -> Vec<String> {
        grant_statements_quoted(&self.quoted, kind)
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.quoted)
    }
}

/// `name` as a double-quoted SQL identifier, or why it cannot name a role.
#[deprecated(since = "0.1.0", note = "use RoleName::new")]
pub fn quote_role(name: &str) -> Result<String, InvalidRoleName> {
    quoted(name)
}

/// `name` as a double-quoted SQL identifier, or why it cannot name a role (see [`RoleName`]).
fn quoted(name: &str) -> Result<String, InvalidRoleName> {
    if name.is_empty() {
        return Err(InvalidRoleName("a role name must not be empty".into()));
    }
    if name.contains('\0') {
        return Err(InvalidRoleName(
            "a role name must not contain a NUL character".into(),
        ));
    }
    if name.len() > 63 {
        return Err(InvalidRoleName(format!(
            "a role name has at most 63 bytes, this one has {}",
            name.len()
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// The statements that give the role `quoted` (a quoted identifier) the rights of `kind`.
fn grant_statements_quoted(quoted: &str, kind: RoleKind) -> Vec<String> {
    let rights = Rights::of(&[kind]);
    let mut sql: Vec<String> = rights
        .tables
        .iter()
        .map(|(t, p)| format!("GRANT {p} ON public.{t} TO {quoted}"))
        .collect();
    // The signatures are this module's constants, never a caller's text.
    sql.extend(
        rights
            .functions
            .iter()
            .map(|f| format!("GRANT EXECUTE ON FUNCTION public.{f} TO {quoted}")),
    );
    sql
}

/// Grants `role` the rights of `kind` and records it (`rc_role_grants`), in one transaction.
pub(crate) async fn grant_to(
    client: &mut Client,
    role: &RoleName,
    kind: RoleKind,
) -> Result<(), StorageError> {
    let err = |e| StorageError::db("granting", e);
    let statements = role.grant_statements(kind);
    let role = role.as_str();
    let tx = client.transaction().await.map_err(err)?;
    for sql in &statements {
        tx.batch_execute(sql).await.map_err(err)?;
    }
    tx.query_typed(
        "INSERT INTO public.rc_role_grants (role, kind) VALUES ($1, $2) \
         ON CONFLICT (role, kind) DO UPDATE SET granted_at = pg_catalog.now()",
        &[(&role, Type::TEXT), (&kind.as_str(), Type::TEXT)],
    )
    .await
    .map_err(err)?;
    tx.commit().await.map_err(err)
}

/// The roles `rc_role_grants` records, with their kinds; roles that no longer exist are left
/// out. Nothing when the table does not exist yet (no setup ran) or this role may not read it
/// (only the schema's owner may).
pub(crate) async fn recorded_on<C: GenericClient>(
    client: &C,
) -> Result<Vec<(String, Vec<RoleKind>)>, StorageError> {
    let err = |e| StorageError::db("reading the recorded grants", e);
    let rows = client
        .query_typed(
            "SELECT g.role, g.kind FROM public.rc_role_grants g \
             WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles r \
                           WHERE r.rolname OPERATOR(pg_catalog.=) g.role::pg_catalog.name) \
             ORDER BY g.role, g.kind",
            &[],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(err(e)),
    };
    let mut out: Vec<(String, Vec<RoleKind>)> = Vec::new();
    for row in &rows {
        let role: String = row.try_get(0).map_err(err)?;
        let kind: String = row.try_get(1).map_err(err)?;
        let Some(kind) = RoleKind::from_name(&kind) else {
            continue;
        };
        match out.last_mut() {
            Some((r, kinds)) if *r == role => kinds.push(kind),
            _ => out.push((role, vec![kind])),
        }
    }
    Ok(out)
}

/// The rights `role` holds on this crate's tables and functions, by PostgreSQL's own checks
/// (grants to PUBLIC, memberships and ownership included). `None` when no such role exists.
pub(crate) async fn held_by<C: GenericClient>(
    client: &C,
    role: &str,
) -> Result<Option<Rights>, StorageError> {
    let err = |e| StorageError::db("reading a role's rights", e);
    let exists = client
        .query_typed(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles \
                            WHERE rolname OPERATOR(pg_catalog.=) $1::pg_catalog.name)",
            &[(&role, Type::TEXT)],
        )
        .await
        .map_err(err)?;
    if !exists
        .first()
        .map_or(Ok(false), |r| r.try_get(0))
        .map_err(err)?
    {
        return Ok(None);
    }
    let tables = client
        .query_typed(
            "SELECT c.relname::pg_catalog.text, p.privilege \
             FROM pg_catalog.pg_class c \
             CROSS JOIN pg_catalog.unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', \
                                                'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege) \
             WHERE c.relnamespace OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace \
               AND c.relkind OPERATOR(pg_catalog.=) 'r' \
               AND c.relname OPERATOR(pg_catalog.~~) 'rc\\_%' \
               AND pg_catalog.has_table_privilege($1::pg_catalog.name, c.oid, p.privilege)",
            &[(&role, Type::TEXT)],
        )
        .await
        .map_err(err)?;
    let functions = client
        .query_typed(
            "SELECT p.proname::pg_catalog.text OPERATOR(pg_catalog.||) '(' \
                    OPERATOR(pg_catalog.||) pg_catalog.oidvectortypes(p.proargtypes) \
                    OPERATOR(pg_catalog.||) ')' \
             FROM pg_catalog.pg_proc p \
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace \
               AND (p.proname OPERATOR(pg_catalog.~~) 'rc\\_%' \
                    OR p.proname OPERATOR(pg_catalog.=) 'update_rc_circuit_breakers_updated_at') \
               AND pg_catalog.has_function_privilege($1::pg_catalog.name, p.oid, 'EXECUTE')",
            &[(&role, Type::TEXT)],
        )
        .await
        .map_err(err)?;
    let mut rights = Rights::default();
    for row in &tables {
        rights
            .tables
            .insert((row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?));
    }
    for row in &functions {
        let f: String = row.try_get(0).map_err(err)?;
        // oidvectortypes separates with ", "; the constants here do not.
        rights.functions.insert(f.replace(", ", ","));
    }
    Ok(Some(rights))
}

impl Rights {
    /// What any role holds without a grant of ours: the change log and the live configuration
    /// are readable by all (their rows, by row security, only by the roles that may read
    /// breakers).
    pub fn public() -> Rights {
        let mut rights = Rights::default();
        for t in ["rc_changes", "rc_breaker_config"] {
            rights.tables.insert((t.to_owned(), "SELECT".to_owned()));
        }
        rights
    }
}

/// Grants `role` the rights of `kind` on `client`.
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::grant"
)]
pub async fn grant(client: &mut Client, role: &str, kind: RoleKind) -> Result<(), StorageError> {
    let role = RoleName::new(role).map_err(|e| {
        StorageError::Config(crate::ConfigError::InvalidSetting {
            name: "role",
            reason: e.to_string(),
        })
    })?;
    grant_to(client, &role, kind).await
}

/// The rights `role` holds, read on `client`.
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::rights_of"
)]
pub async fn held<C: GenericClient>(
    client: &C,
    role: &str,
) -> Result<Option<Rights>, StorageError> {
    held_by(client, role).await
}

/// The roles `setup` recorded, read on `client`.
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::recorded_grants"
)]
pub async fn recorded<C: GenericClient>(
    client: &C,
) -> Result<Vec<(String, Vec<RoleKind>)>, StorageError> {
    recorded_on(client).await
}

/// What any role holds without a grant of ours.
#[deprecated(since = "0.1.0", note = "use Rights::public")]
pub fn public_rights() -> Rights {
    Rights::public()
}

/// The statements that give `role` the rights of `kind`.
#[deprecated(since = "0.1.0", note = "use RoleName::grant_statements")]
pub fn grant_statements(role: &str, kind: RoleKind) -> Result<Vec<String>, InvalidRoleName> {
    Ok(RoleName::new(role)?.grant_statements(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_hold_what_they_include() {
        let reader = Rights::of(&[RoleKind::Reader]);
        let instance = Rights::of(&[RoleKind::Instance]);
        let python = Rights::of(&[RoleKind::Python]);
        let operator = Rights::of(&[RoleKind::Operator]);
        assert!(reader.beyond(&instance).is_empty());
        assert!(instance.beyond(&python).is_empty());
        assert!(instance.beyond(&operator).is_empty());
        assert!(
            !python.beyond(&operator).is_empty(),
            "an operator does not write the table"
        );
        assert!(
            !operator.beyond(&python).is_empty(),
            "a Python role does not decree"
        );
        assert!(
            instance.tables.iter().all(|(_, p)| p == "SELECT"),
            "an instance writes the table only through functions"
        );
        for kind in RoleKind::ALL {
            assert_eq!(RoleKind::from_name(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn role_names_are_quoted_or_refused() {
        assert_eq!(quoted("app").as_deref(), Ok("\"app\""));
        assert_eq!(quoted("a\"b").as_deref(), Ok("\"a\"\"b\""));
        assert!(quoted("").is_err());
        assert!(quoted("a\0b").is_err());
        assert!(quoted(&"x".repeat(64)).is_err());
    }
}
