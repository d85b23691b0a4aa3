//! The command line: arguments, the connection every command shares, errors and exit codes.
//!
//! Exit codes: 0 ok, 1 a problem was found (or the database failed), 2 usage.

/// `println!` that reports a closed stdout (`| head`) as an error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

mod check;
mod config;
mod force;
mod group;
mod history;
mod serve;
mod setup;
mod status;
mod text;
mod watch;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use resilient_circuit::admin::{AdminSession, RoleName};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{ConfigError, StorageError};

/// Set up, check, watch and override the circuit breakers a fleet shares through PostgreSQL.
///
/// The database is configured by the same RC_DB_* variables as the library (RC_DB_DSN, or
/// RC_DB_HOST, RC_DB_PASSWORD, RC_DB_PORT, RC_DB_NAME, RC_DB_USER, RC_DB_SSLMODE, ...), and the
/// namespace by RC_NAMESPACE. Exit codes: 0 ok, 1 problem found, 2 usage.
#[derive(Debug, Parser)]
#[command(name = "resilient-circuit", version)]
pub struct Cli {
    /// Connection string (URL or conninfo) used instead of the RC_DB_* variables. It shows in
    /// the process list: prefer RC_DB_DSN when it carries a password.
    #[arg(long, global = true, value_name = "DSN")]
    dsn: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the migrations and grant roles what the breakers need.
    #[command(alias = "pg-setup")]
    Setup(setup::Args),
    /// Check the schema, triggers, functions and (with --role) a role's grants.
    #[command(alias = "pg-check")]
    Check(check::Args),
    /// Every breaker row of a namespace.
    Status(status::Args),
    /// Print transitions as they happen, until interrupted.
    Watch(watch::Args),
    /// A breaker's recorded changes: when, from, to, by whom, why.
    History(history::Args),
    /// Read or change a breaker's live configuration (cooldown, limits, mode) for every
    /// instance; --reset returns to the code's values.
    Config(config::Args),
    /// Force a breaker OPEN for every instance (until `close`, or for a duration).
    Open(force::OpenArgs),
    /// Force a breaker CLOSED for every instance.
    Close(force::KeyArgs),
    /// Delete a breaker's row (every instance sees it CLOSED).
    Delete(force::KeyArgs),
    /// List the groups of breakers (members open of how many, cap, threshold, state), or
    /// change one's cap and threshold live for every instance.
    Group(group::Args),
    /// Serve the fleet page: every breaker of a namespace, live, its history and a timeline,
    /// and /metrics for Prometheus. Read-only unless --allow-writes (with a token).
    Serve(serve::Args),
}

/// Why a command failed; printed as one line on stderr.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the configuration is unusable (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The configuration could not be read (exit 2).
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The database failed or refused (exit 1).
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// Something the command checks is wrong (exit 1).
    #[error("{0}")]
    Problem(String),
    /// Writing the output failed (exit 1).
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::Storage(_) | CliError::Problem(_) | CliError::Io(_) => 1,
        }
    }

    /// Stdout was closed by its reader (`| head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Runs the command; `Ok` carries the exit code of a command that reports rather than fails.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let opts = options(cli.dsn.as_deref())?;
    match cli.command {
        Command::Setup(a) => setup::run(&opts, a).await,
        Command::Check(a) => check::run(&opts, a).await,
        Command::Status(a) => status::run(&opts, a).await,
        Command::Watch(a) => watch::run(&opts, a).await,
        Command::History(a) => history::run(&opts, a).await,
        Command::Config(a) => config::run(&opts, a).await,
        Command::Open(a) => force::open(&opts, a).await,
        Command::Close(a) => force::close(&opts, a).await,
        Command::Delete(a) => force::delete(&opts, a).await,
        Command::Group(a) => group::run(&opts, a).await,
        Command::Serve(a) => serve::run(&opts, a).await,
    }
}

/// The settings: `--dsn` (with RC_NAMESPACE) or the RC_DB_* variables.
fn options(dsn: Option<&str>) -> Result<PostgresOptions, CliError> {
    let opts = match dsn {
        Some(dsn) => {
            let mut opts = PostgresOptions::from_dsn(dsn)?;
            if let Some(ns) = std::env::var("RC_NAMESPACE").ok().filter(|v| !v.is_empty()) {
                opts = opts.namespace(ns);
            }
            opts
        }
        None => PostgresOptions::from_env()?.ok_or_else(|| {
            CliError::Usage(
                "PostgreSQL is not configured: set RC_DB_DSN (or RC_DB_HOST and RC_DB_PASSWORD), or pass --dsn"
                    .into(),
            )
        })?,
    };
    Ok(opts)
}

/// One connection for the command.
pub async fn connect(opts: &PostgresOptions) -> Result<AdminSession, CliError> {
    Ok(AdminSession::connect(opts).await?)
}

/// The namespace a command works on: `--namespace`, else the configured one.
pub fn namespace<'a>(opts: &'a PostgresOptions, given: &'a Option<String>) -> &'a str {
    given.as_deref().unwrap_or_else(|| opts.namespace_name())
}

/// Asks `question` on the terminal; true only for an explicit yes. Refuses (usage) when stdin
/// is not a terminal, since nobody could answer.
pub fn confirm(question: &str) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "refusing to change the database without --yes (stdin is not a terminal to ask on)"
                .into(),
        ));
    }
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// `name` as a role's name; a name that cannot be a role is a usage error.
pub fn role_name(name: &str) -> Result<RoleName, CliError> {
    RoleName::new(name).map_err(|e| CliError::Usage(e.to_string()))
}
