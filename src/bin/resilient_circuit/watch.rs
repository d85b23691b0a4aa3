//! `watch`: one line per announced change (time, namespace, key, state, version), until Ctrl-C.

use std::io::Write;
use std::process::ExitCode;

use resilient_circuit::storage::postgres::PostgresOptions;

use super::{connect, CliError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this namespace (default: every namespace).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let mut session = connect(opts).await?;
    let authenticated = session.listen().await?;
    match &args.namespace {
        Some(ns) => eprintln!("watching namespace {ns} (Ctrl-C to stop)"),
        None => eprintln!("watching every namespace (Ctrl-C to stop)"),
    }
    if !authenticated {
        eprintln!(
            "this role may not read the notification key: changes are shown unverified (marked ?)"
        );
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut out = std::io::stdout();
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            next = session.next_change() => next,
        };
        let change = match next {
            None => {
                return Err(CliError::Problem(
                    "the connection to the database was lost".into(),
                ))
            }
            Some(Err(why)) => {
                eprintln!("ignored a notification: {why}");
                continue;
            }
            Some(Ok(c)) => c,
        };
        if authenticated && !change.authenticated {
            eprintln!("ignored a notification with a bad signature (not sent by the trigger)");
            continue;
        }
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mark = if change.authenticated { "" } else { " ?" };
        if change.reset {
            writeln!(
                out,
                "{now} * * RESET (table truncated: every breaker CLOSED) v{}{mark}",
                change.version
            )?;
        } else if args
            .namespace
            .as_deref()
            .map_or(true, |ns| ns == change.namespace)
        {
            writeln!(
                out,
                "{now} {} {} {} v{}{mark}",
                change.namespace, change.key, change.state, change.version
            )?;
        }
        out.flush()?;
    }
}
