//! `serve`: the fleet page. One HTTP server shows every breaker of a namespace, live: the rows
//! (`AdminSession::status`), their live configurations, their recorded changes
//! (`AdminSession::history`) and every transition as it happens ([`Storage::changes`], sent to
//! the browsers as server-sent events); `/metrics` gives the same rows to Prometheus.
//!
//! It reads as the role it connects with, and writes (`open`, `close`, `config`) only when
//! started with `--allow-writes` and asked with the token (`Authorization: Bearer`). The page's
//! files are in the binary (`serve/`): it works without a network.
//!
//! This file starts the server and holds what every request shares: the arguments, the token,
//! the routes, the host check, the reads' connection and the errors. The parts:
//! `page.rs` (what the page reads), `live.rs` (the events that keep it live), `write.rs` (the
//! writes), `metrics.rs` (`/metrics`), `assets.rs` (the page's files and headers).

mod assets;
mod live;
mod metrics;
mod page;
mod write;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State as Shared};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use resilient_circuit::admin::{AdminSession, BreakerRow, GroupRow, HistoryEntry};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{LiveConfig, Storage, StorageError};
use serde::Serialize;
use tokio::sync::{broadcast, Mutex, Notify};

use super::text::escaped;
use super::{namespace, CliError};

/// The largest request body accepted (a write is a key, a note and a few numbers).
const BODY_LIMIT: usize = 16 * 1024;
/// The fewest characters a write token may have.
const MIN_TOKEN_LEN: usize = 16;
/// How many events a viewer may fall behind before it is told to load the page's data again.
const EVENT_BUFFER: usize = 4096;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The address to listen on. Loopback by default: to show the page to others, put a proxy
    /// that authenticates in front of it (see the operating reference).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// The namespace to show (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Accept `open`, `close` and `config` from the page, each with the token (RC_SERVE_TOKEN,
    /// or --token-file) in an `Authorization: Bearer` header. Read-only without it.
    #[arg(long)]
    allow_writes: bool,
    /// A file whose first line is the write token (instead of RC_SERVE_TOKEN; never on the
    /// command line, where the process list shows it).
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// A host name the page may be asked for by (the Host header), besides IP addresses and
    /// `localhost`; repeat for more. Other names are refused, so that a site whose name is
    /// made to resolve to this address cannot read the page.
    #[arg(long, value_name = "NAME")]
    allow_host: Vec<String>,
}

/// What every request shares.
struct App {
    ns: String,
    opts: PostgresOptions,
    /// SHA-256 of the write token; `None`: read-only.
    token: Option<[u8; 32]>,
    /// Host names accepted besides IP addresses and `localhost` (lower case).
    hosts: Vec<String>,
    /// The connection reads share; replaced after an error.
    reads: Mutex<Option<Arc<AdminSession>>>,
    /// Events for the viewers, each encoded once.
    events: broadcast::Sender<Sent>,
    /// Keys changed since the last round of row updates.
    dirty: std::sync::Mutex<HashSet<String>>,
    wake: Notify,
    degraded: AtomicBool,
}

/// One server-sent event: its name and its JSON.
#[derive(Clone)]
struct Sent {
    name: &'static str,
    data: Arc<str>,
}

/// Why a request failed; the body is `{"error": "..."}`.
#[derive(Debug)]
enum ApiError {
    /// The request is malformed.
    Bad(String),
    /// Writes are off.
    ReadOnly,
    /// No token, or not the right one.
    Unauthorized,
    /// The database refused or failed.
    Storage(StorageError),
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ApiError::Storage(e)
    }
}

impl ApiError {
    /// What went wrong, in a line.
    fn message(&self) -> String {
        self.parts().1
    }

    fn parts(&self) -> (StatusCode, String) {
        match self {
            ApiError::Bad(m) => (StatusCode::BAD_REQUEST, m.clone()),
            ApiError::ReadOnly => (
                StatusCode::FORBIDDEN,
                "this page is read-only (the server was started without --allow-writes)".into(),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "refused: a write needs the token in an Authorization: Bearer header".into(),
            ),
            ApiError::Storage(e) => {
                let status = match e.sqlstate() {
                    // insufficient_privilege: the role the server connects with may not.
                    Some("42501") => StatusCode::FORBIDDEN,
                    // What the functions refuse (a forced-open key, a bad value).
                    Some(s) if s.starts_with("22") || s.starts_with("23") || s == "P0001" => {
                        StatusCode::CONFLICT
                    }
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.parts();
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace).to_owned();
    let token = token(&args)?;
    let opts = opts.clone().namespace(&ns);
    // The reads' connection first: an operator starting the page wants to hear at once that
    // the database is not there, or that the role may not read the breakers.
    let first = AdminSession::connect(&opts).await?;
    first.status(&ns).await?;
    // Not strict: a reader's instance follows by polling, though the parts of a load that
    // only an instance may read are refused to it.
    let storage = Storage::connect_with(opts.clone()).await?;
    let app = Arc::new(App {
        ns: ns.clone(),
        opts: opts.clone(),
        token,
        hosts: args
            .allow_host
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        reads: Mutex::new(Some(Arc::new(first))),
        events: broadcast::channel(EVENT_BUFFER).0,
        dirty: std::sync::Mutex::new(HashSet::new()),
        wake: Notify::new(),
        degraded: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let bound = listener.local_addr()?;
    tokio::spawn(live::follow(app.clone(), storage));
    tokio::spawn(live::rounds(app.clone()));
    let writes = if app.token.is_some() {
        "writes allowed with the token"
    } else {
        "read-only"
    };
    say!(
        "serving namespace {} of {opts} on http://{bound}/ ({writes}; Ctrl-C to stop)",
        escaped(&ns)
    );
    if !bound.ip().is_loopback() {
        eprintln!(
            "warning: listening on {bound}, not loopback: anyone who reaches it sees every key (put an authenticating proxy in front)"
        );
    }
    let server = axum::serve(
        listener,
        router(app).into_make_service_with_connect_info::<SocketAddr>(),
    );
    tokio::select! {
        r = server => r.map_err(|e| CliError::Problem(format!("the server stopped: {e}")))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The write token's digest, from RC_SERVE_TOKEN or `--token-file`; `None` when writes are
/// off. Refuses `--allow-writes` without a token, and a token too short to be one.
fn token(args: &Args) -> Result<Option<[u8; 32]>, CliError> {
    let given = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!(
                    "cannot read the token file {}: {e}",
                    path.display()
                ))
            })?;
            Some(text.lines().next().unwrap_or("").trim().to_owned())
        }
        None => std::env::var("RC_SERVE_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned()),
    };
    let given = given.filter(|t| !t.is_empty());
    if !args.allow_writes {
        if given.is_some() {
            eprintln!("a write token is set but --allow-writes is not: the page is read-only");
        }
        return Ok(None);
    }
    let Some(token) = given else {
        return Err(CliError::Usage(
            "--allow-writes needs a token: set RC_SERVE_TOKEN or pass --token-file".into(),
        ));
    };
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(CliError::Usage(format!(
            "the write token must have at least {MIN_TOKEN_LEN} characters"
        )));
    }
    Ok(Some(digest(token.as_bytes())))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::page))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/api/state", get(page::state))
        .route("/api/history", get(page::history))
        .route("/api/timeline", get(page::timeline))
        .route("/events", get(live::events))
        .route("/metrics", get(metrics::metrics))
        .route("/api/open", post(write::open))
        .route("/api/close", post(write::close))
        .route("/api/config", post(write::config))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), host))
        .layer(axum::middleware::from_fn(assets::headers))
        .with_state(app)
}

/// Refuses a request for a host name the server does not answer to (421): a page elsewhere
/// whose name was made to resolve to this address (DNS rebinding) would otherwise be
/// same-origin with this one and read it.
async fn host(
    Shared(app): Shared<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let name = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if host_allowed(name, &app.hosts) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            Json(serde_json::json!({
                "error": "this server does not answer to that host name (see --allow-host)"
            })),
        )
            .into_response()
    }
}

/// True for an IP address, `localhost` or one of `allowed`, with or without a port.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    let name = name.to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || allowed.contains(&name)
}

impl App {
    /// The reads' connection, connecting again after an error.
    async fn session(&self) -> Result<Arc<AdminSession>, ApiError> {
        let mut held = self.reads.lock().await;
        if let Some(s) = held.as_ref() {
            return Ok(s.clone());
        }
        let s = Arc::new(AdminSession::connect(&self.opts).await?);
        *held = Some(s.clone());
        Ok(s)
    }

    /// Forgets `failed` (if still the reads' connection): the next read connects again.
    async fn forget(&self, failed: &Arc<AdminSession>) {
        let mut held = self.reads.lock().await;
        if held.as_ref().is_some_and(|s| Arc::ptr_eq(s, failed)) {
            *held = None;
        }
    }

    /// Runs `read` on the reads' connection; after an error the next read connects again.
    async fn read<T, F, Fut>(&self, read: F) -> Result<T, ApiError>
    where
        F: FnOnce(Arc<AdminSession>) -> Fut,
        Fut: std::future::Future<Output = Result<T, StorageError>>,
    {
        let s = self.session().await?;
        match read(s.clone()).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.forget(&s).await;
                Err(e.into())
            }
        }
    }

    async fn status(&self) -> Result<Vec<BreakerRow>, ApiError> {
        let ns = &self.ns;
        self.read(|s| async move { s.status(ns).await }).await
    }

    /// The namespace's groups; none when the role may not read them (a reader granted before
    /// groups existed), rather than a page that fails.
    async fn groups(&self) -> Result<Vec<GroupRow>, ApiError> {
        let ns = &self.ns;
        self.read(|s| async move {
            match s.groups(ns).await {
                Err(e) if e.sqlstate() == Some("42501") => Ok(Vec::new()),
                other => other,
            }
        })
        .await
    }

    async fn history(
        &self,
        key: &str,
        since: Option<Duration>,
    ) -> Result<Vec<HistoryEntry>, ApiError> {
        let ns = &self.ns;
        self.read(|s| async move { s.history(ns, key, since).await })
            .await
    }

    async fn configurations(&self) -> Result<HashMap<String, LiveConfig>, ApiError> {
        let ns = &self.ns;
        self.read(|s| async move { Ok(s.configurations(ns).await?.into_iter().collect()) })
            .await
    }

    fn send(&self, name: &'static str, value: &impl Serialize) {
        // Encoding plain data cannot fail; no viewer is not an error.
        if let Ok(json) = serde_json::to_string(value) {
            let _ = self.events.send(Sent {
                name,
                data: json.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_addresses_localhost_and_the_names_allowed_are_answered() {
        let allowed = vec!["breakers.internal".to_owned()];
        for ok in [
            "127.0.0.1:9100",
            "127.0.0.1",
            "[::1]:9100",
            "localhost:9100",
            "LOCALHOST",
            "breakers.internal",
            "Breakers.Internal:443",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for refused in [
            "",
            "evil.example",
            "evil.example:9100",
            "127.0.0.1.evil.example",
            "[evil]:1",
            "localhost.evil.example",
        ] {
            assert!(!host_allowed(refused, &allowed), "{refused}");
        }
    }
}
