//! `open`, `close`, `delete`: overrides every instance obeys (through the table's triggers).
//! `--note` goes into the change log with the change (`resilient-circuit history`).

use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::admin::Override;
use resilient_circuit::storage::postgres::PostgresOptions;

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

/// Decrees `to` on the key `target` names.
async fn force(opts: &PostgresOptions, target: &KeyArgs, to: Override) -> Result<i64, CliError> {
    let ns = namespace(opts, &target.namespace);
    let mut session = connect(opts).await?;
    Ok(session
        .force(ns, &target.key, to, target.note.as_deref())
        .await?)
}

pub async fn open(opts: &PostgresOptions, args: OpenArgs) -> Result<ExitCode, CliError> {
    let version = force(opts, &args.target, Override::Open { hold: args.hold }).await?;
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
    let version = force(opts, &args, Override::Closed).await?;
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
    let deleted = session.delete(ns, &args.key, args.note.as_deref()).await?;
    let key = escaped(&args.key);
    let ns = escaped(ns);
    if !deleted {
        say!("{key} in namespace {ns} has no row (it is CLOSED)");
    } else {
        say!("{key} in namespace {ns} deleted (every instance sees it CLOSED)");
    }
    Ok(ExitCode::SUCCESS)
}
