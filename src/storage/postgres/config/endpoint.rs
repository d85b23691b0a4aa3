//! Where one connection goes and how it authenticates ([`Endpoint`], what a DSN describes), its
//! TCP-level settings ([`Network`]), and the one place both become a `tokio_postgres::Config`
//! ([`Endpoint::pg_config`]).
//!
//! A DSN may give TCP settings (`connect_timeout`, keepalives, `tcp_user_timeout`) or not, so an
//! endpoint holds them as [`NetworkOverrides`]; [`PostgresOptions`](super::PostgresOptions) holds
//! the values in force. The two meet only in [`NetworkOverrides::over`]: once when options are
//! made from a DSN (the DSN's values become the options' own, so the setters can change them),
//! and when the listener's connection is built (its DSN's values win over the options').

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, LoadBalanceHosts};

use super::modes::{SslMode, TargetSessionAttrs};
use super::redact::Secret;
use crate::ConfigError;

/// PostgreSQL's port, when none is given.
pub(crate) const DEFAULT_PORT: u16 = 5432;

/// The TCP-level settings of one connection, as given to tokio-postgres.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Network {
    /// Time limit of each connection attempt.
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalives: bool,
    pub(crate) keepalives_idle: Duration,
    pub(crate) keepalives_interval: Duration,
    pub(crate) keepalives_retries: u32,
    /// `Duration::ZERO`: the system's default.
    pub(crate) tcp_user_timeout: Duration,
}

impl Network {
    /// Writes these settings into `c` (the keepalive timings only when keepalives are on, the
    /// TCP user timeout only when not zero).
    fn apply(&self, c: &mut tokio_postgres::Config) {
        c.connect_timeout(self.connect_timeout);
        c.keepalives(self.keepalives);
        if self.keepalives {
            c.keepalives_idle(self.keepalives_idle);
            c.keepalives_interval(self.keepalives_interval);
            c.keepalives_retries(self.keepalives_retries);
        }
        if !self.tcp_user_timeout.is_zero() {
            c.tcp_user_timeout(self.tcp_user_timeout);
        }
    }
}

/// The TCP-level settings a DSN gave, each `None` when it did not.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct NetworkOverrides {
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) keepalives: Option<bool>,
    pub(crate) keepalives_idle: Option<Duration>,
    pub(crate) keepalives_interval: Option<Duration>,
    pub(crate) keepalives_retries: Option<u32>,
    pub(crate) tcp_user_timeout: Option<Duration>,
}

impl NetworkOverrides {
    /// `base` with every setting given here in place of base's: the one place where a DSN's
    /// network keys meet the options' values.
    pub(crate) fn over(&self, base: Network) -> Network {
        Network {
            connect_timeout: self.connect_timeout.unwrap_or(base.connect_timeout),
            keepalives: self.keepalives.unwrap_or(base.keepalives),
            keepalives_idle: self.keepalives_idle.unwrap_or(base.keepalives_idle),
            keepalives_interval: self.keepalives_interval.unwrap_or(base.keepalives_interval),
            keepalives_retries: self.keepalives_retries.unwrap_or(base.keepalives_retries),
            tcp_user_timeout: self.tcp_user_timeout.unwrap_or(base.tcp_user_timeout),
        }
    }
}

/// Where one connection goes and how it authenticates: what a DSN describes.
///
/// For the main connection every field is used as is. For the listener (`listener_dsn`), unset
/// fields are taken from the main endpoint (see [`Endpoint::over`]), and its `network` settings
/// override the options' values.
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
    /// The DSN's TCP settings; always empty in the options' main endpoint, whose values were
    /// moved into the options when they were made.
    pub(crate) network: NetworkOverrides,
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
    pub(crate) fn over(&self, main: &Endpoint) -> Endpoint {
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

    /// This endpoint split into one endpoint per host (each with its own `hostaddr` and port),
    /// in the order given; every other setting as here, `load_balance_hosts` aside (the caller
    /// orders the hosts). A libpq host list is tried one host at a time (see `hosts.rs`).
    pub(crate) fn each_host(&self) -> Vec<Endpoint> {
        let n = self.hosts.len().max(self.hostaddrs.len());
        (0..n)
            .map(|i| Endpoint {
                hosts: self.hosts.get(i).cloned().into_iter().collect(),
                hostaddrs: self.hostaddrs.get(i).copied().into_iter().collect(),
                ports: self
                    .ports
                    .get(i)
                    .or(self.ports.first())
                    .copied()
                    .into_iter()
                    .collect(),
                load_balance_hosts: None,
                ..self.clone()
            })
            .collect()
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
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
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

    /// The tokio-postgres configuration of a connection to this endpoint with `network` (already
    /// merged, see [`NetworkOverrides::over`]); `application_name` is used unless the endpoint
    /// sets one (or a `fallback_application_name`).
    pub(crate) fn pg_config(
        &self,
        network: &Network,
        application_name: &str,
    ) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        for h in &self.hosts {
            c.host(h);
        }
        for a in &self.hostaddrs {
            c.hostaddr(*a);
        }
        for p in &self.ports {
            c.port(*p);
        }
        if let Some(u) = &self.user {
            c.user(u);
        }
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if let Some(d) = &self.dbname {
            c.dbname(d);
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        let name = self
            .application_name
            .as_deref()
            .or(self.fallback_application_name.as_deref())
            .unwrap_or(application_name);
        c.application_name(name);
        // libpq ignores sslmode on Unix sockets; tokio-postgres would ask and fail on `require`.
        let mode = if self.unix_only() {
            SslMode::Disable
        } else {
            self.sslmode.unwrap_or_default()
        };
        c.ssl_mode(mode.to_tokio());
        network.apply(&mut c);
        // Both connections need the primary: LISTEN is refused on a standby, and every pooled
        // statement writes. An explicit setting still wins.
        let attrs = self
            .target_session_attrs
            .unwrap_or(TargetSessionAttrs::ReadWrite);
        c.target_session_attrs(attrs.to_tokio());
        if let Some(b) = self.channel_binding {
            c.channel_binding(b);
        }
        if let Some(l) = self.load_balance_hosts {
            c.load_balance_hosts(l);
        }
        c
    }
}

#[cfg(test)]
#[path = "endpoint_tests.rs"]
mod tests;
