//! [`PostgresOptions`]: connection and behaviour settings of the PostgreSQL backend, from a DSN,
//! the ancestor's `RC_DB_*` variables, or the typed builder.
//!
//! # Sources
//!
//! * [`PostgresOptions::from_dsn`]: a `postgresql://` / `postgres://` URL or a libpq `key=value`
//!   conninfo string. Both forms are parsed here, not by tokio-postgres, because tokio-postgres
//!   refuses `sslmode=verify-ca` / `verify-full`, knows nothing of `sslrootcert`, `sslcert` and
//!   `sslkey`, reads `tcp_user_timeout` in seconds where libpq uses milliseconds, and may echo
//!   pieces of the string (the password among them) in its errors.
//! * [`PostgresOptions::from_env`]: the Python ancestor's variables plus a few of ours:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RC_DB_DSN` | unset | whole connection as URL or conninfo; when set, the discrete `RC_DB_HOST` … `RC_DB_SSLKEY` are ignored |
//! | `RC_DB_HOST` | unset | host name, IP, socket directory, or comma-separated list; with `RC_DB_PASSWORD` selects PostgreSQL |
//! | `RC_DB_PASSWORD` | unset | password; with `RC_DB_HOST` selects PostgreSQL (one without the other is an error) |
//! | `RC_DB_PORT` | `5432` | port |
//! | `RC_DB_NAME` | `resilient_circuit_db` | database |
//! | `RC_DB_USER` | `postgres` | role |
//! | `RC_DB_SSLMODE` | `prefer` | `disable`, `prefer`, `require`, `verify-ca`, `verify-full` |
//! | `RC_DB_SSLROOTCERT` | unset | PEM file of the CA(s) to trust (`system`: the system store) |
//! | `RC_DB_SSLCERT` / `RC_DB_SSLKEY` | unset | client certificate (PEM chain) and its unencrypted key |
//! | `RC_DB_STRICT` | `0` | `1`: fail at start when PostgreSQL is unreachable instead of running locally |
//! | `RC_DB_AUTO_CREATE` | `0` | `1`: `connect` may create or upgrade the schema |
//! | `RC_NAMESPACE` | `default` | namespace of this instance's breakers (1–255 bytes) |
//! | `RC_DB_LISTENER_DSN` | unset | separate address for the LISTEN connection (e.g. bypassing pgbouncer); missing fields come from the main settings |
//! | `RC_DB_RECONCILE_INTERVAL_MS` | `30000` | period of the full resync behind notifications |
//! | `RC_DB_STATEMENT_TIMEOUT_MS` | `2000` | time limit of each transition call |
//! | `RC_DB_CONNECT_TIMEOUT_MS` | `5000` | time limit of each connection attempt |
//!
//! Booleans accept `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`; an empty variable counts as
//! unset.
//!
//! # Secrets
//!
//! The password is kept in a wrapper whose `Debug` prints `"<redacted>"`, [`PostgresOptions`]'s
//! `Display` and `target()` leave it out, and error messages only quote a piece of the input when
//! it is a short plain token that neither contains nor is contained in the password.

use std::fmt;
use std::net::IpAddr;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, LoadBalanceHosts};

use crate::ConfigError;

/// PostgreSQL's port, when none is given.
pub(crate) const DEFAULT_PORT: u16 = 5432;
/// The ancestor's database name for the discrete form.
const DEFAULT_DBNAME: &str = "resilient_circuit_db";
/// The ancestor's role for the discrete form.
const DEFAULT_USER: &str = "postgres";
/// Namespace when none is given (the ancestor's).
const DEFAULT_NAMESPACE: &str = "default";
/// `application_name` of the LISTEN connection unless the listener DSN sets one.
pub(crate) const LISTENER_APPLICATION_NAME: &str = "resilient-circuit-listener";
/// The table's `namespace` column is `varchar(255)`.
const MAX_NAMESPACE_LEN: usize = 255;

/// TLS mode, as libpq's `sslmode`.
///
/// Parsed case-insensitively from libpq's names; libpq's `allow` is refused because
/// tokio-postgres cannot try a plain connection first and TLS second.
///
/// ```
/// use resilient_circuit::storage::postgres::SslMode;
/// assert_eq!("verify-full".parse::<SslMode>(), Ok(SslMode::VerifyFull));
/// assert!("verify_full".parse::<SslMode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, without verification (libpq's meaning), except that a
    /// configured `sslrootcert` is checked against as libpq does.
    #[default]
    Prefer,
    /// TLS required, certificate not verified (libpq's meaning), except that a configured
    /// `sslrootcert` makes it verify the chain, as libpq does.
    Require,
    /// TLS required, chain verified against `sslrootcert` (the system store when unset), host
    /// name not checked.
    VerifyCa,
    /// TLS required, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode (`verify-full`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres understands: it only decides whether TLS is attempted or
    /// required; verification is the connector's business (see `tls.rs`).
    pub(crate) fn to_tokio(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            SslMode::Disable => T::Disable,
            SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = ParseSslModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(ParseSslModeError {
                shown: plain_token(s.trim()).then(|| s.trim().to_owned()),
            }),
        }
    }
}

/// An `sslmode` that is not one of libpq's (or is libpq's `allow`, which is not supported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSslModeError {
    /// The value, when it is a plain token safe to print.
    shown: Option<String>,
}

impl fmt::Display for ParseSslModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&sslmode_reason(self.shown.as_deref()))
    }
}

impl std::error::Error for ParseSslModeError {}

/// The explanation of a refused sslmode; `shown` is the value when it may be printed.
fn sslmode_reason(shown: Option<&str>) -> String {
    match shown {
        Some(v) if v.eq_ignore_ascii_case("allow") => "sslmode `allow` is not supported (tokio-postgres cannot try without TLS first); use `prefer` or `disable`".to_owned(),
        Some(v) => format!("unknown sslmode `{v}`: expected disable, prefer, require, verify-ca or verify-full"),
        None => "unknown sslmode: expected disable, prefer, require, verify-ca or verify-full".to_owned(),
    }
}

/// Which servers of a host list are acceptable, as libpq's `target_session_attrs` (the subset
/// tokio-postgres implements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetSessionAttrs {
    /// Any server.
    Any,
    /// A server that accepts writes (`transaction_read_only` is `off`): the primary.
    ReadWrite,
    /// A server that refuses writes: a standby.
    ReadOnly,
}

impl TargetSessionAttrs {
    fn to_tokio(self) -> tokio_postgres::config::TargetSessionAttrs {
        use tokio_postgres::config::TargetSessionAttrs as T;
        match self {
            TargetSessionAttrs::Any => T::Any,
            TargetSessionAttrs::ReadWrite => T::ReadWrite,
            TargetSessionAttrs::ReadOnly => T::ReadOnly,
        }
    }
}

/// A password: never printed, by `Debug` or anything else.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt("<redacted>", f)
    }
}

/// Where one connection goes and how it authenticates: what a DSN describes.
///
/// For the main connection every field is used as is. For the listener (`listener_dsn`), unset
/// fields are taken from the main endpoint (see [`Endpoint::over`]), and its network settings
/// (`connect_timeout`, keepalives, `tcp_user_timeout`) override the options' values.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Endpoint {
    /// Names the endpoint's origin in errors: `dsn`, `RC_DB_DSN`, `RC_DB_HOST`, `options`, …
    pub(crate) source: &'static str,
    /// Host names, IP addresses or Unix socket directories (starting with `/`).
    pub(crate) hosts: Vec<String>,
    /// libpq's `hostaddr`: addresses to connect to, the matching `hosts` entry then only being the
    /// name for TLS.
    pub(crate) hostaddrs: Vec<IpAddr>,
    /// One port for all hosts, or one per host; empty means 5432.
    pub(crate) ports: Vec<u16>,
    pub(crate) dbname: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<Secret>,
    /// Server command-line options (`-c name=value …`).
    pub(crate) options: Option<String>,
    pub(crate) application_name: Option<String>,
    pub(crate) fallback_application_name: Option<String>,
    pub(crate) sslmode: Option<SslMode>,
    pub(crate) sslrootcert: Option<PathBuf>,
    pub(crate) sslcert: Option<PathBuf>,
    pub(crate) sslkey: Option<PathBuf>,
    pub(crate) target_session_attrs: Option<TargetSessionAttrs>,
    pub(crate) channel_binding: Option<ChannelBinding>,
    pub(crate) load_balance_hosts: Option<LoadBalanceHosts>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) keepalives: Option<bool>,
    pub(crate) keepalives_idle: Option<Duration>,
    pub(crate) keepalives_interval: Option<Duration>,
    pub(crate) keepalives_retries: Option<u32>,
    pub(crate) tcp_user_timeout: Option<Duration>,
}

/// The TLS settings of one endpoint, for `tls::make_tls`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    pub(crate) rootcert: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
    /// False when the endpoint only has `hostaddr`s: there is then no name to send or verify, and
    /// tokio-postgres refuses any TLS handshake.
    pub(crate) has_host_name: bool,
    /// True when every host is a Unix socket directory: no TLS is ever used (as libpq).
    pub(crate) unix_only: bool,
}

impl Endpoint {
    /// This endpoint with every unset field taken from `main`: the address (hosts, hostaddrs,
    /// ports) as a whole, the others one by one. `application_name` and the network settings are
    /// not inherited.
    fn over(&self, main: &Endpoint) -> Endpoint {
        let mut e = self.clone();
        if e.hosts.is_empty() && e.hostaddrs.is_empty() && e.ports.is_empty() {
            e.hosts.clone_from(&main.hosts);
            e.hostaddrs.clone_from(&main.hostaddrs);
            e.ports.clone_from(&main.ports);
        }
        fn inherit<T: Clone>(mine: &mut Option<T>, theirs: &Option<T>) {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
        inherit(&mut e.dbname, &main.dbname);
        inherit(&mut e.user, &main.user);
        inherit(&mut e.password, &main.password);
        inherit(&mut e.options, &main.options);
        inherit(&mut e.sslmode, &main.sslmode);
        inherit(&mut e.sslrootcert, &main.sslrootcert);
        inherit(&mut e.sslcert, &main.sslcert);
        inherit(&mut e.sslkey, &main.sslkey);
        inherit(&mut e.target_session_attrs, &main.target_session_attrs);
        inherit(&mut e.channel_binding, &main.channel_binding);
        inherit(&mut e.load_balance_hosts, &main.load_balance_hosts);
        e
    }

    fn unix_only(&self) -> bool {
        self.hostaddrs.is_empty()
            && !self.hosts.is_empty()
            && self.hosts.iter().all(|h| h.starts_with('/'))
    }

    pub(crate) fn tls_settings(&self) -> TlsSettings {
        TlsSettings {
            mode: self.sslmode.unwrap_or_default(),
            rootcert: self.sslrootcert.clone(),
            cert: self.sslcert.clone(),
            key: self.sslkey.clone(),
            has_host_name: !self.hosts.is_empty(),
            unix_only: self.unix_only(),
        }
    }

    /// `host:port,host:port/dbname`, never the password.
    pub(crate) fn target(&self) -> String {
        let n = self.hosts.len().max(self.hostaddrs.len());
        let mut out = String::new();
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            let port = self
                .ports
                .get(i)
                .or(self.ports.first())
                .copied()
                .unwrap_or(DEFAULT_PORT);
            match (self.hosts.get(i), self.hostaddrs.get(i)) {
                (Some(h), _) if h.starts_with('/') => out.push_str(h),
                (Some(h), _) if h.contains(':') => out.push_str(&format!("[{h}]:{port}")),
                (Some(h), _) => out.push_str(&format!("{h}:{port}")),
                (None, Some(IpAddr::V6(a))) => out.push_str(&format!("[{a}]:{port}")),
                (None, Some(a)) => out.push_str(&format!("{a}:{port}")),
                (None, None) => {}
            }
        }
        if n == 0 {
            out.push_str("(no host)");
        }
        if let Some(db) = self.dbname.as_ref().or(self.user.as_ref()) {
            out.push('/');
            out.push_str(db);
        }
        out
    }

    /// Refuses an endpoint tokio-postgres could not connect with, naming its source.
    fn check(&self) -> Result<(), ConfigError> {
        let err = |reason: String| ConfigError::InvalidSetting {
            name: self.source,
            reason,
        };
        if self.hosts.is_empty() && self.hostaddrs.is_empty() {
            return Err(err(
                "no host: set host= (or the host part of the URL), or RC_DB_HOST".into(),
            ));
        }
        if self.user.is_none() {
            return Err(err(
                "no user: set user= (or user@ in the URL); libpq would use the operating-system user, this crate needs it explicit".into(),
            ));
        }
        if !self.hosts.is_empty()
            && !self.hostaddrs.is_empty()
            && self.hosts.len() != self.hostaddrs.len()
        {
            return Err(err(format!(
                "{} hosts but {} hostaddrs: give one hostaddr per host, or none",
                self.hosts.len(),
                self.hostaddrs.len()
            )));
        }
        let n = self.hosts.len().max(self.hostaddrs.len());
        if self.ports.len() > 1 && self.ports.len() != n {
            return Err(err(format!(
                "{} ports for {n} hosts: give one port for all, or one per host",
                self.ports.len()
            )));
        }
        Ok(())
    }
}

/// Settings of the PostgreSQL backend: where to connect, how to authenticate and verify the
/// server, and how the instance behaves (namespace, timeouts, pool size).
///
/// Made from a DSN ([`from_dsn`](Self::from_dsn)), the environment ([`from_env`](Self::from_env))
/// or [`new`](Self::new), then refined with the setters, each of which documents its default.
/// `Debug` and `Display` never show the password.
///
/// ```
/// use std::time::Duration;
/// use resilient_circuit::storage::postgres::PostgresOptions;
///
/// let opts = PostgresOptions::from_dsn("postgresql://app:s3cr3t@db.internal:5432/breakers?sslmode=verify-full")?
///     .namespace("checkout")
///     .statement_timeout(Duration::from_millis(500));
/// assert!(!format!("{opts:?} {opts}").contains("s3cr3t"));
/// # Ok::<(), resilient_circuit::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Where the pool's connections go.
    pub(crate) conn: Endpoint,
    /// Where the LISTEN connection goes when not `conn` (pgbouncer in transaction mode drops
    /// LISTEN); unset fields are taken from `conn`.
    pub(crate) listener: Option<Endpoint>,
    pub(crate) namespace: String,
    pub(crate) auto_create: bool,
    pub(crate) strict: bool,
    pub(crate) reconcile_interval: Duration,
    pub(crate) statement_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) lease_timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) notification_buffer: usize,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) keepalives: bool,
    pub(crate) keepalives_idle: Duration,
    pub(crate) keepalives_interval: Duration,
    pub(crate) keepalives_retries: u32,
    /// `Duration::ZERO`: the system's default.
    pub(crate) tcp_user_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions::new()
    }
}

impl fmt::Display for PostgresOptions {
    /// `user@host:port/dbname sslmode=… namespace=…`, plus the listener's target when separate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.conn.user {
            write!(f, "{u}@")?;
        }
        write!(
            f,
            "{} sslmode={} namespace={}",
            self.target(),
            self.conn.sslmode.unwrap_or_default(),
            self.namespace
        )?;
        if self.listener.is_some() {
            write!(f, " listener={}", self.listener_target())?;
        }
        Ok(())
    }
}

impl PostgresOptions {
    /// The ancestor's discrete defaults: `postgres@localhost:5432/resilient_circuit_db`, no
    /// password, `sslmode=prefer`, and every behaviour setting at its default.
    pub fn new() -> Self {
        Self::with_endpoint(Endpoint {
            source: "options",
            hosts: vec!["localhost".into()],
            dbname: Some(DEFAULT_DBNAME.into()),
            user: Some(DEFAULT_USER.into()),
            ..Endpoint::default()
        })
    }

    /// Every behaviour setting at its default around `conn`, whose network settings (from a
    /// DSN) become the options' own so that the setters can override them.
    fn with_endpoint(mut conn: Endpoint) -> Self {
        let mut o = PostgresOptions {
            conn: Endpoint::default(),
            listener: None,
            namespace: DEFAULT_NAMESPACE.into(),
            auto_create: false,
            strict: false,
            reconcile_interval: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(10),
            pool_size: 4,
            notification_buffer: 16_384,
            heartbeat_interval: Duration::from_secs(2),
            keepalives: true,
            keepalives_idle: Duration::from_secs(10),
            keepalives_interval: Duration::from_secs(2),
            keepalives_retries: 3,
            tcp_user_timeout: Duration::from_secs(8),
        };
        if let Some(t) = conn.connect_timeout.take() {
            o.connect_timeout = t;
        }
        if let Some(k) = conn.keepalives.take() {
            o.keepalives = k;
        }
        if let Some(t) = conn.keepalives_idle.take() {
            o.keepalives_idle = t;
        }
        if let Some(t) = conn.keepalives_interval.take() {
            o.keepalives_interval = t;
        }
        if let Some(n) = conn.keepalives_retries.take() {
            o.keepalives_retries = n;
        }
        if let Some(t) = conn.tcp_user_timeout.take() {
            o.tcp_user_timeout = t;
        }
        o.conn = conn;
        o
    }

    /// Settings from a `postgresql://` / `postgres://` URL or a libpq `key=value` conninfo string,
    /// every other setting at its default.
    ///
    /// Understands libpq's keys `host`, `hostaddr`, `port`, `dbname`, `user`, `password`,
    /// `options`, `application_name`, `fallback_application_name`, `sslmode` (including
    /// `verify-ca` and `verify-full`), `sslrootcert`, `sslcert`, `sslkey`, `connect_timeout`
    /// (seconds; 0 keeps the default), `keepalives`, `keepalives_idle`, `keepalives_interval`,
    /// `keepalives_count`, `tcp_user_timeout` (milliseconds, as libpq), `target_session_attrs`
    /// (`any`, `read-write`, `read-only`), `channel_binding` and `load_balance_hosts`; accepts and
    /// ignores `client_encoding=UTF8`, `gssencmode` other than `require`, `sslsni` and
    /// `sslcompression`; refuses the rest. A missing host or user is reported when connecting
    /// (or by `from_env`), so the setters can still supply them.
    ///
    /// Errors are `ConfigError::InvalidSetting { name: "dsn", .. }` and never contain the
    /// password.
    pub fn from_dsn(dsn: &str) -> Result<Self, ConfigError> {
        Ok(Self::with_endpoint(parse_dsn(dsn, "dsn")?))
    }

    /// Settings from the `RC_DB_*` variables (table in this module's docs), `None` when
    /// PostgreSQL is not configured: neither `RC_DB_DSN` nor `RC_DB_HOST` / `RC_DB_PASSWORD` set.
    ///
    /// `RC_DB_DSN` wins and is used verbatim. Otherwise `RC_DB_HOST` and `RC_DB_PASSWORD` together
    /// select PostgreSQL; unlike the Python ancestor, which silently stays in memory, setting only
    /// one of them is an error naming the other, since it is almost always a deployment mistake.
    /// Invalid values are errors naming the variable; the result is fully checked (host, user,
    /// timeouts, namespace) so that a bad setting fails at start.
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (tests pass a map).
    pub(crate) fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        // An empty variable counts as unset (`RC_DB_DSN=` in a compose file).
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let password = get("RC_DB_PASSWORD").filter(|v| !v.is_empty());
        let passwords: Vec<String> = password.iter().cloned().collect();
        let cx = Ctx {
            name: "RC_DB_DSN",
            passwords: &passwords,
        };
        let mut opts = if let Some(dsn) = var("RC_DB_DSN") {
            let ignored: Vec<&str> = DISCRETE_VARS
                .iter()
                .copied()
                .filter(|v| var(v).is_some())
                .collect();
            if !ignored.is_empty() {
                tracing::warn!(?ignored, "RC_DB_DSN is set, so these variables are ignored");
            }
            Self::with_endpoint(parse_dsn(&dsn, "RC_DB_DSN")?)
        } else {
            let host = var("RC_DB_HOST");
            match (host, &password) {
                (None, None) => {
                    if var("RC_DB_LISTENER_DSN").is_some() {
                        return Err(ConfigError::InvalidSetting {
                            name: "RC_DB_LISTENER_DSN",
                            reason: "is set, but PostgreSQL is not configured: set RC_DB_DSN, or RC_DB_HOST with RC_DB_PASSWORD".into(),
                        });
                    }
                    return Ok(None);
                }
                (Some(_), None) => {
                    return Err(ConfigError::InvalidSetting {
                        name: "RC_DB_PASSWORD",
                        reason: "missing: RC_DB_HOST is set, and the discrete form needs both; for trust or certificate authentication put the whole connection in RC_DB_DSN".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::InvalidSetting {
                        name: "RC_DB_HOST",
                        reason: "missing: RC_DB_PASSWORD is set, and the discrete form needs both (or set RC_DB_DSN)".into(),
                    });
                }
                (Some(host), Some(pw)) => {
                    let mut conn = Endpoint {
                        source: "RC_DB_HOST",
                        hosts: split_list(&host, &cx.named("RC_DB_HOST"))?,
                        dbname: Some(var("RC_DB_NAME").unwrap_or_else(|| DEFAULT_DBNAME.into())),
                        user: Some(var("RC_DB_USER").unwrap_or_else(|| DEFAULT_USER.into())),
                        password: Some(Secret(pw.clone())),
                        ..Endpoint::default()
                    };
                    if let Some(port) = var("RC_DB_PORT") {
                        conn.ports = vec![parse_port(port.trim(), &cx.named("RC_DB_PORT"))?];
                    }
                    if let Some(mode) = var("RC_DB_SSLMODE") {
                        conn.sslmode = Some(parse_sslmode(&mode, &cx.named("RC_DB_SSLMODE"))?);
                    }
                    conn.sslrootcert = var("RC_DB_SSLROOTCERT").map(PathBuf::from);
                    conn.sslcert = var("RC_DB_SSLCERT").map(PathBuf::from);
                    conn.sslkey = var("RC_DB_SSLKEY").map(PathBuf::from);
                    Self::with_endpoint(conn)
                }
            }
        };
        if let Some(dsn) = var("RC_DB_LISTENER_DSN") {
            opts.listener = Some(parse_dsn(&dsn, "RC_DB_LISTENER_DSN")?);
        }
        if let Some(ns) = var("RC_NAMESPACE") {
            check_namespace(&ns, "RC_NAMESPACE")?;
            opts.namespace = ns;
        }
        if let Some(v) = var("RC_DB_STRICT") {
            opts.strict = parse_bool(&v, &cx.named("RC_DB_STRICT"))?;
        }
        if let Some(v) = var("RC_DB_AUTO_CREATE") {
            opts.auto_create = parse_bool(&v, &cx.named("RC_DB_AUTO_CREATE"))?;
        }
        if let Some(v) = var("RC_DB_RECONCILE_INTERVAL_MS") {
            opts.reconcile_interval = parse_millis(&v, &cx.named("RC_DB_RECONCILE_INTERVAL_MS"))?;
        }
        if let Some(v) = var("RC_DB_STATEMENT_TIMEOUT_MS") {
            opts.statement_timeout = parse_millis(&v, &cx.named("RC_DB_STATEMENT_TIMEOUT_MS"))?;
        }
        if let Some(v) = var("RC_DB_CONNECT_TIMEOUT_MS") {
            opts.connect_timeout = parse_millis(&v, &cx.named("RC_DB_CONNECT_TIMEOUT_MS"))?;
        }
        opts.check()?;
        if opts.listener.is_some() {
            opts.listener_endpoint().check()?;
        }
        Ok(Some(opts))
    }

    /// Connects to `host` only (a name, an IP address, or a Unix socket directory starting with
    /// `/`), replacing the host list. Default from [`new`](Self::new): `localhost`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.conn.hosts = vec![host.into()];
        self
    }

    /// Tries `hosts` in order (libpq's comma-separated `host`), replacing the host list; combine
    /// with [`target_session_attrs`](Self::target_session_attrs) to find the primary.
    pub fn hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.conn.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// Connects to this address instead of resolving the host name (libpq's `hostaddr`); the
    /// host name is still what TLS sends and verifies. Default: none.
    pub fn hostaddr(mut self, addr: IpAddr) -> Self {
        self.conn.hostaddrs = vec![addr];
        self
    }

    /// Port of every host. Default `5432`.
    pub fn port(mut self, port: u16) -> Self {
        self.conn.ports = vec![port];
        self
    }

    /// Database name. Default from [`new`](Self::new): `resilient_circuit_db`; from a DSN without
    /// one, the server's default (the user name).
    pub fn dbname(mut self, dbname: impl Into<String>) -> Self {
        self.conn.dbname = Some(dbname.into());
        self
    }

    /// Role to log in as. Default from [`new`](Self::new): `postgres`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.conn.user = Some(user.into());
        self
    }

    /// Password. Default: none. Never printed.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.conn.password = Some(Secret(password.into()));
        self
    }

    /// TLS mode (see [`SslMode`]). Default `prefer`, as libpq.
    #[doc(alias = "sslmode")]
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.conn.sslmode = Some(mode);
        self
    }

    /// PEM file of the certificate authorities that sign the server's certificate (only these
    /// are trusted; the literal `system` means the system store). Default: none, meaning the
    /// system store for `verify-ca` / `verify-full` and no verification for `prefer` / `require`.
    #[doc(alias = "sslrootcert")]
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.conn.sslrootcert = Some(path.into());
        self
    }

    /// PEM file of the client certificate (and its chain), for certificate authentication.
    /// Needs [`ssl_key`](Self::ssl_key). Default: none.
    #[doc(alias = "sslcert")]
    pub fn ssl_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.conn.sslcert = Some(path.into());
        self
    }

    /// PEM file of the client certificate's private key, unencrypted (libpq's `sslpassword` is
    /// not supported). Default: none.
    #[doc(alias = "sslkey")]
    pub fn ssl_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.conn.sslkey = Some(path.into());
        self
    }

    /// `application_name` of the pool's connections, shown in `pg_stat_activity`. Default:
    /// `resilient-circuit` (the listener's is `resilient-circuit-listener` unless the listener
    /// DSN names one).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.conn.application_name = Some(name.into());
        self
    }

    /// Which server of a host list to use. Default `any` for the pool; the listener uses
    /// `read-write` unless this is set, because LISTEN is refused on a standby.
    pub fn target_session_attrs(mut self, attrs: TargetSessionAttrs) -> Self {
        self.conn.target_session_attrs = Some(attrs);
        self
    }

    /// Time limit of each connection attempt (per address). Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time limit of each transition call (one round trip to the database); past it the call
    /// counts as failed and the local decision stands. Default 2 s.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// TCP keepalives on every connection, so that an idle connection to a vanished server is
    /// noticed. Default on.
    pub fn keepalives(mut self, on: bool) -> Self {
        self.keepalives = on;
        self
    }

    /// Idle time before the first keepalive probe. Default 10 s.
    pub fn keepalives_idle(mut self, idle: Duration) -> Self {
        self.keepalives_idle = idle;
        self
    }

    /// Time between keepalive probes. Default 2 s.
    pub fn keepalives_interval(mut self, interval: Duration) -> Self {
        self.keepalives_interval = interval;
        self
    }

    /// Unanswered keepalive probes before the connection is dropped. Default 3 (so an idle dead
    /// connection is found after about 10 + 3 × 2 = 16 s).
    pub fn keepalives_retries(mut self, retries: u32) -> Self {
        self.keepalives_retries = retries;
        self
    }

    /// How long sent data may stay unacknowledged before the kernel drops the connection
    /// (`TCP_USER_TIMEOUT`, Linux only; ignored elsewhere). Without it a black-holed connection
    /// with data in flight lingers for 15–20 minutes. `Duration::ZERO` keeps the system default.
    /// Default 8 s.
    pub fn tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.tcp_user_timeout = timeout;
        self
    }

    /// How often the listener pings its connection (under the statement timeout), so that a
    /// black-holed LISTEN connection is found within about 10 s by default, together with the
    /// TCP user timeout. Default 2 s.
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every;
        self
    }

    /// Period of the full reload of the namespace that backs up notifications (which are lost
    /// while the listener is away, and not durable). Default 30 s.
    pub fn reconcile_interval(mut self, every: Duration) -> Self {
        self.reconcile_interval = every;
        self
    }

    /// Namespace of this instance's breakers (the table's `namespace` column): breakers share
    /// state only within a namespace. 1–255 bytes, no control characters. Default `default`.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Lets `connect` create or upgrade the schema (under an advisory lock) when it is missing or
    /// old; needs a role that may create tables. Default off.
    pub fn auto_create(mut self, yes: bool) -> Self {
        self.auto_create = yes;
        self
    }

    /// Makes `connect` fail when PostgreSQL is unreachable at start, instead of running on local
    /// state and connecting in the background. Default off.
    pub fn strict(mut self, yes: bool) -> Self {
        self.strict = yes;
        self
    }

    /// How long a half-open probe lease taken by this instance lasts before it expires and
    /// another instance may probe. Default 10 s.
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    /// Connections in the pool that runs transition calls (the listener has its own). Default 4.
    #[doc(alias = "probe_pool_size")]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// How many notifications may wait between the LISTEN connection and the loop that applies
    /// them. Past it the listener drops them and reloads every row instead, so a storm can
    /// neither grow memory without bound nor lose a change. Default 16,384.
    pub fn notification_buffer(mut self, size: usize) -> Self {
        self.notification_buffer = size;
        self
    }

    /// A separate address for the LISTEN connection, as a URL or conninfo string; fields it does
    /// not set (user, password, dbname, TLS settings, …) are taken from the main settings, and
    /// an address given here (host, hostaddr or port) replaces the main one as a whole.
    ///
    /// Needed behind pgbouncer in transaction pooling, which cannot keep a LISTEN: point this at
    /// PostgreSQL directly or at a session-pooling pgbouncer. Default: the main address.
    pub fn listener_dsn(mut self, dsn: &str) -> Result<Self, ConfigError> {
        self.listener = Some(parse_dsn(dsn, "listener_dsn")?);
        Ok(self)
    }

    /// A separate host and port for the LISTEN connection, everything else from the main
    /// settings (see [`listener_dsn`](Self::listener_dsn)).
    pub fn listener_host(mut self, host: impl Into<String>, port: u16) -> Self {
        self.listener = Some(Endpoint {
            source: "listener_host",
            hosts: vec![host.into()],
            ports: vec![port],
            ..Endpoint::default()
        });
        self
    }

    /// The listener's endpoint, with unset fields from the main one.
    fn listener_endpoint(&self) -> Endpoint {
        match &self.listener {
            Some(l) => l.over(&self.conn),
            None => self.conn.clone(),
        }
    }

    /// Refuses settings the backend cannot run with.
    fn check(&self) -> Result<(), ConfigError> {
        check_namespace(&self.namespace, "namespace")?;
        let positive = [
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
            ("reconcile_interval", self.reconcile_interval),
            ("lease_timeout", self.lease_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::InvalidSetting {
                    name,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        if self.lease_timeout > crate::MAX_DURATION {
            return Err(ConfigError::DurationTooLong {
                name: "lease_timeout",
                given: self.lease_timeout,
                max: crate::MAX_DURATION,
            });
        }
        if self.keepalives {
            for (name, d) in [
                ("keepalives_idle", self.keepalives_idle),
                ("keepalives_interval", self.keepalives_interval),
            ] {
                if d < Duration::from_secs(1) {
                    return Err(ConfigError::InvalidSetting {
                        name,
                        reason: "must be at least 1 s (the kernel counts in seconds)".into(),
                    });
                }
            }
        }
        if self.notification_buffer == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "notification_buffer",
                reason: "must be at least 1".into(),
            });
        }
        if self.pool_size == 0 {
            return Err(ConfigError::InvalidSetting {
                name: "pool_size",
                reason: "must be at least 1".into(),
            });
        }
        self.conn.check()
    }

    /// The pool's connection settings, everything applied; `application_name` is used unless
    /// the DSN or [`application_name`](Self::application_name) set one (or the DSN's
    /// `fallback_application_name`).
    pub(crate) fn pg_config(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Config, ConfigError> {
        self.check()?;
        Ok(self.build(&self.conn, application_name, false))
    }

    /// The LISTEN connection's settings: the listener DSN or host when set, the main settings
    /// otherwise, with `application_name` `resilient-circuit-listener` and, unless set
    /// explicitly, `target_session_attrs=read-write`.
    pub(crate) fn listener_pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        self.check()?;
        let ep = self.listener_endpoint();
        ep.check()?;
        Ok(self.build(&ep, LISTENER_APPLICATION_NAME, true))
    }

    /// TLS settings of the pool's connections.
    pub(crate) fn tls_settings(&self) -> TlsSettings {
        self.conn.tls_settings()
    }

    /// TLS settings of the LISTEN connection (differ from the pool's only when the listener DSN
    /// sets its own).
    pub(crate) fn listener_tls_settings(&self) -> TlsSettings {
        self.listener_endpoint().tls_settings()
    }

    fn build(
        &self,
        ep: &Endpoint,
        application_name: &str,
        listener: bool,
    ) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        for h in &ep.hosts {
            c.host(h);
        }
        for a in &ep.hostaddrs {
            c.hostaddr(*a);
        }
        for p in &ep.ports {
            c.port(*p);
        }
        if let Some(u) = &ep.user {
            c.user(u);
        }
        if let Some(p) = &ep.password {
            c.password(p.expose());
        }
        if let Some(d) = &ep.dbname {
            c.dbname(d);
        }
        if let Some(o) = &ep.options {
            c.options(o);
        }
        let name = ep
            .application_name
            .as_deref()
            .or(ep.fallback_application_name.as_deref())
            .unwrap_or(application_name);
        c.application_name(name);
        // libpq ignores sslmode on Unix sockets; tokio-postgres would ask and fail on `require`.
        let mode = if ep.unix_only() {
            SslMode::Disable
        } else {
            ep.sslmode.unwrap_or_default()
        };
        c.ssl_mode(mode.to_tokio());
        c.connect_timeout(ep.connect_timeout.unwrap_or(self.connect_timeout));
        let keepalives = ep.keepalives.unwrap_or(self.keepalives);
        c.keepalives(keepalives);
        if keepalives {
            c.keepalives_idle(ep.keepalives_idle.unwrap_or(self.keepalives_idle));
            c.keepalives_interval(ep.keepalives_interval.unwrap_or(self.keepalives_interval));
            c.keepalives_retries(ep.keepalives_retries.unwrap_or(self.keepalives_retries));
        }
        let tcp_user_timeout = ep.tcp_user_timeout.unwrap_or(self.tcp_user_timeout);
        if !tcp_user_timeout.is_zero() {
            c.tcp_user_timeout(tcp_user_timeout);
        }
        let attrs = match (ep.target_session_attrs, listener) {
            (Some(a), _) => a,
            // Both connections need the primary: LISTEN is refused on a standby, and every
            // pooled statement writes. An explicit setting still wins.
            (None, _) => TargetSessionAttrs::ReadWrite,
        };
        c.target_session_attrs(attrs.to_tokio());
        if let Some(b) = ep.channel_binding {
            c.channel_binding(b);
        }
        if let Some(l) = ep.load_balance_hosts {
            c.load_balance_hosts(l);
        }
        c
    }

    /// `host:port/dbname` of the pool's connections, for logs and errors; never the password.
    pub(crate) fn target(&self) -> String {
        self.conn.target()
    }

    /// `host:port/dbname` of the LISTEN connection.
    pub(crate) fn listener_target(&self) -> String {
        self.listener_endpoint().target()
    }
}

/// The discrete connection variables, ignored (with a warning) when `RC_DB_DSN` is set.
const DISCRETE_VARS: [&str; 9] = [
    "RC_DB_HOST",
    "RC_DB_PORT",
    "RC_DB_NAME",
    "RC_DB_USER",
    "RC_DB_PASSWORD",
    "RC_DB_SSLMODE",
    "RC_DB_SSLROOTCERT",
    "RC_DB_SSLCERT",
    "RC_DB_SSLKEY",
];

fn check_namespace(ns: &str, name: &'static str) -> Result<(), ConfigError> {
    let reason = if ns.is_empty() {
        "is empty".to_owned()
    } else if ns.len() > MAX_NAMESPACE_LEN {
        format!("{} bytes, the limit is {MAX_NAMESPACE_LEN}", ns.len())
    } else if let Some(i) = ns.find(char::is_control) {
        format!("control character at byte {i}")
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidSetting { name, reason })
}

fn parse_bool(v: &str, cx: &Ctx<'_>) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(cx.err(format!(
            "{} is not a boolean: use 1/true/yes/on or 0/false/no/off",
            cx.quote(v.trim())
        ))),
    }
}

fn parse_millis(v: &str, cx: &Ctx<'_>) -> Result<Duration, ConfigError> {
    match v.trim().parse::<u64>() {
        Ok(0) => Err(cx.err("must be greater than zero")),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err(cx.err(format!(
            "{} is not a whole number of milliseconds",
            cx.quote(v.trim())
        ))),
    }
}

/// True for a short value made of letters, digits, `.`, `_` and `-`: safe to quote in an error
/// when it is not part of the password (see [`quote`]).
fn plain_token(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 40
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `value` may appear in an error: a plain token that neither contains nor is
/// contained in any password seen.
fn showable(value: &str, passwords: &[String]) -> bool {
    let touches = passwords
        .iter()
        .any(|pw| !pw.is_empty() && (value.contains(pw.as_str()) || pw.contains(value)));
    plain_token(value) && !touches
}

/// `value` quoted for an error message, or a placeholder when it might be (part of) a password.
fn quote(value: &str, passwords: &[String]) -> String {
    if showable(value, passwords) {
        format!("`{value}`")
    } else {
        "the value (not shown)".to_owned()
    }
}

/// Error context while parsing one DSN or variable: the name errors carry and the passwords to
/// keep out of them (every `password` value of the input, not only the one that wins).
#[derive(Clone, Copy)]
struct Ctx<'a> {
    name: &'static str,
    passwords: &'a [String],
}

impl<'a> Ctx<'a> {
    fn named(self, name: &'static str) -> Ctx<'a> {
        Ctx { name, ..self }
    }

    fn err(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidSetting {
            name: self.name,
            reason: reason.into(),
        }
    }

    fn quote(&self, value: &str) -> String {
        quote(value, self.passwords)
    }

    /// An option name for an error: libpq names are lower case with underscores.
    fn key(&self, key: &str) -> String {
        if key.len() <= 40 && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            self.quote(key)
        } else {
            "an option name (not shown)".to_owned()
        }
    }
}

fn parse_port(v: &str, cx: &Ctx<'_>) -> Result<u16, ConfigError> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(cx.err(format!(
            "port {} is not a port number (1-65535)",
            cx.quote(v)
        ))),
    }
}

fn parse_sslmode(v: &str, cx: &Ctx<'_>) -> Result<SslMode, ConfigError> {
    v.parse::<SslMode>().map_err(|_| {
        let t = v.trim();
        cx.err(sslmode_reason(showable(t, cx.passwords).then_some(t)))
    })
}

/// A comma-separated list with no empty element.
fn split_list(v: &str, cx: &Ctx<'_>) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(cx.err("empty host in the list"));
    }
    Ok(items)
}

/// Seconds as libpq reads them: an integer; `None` for zero or less ("no value").
fn parse_secs(key: &str, v: &str, cx: &Ctx<'_>) -> Result<Option<Duration>, ConfigError> {
    let n = v.trim().parse::<i64>().map_err(|_| {
        cx.err(format!(
            "{} = {} is not a whole number of seconds",
            cx.key(key),
            cx.quote(v)
        ))
    })?;
    Ok(u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_secs))
}

/// Parses a DSN into an endpoint; errors carry `name` and never a password.
fn parse_dsn(dsn: &str, name: &'static str) -> Result<Endpoint, ConfigError> {
    let dsn = dsn.trim();
    let pairs = if let Some(rest) = dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
    {
        parse_url(rest, name)?
    } else {
        if let Some(i) = dsn.find("://") {
            if !dsn[..i].contains(|c: char| c == '=' || c.is_whitespace()) {
                let cx = Ctx {
                    name,
                    passwords: &[],
                };
                return Err(cx.err(format!(
                    "URL scheme {} is not supported: use postgresql:// or postgres://",
                    cx.quote(&dsn[..i])
                )));
            }
        }
        tokenize_conninfo(dsn, name)?
    };
    let passwords: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "password")
        .map(|(_, v)| v.clone())
        .collect();
    let cx = Ctx {
        name,
        passwords: &passwords,
    };
    let mut ep = Endpoint {
        source: name,
        ..Endpoint::default()
    };
    for (key, value) in pairs {
        apply_param(&mut ep, &key, value, &cx)?;
    }
    Ok(ep)
}

/// One parsed piece of a DSN: a libpq key and its (decoded) value.
type Pair = (String, String);

/// Splits conninfo into key/value pairs, as libpq: `key = value`, values optionally in single
/// quotes, backslash escapes.
fn tokenize_conninfo(s: &str, name: &'static str) -> Result<Vec<Pair>, ConfigError> {
    let mut it = s.char_indices().peekable();
    let mut pairs: Vec<Pair> = Vec::new();
    // Passwords read so far, kept out of the errors.
    let mut seen: Vec<String> = Vec::new();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else { break };
        let mut end = s.len();
        while let Some(&(i, c)) = it.peek() {
            if c.is_whitespace() || c == '=' {
                end = i;
                break;
            }
            it.next();
        }
        let key = &s[start..end];
        let cx = Ctx {
            name,
            passwords: &seen,
        };
        skip_ws(&mut it);
        if it.next_if(|(_, c)| *c == '=').is_none() {
            let what = if KNOWN_KEYS.contains(&key) {
                format!("expected `=` after `{key}`")
            } else {
                format!("expected `=` after the word at byte {start}")
            };
            return Err(cx.err(format!(
                "{what}: not a postgresql:// URL and not key=value conninfo"
            )));
        }
        if key.is_empty() {
            return Err(cx.err(format!(
                "an option name is missing before `=` at byte {start}"
            )));
        }
        skip_ws(&mut it);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match it.next() {
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(
                                cx.err(format!("unterminated quoted value of {}", cx.key(key)))
                            )
                        }
                    },
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(cx.err(format!("unterminated quoted value of {}", cx.key(key))))
                    }
                }
            }
        } else {
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some((_, c2)) = it.next() {
                        value.push(c2);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key == "password" {
            seen.push(value.clone());
        }
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// Decodes `%XX` escapes; `%00` and non-UTF-8 results are refused, as libpq does.
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    // Two hex digits: at most 255.
                    let v = u8::try_from(h * 16 + l).unwrap_or(u8::MAX);
                    if v == 0 {
                        return Err("contains %00");
                    }
                    out.push(v);
                    i += 3;
                }
                _ => return Err("has an invalid percent-encoding"),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded")
}

/// Splits the part of a URL after `postgresql://` into key/value pairs, as libpq:
/// `[user[:password]@][host[:port][,…]][/dbname][?key=value&…]`. Credentials end at the last
/// `@` of the authority, so an unencoded `@` in the password still works.
fn parse_url(rest: &str, name: &'static str) -> Result<Vec<Pair>, ConfigError> {
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let (creds, hostpart) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (user, url_password) = match creds.map(|c| c.split_once(':').unwrap_or((c, ""))) {
        Some((u, p)) => (Some(u), (!p.is_empty()).then_some(p)),
        None => (None, None),
    };
    let (path, query) = match tail.find('?') {
        Some(i) => (&tail[..i], Some(&tail[i + 1..])),
        None => (tail, None),
    };
    let items: Vec<&str> = query
        .map(|q| q.split('&').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();

    // Every password of the URL first, raw and decoded, so that no error below can quote one.
    let mut passwords: Vec<String> = Vec::new();
    let mut remember = |raw: &str| {
        passwords.push(raw.to_owned());
        if let Ok(decoded) = percent_decode(raw) {
            passwords.push(decoded);
        }
    };
    if let Some(p) = url_password {
        remember(p);
    }
    for item in &items {
        if let Some((k, v)) = item.split_once('=') {
            if percent_decode(k).is_ok_and(|k| k == "password") {
                remember(v);
            }
        }
    }
    let cx = Ctx {
        name,
        passwords: &passwords,
    };

    let mut pairs: Vec<Pair> = Vec::new();
    if let Some(user) = user {
        let user = percent_decode(user).map_err(|why| cx.err(format!("the user name {why}")))?;
        pairs.push(("user".into(), user));
    }
    if let Some(pw) = url_password {
        let pw = percent_decode(pw).map_err(|why| cx.err(format!("the password {why}")))?;
        pairs.push(("password".into(), pw));
    }
    if !hostpart.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for chunk in hostpart.split(',') {
            let (host, port) = if let Some(inner) = chunk.strip_prefix('[') {
                let Some(close) = inner.find(']') else {
                    return Err(cx.err("an IPv6 host lacks its closing `]`"));
                };
                let after = &inner[close + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => return Err(cx.err("unexpected text after an IPv6 host's `]`")),
                };
                (&inner[..close], port)
            } else {
                match chunk.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (chunk, None),
                }
            };
            let host = percent_decode(host).map_err(|why| cx.err(format!("a host name {why}")))?;
            let port = port
                .map(percent_decode)
                .transpose()
                .map_err(|why| cx.err(format!("a port {why}")))?;
            if host.is_empty() && hostpart.contains(',') {
                return Err(cx.err("empty host in the list"));
            }
            if !host.is_empty() {
                hosts.push(host);
            }
            ports.push(port);
        }
        if !hosts.is_empty() {
            pairs.push(("host".into(), hosts.join(",")));
        }
        if ports
            .iter()
            .any(|p| p.as_deref().is_some_and(|p| !p.is_empty()))
        {
            let ports: Vec<String> = ports.into_iter().map(Option::unwrap_or_default).collect();
            pairs.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = path.strip_prefix('/') {
        if !db.is_empty() {
            let db =
                percent_decode(db).map_err(|why| cx.err(format!("the database name {why}")))?;
            pairs.push(("dbname".into(), db));
        }
    }
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(cx.err("a query parameter lacks `=`"));
        };
        let k = percent_decode(k).map_err(|why| cx.err(format!("a query parameter name {why}")))?;
        let v = percent_decode(v)
            .map_err(|why| cx.err(format!("the value of {} {why}", cx.key(&k))))?;
        pairs.push((k, v));
    }
    Ok(pairs)
}

/// The keys `apply_param` understands, for error messages.
const KNOWN_KEYS: [&str; 28] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "options",
    "application_name",
    "fallback_application_name",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "keepalives_retries",
    "tcp_user_timeout",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
    "sslnegotiation",
    "client_encoding",
    "gssencmode",
    "sslsni",
    "sslcompression",
];

/// libpq keys this crate refuses rather than silently ignoring.
const UNSUPPORTED_KEYS: [&str; 16] = [
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "passfile",
    "service",
    "requiressl",
    "requirepeer",
    "require_auth",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "sslkeylogfile",
];

/// Applies one libpq key to `ep`. Empty values mean "not set", as in libpq; the last
/// occurrence of a key wins.
fn apply_param(
    ep: &mut Endpoint,
    key: &str,
    value: String,
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    let v = value.as_str();
    let opt = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    let path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
    let invalid = |what: &str| cx.err(format!("{} = {} is not {what}", cx.key(key), cx.quote(v)));
    match key {
        "host" => ep.hosts = if v.is_empty() { Vec::new() } else { split_list(v, cx)? },
        "hostaddr" => {
            ep.hostaddrs = Vec::new();
            for a in v.split(',').filter(|_| !v.is_empty()) {
                let addr = a
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| cx.err(format!("hostaddr {} is not an IP address", cx.quote(a.trim()))))?;
                ep.hostaddrs.push(addr);
            }
        }
        "port" => {
            ep.ports = Vec::new();
            if !v.is_empty() {
                for p in v.split(',') {
                    let p = p.trim();
                    ep.ports.push(if p.is_empty() { DEFAULT_PORT } else { parse_port(p, cx)? });
                }
            }
        }
        "dbname" => ep.dbname = opt(v),
        "user" => ep.user = opt(v),
        "password" => ep.password = opt(v).map(Secret),
        "options" => ep.options = opt(v),
        "application_name" => ep.application_name = opt(v),
        "fallback_application_name" => ep.fallback_application_name = opt(v),
        "sslmode" => ep.sslmode = if v.is_empty() { None } else { Some(parse_sslmode(v, cx)?) },
        "sslrootcert" => ep.sslrootcert = path(v),
        "sslcert" => ep.sslcert = path(v),
        "sslkey" => ep.sslkey = path(v),
        "connect_timeout" => ep.connect_timeout = if v.is_empty() { None } else { parse_secs(key, v, cx)? },
        "keepalives" => {
            ep.keepalives = match v.trim() {
                "" => None,
                t => Some(t.parse::<i64>().map_err(|_| invalid("0 or 1"))? != 0),
            }
        }
        "keepalives_idle" => ep.keepalives_idle = if v.is_empty() { None } else { parse_secs(key, v, cx)? },
        "keepalives_interval" => ep.keepalives_interval = if v.is_empty() { None } else { parse_secs(key, v, cx)? },
        "keepalives_count" | "keepalives_retries" => {
            ep.keepalives_retries = match v.trim() {
                "" => None,
                t => Some(t.parse::<u32>().map_err(|_| invalid("a count"))?),
            }
        }
        "tcp_user_timeout" => {
            ep.tcp_user_timeout = match v.trim() {
                "" => None,
                t => Some(Duration::from_millis(
                    t.parse::<i64>().map_err(|_| invalid("a whole number of milliseconds"))?.max(0).unsigned_abs(),
                )),
            }
        }
        "target_session_attrs" => {
            ep.target_session_attrs = match v {
                "" => None,
                "any" => Some(TargetSessionAttrs::Any),
                "read-write" => Some(TargetSessionAttrs::ReadWrite),
                "read-only" => Some(TargetSessionAttrs::ReadOnly),
                "primary" | "standby" | "prefer-standby" => {
                    return Err(cx.err(format!(
                        "target_session_attrs `{v}` is not supported by tokio-postgres: use any, read-write or read-only"
                    )))
                }
                _ => return Err(invalid("any, read-write or read-only")),
            }
        }
        "channel_binding" => {
            ep.channel_binding = match v {
                "" => None,
                "disable" => Some(ChannelBinding::Disable),
                "prefer" => Some(ChannelBinding::Prefer),
                "require" => Some(ChannelBinding::Require),
                _ => return Err(invalid("disable, prefer or require")),
            }
        }
        "load_balance_hosts" => {
            ep.load_balance_hosts = match v {
                "" => None,
                "disable" => Some(LoadBalanceHosts::Disable),
                "random" => Some(LoadBalanceHosts::Random),
                _ => return Err(invalid("disable or random")),
            }
        }
        "sslnegotiation" => {
            if !matches!(v, "" | "postgres") {
                return Err(cx.err("only sslnegotiation=postgres is supported"));
            }
        }
        "client_encoding" => {
            if !(v.is_empty() || v.eq_ignore_ascii_case("utf8") || v.eq_ignore_ascii_case("utf-8") || v == "auto") {
                return Err(cx.err("client_encoding must be UTF8 (tokio-postgres always uses it)"));
            }
        }
        "gssencmode" => {
            if v == "require" {
                return Err(cx.err("gssencmode=require is not supported (no GSSAPI encryption): use TLS"));
            }
        }
        "sslsni" | "sslcompression" => {
            // sslsni: the host name is always sent (never an IP); sslcompression: ignored by
            // libpq itself since PostgreSQL 14.
        }
        k if UNSUPPORTED_KEYS.contains(&k) => {
            return Err(cx.err(format!("libpq option `{k}` is not supported by this crate")));
        }
        _ => return Err(cx.err(format!("unknown option {}", cx.key(key)))),
    }
    Ok(())
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
