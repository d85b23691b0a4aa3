//! `history`: a breaker's changes as the change log recorded them (`rc_changes`, migration
//! `0009`): when (database clock), from, to, who, why. The log keeps changes for its
//! retention (`rc_change_log_settings`, 1 hour by default).
//!
//! The JSON (`--json`) is one object, stable: fields are only ever added.
//!
//! ```json
//! {"namespace": "default", "key": "payments",
//!  "changes": [{"at": "2026-01-01T12:00:00.000Z", "from": "CLOSED", "to": "OPEN",
//!               "version": 42, "actor": {"instance": "pod-1:7:18f0…", "user": "app", …},
//!               "why": {"failures": 5, "window": [...], "note": "…"}}]}
//! ```
//!
//! `why` may also hold `quorum` (a `TripPolicy::Quorum` opening: `votes`, `needed`,
//! `within_ms` and the `voters`, each with its `instance`, `failures` and `calls`), and, for the
//! end of a half-open round, `probes` (`successes`, `failures`, `needed`, `probes`) with, when it
//! reopened, `reopens` and the `cooldown_ms` it rests (migration `0011`), and `fleet_rate` (a
//! `TripPolicy::FleetRate` opening: the fleet's `failures` and `calls`, the reporting
//! `instances`, the `limit`, `min_calls` and `period_ms`; migration `0012`), and `config` (a
//! live configuration's mode entering or leaving `forced_open`: `mode`, `note`; migration
//! `0013`).

use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use serde::Serialize;

use super::text::escaped;
use super::{connect, namespace, CliError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The breaker's key.
    key: String,
    /// The namespace (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Only changes this recent (e.g. 30m, 2h); default: everything the log keeps.
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    since: Option<Duration>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

fn parse_since(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30m, 2h)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    // PostgreSQL intervals hold far more; this bound only keeps the milliseconds in an i64.
    if d.as_millis() > i64::MAX as u128 {
        return Err("too long".into());
    }
    Ok(d)
}

#[derive(Debug, Serialize)]
struct History<'a> {
    namespace: &'a str,
    key: &'a str,
    changes: Vec<Entry>,
}

#[derive(Debug, Serialize)]
struct Entry {
    at: String,
    from: Option<String>,
    to: String,
    version: i64,
    actor: Option<serde_json::Value>,
    why: Option<serde_json::Value>,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace);
    let session = connect(opts).await?;
    let changes: Vec<Entry> = session
        .history(ns, &args.key, args.since)
        .await?
        .into_iter()
        .map(|c| Entry {
            at: humantime::format_rfc3339_millis(c.at).to_string(),
            from: c.from.map(|s| s.as_str().to_owned()),
            to: c.to.map_or("", |s| s.as_str()).to_owned(),
            version: c.version,
            actor: c.actor,
            why: c.why,
        })
        .collect();
    if args.json {
        let text = serde_json::to_string_pretty(&History {
            namespace: ns,
            key: &args.key,
            changes,
        })
        .map_err(|e| CliError::Problem(format!("encoding JSON: {e}")))?;
        say!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if changes.is_empty() {
        say!(
            "no recorded changes of {} in namespace {}{}",
            escaped(&args.key),
            escaped(ns),
            if args.since.is_some() {
                " in that time"
            } else {
                ""
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    for c in &changes {
        // Every text here but the time was chosen by a client: shown, never obeyed.
        let line = format!(
            "{}  {} -> {}  v{}  by {}{}",
            c.at,
            c.from.as_deref().unwrap_or("(new)"),
            c.to,
            c.version,
            who(c.actor.as_ref()),
            why(c.why.as_ref())
        );
        say!("{}", escaped(&line));
    }
    Ok(ExitCode::SUCCESS)
}

/// `instance host:pid:… (user@client)`, or `application (user@client)` for other writers.
pub(super) fn who(actor: Option<&serde_json::Value>) -> String {
    let Some(a) = actor else {
        return "?".into();
    };
    let field = |k: &str| a.get(k).and_then(|v| v.as_str());
    let user = field("user").unwrap_or("?");
    let place = field("client").unwrap_or("local socket");
    match (field("instance"), field("application")) {
        (Some(i), _) => format!("instance {i} ({user}@{place})"),
        (None, Some(app)) => format!("{app} ({user}@{place})"),
        (None, None) => format!("{user}@{place}"),
    }
}

/// `; 5 failures; quorum: …; note: …`: what the log knows of why.
pub(super) fn why(why: Option<&serde_json::Value>) -> String {
    let Some(w) = why else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(n) = w.get("failures").and_then(|v| v.as_i64()) {
        let window = w
            .get("window")
            .and_then(|v| v.as_array())
            .map(|a| format!(" of the last {}", a.len()))
            .unwrap_or_default();
        out.push_str(&format!("; {n} failures{window}"));
    }
    if let Some(q) = w.get("quorum") {
        let count = |field: &str| q.get(field).and_then(|v| v.as_i64()).unwrap_or(0);
        let voters: Vec<&str> = q
            .get("voters")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.get("instance")?.as_str())
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "; quorum: {} votes of {} needed within {} ms ({})",
            count("votes"),
            count("needed"),
            count("within_ms"),
            voters.join(", ")
        ));
    }
    if let Some(r) = w.get("fleet_rate") {
        let count = |field: &str| r.get(field).and_then(|v| v.as_i64()).unwrap_or(0);
        out.push_str(&format!(
            "; fleet rate: {} failures of {} calls from {} instances, limit {} over {} ms",
            count("failures"),
            count("calls"),
            count("instances"),
            r.get("limit").and_then(|v| v.as_str()).unwrap_or("?"),
            count("period_ms")
        ));
    }
    if let Some(p) = w.get("probes") {
        let count = |field: &str| p.get(field).and_then(|v| v.as_i64()).unwrap_or(0);
        out.push_str(&format!(
            "; probes: {} succeeded, {} failed, {} needed",
            count("successes"),
            count("failures"),
            count("needed")
        ));
        if let Some(ms) = w.get("cooldown_ms").and_then(|v| v.as_i64()) {
            let reopens = w.get("reopens").and_then(|v| v.as_i64()).unwrap_or(0);
            out.push_str(&format!("; reopen {reopens}, resting {ms} ms"));
        }
    }
    if let Some(g) = w.get("group") {
        let count = |field: &str| g.get(field).and_then(|v| v.as_i64()).unwrap_or(0);
        let text = |field: &str| g.get(field).and_then(|v| v.as_str()).unwrap_or("?");
        if g.get("refused").is_some() {
            out.push_str(&format!(
                "; group {}: OPEN refused, {} of {} members open, at most {} ({})",
                text("name"),
                count("open"),
                count("members"),
                count("max_open"),
                text("limit"),
            ));
        } else {
            let at = match g.get("open_at").and_then(|v| v.as_str()) {
                Some(r) => format!("opens at {r}"),
                None => "never opens as a whole".into(),
            };
            out.push_str(&format!(
                "; group: {} of {} members open, at most {}, {at}",
                count("open"),
                count("members"),
                text("max_open"),
            ));
        }
    }
    if let Some(o) = w.get("outlier") {
        let count = |field: &str| o.get(field).and_then(|v| v.as_i64()).unwrap_or(0);
        let instance = o.get("instance").and_then(|v| v.as_str()).unwrap_or("?");
        match o.get("outlier").and_then(|v| v.as_bool()) {
            Some(true) => out.push_str(&format!(
                "; outlier: instance {instance}, {} failures of {} calls, the others {} of {} (limit {})",
                count("failures"),
                count("calls"),
                count("others_failures"),
                count("others_calls"),
                o.get("limit").and_then(|v| v.as_str()).unwrap_or("?"),
            )),
            _ if o.get("expired").is_some() => out.push_str(&format!(
                "; outlier no more: instance {instance} stopped reporting"
            )),
            _ => out.push_str(&format!(
                "; outlier no more: instance {instance}, {} failures of {} calls, the others {} of {}",
                count("failures"),
                count("calls"),
                count("others_failures"),
                count("others_calls"),
            )),
        }
    }
    if let Some(c) = w.get("config") {
        let mode = c.get("mode").and_then(|v| v.as_str()).unwrap_or("?");
        match c.get("note").and_then(|v| v.as_str()) {
            Some(note) => out.push_str(&format!("; config: mode {mode} ({note})")),
            None => out.push_str(&format!("; config: mode {mode}")),
        }
    }
    if let Some(note) = w.get("note").and_then(|v| v.as_str()) {
        out.push_str(&format!("; note: {note}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn why_names_the_quorum_and_its_voters() {
        let w = serde_json::json!({
            "failures": 3,
            "quorum": {"votes": 3, "needed": 3, "within_ms": 60000,
                       "voters": [{"instance": "a:1:f"}, {"instance": "b:2:e"}, {"instance": "c:3:d"}]},
            "note": "payments down"
        });
        assert_eq!(
            super::why(Some(&w)),
            "; 3 failures; quorum: 3 votes of 3 needed within 60000 ms (a:1:f, b:2:e, c:3:d); note: payments down"
        );
        assert_eq!(super::why(None), "");
        let rate = serde_json::json!({"failures": 30, "fleet_rate": {
            "failures": 30, "calls": 40, "instances": 4, "limit": "1/2", "min_calls": 20,
            "period_ms": 60000}});
        assert_eq!(
            super::why(Some(&rate)),
            "; 30 failures; fleet rate: 30 failures of 40 calls from 4 instances, limit 1/2 over 60000 ms"
        );
        let reopened = serde_json::json!({
            "probes": {"successes": 1, "failures": 2, "needed": 2, "probes": 3},
            "reopens": 2, "cooldown_ms": 3900
        });
        assert_eq!(
            super::why(Some(&reopened)),
            "; probes: 1 succeeded, 2 failed, 2 needed; reopen 2, resting 3900 ms"
        );
        let refused = serde_json::json!({"group": {"name": "payments", "refused": "OPEN",
            "open": 2, "members": 6, "max_open": 2, "limit": "1/3"}});
        assert_eq!(
            super::why(Some(&refused)),
            "; group payments: OPEN refused, 2 of 6 members open, at most 2 (1/3)"
        );
        let counts = serde_json::json!({"group": {"name": "payments", "open": 3, "members": 6,
            "max_open": "2/3", "open_at": "1/2"}});
        assert_eq!(
            super::why(Some(&counts)),
            "; group: 3 of 6 members open, at most 2/3, opens at 1/2"
        );
        let outlier = serde_json::json!({"outlier": {"instance": "a:1:f", "outlier": true,
            "failures": 40, "calls": 40, "others_failures": 0, "others_calls": 360,
            "limit": "1/20"}});
        assert_eq!(
            super::why(Some(&outlier)),
            "; outlier: instance a:1:f, 40 failures of 40 calls, the others 0 of 360 (limit 1/20)"
        );
        let lapsed = serde_json::json!({"outlier": {"instance": "a:1:f", "outlier": false,
            "expired": true}});
        assert_eq!(
            super::why(Some(&lapsed)),
            "; outlier no more: instance a:1:f stopped reporting"
        );
    }
}
