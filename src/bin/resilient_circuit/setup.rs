//! `setup`: applies the migrations, grants roles what they need, then checks the grants.

use std::process::ExitCode;

use resilient_circuit::admin::{Rights, RoleKind, RoleName};
use resilient_circuit::storage::postgres::PostgresOptions;

use super::{confirm, connect, role_name, CliError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Grant this role what an instance needs: read the breakers and run the fleet's protocol
    /// (trip, probe, vote, report rates, hear notifications). Repeat for several roles.
    #[arg(long = "grant-to", value_name = "ROLE")]
    grant_to: Vec<String>,
    /// Grant this role a reader's rights only: `status`, `history`, dashboards.
    #[arg(long = "grant-reader", value_name = "ROLE")]
    grant_reader: Vec<String>,
    /// Grant this role an instance's rights and the table writes of the Python package
    /// `resilient-circuit` (INSERT, UPDATE, DELETE).
    #[arg(long = "grant-python", value_name = "ROLE")]
    grant_python: Vec<String>,
    /// Grant this role an instance's rights and an operator's: `open`, `close`, `delete`,
    /// `config` (and the library's force_open / force_closed).
    #[arg(long = "grant-operator", value_name = "ROLE")]
    grant_operator: Vec<String>,
    /// Print the SQL that would run, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// How long to keep trying when a lock is held (a long transaction on the table), in
    /// seconds; each try waits at most half a second for a lock, so the fleet's calls never
    /// queue long behind the migration.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    wait: u64,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    // Refuse bad names before touching anything.
    let mut grants: Vec<(RoleName, RoleKind)> = Vec::new();
    for (roles, kind) in [
        (&args.grant_reader, RoleKind::Reader),
        (&args.grant_to, RoleKind::Instance),
        (&args.grant_python, RoleKind::Python),
        (&args.grant_operator, RoleKind::Operator),
    ] {
        for role in roles {
            grants.push((role_name(role)?, kind));
        }
    }
    let mut session = connect(opts).await?;
    for (role, _) in &grants {
        if session.rights_of(role.as_str()).await?.is_none() {
            return Err(CliError::Problem(format!("role {role} does not exist")));
        }
    }
    let pending = session.pending().await?;

    if args.dry_run {
        say!("-- resilient-circuit setup --dry-run on {opts}: nothing is changed");
        if pending.is_empty() {
            say!("-- every migration and object is applied");
        }
        for m in &pending.migrations {
            say!("-- migration {:04}_{}", m.version, m.name);
            say!("{}", m.sql.trim_end());
        }
        for o in &pending.objects {
            say!("-- object {}", o.name);
            say!("{}", o.sql.trim_end());
        }
        for (role, kind) in &grants {
            say!("-- {role} as {kind}");
            for sql in role.grant_statements(*kind) {
                say!("{sql};");
            }
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
            let roles: Vec<String> = grants
                .iter()
                .map(|(r, k)| format!("{} ({k})", r.as_str()))
                .collect();
            what.push(format!("grant access to {}", roles.join(", ")));
        }
        if !what.is_empty() && !confirm(&format!("{} on {opts}?", what.join(" and ")))? {
            return Err(CliError::Problem("cancelled: nothing was changed".into()));
        }
    }

    let applied = session
        .migrate(std::time::Duration::from_secs(args.wait))
        .await?;
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
    session.verify().await?;

    for (role, kind) in &grants {
        session.grant(role, *kind).await?;
        let held = session
            .rights_of(role.as_str())
            .await?
            .ok_or_else(|| CliError::Problem(format!("role {role} disappeared")))?;
        let missing = Rights::of(&[*kind]).beyond(&held);
        if !missing.is_empty() {
            return Err(CliError::Problem(format!(
                "after granting, {role} still lacks {}",
                missing.describe()
            )));
        }
        say!("granted {role} the rights of {kind}");
    }
    say!("setup complete");
    Ok(ExitCode::SUCCESS)
}
