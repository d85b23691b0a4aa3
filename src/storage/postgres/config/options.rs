//! [`PostgresOptions`]: the settings of the PostgreSQL backend, their defaults, the typed
//! setters (what they become on connecting is `connection.rs`).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::endpoint::{Endpoint, Network};
use super::follow::{Follow, DEFAULT_POLL_INTERVAL};
use super::modes::{SslMode, TargetSessionAttrs};
use super::parse::parse_dsn;
use super::redact::Secret;
use crate::ConfigError;

/// The Python package's database name for the discrete form.
pub(super) const DEFAULT_DBNAME: &str = "resilient_circuit_db";
/// The Python package's role for the discrete form.
pub(super) const DEFAULT_USER: &str = "postgres";
/// Namespace when none is given (the Python package's).
const DEFAULT_NAMESPACE: &str = "default";
/// `application_name` of the LISTEN connection unless the listener DSN sets one.
pub(crate) const LISTENER_APPLICATION_NAME: &str = "resilient-circuit-listener";
/// Default of [`PostgresOptions::pool_idle_timeout`]: twice the default cooldown (see its docs).
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The table's `namespace` column is `varchar(255)`.
pub(super) const MAX_NAMESPACE_LEN: usize = 255;

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
/// let opts = PostgresOptions::from_dsn(
///     "postgresql://app:s3cr3t@db.internal:5432/breakers?sslmode=verify-full",
/// )?
/// .namespace("checkout")
/// .statement_timeout(Duration::from_millis(500));
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
    /// This instance's stable name for quorum votes and fleet-rate reports; `None`: the host's
    /// (see [`instance_name`](Self::instance_name)).
    pub(crate) instance_name: Option<String>,
    pub(crate) auto_create: bool,
    pub(crate) strict: bool,
    pub(crate) reconcile_interval: Duration,
    pub(crate) statement_timeout: Duration,
    pub(crate) lease_timeout: Duration,
    pub(crate) fleet_rate_interval: Duration,
    pub(crate) pool_size: usize,
    /// Pooled connections idle this long are closed; zero keeps them (`reaper.rs`).
    pub(crate) pool_idle_timeout: Duration,
    pub(crate) notification_buffer: usize,
    pub(crate) heartbeat_interval: Duration,
    /// Ceiling of the listener's reconnect backoff.
    pub(crate) reconnect_backoff_max: Duration,
    /// The pool goes through a pooler in transaction mode: no session settings on its
    /// connections (they would leak to the pooler's other clients).
    pub(crate) transaction_pooler: bool,
    /// Listening or polling.
    pub(crate) follow: Follow,
    /// How often a polling instance (or a listener that hears nothing) reads the change log.
    pub(crate) poll_interval: Duration,
    /// TCP settings in force for both connections (a DSN's own settings were merged in when it
    /// was parsed; a listener DSN's are merged over these when its connection is built).
    pub(crate) network: Network,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions::new()
    }
}

impl fmt::Display for PostgresOptions {
    /// `user@host:port/dbname sslmode=… namespace=…`, plus the listener's target when separate
    /// and `follow=poll` when polling.
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
        if self.follow != Follow::Listen {
            write!(f, " follow={}", self.follow)?;
        }
        Ok(())
    }
}

impl PostgresOptions {
    /// The Python package's discrete defaults: `postgres@localhost:5432/resilient_circuit_db`, no
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
    pub(super) fn with_endpoint(mut conn: Endpoint) -> Self {
        let mut o = PostgresOptions {
            conn: Endpoint::default(),
            listener: None,
            namespace: DEFAULT_NAMESPACE.into(),
            instance_name: None,
            auto_create: false,
            strict: false,
            reconcile_interval: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(10),
            fleet_rate_interval: Duration::from_secs(1),
            pool_size: 4,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            notification_buffer: 16_384,
            heartbeat_interval: Duration::from_secs(2),
            reconnect_backoff_max: Duration::from_secs(5),
            transaction_pooler: false,
            follow: Follow::Listen,
            poll_interval: DEFAULT_POLL_INTERVAL,
            network: Network {
                connect_timeout: Duration::from_secs(5),
                keepalives: true,
                keepalives_idle: Duration::from_secs(10),
                keepalives_interval: Duration::from_secs(2),
                keepalives_retries: 3,
                tcp_user_timeout: Duration::from_secs(8),
            },
        };
        o.network = std::mem::take(&mut conn.network).over(o.network);
        o.conn = conn;
        o
    }

    /// Settings from a `postgresql://` / `postgres://` URL or a libpq `key=value` conninfo string,
    /// every other setting at its default.
    ///
    /// Understands libpq's keys `host`, `hostaddr`, `port`, `dbname`, `user`, `password`,
    /// `options`, `application_name`, `fallback_application_name`, `sslmode` (including `verify-ca`
    /// and `verify-full`), `sslrootcert`, `sslcert`, `sslkey`, `connect_timeout` (seconds; 0 keeps
    /// the default), `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_count` (or
    /// `keepalives_retries`), `tcp_user_timeout` (milliseconds, as libpq), `target_session_attrs`
    /// (`any`, `read-write`, `read-only`), `channel_binding` and `load_balance_hosts`; accepts and
    /// ignores `client_encoding=UTF8`, `gssencmode` other than `require`, `sslnegotiation=postgres`
    /// (what tokio-postgres does anyway), `sslsni` and `sslcompression`; refuses the rest. A
    /// missing host or user is reported when connecting (or by `from_env`), so the setters can
    /// still supply them.
    ///
    /// Errors are `ConfigError::InvalidSetting { name: "dsn", .. }` and never contain the
    /// password.
    pub fn from_dsn(dsn: &str) -> Result<Self, ConfigError> {
        Ok(Self::with_endpoint(parse_dsn(dsn, "dsn")?))
    }

    /// Connects to `host` only (a name, an IP address, or a Unix socket directory starting with
    /// `/`), replacing the host list. Default from [`new`](Self::new): `localhost`.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.conn.hosts = vec![host.into()];
        self
    }

    /// Tries `hosts` in turn (libpq's comma-separated `host`), replacing the host list: each
    /// connection goes to the first that accepts and meets
    /// [`target_session_attrs`](Self::target_session_attrs) (by default `read-write`, the
    /// primary), so listing a primary and its standbys follows a failover. Each host gets
    /// [`connect_timeout`](Self::connect_timeout) of its own; the host that took the instance's
    /// last connection is tried first, then the others in the order given.
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
        self.conn.password = Some(Secret::new(password.into()));
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

    /// Which server of a host list to use. Default `read-write` for the pool and the listener
    /// alike: LISTEN is refused on a standby and every transition writes. `any` suits a list of
    /// poolers in front of one primary; `read-only` never works for an instance.
    pub fn target_session_attrs(mut self, attrs: TargetSessionAttrs) -> Self {
        self.conn.target_session_attrs = Some(attrs);
        self
    }

    /// Time limit of each connection attempt to one host: TCP, TLS, start-up, authentication
    /// and the `target_session_attrs` check, as libpq's `connect_timeout`. A list of `n` hosts
    /// takes at most `n` times this to fail, and a silent host costs this much before the next
    /// is tried. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.network.connect_timeout = timeout;
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
        self.network.keepalives = on;
        self
    }

    /// Idle time before the first keepalive probe. Default 10 s.
    pub fn keepalives_idle(mut self, idle: Duration) -> Self {
        self.network.keepalives_idle = idle;
        self
    }

    /// Time between keepalive probes. Default 2 s.
    pub fn keepalives_interval(mut self, interval: Duration) -> Self {
        self.network.keepalives_interval = interval;
        self
    }

    /// Unanswered keepalive probes before the connection is dropped. Default 3 (so an idle dead
    /// connection is found after about 10 + 3 × 2 = 16 s).
    pub fn keepalives_retries(mut self, retries: u32) -> Self {
        self.network.keepalives_retries = retries;
        self
    }

    /// How long sent data may stay unacknowledged before the kernel drops the connection
    /// (`TCP_USER_TIMEOUT`, Linux only; ignored elsewhere). Without it a black-holed connection
    /// with data in flight lingers for 15–20 minutes. `Duration::ZERO` keeps the system default.
    /// Default 8 s.
    pub fn tcp_user_timeout(mut self, timeout: Duration) -> Self {
        self.network.tcp_user_timeout = timeout;
        self
    }

    /// How often the listener pings its connection (under the statement timeout), so that a
    /// black-holed LISTEN connection is found within about 10 s by default, together with the
    /// TCP user timeout. Default 2 s.
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        self.heartbeat_interval = every;
        self
    }

    /// Ceiling of the listener's reconnect backoff: after losing its connection it waits 50 ms,
    /// doubling at each failed attempt up to this (each wait drawn between half the ceiling and
    /// the ceiling, so that instances spread out). It bounds how long an instance takes to notice
    /// that the database is back, or that a standby was promoted: at most this, plus one
    /// connect and one reload. Lower it for a faster failover, at the cost of more connection
    /// attempts from every instance while no server accepts them. Default 5 s.
    pub fn reconnect_backoff_max(mut self, max: Duration) -> Self {
        self.reconnect_backoff_max = max;
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

    /// This instance's name in the fleet's judgements: a quorum counts distinct names
    /// ([`TripPolicy::Quorum`](crate::TripPolicy)), and a fleet rate believes each name's reports
    /// up to what one instance can see ([`TripPolicy::FleetRate`](crate::TripPolicy)). It should
    /// stay the same across restarts of the same pod, so that a crash-looping pod is one voter,
    /// and differ between pods. 1–255 bytes, no control characters.
    ///
    /// Default: the `HOSTNAME` variable (a Kubernetes pod's name), else the machine's host name.
    /// Processes sharing a host name (several workers in one container) then count as one
    /// instance, which is what a quorum of pods wants; give them distinct names if they should
    /// count apart. Also `RC_INSTANCE_NAME`.
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance_name = Some(name.into());
        self
    }

    /// The instance's name: [`instance_name`](Self::instance_name)'s, or the host's.
    pub(crate) fn resolved_instance_name(&self) -> String {
        if let Some(name) = &self.instance_name {
            return name.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(255)
                    .collect::<String>()
            })
            .filter(|h| !h.is_empty());
        host.unwrap_or_else(|| "host".to_owned())
    }

    /// Lets `connect` create or upgrade the schema when it is missing or old; needs a role that
    /// may create tables. Default off.
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

    /// How often, at most, this instance reports the windows of its `TripPolicy::FleetRate`
    /// breakers that hold failures (one statement for all of them). Shorter reacts sooner and
    /// costs the database more statements while something fails; a healthy fleet sends none
    /// either way. Default 1 s.
    pub fn fleet_rate_interval(mut self, every: Duration) -> Self {
        self.fleet_rate_interval = every;
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

    /// How long a pooled connection may stay idle before it is closed; the next transition call
    /// then opens one on demand. With it an instance at rest holds one server connection (its
    /// listener's) instead of `1 + ` the pooled connections it ever opened, which is what
    /// `max_connections` has to make room for in a large fleet. Idle time counts from when a
    /// call last took the connection; connections in use are never closed. A small task per
    /// instance checks at most every half timeout (never more often than every 100 ms), so a
    /// connection goes within 1.5 × this at worst. `Duration::ZERO` keeps pooled connections
    /// open for the life of the instance (the behaviour before this setting).
    ///
    /// The cost is one connect (TCP, TLS, authentication, one `SET`, and a fresh server process
    /// whose first call loads the catalog and compiles the crate's functions) on the first
    /// transition after a quiet spell, paid inside the statement timeout. Measured on 2 cores
    /// (propagation bench, phase 10): a trip accepted in 2 ms on a warm pool took 15 ms p50
    /// (30–38 ms p99) over plain TCP and 18–28 ms p50 (70–98 ms p99) over TLS once reaped, and
    /// each new connection cost the server 7–11 ms of CPU.
    ///
    /// Default 60 s: twice the default cooldown (30 s), so that while a breaker stays OPEN its
    /// half-open rounds, one transition call or two every cooldown, find their connection
    /// warm instead of paying a reconnect each round on every instance (1,000 instances × 10 ms
    /// of server CPU every 30 s, at the moment the database may be struggling); an instance at
    /// rest still goes back to one connection within about a minute. With a longer cooldown,
    /// set it above the cooldown for the same effect.
    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.pool_idle_timeout = idle;
        self
    }

    /// The idle timeout of pooled connections, `None` when they are never closed.
    pub(crate) fn pool_reaping(&self) -> Option<Duration> {
        (!self.pool_idle_timeout.is_zero()).then_some(self.pool_idle_timeout)
    }

    /// How many notifications may wait between the LISTEN connection and the loop that applies
    /// them. Past it the listener drops them and reloads every row instead, so a storm can
    /// neither grow memory without bound nor lose a change. Default 16,384.
    pub fn notification_buffer(mut self, size: usize) -> Self {
        self.notification_buffer = size;
        self
    }

    /// The main address is a pooler in transaction mode (pgbouncer's `pool_mode = transaction`).
    /// Transition calls are then unnamed statements with typed parameters, nothing prepared
    /// (on a session of its own an instance prepares them), and the instance sets no
    /// `statement_timeout` and `lock_timeout` on its pooled sessions, which such a pooler would
    /// pass on to its other clients. Calls are then bounded by the client's timeout, which
    /// cancels them on the server. The LISTEN connection needs a direct address
    /// ([`listener_dsn`](Self::listener_dsn)); without one the listener checks itself and
    /// follows the table by polling when it hears nothing (see [`docs::postgres`](crate::docs::postgres), "pgbouncer").
    /// Default `false`; `RC_DB_TRANSACTION_POOLER=1`.
    pub fn transaction_pooler(mut self, yes: bool) -> Self {
        self.transaction_pooler = yes;
        self
    }

    /// How the instance learns of changes made elsewhere: [`Follow::Listen`] (the default), or
    /// [`Follow::Poll`], which reads the change log every
    /// [`poll_interval`](Self::poll_interval) on the follow connection (to
    /// [`listener_dsn`](Self::listener_dsn) when set: a streaming replica, or pgbouncer in
    /// transaction mode; the main address otherwise). Transitions still go to the main address.
    /// When polling, the follow connection accepts any server, a standby included, unless
    /// `target_session_attrs` is set on the listener DSN. `RC_DB_FOLLOW=poll`.
    ///
    /// Polling needs no LISTEN, so it passes through any pooler and works on a replica; a
    /// change reaches the instance within the interval (plus the replica's lag) instead of
    /// milliseconds. See [`docs::scale`](crate::docs::scale) for when to choose it.
    pub fn follow(mut self, mode: Follow) -> Self {
        self.follow = mode;
        self
    }

    /// How often a polling instance reads the change log ([`Follow::Poll`]); also how often a
    /// listener that hears nothing (behind a transaction pooler) does. Default 250 ms;
    /// `RC_DB_POLL_INTERVAL_MS`.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
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
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
