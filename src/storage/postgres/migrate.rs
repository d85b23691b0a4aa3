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
    migration!(14, "0014", "security"),
    migration!(15, "0015", "key_locks"),
    migration!(16, "0016", "groups"),
    migration!(17, "0017", "outliers"),
    migration!(18, "0018", "group_state"),
];

/// Every object, applied after the migrations in this order: a SQL-language function is
/// checked when it is created, so what it calls comes first, and triggers come after their
/// functions' callees.
pub const OBJECTS: &[Object] = &[
    // Helpers first: a SQL-language function is checked against what it calls when created.
    object!("rc_remaining_ms"),
    object!("rc_max_ms"),
    object!("rc_key_error"),
    object!("rc_check_key"),
    object!("rc_check_ms"),
    object!("rc_check_text"),
    object!("rc_actor"),
    object!("rc_forced_open"),
    object!("rc_refuse_forced"),
    object!("rc_view"),
    object!("rc_judge_lock"),
    object!("rc_lock_key"),
    object!("rc_prune"),
    object!("rc_explain"),
    object!("rc_open_for_fleet"),
    object!("rc_group_full"),
    object!("rc_group_tally"),
    object!("rc_group_view"),
    object!("rc_group_join"),
    object!("rc_group_states"),
    object!("rc_group_configure"),
    object!("rc_grown_cooldown_ms"),
    object!("rc_rate_error"),
    object!("rc_trip"),
    // What roles are granted (`roles.rs`).
    object!("rc_snapshot"),
    object!("rc_rows"),
    object!("rc_configs"),
    object!("rc_status"),
    object!("rc_history"),
    object!("rc_changes_since"),
    object!("rc_server_status"),
    object!("rc_judged"),
    object!("rc_notify_secret"),
    object!("rc_notify_key"),
    object!("rc_trip_many"),
    object!("rc_acquire_probe"),
    object!("rc_report_probe"),
    object!("rc_vote"),
    object!("rc_report_rates"),
    object!("rc_force"),
    object!("rc_force_many"),
    object!("rc_delete"),
    object!("rc_configure"),
    // Triggers last, after every function they call.
    object!("update_rc_circuit_breakers_updated_at"),
    object!("rc_bump_version"),
    object!("rc_announce"),
    object!("rc_config_stamp"),
    object!("rc_config_mode"),
];

/// FNV-1a of the SQL text: enough to notice an edited file, no dependency.
pub(crate) fn checksum(sql: &str) -> String {
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
pub(crate) async fn verify_schema(client: &Client) -> Result<(), StorageError> {
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

/// What [`AdminSession::migrate`](crate::admin::AdminSession::migrate) would apply now, or
/// applied.
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
pub(crate) async fn pending_of(client: &Client) -> Result<Pending, StorageError> {
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

/// How long each statement of a migration may wait for a lock before the attempt is rolled
/// back and made again: a DDL statement waiting for a lock holds up every later statement on
/// its table (the lock queue), so a migration behind a long reader must not wait long, or the
/// fleet's calls would wait behind it.
pub(crate) const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Applies every missing migration, then every object whose definition differs, in one
/// transaction, and returns what it applied. Idempotent: instances and operators may run it at
/// once (a lock on `rc_schema_objects`, which only its owner can take, makes them take turns).
///
/// Each attempt waits at most [`LOCK_TIMEOUT`] for any lock; an attempt that would wait longer
/// is rolled back and made again after a pause, for at most `patience`, so that a migration
/// behind a long transaction never stalls the fleet (their statements would queue behind its
/// lock request). The error then says what held the lock.
pub(crate) async fn apply(client: &mut Client) -> Result<Pending, StorageError> {
    apply_within(client, std::time::Duration::from_secs(60)).await
}

/// [`migrate`], trying for at most `patience`.
pub(crate) async fn apply_within(
    client: &mut Client,
    patience: std::time::Duration,
) -> Result<Pending, StorageError> {
    let deadline = std::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match migrate_once(client).await {
            Err(e) if retryable(&e) && std::time::Instant::now() + pause < deadline => {
                tracing::info!(error = %e, ?pause, "a migration lock is held; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// A lock that was not granted in time, or two migrators creating the bookkeeping tables at
/// once (`CREATE TABLE IF NOT EXISTS` is not safe against a concurrent creation): try again.
fn retryable(e: &StorageError) -> bool {
    matches!(
        e.sqlstate(),
        Some("55P03") | Some("23505") | Some("42P07") | Some("40P01")
    )
}

/// Takes EXECUTE on every function of ours back from PUBLIC (`setup` grants it to roles).
const REVOKE_FROM_PUBLIC: &str = "DO $$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace
               AND (p.proname OPERATOR(pg_catalog.~~) 'rc\\_%'
                    OR p.proname OPERATOR(pg_catalog.=) 'update_rc_circuit_breakers_updated_at')
               AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE')
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$";

async fn migrate_once(client: &mut Client) -> Result<Pending, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db("applying migrations", e);
    let mut applied = Pending::default();
    let tx = client.transaction().await.map_err(err)?;
    // Nothing the migration runs resolves a name through a schema another role may create in
    // (the files name every object of ours with its schema). The pool's sessions carry a short
    // statement timeout, which a migration that rewrites a table lifts for itself; its lock
    // waits stay short (see LOCK_TIMEOUT).
    tx.batch_execute(&format!(
        "SET LOCAL search_path = pg_catalog, pg_temp; SET LOCAL statement_timeout = 0; \
         SET LOCAL lock_timeout = {}",
        LOCK_TIMEOUT.as_millis()
    ))
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
         LOCK TABLE public.rc_schema_objects IN SHARE ROW EXCLUSIVE MODE;",
    )
    .await
    .map_err(err)?;
    for m in MIGRATIONS {
        let done = tx
            .query_typed(
                "SELECT checksum FROM public.rc_schema_migrations WHERE version = $1",
                &[(&m.version, tokio_postgres::types::Type::INT4)],
            )
            .await
            .map_err(err)?;
        if !done.is_empty() {
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(err)?;
        tx.query_typed(
            "INSERT INTO public.rc_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                (&m.version, tokio_postgres::types::Type::INT4),
                (&m.name, tokio_postgres::types::Type::TEXT),
                (&checksum(m.sql), tokio_postgres::types::Type::TEXT),
            ],
        )
        .await
        .map_err(err)?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.migrations.push(m);
    }
    for o in OBJECTS {
        let sum = checksum(o.sql);
        let done = tx
            .query_typed(
                "SELECT checksum FROM public.rc_schema_objects WHERE name = $1",
                &[(&o.name, tokio_postgres::types::Type::TEXT)],
            )
            .await
            .map_err(err)?;
        let done: Option<String> = match done.first() {
            Some(row) => Some(row.try_get(0).map_err(err)?),
            None => None,
        };
        if done.as_deref() == Some(sum.as_str()) {
            continue;
        }
        tx.batch_execute(o.sql).await.map_err(err)?;
        tx.query_typed(
            "INSERT INTO public.rc_schema_objects (name, checksum) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()",
            &[
                (&o.name, tokio_postgres::types::Type::TEXT),
                (&sum, tokio_postgres::types::Type::TEXT),
            ],
        )
        .await
        .map_err(err)?;
        tracing::info!(object = o.name, "applied object");
        applied.objects.push(o);
    }
    // No function of ours runs for every role: a grant to PUBLIC made by hand (or by an older
    // version) is taken back whether or not its object changed.
    tx.batch_execute(REVOKE_FROM_PUBLIC).await.map_err(err)?;
    // Roles granted earlier get what new definitions of their functions need.
    if !applied.objects.is_empty() {
        for (role, kinds) in super::roles::recorded_on(&tx).await? {
            // A recorded name that cannot be a role's (written by hand) is left alone.
            let Ok(role) = super::roles::RoleName::new(&role) else {
                continue;
            };
            for kind in kinds {
                for sql in role.grant_statements(kind) {
                    tx.batch_execute(&sql).await.map_err(err)?;
                }
            }
        }
    }
    tx.commit().await.map_err(err)?;
    Ok(applied)
}

/// Applies the schema on `client` (see [`AdminSession::migrate`](crate::admin::AdminSession::migrate)).
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::migrate"
)]
pub async fn migrate(client: &mut Client) -> Result<Pending, StorageError> {
    apply(client).await
}

/// Applies the schema on `client`, trying for at most `patience`.
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::migrate"
)]
pub async fn migrate_within(
    client: &mut Client,
    patience: std::time::Duration,
) -> Result<Pending, StorageError> {
    apply_within(client, patience).await
}

/// Ok when the schema on `client` is this build's.
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::verify"
)]
pub async fn verify(client: &Client) -> Result<(), StorageError> {
    verify_schema(client).await
}

/// What [`migrate`] would apply on `client` now.
#[deprecated(
    since = "0.1.0",
    note = "use resilient_circuit::admin::AdminSession::pending"
)]
pub async fn pending(client: &Client) -> Result<Pending, StorageError> {
    pending_of(client).await
}
