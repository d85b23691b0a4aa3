//! `check`: is the database ready for the breakers, safe for the roles that share it, and (with
//! `--role`) does a role hold what its kind needs and nothing more?

use std::process::ExitCode;

use resilient_circuit::admin::{RoleKind, MIGRATIONS, OBJECTS};
use resilient_circuit::storage::postgres::PostgresOptions;

use super::{connect, role_name, CliError};

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
    let role = args.role.as_deref().map(role_name).transpose()?;
    let session = connect(opts).await?;
    let health = session.check().await?;
    let mut findings: Vec<(Level, String)> = Vec::new();

    findings.push(match &health.schema_problem {
        None => (
            Level::Ok,
            format!(
                "schema version {} and {} objects (every migration and object applied, checksums match)",
                MIGRATIONS.last().map_or(0, |m| m.version),
                OBJECTS.len()
            ),
        ),
        Some(reason) => (Level::Problem, format!("schema: {reason}")),
    });
    for t in &health.triggers {
        findings.push((
            if t.present { Level::Ok } else { Level::Problem },
            format!("trigger {} on public.{}", t.trigger, t.table),
        ));
    }
    findings.push(if health.missing_functions.is_empty() {
        (
            Level::Ok,
            "every function this build calls is in the catalog".into(),
        )
    } else {
        (
            Level::Problem,
            format!(
                "functions this build calls are missing: {}",
                health.missing_functions.join(", ")
            ),
        )
    });
    // Functions anyone may run: only what a role is granted should be.
    findings.push(if health.public_functions.is_empty() {
        (Level::Ok, "no function of ours may be run by every role (PUBLIC)".into())
    } else {
        (
            Level::Problem,
            format!(
                "functions every role may run (PUBLIC holds EXECUTE): {}; run `resilient-circuit setup` to revoke it",
                health.public_functions.join(", ")
            ),
        )
    });
    // Schemas on the search path that roles other than their owner may create objects in: an
    // operator or function made there runs as whoever resolves a name through it. This crate's
    // SQL resolves nothing through them; other SQL on the database may.
    if health.open_schemas.is_empty() {
        findings.push((
            Level::Ok,
            "no schema on the search path is writable by a role other than its owner".into(),
        ));
    }
    for s in &health.open_schemas {
        let (schema, who) = (&s.schema, &s.creators);
        findings.push((
            Level::Warn,
            format!(
                "schema {schema} is on the search path and {who} may create in it: an operator or function made there runs as whoever resolves a name through it (this crate's SQL does not; other SQL may). Fix: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC (and from those roles)"
            ),
        ));
    }
    let usage = health.queue_usage;
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
    if let Some(role) = &role {
        let found = session.check_role(role.as_str(), args.kind).await?;
        let names: Vec<&str> = found.kinds.iter().map(|k| k.as_str()).collect();
        if !found.exists {
            findings.push((Level::Problem, format!("role {role} does not exist")));
        } else {
            if found.missing.is_empty() {
                findings.push((
                    Level::Ok,
                    format!("role {role} holds what a {} needs", names.join(" and ")),
                ));
            } else {
                findings.push((
                    Level::Problem,
                    format!(
                        "role {role} ({}) lacks {}",
                        names.join(", "),
                        found.missing.describe()
                    ),
                ));
                let flag = match found.kinds.iter().max() {
                    Some(RoleKind::Reader) => "--grant-reader",
                    Some(RoleKind::Python) => "--grant-python",
                    Some(RoleKind::Operator) => "--grant-operator",
                    _ => "--grant-to",
                };
                fix = Some(format!(
                    "resilient-circuit setup {flag} {}",
                    shell_word(role.as_str())
                ));
            }
            if found.excess.is_empty() {
                findings.push((Level::Ok, format!("role {role} holds nothing more")));
            } else {
                findings.push((
                    Level::Problem,
                    format!(
                        "role {role} ({}) holds more than it needs: {} (revoke it; a role that runs the Python package is granted with --grant-python)",
                        names.join(", "),
                        found.excess.describe()
                    ),
                ));
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
