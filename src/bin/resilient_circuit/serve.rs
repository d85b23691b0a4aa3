//! `serve`: the fleet page. One HTTP server shows every breaker of a namespace, live: the rows
//! (`AdminSession::status`), their live configurations, their recorded changes
//! (`AdminSession::history`) and every transition as it happens ([`Storage::changes`], sent to
//! the browsers as server-sent events); `/metrics` gives the same rows to Prometheus.
//!
//! It reads as the role it connects with, and writes (`open`, `close`, `config`) only when
//! started with `--allow-writes` and asked with the token (`Authorization: Bearer`). The page's
//! files are in the binary (`serve/`): it works without a network.

mod assets;
mod metrics;
mod write;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Query, State as Shared};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;
use resilient_circuit::admin::{AdminSession, BreakerRow, GroupRow, HistoryEntry};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{
    Change, ChangeKind, LiveConfig, Ratio, State, Storage, StorageError, TripPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, Mutex, Notify};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use super::text::escaped;
use super::{namespace, CliError};

/// The largest request body accepted (a write is a key, a note and a few numbers).
const BODY_LIMIT: usize = 16 * 1024;
/// The fewest characters a write token may have.
const MIN_TOKEN_LEN: usize = 16;
/// How many events a viewer may fall behind before it is told to load the page's data again.
const EVENT_BUFFER: usize = 4096;
/// How many keys' changes the timeline reads at most (the most recently changed).
const TIMELINE_KEYS: usize = 500;
/// How many keys one round of row updates reads the history of at most.
const ROUND_KEYS: usize = 200;
/// The least time between two rounds of row updates (each reads every row once).
const ROUND_EVERY: Duration = Duration::from_millis(250);
/// An OPEN row held longer than this was forced "until close".
const HELD_MS: u64 = 9 * 365 * 86_400_000;

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
    tokio::spawn(follow(app.clone(), storage));
    tokio::spawn(rounds(app.clone()));
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
        .route("/api/state", get(state))
        .route("/api/history", get(history))
        .route("/api/timeline", get(timeline))
        .route("/events", get(events))
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

    async fn status(&self) -> Result<Vec<BreakerRow>, ApiError> {
        let s = self.session().await?;
        match s.status(&self.ns).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                self.forget(&s).await;
                Err(e.into())
            }
        }
    }

    /// The namespace's groups; none when the role may not read them (a reader granted before
    /// groups existed), rather than a page that fails.
    async fn groups(&self) -> Result<Vec<GroupRow>, ApiError> {
        let s = self.session().await?;
        match s.groups(&self.ns).await {
            Ok(rows) => Ok(rows),
            Err(e) if e.sqlstate() == Some("42501") => Ok(Vec::new()),
            Err(e) => {
                self.forget(&s).await;
                Err(e.into())
            }
        }
    }

    async fn history(
        &self,
        key: &str,
        since: Option<Duration>,
    ) -> Result<Vec<HistoryEntry>, ApiError> {
        let s = self.session().await?;
        match s.history(&self.ns, key, since).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                self.forget(&s).await;
                Err(e.into())
            }
        }
    }

    async fn configurations(&self) -> Result<HashMap<String, LiveConfig>, ApiError> {
        let s = self.session().await?;
        match s.configurations(&self.ns).await {
            Ok(rows) => Ok(rows.into_iter().collect()),
            Err(e) => {
                self.forget(&s).await;
                Err(e.into())
            }
        }
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

/// Milliseconds since the Unix epoch.
fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A row as the page shows it.
#[derive(Debug, Serialize)]
struct RowOut {
    key: String,
    state: &'static str,
    since_ms: Option<u64>,
    /// For an OPEN row, milliseconds until it may go half-open (`held`: forced until close).
    half_open_in_ms: Option<u64>,
    held: bool,
    version: i64,
    failure_count: i32,
    mode: &'static str,
    /// The live configuration, in words (`None`: the code's values).
    config: Option<String>,
    /// The last recorded change, when it was read with the row.
    last: Option<EntryOut>,
}

/// A recorded change as the page shows it.
#[derive(Debug, Serialize)]
struct EntryOut {
    at_ms: u64,
    from: Option<&'static str>,
    to: Option<&'static str>,
    version: i64,
    who: String,
    why: String,
}

fn row_out(r: BreakerRow, config: Option<&LiveConfig>, last: Option<EntryOut>) -> RowOut {
    let half_open_in_ms = r
        .half_open_in
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    RowOut {
        state: r.state.as_str(),
        since_ms: r.since.map(ms),
        held: half_open_in_ms.is_some_and(|ms| ms >= HELD_MS),
        half_open_in_ms,
        version: r.version,
        failure_count: r.failure_count,
        mode: r.mode.as_str(),
        config: config.map(describe),
        last,
        key: r.key,
    }
}

fn entry_out(e: &HistoryEntry) -> EntryOut {
    EntryOut {
        at_ms: ms(e.at),
        from: e.from.map(State::as_str),
        to: e.to.map(State::as_str),
        version: e.version,
        who: super::history::who(e.actor.as_ref()),
        why: super::history::why(e.why.as_ref())
            .trim_start_matches("; ")
            .to_owned(),
    }
}

/// A live configuration in words: `mode forced_open, cooldown 30s, failure limit 3/10`.
fn describe(c: &LiveConfig) -> String {
    let mut parts = vec![format!("mode {}", c.mode)];
    if let Some(d) = c.cooldown {
        parts.push(format!("cooldown {}", humantime::format_duration(d)));
    }
    let ratio = |r: Ratio| r.to_string();
    if let Some(r) = c.failure_limit {
        parts.push(format!("failure limit {}", ratio(r)));
    }
    if let Some(r) = c.success_limit {
        parts.push(format!("success limit {}", ratio(r)));
    }
    match c.trip_policy {
        None => {}
        Some(TripPolicy::Quorum { instances, within }) => parts.push(format!(
            "quorum of {instances} within {}",
            humantime::format_duration(within)
        )),
        Some(TripPolicy::FleetRate {
            limit,
            min_calls,
            period,
        }) => parts.push(format!(
            "fleet rate {limit} over {}, at least {min_calls} calls",
            humantime::format_duration(period)
        )),
        Some(p) => parts.push(p.to_string()),
    }
    parts.join(", ")
}

#[derive(Debug, Serialize)]
struct StateOut<'a> {
    namespace: &'a str,
    writes: bool,
    degraded: bool,
    now_ms: u64,
    rows: Vec<RowOut>,
    groups: Vec<GroupOut>,
}

/// A group as the page shows it: members open of how many, its cap, threshold and state.
#[derive(Debug, Serialize)]
struct GroupOut {
    name: String,
    members: u32,
    open: u32,
    state: &'static str,
    max_open: String,
    open_at: Option<String>,
}

fn group_out(g: GroupRow) -> GroupOut {
    GroupOut {
        name: g.name,
        members: g.members,
        open: g.open,
        state: g.state.as_str(),
        max_open: g.max_open.to_string(),
        open_at: g.open_at.map(|r| r.to_string()),
    }
}

/// `GET /api/state`: every row of the namespace with its live configuration.
#[tracing::instrument(name = "serve.state", skip_all)]
async fn state(Shared(app): Shared<Arc<App>>) -> Result<Response, ApiError> {
    let rows = app.status().await?;
    let configs = app.configurations().await?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let c = configs.get(&r.key);
            row_out(r, c, None)
        })
        .collect();
    let groups = app.groups().await?.into_iter().map(group_out).collect();
    Ok(no_store(Json(StateOut {
        namespace: &app.ns,
        writes: app.token.is_some(),
        degraded: app.degraded.load(Ordering::Relaxed),
        now_ms: ms(SystemTime::now()),
        rows,
        groups,
    })))
}

fn no_store(r: impl IntoResponse) -> Response {
    let mut r = r.into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Deserialize)]
struct KeyQuery {
    key: String,
}

/// `GET /api/history?key=K`: the key's recorded changes, oldest first.
#[tracing::instrument(name = "serve.history", skip_all)]
async fn history(
    Shared(app): Shared<Arc<App>>,
    Query(q): Query<KeyQuery>,
) -> Result<Response, ApiError> {
    let entries: Vec<EntryOut> = app
        .history(&q.key, None)
        .await?
        .iter()
        .map(entry_out)
        .collect();
    Ok(no_store(Json(
        serde_json::json!({ "key": q.key, "changes": entries }),
    )))
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    hours: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Lane {
    key: String,
    changes: Vec<EntryOut>,
}

/// `GET /api/timeline?hours=1|24`: the recorded changes of every key that changed state in
/// the window (the most recently changed first, at most [`TIMELINE_KEYS`]).
#[tracing::instrument(name = "serve.timeline", skip_all)]
async fn timeline(
    Shared(app): Shared<Arc<App>>,
    Query(q): Query<WindowQuery>,
) -> Result<Response, ApiError> {
    let hours = q.hours.unwrap_or(1).clamp(1, 24);
    let window = Duration::from_secs(hours * 3600);
    let now = SystemTime::now();
    let start = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
    // A key whose state changed in the window has `since` in it: only those have changes to
    // read (the log keeps nothing older than a row's last change that matters here).
    let mut changed: Vec<(SystemTime, String)> = app
        .status()
        .await?
        .into_iter()
        .filter_map(|r| r.since.filter(|s| *s >= start).map(|s| (s, r.key)))
        .collect();
    changed.sort_by_key(|c| std::cmp::Reverse(c.0));
    let truncated = changed.len() > TIMELINE_KEYS;
    changed.truncate(TIMELINE_KEYS);
    let app_ref = &app;
    let lanes: Vec<Result<Lane, ApiError>> = futures_util::stream::iter(changed)
        .map(|(_, key)| async move {
            let changes = app_ref.history(&key, Some(window)).await?;
            Ok(Lane {
                changes: changes.iter().map(entry_out).collect(),
                key,
            })
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let lanes = lanes.into_iter().collect::<Result<Vec<Lane>, ApiError>>()?;
    Ok(no_store(Json(serde_json::json!({
        "now_ms": ms(now),
        "window_ms": ms(UNIX_EPOCH + window),
        "truncated": truncated,
        "keys": lanes,
    }))))
}

/// `GET /events`: server-sent events: `hello`, then `change` (a transition, as it is seen),
/// `row` (a changed key's row and last recorded change, read after), `health` (the database
/// lost or back) and `reload` (this viewer fell behind: read `/api/state` again).
async fn events(Shared(app): Shared<Arc<App>>) -> impl IntoResponse {
    let hello = serde_json::json!({
        "namespace": app.ns,
        "degraded": app.degraded.load(Ordering::Relaxed),
    })
    .to_string();
    let first = futures_util::stream::once(async move {
        Ok::<Event, std::convert::Infallible>(Event::default().event("hello").data(hello))
    });
    let rest = BroadcastStream::new(app.events.subscribe()).map(|item| {
        Ok(match item {
            Ok(sent) => Event::default().event(sent.name).data(&*sent.data),
            Err(BroadcastStreamRecvError::Lagged(missed)) => Event::default()
                .event("reload")
                .data(format!("{{\"missed\":{missed}}}")),
        })
    });
    let mut response = Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Serialize)]
struct ChangeOut<'a> {
    key: &'a str,
    from: &'static str,
    to: &'static str,
    version: Option<i64>,
    at_ms: u64,
}

/// Forwards every change the storage sees to the viewers, and marks its key for a round of row
/// updates; tells them when the database is lost and back.
async fn follow(app: Arc<App>, storage: Storage) {
    let mut changes = storage.changes();
    let mut health = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            _ = health.tick() => {
                let now = storage.is_degraded();
                if app.degraded.swap(now, Ordering::Relaxed) != now {
                    app.send("health", &serde_json::json!({ "degraded": now }));
                }
                continue;
            }
            next = changes.next() => next,
        };
        match next {
            None => return,
            Some(Err(_lagged)) => app.send("reload", &serde_json::json!({})),
            // Transitions only: the news of outliers and groups are not a key's state.
            Some(Ok(change)) if change.kind == ChangeKind::Transition => {
                forward(&app, &change);
                if let Ok(mut dirty) = app.dirty.lock() {
                    dirty.insert(change.key);
                }
                app.wake.notify_one();
            }
            Some(Ok(_)) => {}
        }
    }
}

fn forward(app: &App, c: &Change) {
    app.send(
        "change",
        &ChangeOut {
            key: &c.key,
            from: c.from.as_str(),
            to: c.to.as_str(),
            version: c.version,
            at_ms: ms(c.committed_at.unwrap_or(c.seen_at)),
        },
    );
}

/// Rounds of row updates: the changed keys' rows (cooldown left, mode) and last recorded
/// change (who, why), read once for every viewer, at most every [`ROUND_EVERY`].
async fn rounds(app: Arc<App>) {
    loop {
        app.wake.notified().await;
        let keys: Vec<String> = match app.dirty.lock() {
            Ok(mut dirty) => dirty.drain().collect(),
            Err(_) => return,
        };
        if keys.is_empty() {
            continue;
        }
        if let Err(e) = round(&app, keys).await {
            tracing::warn!(error = ?e, "reading the changed rows failed");
        }
        tokio::time::sleep(ROUND_EVERY).await;
    }
}

#[tracing::instrument(name = "serve.round", skip_all, fields(keys = keys.len()))]
async fn round(app: &App, mut keys: Vec<String>) -> Result<(), ApiError> {
    keys.sort();
    let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let rows: Vec<BreakerRow> = app
        .status()
        .await?
        .into_iter()
        .filter(|r| wanted.contains(r.key.as_str()))
        .collect();
    let configs = app.configurations().await?;
    let wanted: Vec<String> = rows
        .iter()
        .take(ROUND_KEYS)
        .map(|r| r.key.clone())
        .collect();
    let found: Vec<(String, Option<EntryOut>)> = futures_util::stream::iter(wanted)
        .map(|key| async move {
            // Without its last change, the row is still worth sending.
            let last = app
                .history(&key, Some(Duration::from_secs(3600)))
                .await
                .ok()
                .and_then(|h| h.last().map(entry_out));
            (key, last)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut lasts: HashMap<String, EntryOut> = found
        .into_iter()
        .filter_map(|(k, last)| last.map(|l| (k, l)))
        .collect();
    for r in rows {
        let last = lasts.remove(&r.key);
        let c = configs.get(&r.key);
        app.send("row", &row_out(r, c, last));
    }
    // A changed key may be a member: the groups' counts, read once for every viewer.
    let groups: Vec<GroupOut> = app.groups().await?.into_iter().map(group_out).collect();
    if !groups.is_empty() {
        app.send("groups", &groups);
    }
    Ok(())
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
