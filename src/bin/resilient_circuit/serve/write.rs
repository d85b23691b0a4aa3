//! `POST /api/open`, `/api/close`, `/api/config`: the page's writes. Refused unless the server
//! was started with `--allow-writes` and the request carries the token in an
//! `Authorization: Bearer` header (never a cookie: a page of another site cannot send it). Each
//! runs as the role the server connects with, in a connection of its own, and goes into the
//! change log with the note the operator typed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State as Shared};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use resilient_circuit::admin::{AdminSession, ConfigChange, Override};
use resilient_circuit::{validate_key, Mode, Ratio};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::super::text::escaped;
use super::{digest, ApiError, App};

/// The longest note accepted, in characters.
const MAX_NOTE: usize = 1000;
/// The longest hold or cooldown accepted (`rc_max_ms()`, ten years), in seconds.
const MAX_SECONDS: u64 = 315_360_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenIn {
    key: String,
    note: String,
    /// Hold it OPEN this many seconds; without it, until a close.
    hold_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CloseIn {
    key: String,
    note: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigIn {
    key: String,
    note: String,
    mode: Option<String>,
    cooldown_s: Option<u64>,
    failure_limit: Option<String>,
    success_limit: Option<String>,
    #[serde(default)]
    reset: bool,
}

/// Checks the token in constant time (comparing digests, so that neither the content nor the
/// length of the token shows in the time taken).
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = app.token else {
        return Err(ApiError::ReadOnly);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if openssl::memcmp::eq(&digest(given.trim().as_bytes()), &expected) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The body as `T`, after the token was checked.
fn body<T: DeserializeOwned>(app: &App, headers: &HeaderMap, body: &Bytes) -> Result<T, ApiError> {
    authorize(app, headers)?;
    serde_json::from_slice(body).map_err(|e| ApiError::Bad(format!("the request body: {e}")))
}

/// A key and note as a person typed them: the key as a breaker's, the note one line.
fn checked(key: &str, note: &str) -> Result<(), ApiError> {
    validate_key(key).map_err(|e| ApiError::Bad(e.to_string()))?;
    let note = note.trim();
    if note.is_empty() {
        return Err(ApiError::Bad(
            "a note is required: say why, for the change log".into(),
        ));
    }
    if note.chars().count() > MAX_NOTE {
        return Err(ApiError::Bad(format!(
            "the note has more than {MAX_NOTE} characters"
        )));
    }
    if note.chars().any(char::is_control) {
        return Err(ApiError::Bad(
            "the note must be one line without control characters".into(),
        ));
    }
    Ok(())
}

fn seconds(name: &str, s: u64) -> Result<Duration, ApiError> {
    if s == 0 || s > MAX_SECONDS {
        return Err(ApiError::Bad(format!(
            "{name} must be 1 to {MAX_SECONDS} seconds"
        )));
    }
    Ok(Duration::from_secs(s))
}

fn ratio(name: &str, s: &str) -> Result<Ratio, ApiError> {
    let bad = || {
        ApiError::Bad(format!(
            "{name} must be K/N with 1 <= K <= N <= {}",
            Ratio::MAX_DENOMINATOR
        ))
    };
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let k: u32 = k.trim().parse().map_err(|_| bad())?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || k > n || n > Ratio::MAX_DENOMINATOR {
        return Err(bad());
    }
    Ok(Ratio::new(k, n))
}

/// A connection for one write (the reads' one stays out of its transaction).
async fn session(app: &App) -> Result<AdminSession, ApiError> {
    Ok(AdminSession::connect(&app.opts).await?)
}

fn done(message: String) -> Response {
    Json(serde_json::json!({ "message": message })).into_response()
}

/// Tells the server's log who wrote what (keys and notes escaped).
fn audit(
    peer: SocketAddr,
    what: &str,
    key: &str,
    note: &str,
    outcome: &Result<Response, ApiError>,
) {
    let result = match outcome {
        Ok(_) => "done".to_owned(),
        Err(e) => format!("failed: {}", e.message()),
    };
    eprintln!(
        "write from {peer}: {what} {} (note: {}): {}",
        escaped(key),
        escaped(note),
        escaped(&result)
    );
}

#[tracing::instrument(name = "serve.open", skip_all, fields(%peer))]
pub(super) async fn open(
    Shared(app): Shared<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let input: OpenIn = body(&app, &headers, &raw)?;
    checked(&input.key, &input.note)?;
    let hold = input.hold_s.map(|s| seconds("hold_s", s)).transpose()?;
    let outcome = async {
        let version = session(&app)
            .await?
            .force(
                &app.ns,
                &input.key,
                Override::Open { hold },
                Some(input.note.trim()),
            )
            .await?;
        let how_long = hold.map_or_else(
            || "until closed".to_owned(),
            |d| format!("for {}", humantime::format_duration(d)),
        );
        Ok(done(format!("OPEN {how_long} (version {version})")))
    }
    .await;
    audit(peer, "open", &input.key, &input.note, &outcome);
    outcome
}

#[tracing::instrument(name = "serve.close", skip_all, fields(%peer))]
pub(super) async fn close(
    Shared(app): Shared<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let input: CloseIn = body(&app, &headers, &raw)?;
    checked(&input.key, &input.note)?;
    let outcome = async {
        let version = session(&app)
            .await?
            .force(
                &app.ns,
                &input.key,
                Override::Closed,
                Some(input.note.trim()),
            )
            .await?;
        Ok(done(format!("CLOSED (version {version})")))
    }
    .await;
    audit(peer, "close", &input.key, &input.note, &outcome);
    outcome
}

#[tracing::instrument(name = "serve.config", skip_all, fields(%peer))]
pub(super) async fn config(
    Shared(app): Shared<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    raw: Bytes,
) -> Result<Response, ApiError> {
    let input: ConfigIn = body(&app, &headers, &raw)?;
    checked(&input.key, &input.note)?;
    let mut change = ConfigChange::new().note(input.note.trim());
    if input.reset {
        change = change.reset();
    }
    if let Some(mode) = &input.mode {
        let mode: Mode = mode
            .parse()
            .map_err(|e: resilient_circuit::ConfigError| ApiError::Bad(e.to_string()))?;
        change = change.mode(mode);
    }
    if let Some(s) = input.cooldown_s {
        change = change.cooldown(seconds("cooldown_s", s)?);
    }
    if let Some(r) = &input.failure_limit {
        change = change.failure_limit(ratio("failure_limit", r)?);
    }
    if let Some(r) = &input.success_limit {
        change = change.success_limit(ratio("success_limit", r)?);
    }
    if !change.changes_anything() {
        return Err(ApiError::Bad("the request changes nothing".into()));
    }
    change
        .validate()
        .map_err(|e| ApiError::Bad(e.to_string()))?;
    let outcome = async {
        let live = session(&app)
            .await?
            .configure(&app.ns, &input.key, &change)
            .await?;
        Ok(done(match live {
            Some(c) => format!(
                "configured: {} (version {})",
                super::page::describe(&c),
                c.version
            ),
            None => "configuration reset: the code's values, mode normal".to_owned(),
        }))
    }
    .await;
    audit(peer, "config", &input.key, &input.note, &outcome);
    outcome
}
