//! `check`: is the database ready for the breakers, safe for the roles that share it, and (with
//! `--role`) does a role hold what its kind needs and nothing more?

use std::process::ExitCode;

use resilient_circuit::storage::postgres::migrate::{self, MIGRATIONS, OBJECTS};
use resilient_circuit::storage::postgres::roles::{self, Rights, RoleKind};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::StorageError;

use super::{connect, quote_ident, CliError};

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

/// The notification queue's usage past which `check` reports a problem.
const QUEUE_PROBLEM: f64 = 0.5;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also check that this role holds what its kind needs, and nothing more.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// The role's kind: reader, instance, python or operator (default: the kinds `setup`
    /// recorded for it, else instance).
    #[arg(long = "as", value_name = "KIND", value_parser = parse_kind, requires = "role")]
    kind: Option<RoleKind>,
}

fn parse_kind(s: &str) -> Result<RoleKind, String> {
    RoleKind::from_name(s)
        .ok_or_else(|| format!("{s:?}: one of reader, instance, python, operator"))
}

/// How a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// Worth knowing; the command still succeeds.
    Warn,
    Problem,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    if let Some(r) = &args.role {
        quote_ident(r)?;
    }
    let session = connect(opts).await?;
    let client = session.client();
    let mut findings: Vec<(Level, String)> = Vec::new();
    let db = |during: &'static str| move |e| CliError::db(during, e);

    match migrate::verify(client).await {
        Ok(()) => findings.push((
            Level::Ok,
            format!(
                "schema version {} and {} objects (every migration and object applied, checksums match)",
                MIGRATIONS.last().map_or(0, |m| m.version),
                OBJECTS.len()
            ),
        )),
        Err(StorageError::SchemaNotReady { reason }) => {
            findings.push((Level::Problem, format!("schema: {reason}")))
        }
        Err(e) => return Err(e.into()),
    }

    let rows = client
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
    let present: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (table, trigger) in TRIGGERS {
        let found = present.iter().any(|(t, g)| t == table && g == trigger);
        findings.push((
            if found { Level::Ok } else { Level::Problem },
            format!("trigger {trigger} on public.{table}"),
        ));
    }

    // Functions anyone may run: only what a role is granted should be.
    let public = client
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
    let public: Vec<String> = public.iter().map(|r| r.get(0)).collect();
    findings.push(if public.is_empty() {
        (Level::Ok, "no function of ours may be run by every role (PUBLIC)".into())
    } else {
        (
            Level::Problem,
            format!(
                "functions every role may run (PUBLIC holds EXECUTE): {}; run `resilient-circuit setup` to revoke it",
                public.join(", ")
            ),
        )
    });

    // Schemas on the search path that roles other than their owner may create objects in: an
    // operator or function made there runs as whoever resolves a name through it. This crate's
    // SQL resolves nothing through them; other SQL on the database may.
    let unsafe_schemas = client
        .query_typed(
            "SELECT n.nspname::pg_catalog.text, \
                    CASE WHEN pg_catalog.has_schema_privilege('public', n.oid, 'CREATE') \
                         THEN 'every role (PUBLIC)' \
                         ELSE (SELECT pg_catalog.string_agg(r.rolname::pg_catalog.text, ', ' \
                                                            ORDER BY r.rolname) \
                               FROM pg_catalog.pg_roles r \
                               WHERE NOT r.rolsuper AND r.oid OPERATOR(pg_catalog.<>) n.nspowner \
                                 AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE')) END \
             FROM pg_catalog.pg_namespace n \
             WHERE n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.current_schemas(false)) \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(db("checking the schemas"))?;
    let unsafe_schemas: Vec<(String, String)> = unsafe_schemas
        .iter()
        .filter_map(|r| Some((r.get(0), r.get::<_, Option<String>>(1)?)))
        .collect();
    if unsafe_schemas.is_empty() {
        findings.push((
            Level::Ok,
            "no schema on the search path is writable by a role other than its owner".into(),
        ));
    }
    for (schema, who) in &unsafe_schemas {
        findings.push((
            Level::Warn,
            format!(
                "schema {schema} is on the search path and {who} may create in it: an operator or function made there runs as whoever resolves a name through it (this crate's SQL does not; other SQL may). Fix: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC (and from those roles)"
            ),
        ));
    }

    let usage: f64 = client
        .query_typed("SELECT pg_catalog.pg_notification_queue_usage()", &[])
        .await
        .map_err(db("reading the notification queue"))?
        .first()
        .map_or(0.0, |r| r.get(0));
    findings.push(if usage < QUEUE_PROBLEM {
        (
            Level::Ok,
            format!("notification queue {:.4}% used", usage * 100.0),
        )
    } else {
        (
            Level::Problem,
            format!(
                "notification queue {:.1}% used: at 100% every commit that notifies fails. A session that LISTENs and sits in an open transaction stops it from draining: find sessions idle in transaction in pg_stat_activity, end them with pg_terminate_backend, and set idle_in_transaction_session_timeout",
                usage * 100.0
            ),
        )
    });

    let mut fix: Option<String> = None;
    if let Some(role) = &args.role {
        let quoted = quote_ident(role)?;
        let recorded = roles::recorded(client)
            .await?
            .into_iter()
            .find(|(r, _)| r == role)
            .map(|(_, kinds)| kinds);
        let kinds = match (args.kind, recorded) {
            (Some(k), _) => vec![k],
            (None, Some(kinds)) => kinds,
            (None, None) => vec![RoleKind::Instance],
        };
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        match roles::held(client, role).await? {
            None => findings.push((Level::Problem, format!("role {quoted} does not exist"))),
            Some(held) => {
                let expected = Rights::of(&kinds);
                let missing = expected.beyond(&held);
                let excess = held.beyond(&expected).beyond(&roles::public_rights());
                if missing.is_empty() {
                    findings.push((
                        Level::Ok,
                        format!("role {quoted} holds what a {} needs", names.join(" and ")),
                    ));
                } else {
                    findings.push((
                        Level::Problem,
                        format!(
                            "role {quoted} ({}) lacks {}",
                            names.join(", "),
                            missing.describe()
                        ),
                    ));
                    let flag = match kinds.iter().max() {
                        Some(RoleKind::Reader) => "--grant-reader",
                        Some(RoleKind::Python) => "--grant-python",
                        Some(RoleKind::Operator) => "--grant-operator",
                        _ => "--grant-to",
                    };
                    fix = Some(format!(
                        "resilient-circuit setup {flag} {}",
                        shell_word(role)
                    ));
                }
                if excess.is_empty() {
                    findings.push((Level::Ok, format!("role {quoted} holds nothing more")));
                } else {
                    findings.push((
                        Level::Problem,
                        format!(
                            "role {quoted} ({}) holds more than it needs: {} (revoke it; a role that runs the Python package is granted with --grant-python)",
                            names.join(", "),
                            excess.describe()
                        ),
                    ));
                }
            }
        }
    }

    for (level, what) in &findings {
        let tag = match level {
            Level::Ok => "ok     ",
            Level::Warn => "WARN   ",
            Level::Problem => "PROBLEM",
        };
        say!("{tag} {}", super::text::escaped(what));
    }
    let problems = findings
        .iter()
        .filter(|(l, _)| *l == Level::Problem)
        .count();
    if problems == 0 {
        say!("the database is ready");
        return Ok(ExitCode::SUCCESS);
    }
    let fix = fix.unwrap_or_else(|| "resilient-circuit setup".into());
    eprintln!("resilient-circuit: {problems} problem(s) found; fix: {fix}");
    Ok(ExitCode::from(1))
}

/// `s` as one shell word.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
