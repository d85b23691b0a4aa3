//! [`PostgresOptions::from_env`]: the settings from the Python package's `RC_DB_*` variables plus
//! a few of ours, and the table of them that docs.rs shows (and `env_tests.rs` checks against the
//! copy in `docs::postgres` and against the variables read here).

use std::path::PathBuf;
use std::time::Duration;

use super::connection::check_namespace;
use super::endpoint::Endpoint;
use super::keys::{parse_port, parse_sslmode, split_list};
use super::options::{DEFAULT_DBNAME, DEFAULT_USER};
use super::parse::parse_dsn;
use super::redact::{Ctx, Secret};
use super::PostgresOptions;
use crate::ConfigError;

impl PostgresOptions {
    /// Settings from the `RC_DB_*` variables, `None` when PostgreSQL is not configured: neither
    /// `RC_DB_DSN` nor `RC_DB_HOST` / `RC_DB_PASSWORD` set.
    ///
    /// | variable | default | meaning |
    /// |---|---|---|
    /// | `RC_DB_DSN` | unset | whole connection as URL or conninfo; the discrete ones are ignored |
    /// | `RC_DB_HOST` | unset | host name, IP, socket directory, or comma-separated list |
    /// | `RC_DB_PASSWORD` | unset | password |
    /// | `RC_DB_PORT` | `5432` | port, or comma-separated ports, one per host |
    /// | `RC_DB_NAME` | `resilient_circuit_db` | database |
    /// | `RC_DB_USER` | `postgres` | role |
    /// | `RC_DB_SSLMODE` | `prefer` | `disable`, `prefer`, `require`, `verify-ca`, `verify-full` |
    /// | `RC_DB_SSLROOTCERT` | unset | PEM file of the CAs to trust (`system`: the system store) |
    /// | `RC_DB_SSLCERT` / `RC_DB_SSLKEY` | unset | client certificate (PEM chain) and its key |
    /// | `RC_DB_STRICT` | `0` | `1`: fail at start when PostgreSQL is unreachable |
    /// | `RC_DB_AUTO_CREATE` | `0` | `1`: `connect` may create or upgrade the schema |
    /// | `RC_NAMESPACE` | `default` | namespace of this instance's breakers (1–255 bytes) |
    /// | `RC_INSTANCE_NAME` | unset | this instance's stable name in quorums and fleet rates; unset: `$HOSTNAME`, else the host's ([`instance_name`](Self::instance_name)) |
    /// | `RC_DB_LISTENER_DSN` | unset | separate address for the LISTEN connection |
    /// | `RC_DB_TRANSACTION_POOLER` | `0` | `1`: the main address is a transaction-mode pooler (pgbouncer) |
    /// | `RC_DB_FOLLOW` | `listen` | `poll`: follow the change log instead of LISTEN ([`Follow`](super::Follow)) |
    /// | `RC_DB_POLL_INTERVAL_MS` | `250` | how often a polling instance reads the change log |
    /// | `RC_DB_RECONCILE_INTERVAL_MS` | `30000` | period of the full resync behind notifications |
    /// | `RC_DB_STATEMENT_TIMEOUT_MS` | `2000` | time limit of each transition call |
    /// | `RC_DB_CONNECT_TIMEOUT_MS` | `5000` | time limit of each connection attempt, per host |
    /// | `RC_DB_POOL_IDLE_TIMEOUT_MS` | `60000` | pooled connections idle this long are closed; `0`: never |
    ///
    /// `RC_DB_DSN` wins and is used verbatim: when it is set, the discrete `RC_DB_HOST` …
    /// `RC_DB_SSLKEY` are ignored (with a warning). Otherwise `RC_DB_HOST` and `RC_DB_PASSWORD`
    /// together select PostgreSQL; unlike the Python package, which silently stays in memory,
    /// setting only one of them is an error naming the other, since it is almost always a
    /// deployment mistake. Without `RC_DB_STRICT`, an unreachable PostgreSQL at start means
    /// running on local state and connecting in the background. `RC_DB_LISTENER_DSN` serves to
    /// bypass pgbouncer in transaction pooling; the fields it lacks come from the main settings
    /// (see [`listener_dsn`](Self::listener_dsn)).
    ///
    /// Booleans accept `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`; an empty variable counts
    /// as unset. Invalid values are errors naming the variable; the result is fully checked (host,
    /// user, timeouts, namespace) so that a bad setting fails at start.
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
                        password: Some(Secret::new(pw.clone())),
                        ..Endpoint::default()
                    };
                    if let Some(port) = var("RC_DB_PORT") {
                        // One for all hosts, or one per host (libpq's PGPORT).
                        let cx = cx.named("RC_DB_PORT");
                        conn.ports = port
                            .split(',')
                            .map(|p| parse_port(p.trim(), &cx))
                            .collect::<Result<_, _>>()?;
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
        if let Some(name) = var("RC_INSTANCE_NAME") {
            check_namespace(&name, "RC_INSTANCE_NAME")?;
            opts.instance_name = Some(name);
        }
        if let Some(v) = var("RC_DB_STRICT") {
            opts.strict = parse_bool(&v, &cx.named("RC_DB_STRICT"))?;
        }
        if let Some(v) = var("RC_DB_TRANSACTION_POOLER") {
            opts.transaction_pooler = parse_bool(&v, &cx.named("RC_DB_TRANSACTION_POOLER"))?;
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
        if let Some(v) = var("RC_DB_FOLLOW") {
            opts.follow = v.parse().map_err(|e| {
                cx.named("RC_DB_FOLLOW")
                    .err(format!("{}: {e}", cx.quote(v.trim())))
            })?;
        }
        if let Some(v) = var("RC_DB_POLL_INTERVAL_MS") {
            opts.poll_interval = parse_millis(&v, &cx.named("RC_DB_POLL_INTERVAL_MS"))?;
        }
        if let Some(v) = var("RC_DB_CONNECT_TIMEOUT_MS") {
            opts.network.connect_timeout = parse_millis(&v, &cx.named("RC_DB_CONNECT_TIMEOUT_MS"))?;
        }
        if let Some(v) = var("RC_DB_POOL_IDLE_TIMEOUT_MS") {
            // Zero is a meaning here (never close them), not a mistake.
            let cx = cx.named("RC_DB_POOL_IDLE_TIMEOUT_MS");
            opts.pool_idle_timeout = match v.trim().parse::<u64>() {
                Ok(0) => Duration::ZERO,
                _ => parse_millis(&v, &cx)?,
            };
        }
        opts.check()?;
        if opts.listener.is_some() {
            opts.listener_endpoint().check()?;
        }
        Ok(Some(opts))
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

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
