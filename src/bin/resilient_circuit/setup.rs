//! `setup`: applies the migrations, grants roles what they need, then checks the grants.

use std::process::ExitCode;

use resilient_circuit::storage::postgres::migrate;
use resilient_circuit::storage::postgres::PostgresOptions;

use super::{confirm, connect, missing_privileges, quote_ident, CliError, PRIVILEGES};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Grant this role SELECT, INSERT, UPDATE, DELETE on public.rc_circuit_breakers (all it
    /// needs). Repeat for several roles.
    #[arg(long = "grant-to", value_name = "ROLE")]
    grant_to: Vec<String>,
    /// Print the SQL that would run, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    // Refuse bad names before touching anything.
    let grants = args
        .grant_to
        .iter()
        .map(|role| {
            let sql = migrate::grant_statement(role).map_err(|e| CliError::Usage(e.to_string()))?;
            Ok((role.as_str(), sql))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let mut session = connect(opts).await?;
    for (role, _) in &grants {
        if let Err(why) = missing_privileges(session.client(), role).await? {
            return Err(CliError::Problem(why));
        }
    }
    let pending = migrate::pending(session.client()).await?;

    if args.dry_run {
        say!("-- resilient-circuit setup --dry-run on {opts}: nothing is changed");
        if pending.is_empty() {
            say!("-- every migration is applied");
        }
        for m in &pending.migrations {
            say!("-- migration {:04}_{}", m.version, m.name);
            say!("{}", m.sql.trim_end());
        }
        for o in &pending.objects {
            say!("-- object {}", o.name);
            say!("{}", o.sql.trim_end());
        }
        for (_, sql) in &grants {
            say!("{sql};");
        }
        return Ok(ExitCode::SUCCESS);
    }

    if !args.yes {
        let mut what = Vec::new();
        if !pending.is_empty() {
            what.push(format!(
                "apply {} migration(s) and {} object(s)",
                pending.migrations.len(),
                pending.objects.len()
            ));
        }
        if !grants.is_empty() {
            let roles: Vec<&str> = grants.iter().map(|(r, _)| *r).collect();
            what.push(format!("grant access to {}", roles.join(", ")));
        }
        if !what.is_empty() && !confirm(&format!("{} on {opts}?", what.join(" and ")))? {
            return Err(CliError::Problem("cancelled: nothing was changed".into()));
        }
    }

    let applied = migrate::migrate(session.client_mut()).await?;
    if applied.is_empty() {
        say!("schema: every migration and object was applied already");
    } else {
        let list: Vec<String> = applied
            .migrations
            .iter()
            .map(|m| format!("{:04}", m.version))
            .collect();
        if !list.is_empty() {
            say!("schema: applied migration(s) {}", list.join(", "));
        }
        if !applied.objects.is_empty() {
            let names: Vec<&str> = applied.objects.iter().map(|o| o.name).collect();
            say!("schema: applied object(s) {}", names.join(", "));
        }
    }
    migrate::verify(session.client()).await?;

    for (role, sql) in &grants {
        session
            .client()
            .batch_execute(sql)
            .await
            .map_err(|e| CliError::db("granting", e))?;
        match missing_privileges(session.client(), role).await? {
            Ok(missing) if missing.is_empty() => say!(
                "granted {} on public.rc_circuit_breakers to {}",
                PRIVILEGES.join(", "),
                quote_ident(role)?
            ),
            Ok(missing) => {
                return Err(CliError::Problem(format!(
                    "after granting, {} still lacks {} on public.rc_circuit_breakers",
                    quote_ident(role)?,
                    missing.join(", ")
                )))
            }
            Err(why) => return Err(CliError::Problem(why)),
        }
    }
    say!("setup complete");
    Ok(ExitCode::SUCCESS)
}
