//! The schema, in two parts:
//!
//! * `sql/migrations/`: numbered files for tables, columns and data, applied once each in order
//!   and recorded in `public.rc_schema_migrations` with a checksum, so an edited one is caught;
//! * `sql/objects/`: one file per function (with the triggers that call it), always its current
//!   definition, re-applied after the migrations whenever its checksum differs from the one
//!   recorded in `public.rc_schema_objects`.
//!
//! A reader finds what a function does now in `sql/objects/<name>.sql`; the migrations say how
//! the tables came to be.

use tokio_postgres::Client;

use crate::error::StorageError;

/// One numbered migration file of `sql/migrations/`, compiled into the crate: the tables,
/// columns and data. Released files are never edited: changes come as new files.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, the order of application.
    pub version: i32,
    /// File name without the number.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// One object of `sql/objects/`: a function and the triggers that call it, in its current
/// definition. Re-applied whenever its text changes (as Flyway's repeatable migrations are), so
/// the file is always what the database runs.
#[derive(Debug, Clone, Copy)]
pub struct Object {
    /// The function's name, which is also the file's.
    pub name: &'static str,
    /// The SQL (`CREATE OR REPLACE FUNCTION`, its grants, its triggers).
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(
                "../../../sql/migrations/",
                $file,
                "_",
                $name,
                ".sql"
            )),
        }
    };
}

macro_rules! object {
    ($name:literal) => {
        Object {
            name: $name,
            sql: include_str!(concat!("../../../sql/objects/", $name, ".sql")),
        }
    };
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001", "breaker_table"),
    migration!(2, "0002", "versions_and_notify"),
    migration!(3, "0003", "transitions"),
    migration!(4, "0004", "inline_remaining_ms"),
    migration!(5, "0005", "batched_transitions"),
    migration!(6, "0006", "hardening"),
    migration!(7, "0007", "notify_commit_time"),
    migration!(8, "0008", "python_interop"),
    migration!(9, "0009", "change_log"),
    migration!(10, "0010", "quorum"),
    migration!(11, "0011", "growing_cooldowns"),
    migration!(12, "0012", "fleet_rate"),
    migration!(13, "0013", "live_config"),
];

/// Every object, applied after the migrations in this order: a SQL-language function is
/// checked when it is created, so what it calls comes first, and triggers come after their
/// functions' callees.
pub const OBJECTS: &[Object] = &[
    object!("rc_remaining_ms"),
    object!("rc_max_ms"),
    object!("rc_key_error"),
    object!("rc_check_key"),
    object!("rc_check_ms"),
    object!("rc_view"),
    object!("rc_snapshot"),
    object!("rc_grown_cooldown_ms"),
    object!("rc_rate_error"),
    object!("rc_require_write"),
    object!("rc_notify_key"),
    object!("rc_notify_payload"),
    object!("rc_explain"),
    object!("rc_log_change"),
    object!("rc_open_for_fleet"),
    object!("rc_trip"),
    object!("rc_trip_many"),
    object!("rc_acquire_probe"),
    object!("rc_report_probe"),
    object!("rc_force"),
    object!("rc_force_many"),
    object!("rc_changes_since"),
    object!("rc_vote"),
    object!("rc_report_rate"),
    object!("rc_report_rates"),
    object!("rc_configure"),
    object!("update_rc_circuit_breakers_updated_at"),
    object!("rc_bump_version"),
    object!("rc_reset_reopens"),
    object!("rc_notify_change"),
    object!("rc_notify_truncate"),
    object!("rc_spend_judgements"),
    object!("rc_config_stamp"),
    object!("rc_config_notify"),
];

/// What an application role needs on `public.rc_circuit_breakers`, and all it needs, for this
/// crate and the Python ancestor alike: the triggers and transition functions run as the
/// schema's owner (`SECURITY DEFINER`), so nothing else is granted.
pub const APP_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "DELETE"];

/// A name that cannot be a role: empty, with a NUL, or longer than PostgreSQL's 63 bytes (it
/// would silently cut the name, and grant to another role).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRoleName(String);

/// `name` as a double-quoted SQL identifier, or why it cannot name a role.
pub fn quote_role(name: &str) -> Result<String, InvalidRoleName> {
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

/// The statement that gives `role` [`APP_PRIVILEGES`]: what `resilient-circuit setup
/// --grant-to ROLE` runs after the migrations.
///
/// ```
/// use resilient_circuit::storage::postgres::migrate::grant_statement;
/// assert_eq!(
///     grant_statement("app").unwrap(),
///     r#"GRANT SELECT, INSERT, UPDATE, DELETE ON public.rc_circuit_breakers TO "app""#
/// );
/// assert!(grant_statement("").is_err());
/// ```
pub fn grant_statement(role: &str) -> Result<String, InvalidRoleName> {
    Ok(format!(
        "GRANT {} ON public.rc_circuit_breakers TO {}",
        APP_PRIVILEGES.join(", "),
        quote_role(role)?
    ))
}

/// Serializes concurrent migrators across the fleet (an arbitrary constant: "rc_migr").
const MIGRATION_LOCK: i64 = 0x72_63_5f_6d_69_67_72;

/// FNV-1a of the SQL text: enough to notice an edited file, no dependency.
pub fn checksum(sql: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sql.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What the database records as applied.
#[derive(Debug, Default)]
struct Applied {
    /// `(version, checksum)` of each migration.
    migrations: Vec<(i32, String)>,
    /// `(name, checksum)` of each object.
    objects: Vec<(String, String)>,
}

impl Applied {
    fn migration(&self, version: i32) -> Option<&str> {
        self.migrations
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, c)| c.as_str())
    }

    fn object(&self, name: &str) -> Option<&str> {
        self.objects
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.as_str())
    }
}

/// What the database records as applied; `None` when nothing was ever applied. Unnamed
/// statements, so this also works through a pooler in transaction mode.
async fn applied(client: &Client) -> Result<Option<Applied>, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db("checking the schema", e);
    let exists = client
        .query_typed(
            "SELECT pg_catalog.to_regclass('public.rc_schema_migrations') IS NOT NULL, \
                    pg_catalog.to_regclass('public.rc_schema_objects') IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?;
    let (migrations, objects): (bool, bool) = match exists.first() {
        Some(row) => (row.try_get(0).map_err(err)?, row.try_get(1).map_err(err)?),
        None => (false, false),
    };
    if !migrations {
        return Ok(None);
    }
    let mut applied = Applied::default();
    let rows = client
        .query_typed(
            "SELECT version, checksum FROM public.rc_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(err)?;
    for r in &rows {
        applied
            .migrations
            .push((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?));
    }
    if objects {
        let rows = client
            .query_typed("SELECT name, checksum FROM public.rc_schema_objects", &[])
            .await
            .map_err(err)?;
        for r in &rows {
            applied
                .objects
                .push((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?));
        }
    }
    Ok(Some(applied))
}

/// Read-only check that every migration is applied with the checksum of this build and every
/// object exists; the error's reason names the first that is not. An object whose checksum
/// differs (the database was set up by another version of the crate) is only logged: its
/// signature is the one this build calls.
pub async fn verify(client: &Client) -> Result<(), StorageError> {
    let Some(applied) = applied(client).await? else {
        return Err(StorageError::SchemaNotReady {
            reason: "table public.rc_schema_migrations does not exist (no migration applied)"
                .into(),
        });
    };
    for m in MIGRATIONS {
        match applied.migration(m.version) {
            None => {
                return Err(StorageError::SchemaNotReady {
                    reason: format!("migration {:04}_{} is not applied", m.version, m.name),
                })
            }
            Some(sum) if sum != checksum(m.sql) => {
                return Err(StorageError::SchemaNotReady {
                    reason: format!(
                        "migration {:04}_{} was applied from a different file (checksum {sum}, this build has {})",
                        m.version,
                        m.name,
                        checksum(m.sql)
                    ),
                })
            }
            Some(_) => {}
        }
    }
    for o in OBJECTS {
        match applied.object(o.name) {
            None => {
                return Err(StorageError::SchemaNotReady {
                    reason: format!("object {} (sql/objects/{0}.sql) is not applied", o.name),
                })
            }
            Some(sum) if sum != checksum(o.sql) => {
                tracing::info!(object = o.name, "the database holds another definition of this object than this build (set up by another version); `resilient-circuit setup` from this build applies its own");
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// What [`migrate`] would apply now (read-only).
#[derive(Debug, Default)]
pub struct Pending {
    /// Migrations not yet applied, in order.
    pub migrations: Vec<&'static Migration>,
    /// Objects missing or defined otherwise, in order.
    pub objects: Vec<&'static Object>,
}

impl Pending {
    /// True when the schema is this build's.
    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty() && self.objects.is_empty()
    }
}

/// The migrations and objects not yet applied as this build has them (read-only: what
/// [`migrate`] would apply now).
pub async fn pending(client: &Client) -> Result<Pending, StorageError> {
    let done = applied(client).await?.unwrap_or_default();
    Ok(Pending {
        migrations: MIGRATIONS
            .iter()
            .filter(|m| done.migration(m.version).is_none())
            .collect(),
        objects: OBJECTS
            .iter()
            .filter(|o| done.object(o.name) != Some(checksum(o.sql).as_str()))
            .collect(),
    })
}

/// Applies every missing migration, then every object whose definition differs, all in one
/// transaction under a lock so that instances starting together apply each once. Idempotent;
/// returns what it applied.
pub async fn migrate(client: &mut Client) -> Result<Pending, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db("applying migrations", e);
    let mut applied = Pending::default();
    let tx = client.transaction().await.map_err(err)?;
    // The pool's sessions carry short statement and lock timeouts (so an abandoned transition
    // call frees its row lock); a migration may rewrite a large table or wait for another
    // instance's migration, so it lifts them for its own transaction.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await
        .map_err(err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.rc_schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS public.rc_schema_objects (
             name       text PRIMARY KEY,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());
         GRANT SELECT ON public.rc_schema_objects TO PUBLIC;",
    )
    .await
    .map_err(err)?;
    for m in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT checksum FROM public.rc_schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await
            .map_err(err)?;
        if done.is_some() {
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO public.rc_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &checksum(m.sql)],
        )
        .await
        .map_err(err)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.migrations.push(m);
    }
    for o in OBJECTS {
        let sum = checksum(o.sql);
        let done: Option<String> = tx
            .query_opt(
                "SELECT checksum FROM public.rc_schema_objects WHERE name = $1",
                &[&o.name],
            )
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        if done.as_deref() == Some(sum.as_str()) {
            continue;
        }
        tx.batch_execute(o.sql).await.map_err(err)?;
        tx.execute(
            "INSERT INTO public.rc_schema_objects (name, checksum) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
            &[&o.name, &sum],
        )
        .await
        .map_err(err)?;
        tracing::info!(object = o.name, "applied object");
        applied.objects.push(o);
    }
    tx.commit().await.map_err(err)?;
    Ok(applied)
}
