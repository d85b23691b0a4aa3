//! `status`: every breaker row of a namespace, as aligned columns or JSON.
//!
//! The JSON (`--json`) is one object, stable: fields are only ever added.
//!
//! ```json
//! {"namespace": "default", "notification_queue_usage": 0.0,
//!  "breakers": [{"key": "payments", "state": "OPEN", "failure_count": 5,
//!                "half_open_in_seconds": 29.5, "version": 42,
//!                "updated_at": "2026-01-01T12:00:00.000Z",
//!                "since": "2026-01-01T11:59:30.000Z", "mode": "normal"}]}
//! ```
//!
//! * `key`, `state`, `failure_count`: the row's `resource_key`, `state`, `failure_count`;
//! * `half_open_in_seconds`: for an OPEN row, seconds until it may go half-open by the database
//!   clock (0 when due), else `null`;
//! * `version`: the row version every change bumps;
//! * `updated_at`: the last write, UTC, RFC 3339 with milliseconds (`null` if unset);
//! * `since`: when the row last changed state;
//! * `mode`: the key's live mode (`normal` without a live configuration);
//! * `notification_queue_usage`: how full the server's notification queue is, 0 to 1 (at 1
//!   every commit that notifies fails: see `check`);
//! * `groups`: the namespace's groups, as `group --json` prints them (members, open members,
//!   the group's own state, its cap and threshold).
//!
//! Keys and other text a client chose are printed with terminal controls escaped.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use serde::Serialize;

use super::text::escaped;
use super::{connect, namespace, CliError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Print JSON instead of columns.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Status<'a> {
    namespace: &'a str,
    notification_queue_usage: f64,
    breakers: Vec<Breaker>,
    groups: Vec<super::group::Group>,
}

#[derive(Debug, Serialize)]
struct Breaker {
    key: String,
    state: String,
    failure_count: i32,
    half_open_in_seconds: Option<f64>,
    version: i64,
    updated_at: Option<String>,
    since: Option<String>,
    mode: String,
}

/// An OPEN row held longer than this was forced "until close" (`open` without `--for` holds
/// for ten years).
const HELD_S: f64 = 9.0 * 365.0 * 86_400.0;

/// RFC 3339 in UTC with milliseconds.
fn stamp(t: Option<std::time::SystemTime>) -> Option<String> {
    t.map(|t| humantime::format_rfc3339_millis(t).to_string())
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace);
    let session = connect(opts).await?;
    let breakers: Vec<Breaker> = session
        .status(ns)
        .await?
        .into_iter()
        .map(|r| Breaker {
            key: r.key,
            state: r.state.as_str().to_owned(),
            failure_count: r.failure_count,
            half_open_in_seconds: r.half_open_in.map(|d| d.as_secs_f64()),
            version: r.version,
            updated_at: stamp(r.updated_at),
            since: stamp(r.since),
            mode: r.mode.as_str().to_owned(),
        })
        .collect();
    let usage = session.queue_usage().await?;
    let groups: Vec<super::group::Group> = session
        .groups(ns)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();

    if args.json {
        let text = serde_json::to_string_pretty(&Status {
            namespace: ns,
            notification_queue_usage: usage,
            breakers,
            groups,
        })
        .map_err(|e| CliError::Problem(format!("encoding JSON: {e}")))?;
        say!("{text}");
        return Ok(ExitCode::SUCCESS);
    }

    let queue = format!("notification queue {:.4}% used", usage * 100.0);
    if breakers.is_empty() {
        say!(
            "no breaker rows in namespace {} (every breaker is CLOSED); {queue}",
            escaped(ns)
        );
        for g in &groups {
            say!("group {}", g.line());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let colour = std::io::stdout().is_terminal();
    let header = [
        "KEY",
        "STATE",
        "FAILURES",
        "HALF-OPEN IN",
        "VERSION",
        "SINCE",
        "MODE",
    ];
    let table: Vec<[String; 7]> = breakers
        .iter()
        .map(|b| {
            [
                escaped(&b.key).into_owned(),
                escaped(&b.state).into_owned(),
                b.failure_count.to_string(),
                b.half_open_in_seconds
                    .map(|s| {
                        if s >= HELD_S {
                            return "until close".to_owned();
                        }
                        // Whole seconds, rounded up: "4m 59s", not "4m 59s 859ms".
                        humantime::format_duration(Duration::from_secs(s.max(0.0).ceil() as u64))
                            .to_string()
                    })
                    .unwrap_or_else(|| "-".into()),
                b.version.to_string(),
                b.since.clone().unwrap_or_else(|| "-".into()),
                escaped(&b.mode).into_owned(),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for row in &table {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7], coloured: bool| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            let text = if i == 1 && coloured {
                paint(cell)
            } else {
                (*cell).to_owned()
            };
            out.push_str(&text);
            if i + 1 < cells.len() {
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out
    };
    say!("{}", line(header, false));
    for row in &table {
        let cells = [
            row[0].as_str(),
            row[1].as_str(),
            row[2].as_str(),
            row[3].as_str(),
            row[4].as_str(),
            row[5].as_str(),
            row[6].as_str(),
        ];
        say!("{}", line(cells, colour));
    }
    for g in &groups {
        say!("group {}", g.line());
    }
    say!("{queue}");
    Ok(ExitCode::SUCCESS)
}

/// A state in its colour (ANSI): OPEN red, HALF_OPEN yellow, CLOSED green.
fn paint(state: &str) -> String {
    let code = match state {
        "OPEN" => "31",
        "HALF_OPEN" => "33",
        "CLOSED" => "32",
        _ => return state.to_owned(),
    };
    format!("\x1b[{code}m{state}\x1b[0m")
}
