//! `check`: is the database ready for the breakers (and, with `--role`, is a role)?

use std::process::ExitCode;

use resilient_circuit::storage::postgres::migrate::{self, MIGRATIONS};
use resilient_circuit::storage::postgres::statements::FUNCTIONS;
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::StorageError;

use super::{connect, missing_privileges, quote_ident, CliError};

/// The triggers on public.rc_circuit_breakers the migrations create.
const TRIGGERS: &[&str] = &[
    "update_rc_circuit_breakers_updated_at",
    "rc_bump_version",
    "rc_notify_insert",
    "rc_notify_update",
    "rc_notify_delete",
    "rc_notify_truncate",
    "rc_reset_reopens",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also check that this role holds what it needs on public.rc_circuit_breakers.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let role = args.role.as_deref().map(|r| quote_ident(r).map(|q| (r, q)));
    let role = role.transpose()?;
    let session = connect(opts).await?;
    let client = session.client();
    // Every finding, printed at the end: (fine, what).
    let mut findings: Vec<(bool, String)> = Vec::new();

    match migrate::verify(client).await {
        Ok(()) => push(
            &mut findings,
            true,
            format!(
                "schema version {} (every migration applied, checksums match)",
                MIGRATIONS.last().map_or(0, |m| m.version)
            ),
        ),
        Err(StorageError::SchemaNotReady { reason }) => {
            push(&mut findings, false, format!("schema: {reason}"))
        }
        Err(e) => return Err(e.into()),
    }

    let rows = client
        .query(
            "SELECT tgname::text FROM pg_catalog.pg_trigger \
             WHERE tgrelid = to_regclass('public.rc_circuit_breakers') AND NOT tgisinternal",
            &[],
        )
        .await
        .map_err(|e| CliError::db("checking the triggers", e))?;
    let present: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    for t in TRIGGERS {
        push(
            &mut findings,
            present.iter().any(|p| p == t),
            format!("trigger {t} on public.rc_circuit_breakers"),
        );
    }

    for f in FUNCTIONS {
        let row = client
            .query_one("SELECT to_regprocedure('public.' || $1) IS NOT NULL", &[f])
            .await
            .map_err(|e| CliError::db("checking the functions", e))?;
        push(&mut findings, row.get(0), format!("function public.{f}"));
    }
    let schema_problems = findings.iter().filter(|(ok, _)| !ok).count();

    let mut role_problem = false;
    if let Some((name, quoted)) = &role {
        match missing_privileges(client, name).await? {
            Ok(missing) if missing.is_empty() => push(
                &mut findings,
                true,
                format!(
                    "role {quoted}: SELECT, INSERT, UPDATE, DELETE on public.rc_circuit_breakers"
                ),
            ),
            Ok(missing) => {
                role_problem = true;
                push(
                    &mut findings,
                    false,
                    format!(
                        "role {quoted} lacks {} on public.rc_circuit_breakers",
                        missing.join(", ")
                    ),
                )
            }
            Err(why) => {
                role_problem = true;
                push(&mut findings, false, why)
            }
        }
    }

    for (ok, what) in &findings {
        say!("{} {what}", if *ok { "ok     " } else { "MISSING" });
    }
    let problems = findings.iter().filter(|(ok, _)| !ok).count();
    if problems == 0 {
        say!("the database is ready");
        return Ok(ExitCode::SUCCESS);
    }
    // The fix, as one command (a role name is shown quoted when it needs to be).
    let mut fix = String::from("resilient-circuit setup");
    if let Some((name, _)) = &role {
        if role_problem {
            fix.push_str(" --grant-to ");
            fix.push_str(&shell_word(name));
        }
    }
    eprintln!(
        "resilient-circuit: {problems} problem(s) found{}; fix: {fix}",
        if schema_problems > 0 {
            " in the schema"
        } else {
            ""
        }
    );
    Ok(ExitCode::from(1))
}

fn push(findings: &mut Vec<(bool, String)>, ok: bool, what: String) {
    findings.push((ok, what));
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
