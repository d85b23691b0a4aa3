//! What [`PostgresOptions`] become when the backend connects: the checks made first, and the
//! tokio-postgres configurations, host lists and TLS settings of the pool and the listener.

use super::endpoint::{Endpoint, Network, TlsSettings};
use super::follow::Follow;
use std::time::Duration;

use super::modes::TargetSessionAttrs;
use super::options::{PostgresOptions, LISTENER_APPLICATION_NAME, MAX_NAMESPACE_LEN};
use crate::storage::postgres::hosts::{Host, Hosts};
use crate::ConfigError;
use tokio_postgres::config::LoadBalanceHosts;

impl PostgresOptions {
    /// The listener's endpoint, with unset fields from the main one. A polling instance's
    /// accepts any server (a standby is what it is for) unless the listener DSN says otherwise.
    pub(super) fn listener_endpoint(&self) -> Endpoint {
        let mut ep = match &self.listener {
            Some(l) => l.over(&self.conn),
            None => {
                // The pool's name is the pool's: the listener keeps its own in
                // `pg_stat_activity`, as `application_name`'s doc says.
                let mut main = self.conn.clone();
                main.application_name = None;
                main.fallback_application_name = None;
                main
            }
        };
        let own = self.listener.as_ref().and_then(|l| l.target_session_attrs);
        if self.follow == Follow::Poll && own.is_none() {
            ep.target_session_attrs = Some(TargetSessionAttrs::Any);
        }
        ep
    }

    /// Refuses settings the backend cannot run with.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        check_namespace(&self.namespace, "namespace")?;
        if let Some(name) = &self.instance_name {
            check_namespace(name, "instance_name")?;
        }
        let positive = [
            ("connect_timeout", self.network.connect_timeout),
            ("statement_timeout", self.statement_timeout),
            ("reconcile_interval", self.reconcile_interval),
            ("lease_timeout", self.lease_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("poll_interval", self.poll_interval),
            ("fleet_rate_interval", self.fleet_rate_interval),
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
        if self.network.keepalives {
            for (name, d) in [
                ("keepalives_idle", self.network.keepalives_idle),
                ("keepalives_interval", self.network.keepalives_interval),
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
        Ok(self.conn.pg_config(&self.network, application_name))
    }

    /// The LISTEN connection's settings: the listener DSN or host when set, the main settings
    /// otherwise, with `application_name` `resilient-circuit-listener` and, unless set
    /// explicitly, `target_session_attrs=read-write`. (The listener connects through
    /// [`listener_hosts`](Self::listener_hosts), one host at a time, with these settings.)
    #[cfg(test)]
    pub(crate) fn listener_pg_config(&self) -> Result<tokio_postgres::Config, ConfigError> {
        self.check()?;
        let ep = self.listener_endpoint();
        ep.check()?;
        let network = ep.network.over(self.network);
        Ok(ep.pg_config(&network, LISTENER_APPLICATION_NAME))
    }

    /// The pool's host list (see `hosts.rs`): one configuration per host, as
    /// [`pg_config`](Self::pg_config) would make for that host alone, each attempt bounded by
    /// the connect timeout.
    pub(crate) fn pool_hosts(&self, application_name: &str) -> Result<Hosts, ConfigError> {
        self.check()?;
        Ok(host_list(&self.conn, &self.network, application_name))
    }

    /// The LISTEN connection's host list, with the settings of
    /// [`listener_pg_config`](Self::listener_pg_config).
    pub(crate) fn listener_hosts(&self) -> Result<Hosts, ConfigError> {
        self.check()?;
        let ep = self.listener_endpoint();
        ep.check()?;
        let network = ep.network.over(self.network);
        Ok(host_list(&ep, &network, LISTENER_APPLICATION_NAME))
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

    /// `host:port/dbname` of the pool's connections, for logs and errors; never the password.
    pub(crate) fn target(&self) -> String {
        self.conn.target()
    }

    /// `host:port/dbname` of the LISTEN connection.
    pub(crate) fn listener_target(&self) -> String {
        self.listener_endpoint().target()
    }
}

/// `ep`'s hosts, one configuration each, bounded by `network`'s connect timeout.
fn host_list(ep: &Endpoint, network: &Network, application_name: &str) -> Hosts {
    let hosts = ep
        .each_host()
        .into_iter()
        .map(|one| Host {
            target: one.target(),
            config: one.pg_config(network, application_name),
        })
        .collect();
    let random = ep.load_balance_hosts == Some(LoadBalanceHosts::Random);
    Hosts::new(hosts, ep.tls_settings(), network.connect_timeout, random)
}

/// Refuses a namespace the table cannot hold.
pub(super) fn check_namespace(ns: &str, name: &'static str) -> Result<(), ConfigError> {
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
