//! `open`, `close`, `delete`: overrides every instance obeys (through the table's triggers).
//! `--note` goes into the change log with the change (`resilient-circuit history`).

use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::storage::postgres::admin::AdminSession;
use resilient_circuit::storage::postgres::PostgresOptions;

use tokio_postgres::types::Type;

use super::text::escaped;
use super::{connect, namespace, CliError};

/// `rc_max_ms()`: the longest hold the SQL accepts (ten years), "until close".
const MAX_MS: i64 = 315_360_000_000;

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// The breaker's key.
    key: String,
    /// The namespace (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Why, for the change log (`history` shows it), e.g. --note "vendor outage, ticket 123".
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct OpenArgs {
    #[command(flatten)]
    target: KeyArgs,
    /// Hold it OPEN this long (e.g. 30s, 5m, 1h); without it, until `close`.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    hold: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 5m, 1h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d.as_millis() > MAX_MS as u128 {
        return Err("at most 10 years (3650 days)".into());
    }
    Ok(d)
}

async fn force(
    opts: &PostgresOptions,
    target: &KeyArgs,
    state: &str,
    ms: i64,
) -> Result<i64, CliError> {
    let ns = namespace(opts, &target.namespace);
    let mut session = connect(opts).await?;
    let tx = noted(&mut session, &target.note).await?;
    let rows = tx
        .query_typed(
            "SELECT o_version FROM public.rc_force($1, $2, $3, $4)",
            &[
                (&ns, Type::TEXT),
                (&target.key, Type::TEXT),
                (&state, Type::TEXT),
                (&ms, Type::INT8),
            ],
        )
        .await
        .map_err(|e| CliError::db("forcing the breaker", e))?;
    tx.commit()
        .await
        .map_err(|e| CliError::db("forcing the breaker", e))?;
    rows.first()
        .map(|r| r.get(0))
        .ok_or_else(|| CliError::Problem("rc_force returned no row".into()))
}

/// A transaction whose changes the change log records with `note` (the trigger reads
/// `resilient_circuit.note` at commit; set for this transaction only).
async fn noted<'a>(
    session: &'a mut AdminSession,
    note: &Option<String>,
) -> Result<tokio_postgres::Transaction<'a>, CliError> {
    let tx = session
        .client_mut()
        .transaction()
        .await
        .map_err(|e| CliError::db("starting a transaction", e))?;
    if let Some(note) = note {
        tx.query_typed(
            "SELECT pg_catalog.set_config('resilient_circuit.note', $1, true)",
            &[(note, Type::TEXT)],
        )
        .await
        .map_err(|e| CliError::db("recording the note", e))?;
    }
    Ok(tx)
}

pub async fn open(opts: &PostgresOptions, args: OpenArgs) -> Result<ExitCode, CliError> {
    let ms = args
        .hold
        .map_or(MAX_MS, |d| i64::try_from(d.as_millis()).unwrap_or(MAX_MS));
    let version = force(opts, &args.target, "OPEN", ms).await?;
    let how_long = match args.hold {
        Some(d) => format!("for {}", humantime::format_duration(d)),
        None => "until `close`".into(),
    };
    say!(
        "{} in namespace {} is OPEN {how_long} (version {version})",
        escaped(&args.target.key),
        escaped(namespace(opts, &args.target.namespace))
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn close(opts: &PostgresOptions, args: KeyArgs) -> Result<ExitCode, CliError> {
    let version = force(opts, &args, "CLOSED", 0).await?;
    say!(
        "{} in namespace {} is CLOSED (version {version})",
        escaped(&args.key),
        escaped(namespace(opts, &args.namespace))
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(opts: &PostgresOptions, args: KeyArgs) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace);
    let mut session = connect(opts).await?;
    let tx = noted(&mut session, &args.note).await?;
    let deleted: bool = tx
        .query_typed(
            "SELECT o_deleted FROM public.rc_delete($1, $2)",
            &[(&ns, Type::TEXT), (&args.key, Type::TEXT)],
        )
        .await
        .map_err(|e| CliError::db("deleting the breaker", e))?
        .first()
        .is_some_and(|r| r.get(0));
    tx.commit()
        .await
        .map_err(|e| CliError::db("deleting the breaker", e))?;
    let key = escaped(&args.key);
    let ns = escaped(ns);
    if !deleted {
        say!("{key} in namespace {ns} has no row (it is CLOSED)");
    } else {
        say!("{key} in namespace {ns} deleted (every instance sees it CLOSED)");
    }
    Ok(ExitCode::SUCCESS)
}
