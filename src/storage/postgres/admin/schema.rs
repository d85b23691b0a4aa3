//! `setup` and `check`: the schema, the roles' rights, and what makes a database unsafe to share.

use std::time::Duration;

use super::super::{migrate, roles, statements};
use super::{AdminSession, Pending, Rights, RoleKind, RoleName};
use crate::error::StorageError;

/// The triggers the objects create: (table, trigger).
const TRIGGERS: &[(&str, &str)] = &[
    (
        "rc_circuit_breakers",
        "update_rc_circuit_breakers_updated_at",
    ),
    ("rc_circuit_breakers", "rc_bump_version"),
    ("rc_circuit_breakers", "rc_notify_insert"),
    ("rc_circuit_breakers", "rc_notify_update"),
    ("rc_circuit_breakers", "rc_notify_delete"),
    ("rc_circuit_breakers", "rc_notify_truncate"),
    ("rc_breaker_config", "rc_config_stamp"),
    ("rc_breaker_config", "rc_config_mode"),
    ("rc_breaker_config", "rc_notify_config"),
];

/// What [`AdminSession::check`] found.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// Why the schema is not this build's (a migration or object missing, a checksum that
    /// differs); `None` when it is.
    pub schema_problem: Option<String>,
    /// Each trigger the breakers need, and whether it is there.
    pub triggers: Vec<TriggerCheck>,
    /// Functions this build calls that the catalog lacks (with these argument types): should
    /// be none.
    pub missing_functions: Vec<String>,
    /// Functions of ours every role may run (PUBLIC holds EXECUTE): should be none.
    pub public_functions: Vec<String>,
    /// Schemas on the search path that roles other than their owner may create objects in.
    pub open_schemas: Vec<OpenSchema>,
    /// How full the server's notification queue is, 0 to 1: at 1 every commit that notifies
    /// fails.
    pub queue_usage: f64,
}

/// One trigger of [`Health::triggers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TriggerCheck {
    /// The table, in `public`.
    pub table: &'static str,
    /// The trigger's name.
    pub trigger: &'static str,
    /// True when it exists.
    pub present: bool,
}

/// A schema of [`Health::open_schemas`]: an operator or function made there runs as whoever
/// resolves a name through it (this crate's SQL does not; other SQL on the database may).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenSchema {
    /// The schema.
    pub schema: String,
    /// Who may create in it: `every role (PUBLIC)`, or the roles, comma-separated.
    pub creators: String,
}

/// What [`AdminSession::check_role`] found of one role.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoleCheck {
    /// False when no such role exists (then the rest is empty).
    pub exists: bool,
    /// The kinds it was checked as.
    pub kinds: Vec<RoleKind>,
    /// What those kinds need and it lacks.
    pub missing: Rights,
    /// What it holds beyond them (and beyond what every role holds).
    pub excess: Rights,
}

impl AdminSession {
    /// The migrations and objects this build would apply (read-only).
    pub async fn pending(&self) -> Result<Pending, StorageError> {
        migrate::pending_of(&self.client).await
    }

    /// Applies every missing migration, then every object whose definition differs, in one
    /// transaction, and returns what it applied; each statement waits at most half a second for
    /// a lock, and the whole is tried again until `patience` has passed (so that the fleet's
    /// calls never queue long behind it). Idempotent. Needs a role that may create tables.
    pub async fn migrate(&mut self, patience: Duration) -> Result<Pending, StorageError> {
        migrate::apply_within(&mut self.client, patience).await
    }

    /// Ok when the schema is this build's: every migration and object applied, checksums
    /// matching; else [`StorageError::SchemaNotReady`] saying what is missing.
    pub async fn verify(&self) -> Result<(), StorageError> {
        migrate::verify_schema(&self.client).await
    }

    /// Grants `role` the rights of `kind` and records it, so that a later
    /// [`migrate`](Self::migrate) grants it again what new definitions need.
    pub async fn grant(&mut self, role: &RoleName, kind: RoleKind) -> Result<(), StorageError> {
        roles::grant_to(&mut self.client, role, kind).await
    }

    /// The rights `role` holds on this crate's tables and functions, by PostgreSQL's own
    /// checks; `None` when no such role exists.
    pub async fn rights_of(&self, role: &str) -> Result<Option<Rights>, StorageError> {
        roles::held_by(&self.client, role).await
    }

    /// The roles `setup` granted, with their kinds (nothing when this role may not read the
    /// record: only the schema's owner may).
    pub async fn recorded_grants(&self) -> Result<Vec<(String, Vec<RoleKind>)>, StorageError> {
        roles::recorded_on(&self.client).await
    }

    /// The schema, the triggers, the functions' grants, the schemas on the search path, and
    /// the notification queue.
    pub async fn check(&self) -> Result<Health, StorageError> {
        let db = |during: &'static str| move |e| StorageError::db(during, e);
        let schema_problem = match self.verify().await {
            Ok(()) => None,
            Err(StorageError::SchemaNotReady { reason }) => Some(reason),
            Err(e) => return Err(e),
        };
        let rows = self
            .client
            .query_typed(
                "SELECT c.relname::pg_catalog.text, t.tgname::pg_catalog.text \
                 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c \
                   ON c.oid OPERATOR(pg_catalog.=) t.tgrelid \
                 WHERE c.relnamespace OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace \
                   AND NOT t.tgisinternal",
                &[],
            )
            .await
            .map_err(db("checking the triggers"))?;
        let mut present = Vec::with_capacity(rows.len());
        for r in &rows {
            let pair: (String, String) = (
                r.try_get(0).map_err(db("checking the triggers"))?,
                r.try_get(1).map_err(db("checking the triggers"))?,
            );
            present.push(pair);
        }
        let triggers = TRIGGERS
            .iter()
            .map(|&(table, trigger)| TriggerCheck {
                table,
                trigger,
                present: present.iter().any(|(t, g)| t == table && g == trigger),
            })
            .collect();

        let called: Vec<String> = statements::FUNCTIONS
            .iter()
            .map(|f| format!("public.{f}"))
            .collect();
        let rows = self
            .client
            .query_typed(
                "SELECT f FROM pg_catalog.unnest($1::pg_catalog.text[]) AS f \
                 WHERE pg_catalog.to_regprocedure(f) IS NULL ORDER BY 1",
                &[(&called, tokio_postgres::types::Type::TEXT_ARRAY)],
            )
            .await
            .map_err(db("checking the functions"))?;
        let missing_functions = rows
            .iter()
            .map(|r| {
                r.try_get::<_, String>(0)
                    .map(|f| f.trim_start_matches("public.").to_owned())
            })
            .collect::<Result<Vec<String>, _>>()
            .map_err(db("checking the functions"))?;

        let rows = self
            .client
            .query_typed(
                "SELECT p.proname::pg_catalog.text FROM pg_catalog.pg_proc p \
                 WHERE p.pronamespace OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace \
                   AND p.proname OPERATOR(pg_catalog.~~) 'rc\\_%' \
                   AND pg_catalog.has_function_privilege('public', p.oid, 'EXECUTE') \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(db("checking the functions' grants"))?;
        let public_functions = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, _>>()
            .map_err(db("checking the functions' grants"))?;

        let rows = self
            .client
            .query_typed(
                "SELECT n.nspname::pg_catalog.text, \
                        CASE WHEN pg_catalog.has_schema_privilege('public', n.oid, 'CREATE') \
                             THEN 'every role (PUBLIC)' \
                             ELSE (SELECT pg_catalog.string_agg(r.rolname::pg_catalog.text, ', ' \
                                                                ORDER BY r.rolname) \
                                   FROM pg_catalog.pg_roles r \
                                   WHERE NOT r.rolsuper \
                                     AND r.oid OPERATOR(pg_catalog.<>) n.nspowner \
                                     AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE')) \
                        END \
                 FROM pg_catalog.pg_namespace n \
                 WHERE n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false)) \
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(db("checking the schemas"))?;
        let mut open_schemas = Vec::new();
        for r in &rows {
            let creators: Option<String> = r.try_get(1).map_err(db("checking the schemas"))?;
            if let Some(creators) = creators {
                open_schemas.push(OpenSchema {
                    schema: r.try_get(0).map_err(db("checking the schemas"))?,
                    creators,
                });
            }
        }

        Ok(Health {
            schema_problem,
            triggers,
            missing_functions,
            public_functions,
            open_schemas,
            queue_usage: self.queue_usage().await?,
        })
    }

    /// How full the server's notification queue is, 0 to 1.
    pub async fn queue_usage(&self) -> Result<f64, StorageError> {
        let during = "reading the notification queue";
        let rows = self
            .client
            .query_typed("SELECT pg_catalog.pg_notification_queue_usage()", &[])
            .await
            .map_err(|e| StorageError::db(during, e))?;
        match rows.first() {
            Some(r) => r.try_get(0).map_err(|e| StorageError::db(during, e)),
            None => Ok(0.0),
        }
    }

    /// Whether `role` holds what `kind` needs and nothing more; without `kind`, the kinds
    /// `setup` recorded for it, else an instance's.
    pub async fn check_role(
        &self,
        role: &str,
        kind: Option<RoleKind>,
    ) -> Result<RoleCheck, StorageError> {
        let kinds = match kind {
            Some(k) => vec![k],
            None => self
                .recorded_grants()
                .await?
                .into_iter()
                .find(|(r, _)| r == role)
                .map_or_else(|| vec![RoleKind::Instance], |(_, kinds)| kinds),
        };
        let Some(held) = self.rights_of(role).await? else {
            return Ok(RoleCheck {
                exists: false,
                kinds,
                missing: Rights::default(),
                excess: Rights::default(),
            });
        };
        let expected = Rights::of(&kinds);
        Ok(RoleCheck {
            exists: true,
            missing: expected.beyond(&held),
            excess: held.beyond(&expected).beyond(&Rights::public()),
            kinds,
        })
    }
}
