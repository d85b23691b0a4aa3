//! `status`: every breaker row of a namespace, as aligned columns or JSON.
//!
//! The JSON (`--json`) is one object, stable: fields are only ever added.
//!
//! ```json
//! {"namespace": "default",
//!  "breakers": [{"key": "payments", "state": "OPEN", "failure_count": 5,
//!                "half_open_in_seconds": 29.5, "version": 42,
//!                "updated_at": "2026-01-01T12:00:00.000Z"}]}
//! ```
//!
//! * `key`, `state`, `failure_count`: the row's `resource_key`, `state`, `failure_count`;
//! * `half_open_in_seconds`: for an OPEN row, seconds until it may go half-open by the database
//!   clock (0 when due), else `null`;
//! * `version`: the row version every change bumps;
//! * `updated_at`: the last change, UTC, RFC 3339 with milliseconds (`null` if unset).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use serde::Serialize;

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
    breakers: Vec<Breaker>,
}

#[derive(Debug, Serialize)]
struct Breaker {
    key: String,
    state: String,
    failure_count: i32,
    half_open_in_seconds: Option<f64>,
    version: i64,
    updated_at: Option<String>,
}

/// An OPEN row held longer than this was forced "until close" (`open` without `--for` holds
/// for ten years).
const HELD_S: f64 = 9.0 * 365.0 * 86_400.0;

const QUERY: &str = "SELECT resource_key::text, state::text, failure_count, \
       CASE WHEN state = 'OPEN' THEN public.rc_remaining_ms(open_until) END AS remaining_ms, \
       version, \
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS updated_at \
     FROM public.rc_circuit_breakers WHERE namespace = $1 ORDER BY resource_key";

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace);
    let session = connect(opts).await?;
    let rows = session
        .client()
        .query(QUERY, &[&ns])
        .await
        .map_err(|e| CliError::db("reading the breakers", e))?;
    let breakers: Vec<Breaker> = rows
        .iter()
        .map(|r| Breaker {
            key: r.get(0),
            state: r.get(1),
            failure_count: r.get(2),
            half_open_in_seconds: r.get::<_, Option<i64>>(3).map(|ms| ms as f64 / 1000.0),
            version: r.get(4),
            updated_at: r.get(5),
        })
        .collect();

    if args.json {
        let text = serde_json::to_string_pretty(&Status {
            namespace: ns,
            breakers,
        })
        .map_err(|e| CliError::Problem(format!("encoding JSON: {e}")))?;
        say!("{text}");
        return Ok(ExitCode::SUCCESS);
    }

    if breakers.is_empty() {
        say!("no breaker rows in namespace {ns} (every breaker is CLOSED)");
        return Ok(ExitCode::SUCCESS);
    }
    let colour = std::io::stdout().is_terminal();
    let header = [
        "KEY",
        "STATE",
        "FAILURES",
        "HALF-OPEN IN",
        "VERSION",
        "UPDATED",
    ];
    let table: Vec<[String; 6]> = breakers
        .iter()
        .map(|b| {
            [
                b.key.clone(),
                b.state.clone(),
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
                b.updated_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for row in &table {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6], coloured: bool| {
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
        ];
        say!("{}", line(cells, colour));
    }
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
