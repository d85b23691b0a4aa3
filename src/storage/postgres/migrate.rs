//! The schema: the numbered files of `sql/`, applied in order and recorded in
//! `public.rc_schema_migrations` with a checksum, so that an edited migration is caught.

use tokio_postgres::Client;

use crate::error::StorageError;

/// One migration file, compiled into the crate.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, the order of application.
    pub version: i32,
    /// File name without the number.
    pub name: &'static str,
    /// The SQL.
    pub sql: &'static str,
}

/// Every migration, in order. Released files are never edited: changes come as new files.
/// (Version 10 is taken by work landing separately; versions need not be consecutive.)
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "breaker_table",
        sql: include_str!("../../../sql/0001_breaker_table.sql"),
    },
    Migration {
        version: 2,
        name: "versions_and_notify",
        sql: include_str!("../../../sql/0002_versions_and_notify.sql"),
    },
    Migration {
        version: 3,
        name: "transitions",
        sql: include_str!("../../../sql/0003_transitions.sql"),
    },
    Migration {
        version: 4,
        name: "inline_remaining_ms",
        sql: include_str!("../../../sql/0004_inline_remaining_ms.sql"),
    },
    Migration {
        version: 5,
        name: "batched_transitions",
        sql: include_str!("../../../sql/0005_batched_transitions.sql"),
    },
    Migration {
        version: 6,
        name: "hardening",
        sql: include_str!("../../../sql/0006_hardening.sql"),
    },
    Migration {
        version: 7,
        name: "notify_commit_time",
        sql: include_str!("../../../sql/0007_notify_commit_time.sql"),
    },
    Migration {
        version: 8,
        name: "python_interop",
        sql: include_str!("../../../sql/0008_python_interop.sql"),
    },
    Migration {
        version: 9,
        name: "change_log",
        sql: include_str!("../../../sql/0009_change_log.sql"),
    },
    Migration {
        version: 10,
        name: "quorum",
        sql: include_str!("../../../sql/0010_quorum.sql"),
    },
    Migration {
        version: 11,
        name: "growing_cooldowns",
        sql: include_str!("../../../sql/0011_growing_cooldowns.sql"),
    },
    Migration {
        version: 12,
        name: "fleet_rate",
        sql: include_str!("../../../sql/0012_fleet_rate.sql"),
    },
    Migration {
        version: 13,
        name: "live_config",
        sql: include_str!("../../../sql/0013_live_config.sql"),
    },
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

/// The migrations recorded as applied, `(version, checksum)`; `None` when the record table does
/// not exist. Unnamed statements, so this also works through a pooler in transaction mode.
async fn applied(client: &Client) -> Result<Option<Vec<(i32, String)>>, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db("checking the schema", e);
    let exists = client
        .query_typed(
            "SELECT to_regclass('public.rc_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?;
    let exists: bool = match exists.first() {
        Some(row) => row.try_get(0).map_err(err)?,
        None => false,
    };
    if !exists {
        return Ok(None);
    }
    let rows = client
        .query_typed(
            "SELECT version, checksum FROM public.rc_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(err)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?)))
        .collect::<Result<Vec<_>, StorageError>>()
        .map(Some)
}

/// Read-only check that every migration is applied with the checksum of this build; the
/// error's reason names the first one that is not.
pub async fn verify(client: &Client) -> Result<(), StorageError> {
    let Some(rows) = applied(client).await? else {
        return Err(StorageError::SchemaNotReady {
            reason: "table public.rc_schema_migrations does not exist (no migration applied)"
                .into(),
        });
    };
    for m in MIGRATIONS {
        let applied = rows.iter().find(|(v, _)| *v == m.version).map(|(_, c)| c);
        match applied {
            None => {
                return Err(StorageError::SchemaNotReady {
                    reason: format!("migration {:04}_{} is not applied", m.version, m.name),
                })
            }
            Some(sum) if *sum != checksum(m.sql) => {
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
    Ok(())
}

/// The migrations not yet recorded as applied, in order (read-only: what
/// [`migrate`] would apply now).
pub async fn pending(client: &Client) -> Result<Vec<&'static Migration>, StorageError> {
    let done = applied(client).await?.unwrap_or_default();
    Ok(MIGRATIONS
        .iter()
        .filter(|m| !done.iter().any(|(v, _)| *v == m.version))
        .collect())
}

/// Applies every missing migration, all in one transaction under an advisory lock so that
/// instances starting together apply each file once. Idempotent.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db("applying migrations", e);
    let mut applied = Vec::new();
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
             applied_at timestamptz NOT NULL DEFAULT now())",
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
        applied.push(m.version);
    }
    tx.commit().await.map_err(err)?;
    Ok(applied)
}
