//! `GET /metrics`: the fleet's rows in the Prometheus text format, so that one scrape shows
//! every key of the namespace without instrumenting every service.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State as Shared;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use resilient_circuit::admin::{BreakerRow, GroupRow};
use resilient_circuit::State;

use super::App;

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

/// The label value of a state, as the instances' `resilient_circuit_state` spells it.
fn label(s: State) -> &'static str {
    match s {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half_open",
    }
}

/// `v` as a label value: backslash, double quote and line feed escaped, as the exposition
/// format requires.
pub(super) fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[tracing::instrument(name = "serve.metrics", skip_all)]
pub(super) async fn metrics(Shared(app): Shared<Arc<App>>) -> Response {
    let read = async { Ok::<_, super::ApiError>((app.status().await?, app.groups().await?)) };
    match read.await {
        Ok((rows, groups)) => {
            let mut text = exposition(&app.ns, &rows);
            text.push_str(&group_exposition(&app.ns, &groups));
            let mut r = text.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Err(e) => {
            let text = match e {
                super::ApiError::Storage(e) => e.to_string(),
                _ => "the rows could not be read".into(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the breakers failed: {text}\n"),
            )
                .into_response()
        }
    }
}

/// The text of a scrape: per key its state (1 for the row's, 0 for the two others), when it
/// changed, the cooldown left when OPEN and a mode other than normal; per state the rows.
pub(super) fn exposition(ns: &str, rows: &[BreakerRow]) -> String {
    let ns = label_value(ns);
    let mut out = String::with_capacity(256 + rows.len() * 400);
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP resilient_circuit_fleet_state 1 for the state the key's shared row is in, 0 for the two others\n\
         # TYPE resilient_circuit_fleet_state gauge"
    );
    let keys: Vec<String> = rows.iter().map(|r| label_value(&r.key)).collect();
    for (r, key) in rows.iter().zip(&keys) {
        for s in STATES {
            let _ = writeln!(
                out,
                "resilient_circuit_fleet_state{{namespace=\"{ns}\",key=\"{key}\",state=\"{}\"}} {}",
                label(s),
                u8::from(r.state == s)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP resilient_circuit_fleet_state_since_timestamp_seconds When the key's row last changed state (Unix time)\n\
         # TYPE resilient_circuit_fleet_state_since_timestamp_seconds gauge"
    );
    for (r, key) in rows.iter().zip(&keys) {
        if let Some(since) = r.since.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            let _ = writeln!(
                out,
                "resilient_circuit_fleet_state_since_timestamp_seconds{{namespace=\"{ns}\",key=\"{key}\"}} {:.3}",
                since.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP resilient_circuit_fleet_half_open_in_seconds For an OPEN row, seconds until it may go half-open (database clock)\n\
         # TYPE resilient_circuit_fleet_half_open_in_seconds gauge"
    );
    for (r, key) in rows.iter().zip(&keys) {
        if let Some(d) = r.half_open_in {
            let _ = writeln!(
                out,
                "resilient_circuit_fleet_half_open_in_seconds{{namespace=\"{ns}\",key=\"{key}\"}} {:.3}",
                d.as_secs_f64()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP resilient_circuit_fleet_mode 1 for a key whose live mode is not normal, labelled with it\n\
         # TYPE resilient_circuit_fleet_mode gauge"
    );
    for (r, key) in rows.iter().zip(&keys) {
        if r.mode != resilient_circuit::Mode::Normal {
            let _ = writeln!(
                out,
                "resilient_circuit_fleet_mode{{namespace=\"{ns}\",key=\"{key}\",mode=\"{}\"}} 1",
                r.mode.as_str()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP resilient_circuit_fleet_rows The namespace's rows in each state (a key without a row is CLOSED)\n\
         # TYPE resilient_circuit_fleet_rows gauge"
    );
    for s in STATES {
        let n = rows.iter().filter(|r| r.state == s).count();
        let _ = writeln!(
            out,
            "resilient_circuit_fleet_rows{{namespace=\"{ns}\",state=\"{}\"}} {n}",
            label(s)
        );
    }
    out
}

/// A gauge of groups: its name, its help, its value for a group.
type Series = (&'static str, &'static str, fn(&GroupRow) -> u32);

/// The groups' part of a scrape: per group its members, those open, and whether it is OPEN as
/// a whole.
pub(super) fn group_exposition(ns: &str, groups: &[GroupRow]) -> String {
    let ns = label_value(ns);
    let mut out = String::with_capacity(groups.len() * 300 + 400);
    let series: [Series; 3] = [
        (
            "resilient_circuit_fleet_group_open_members",
            "A group's members OPEN or HALF_OPEN",
            |g| g.open,
        ),
        (
            "resilient_circuit_fleet_group_members",
            "A group's members",
            |g| g.members,
        ),
        (
            "resilient_circuit_fleet_group_open",
            "1 while the group as a whole is OPEN (its open members reach its threshold)",
            |g| u32::from(g.state == State::Open),
        ),
    ];
    for (name, help, value) in series {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for g in groups {
            let _ = writeln!(
                out,
                "{name}{{namespace=\"{ns}\",group=\"{}\"}} {}",
                label_value(&g.name),
                value(g)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::label_value;

    #[test]
    fn label_values_escape_what_the_format_requires() {
        assert_eq!(label_value("payments"), "payments");
        assert_eq!(label_value("a\"b"), "a\\\"b");
        assert_eq!(label_value("a\\b"), "a\\\\b");
        assert_eq!(label_value("a\nb"), "a\\nb");
        assert_eq!(label_value("<script>"), "<script>");
    }
}
