//! The one table of libpq keys ([`KEYS`]): what this crate does with each key a DSN may carry,
//! and the setters and value parsers behind it. `parse.rs` splits a DSN into pairs; this file
//! gives each pair its meaning.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::{ChannelBinding, LoadBalanceHosts};

use super::endpoint::{Endpoint, DEFAULT_PORT};
use super::modes::{sslmode_reason, SslMode, TargetSessionAttrs};
use super::redact::{showable, Ctx, Secret};
use crate::ConfigError;

/// What this crate does with one libpq key. Empty values mean "not set", as in libpq.
#[derive(Clone, Copy)]
pub(super) enum Handling {
    /// A text field of the endpoint.
    Text(fn(&mut Endpoint) -> &mut Option<String>),
    /// A file name field of the endpoint.
    File(fn(&mut Endpoint) -> &mut Option<PathBuf>),
    /// Whole seconds, as libpq reads them: zero or less is "not set".
    Seconds(fn(&mut Endpoint) -> &mut Option<Duration>),
    /// Anything else: parsed and applied by the function.
    Apply(Setter),
    /// Accepted, and without effect here.
    Ignore,
    /// A libpq key this crate cannot honour: refused rather than silently ignored.
    Refuse,
}

/// Applies one key's value to an endpoint; the key is passed for error messages.
type Setter = fn(&mut Endpoint, &str, &str, &Ctx<'_>) -> Result<(), ConfigError>;

use Handling::{Apply, File, Ignore, Refuse, Seconds, Text};

/// Every libpq key this crate knows, and what it does with it: the one place to add a key (and
/// then to [`PostgresOptions::from_dsn`](super::PostgresOptions::from_dsn)'s list, which a test
/// checks). Any other key is an "unknown option" error.
pub(super) const KEYS: &[(&str, Handling)] = &[
    ("host", Apply(host)),
    ("hostaddr", Apply(hostaddr)),
    ("port", Apply(port)),
    ("dbname", Text(|ep| &mut ep.dbname)),
    ("user", Text(|ep| &mut ep.user)),
    ("password", Apply(password)),
    ("options", Text(|ep| &mut ep.options)),
    ("application_name", Text(|ep| &mut ep.application_name)),
    (
        "fallback_application_name",
        Text(|ep| &mut ep.fallback_application_name),
    ),
    ("sslmode", Apply(sslmode)),
    ("sslrootcert", File(|ep| &mut ep.sslrootcert)),
    ("sslcert", File(|ep| &mut ep.sslcert)),
    ("sslkey", File(|ep| &mut ep.sslkey)),
    (
        "connect_timeout",
        Seconds(|ep| &mut ep.network.connect_timeout),
    ),
    ("keepalives", Apply(keepalives)),
    (
        "keepalives_idle",
        Seconds(|ep| &mut ep.network.keepalives_idle),
    ),
    (
        "keepalives_interval",
        Seconds(|ep| &mut ep.network.keepalives_interval),
    ),
    ("keepalives_count", Apply(keepalives_retries)),
    // tokio-postgres's name of `keepalives_count`.
    ("keepalives_retries", Apply(keepalives_retries)),
    ("tcp_user_timeout", Apply(tcp_user_timeout)),
    ("target_session_attrs", Apply(target_session_attrs)),
    ("channel_binding", Apply(channel_binding)),
    ("load_balance_hosts", Apply(load_balance_hosts)),
    ("sslnegotiation", Apply(sslnegotiation)),
    ("client_encoding", Apply(client_encoding)),
    ("gssencmode", Apply(gssencmode)),
    // The host name is always sent (never an IP).
    ("sslsni", Ignore),
    // Ignored by libpq itself since PostgreSQL 14.
    ("sslcompression", Ignore),
    ("sslpassword", Refuse),
    ("sslcrl", Refuse),
    ("sslcrldir", Refuse),
    ("sslcertmode", Refuse),
    ("ssl_min_protocol_version", Refuse),
    ("ssl_max_protocol_version", Refuse),
    ("passfile", Refuse),
    ("service", Refuse),
    ("requiressl", Refuse),
    ("requirepeer", Refuse),
    ("require_auth", Refuse),
    ("krbsrvname", Refuse),
    ("gsslib", Refuse),
    ("gssdelegation", Refuse),
    ("replication", Refuse),
    ("sslkeylogfile", Refuse),
];

/// What [`KEYS`] says about `key`; `None` for a key it does not list.
pub(super) fn handling(key: &str) -> Option<Handling> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, h)| *h)
}

/// Applies one libpq key to `ep`, as [`KEYS`] says; the last occurrence of a key wins.
pub(super) fn apply_param(
    ep: &mut Endpoint,
    key: &str,
    v: &str,
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    match handling(key) {
        Some(Text(field)) => *field(ep) = (!v.is_empty()).then(|| v.to_owned()),
        Some(File(field)) => *field(ep) = (!v.is_empty()).then(|| PathBuf::from(v)),
        Some(Seconds(field)) => *field(ep) = parse_secs(key, v, cx)?,
        Some(Apply(setter)) => setter(ep, key, v, cx)?,
        Some(Ignore) => {}
        Some(Refuse) => {
            return Err(cx.err(format!(
                "libpq option `{key}` is not supported by this crate"
            )))
        }
        None => return Err(cx.err(format!("unknown option {}", cx.key(key)))),
    }
    Ok(())
}

/// "`key` = `value` is not {what}", the value only when it may be shown.
fn invalid(key: &str, v: &str, cx: &Ctx<'_>, what: &str) -> ConfigError {
    cx.err(format!("{} = {} is not {what}", cx.key(key), cx.quote(v)))
}

// The setters of the keys that take more than one line, in the order of [`KEYS`].

fn host(ep: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.hosts = if v.is_empty() {
        Vec::new()
    } else {
        split_list(v, cx)?
    };
    Ok(())
}

fn hostaddr(ep: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.hostaddrs = Vec::new();
    for a in v.split(',').filter(|_| !v.is_empty()) {
        let addr = a.trim().parse::<IpAddr>().map_err(|_| {
            cx.err(format!(
                "hostaddr {} is not an IP address",
                cx.quote(a.trim())
            ))
        })?;
        ep.hostaddrs.push(addr);
    }
    Ok(())
}

fn port(ep: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.ports = Vec::new();
    if !v.is_empty() {
        for p in v.split(',') {
            let p = p.trim();
            ep.ports.push(if p.is_empty() {
                DEFAULT_PORT
            } else {
                parse_port(p, cx)?
            });
        }
    }
    Ok(())
}

fn password(ep: &mut Endpoint, _: &str, v: &str, _: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.password = (!v.is_empty()).then(|| Secret::new(v.to_owned()));
    Ok(())
}

fn sslmode(ep: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.sslmode = if v.is_empty() {
        None
    } else {
        Some(parse_sslmode(v, cx)?)
    };
    Ok(())
}

fn keepalives(ep: &mut Endpoint, k: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.network.keepalives = match v.trim() {
        "" => None,
        t => Some(t.parse::<i64>().map_err(|_| invalid(k, v, cx, "0 or 1"))? != 0),
    };
    Ok(())
}

fn keepalives_retries(
    ep: &mut Endpoint,
    k: &str,
    v: &str,
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    ep.network.keepalives_retries = match v.trim() {
        "" => None,
        t => Some(t.parse::<u32>().map_err(|_| invalid(k, v, cx, "a count"))?),
    };
    Ok(())
}

/// Milliseconds, as libpq (tokio-postgres reads seconds).
fn tcp_user_timeout(ep: &mut Endpoint, k: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.network.tcp_user_timeout = match v.trim() {
        "" => None,
        t => {
            let ms = t.parse::<i64>();
            let ms = ms.map_err(|_| invalid(k, v, cx, "a whole number of milliseconds"))?;
            Some(Duration::from_millis(ms.max(0).unsigned_abs()))
        }
    };
    Ok(())
}

fn target_session_attrs(
    ep: &mut Endpoint,
    k: &str,
    v: &str,
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
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
        _ => return Err(invalid(k, v, cx, "any, read-write or read-only")),
    };
    Ok(())
}

fn channel_binding(ep: &mut Endpoint, k: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    ep.channel_binding = match v {
        "" => None,
        "disable" => Some(ChannelBinding::Disable),
        "prefer" => Some(ChannelBinding::Prefer),
        "require" => Some(ChannelBinding::Require),
        _ => return Err(invalid(k, v, cx, "disable, prefer or require")),
    };
    Ok(())
}

fn load_balance_hosts(
    ep: &mut Endpoint,
    k: &str,
    v: &str,
    cx: &Ctx<'_>,
) -> Result<(), ConfigError> {
    ep.load_balance_hosts = match v {
        "" => None,
        "disable" => Some(LoadBalanceHosts::Disable),
        "random" => Some(LoadBalanceHosts::Random),
        _ => return Err(invalid(k, v, cx, "disable or random")),
    };
    Ok(())
}

/// Accepted only when it asks for what tokio-postgres does anyway.
fn sslnegotiation(_: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    if !matches!(v, "" | "postgres") {
        return Err(cx.err("only sslnegotiation=postgres is supported"));
    }
    Ok(())
}

/// Accepted only when it asks for what tokio-postgres does anyway.
fn client_encoding(_: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    let utf8 = v.eq_ignore_ascii_case("utf8") || v.eq_ignore_ascii_case("utf-8");
    if !(v.is_empty() || utf8 || v == "auto") {
        return Err(cx.err("client_encoding must be UTF8 (tokio-postgres always uses it)"));
    }
    Ok(())
}

/// Accepted unless it demands GSSAPI encryption, which tokio-postgres lacks.
fn gssencmode(_: &mut Endpoint, _: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
    if v == "require" {
        return Err(cx.err("gssencmode=require is not supported (no GSSAPI encryption): use TLS"));
    }
    Ok(())
}

pub(super) fn parse_port(v: &str, cx: &Ctx<'_>) -> Result<u16, ConfigError> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(cx.err(format!(
            "port {} is not a port number (1-65535)",
            cx.quote(v)
        ))),
    }
}

pub(super) fn parse_sslmode(v: &str, cx: &Ctx<'_>) -> Result<SslMode, ConfigError> {
    v.parse::<SslMode>().map_err(|_| {
        let t = v.trim();
        cx.err(sslmode_reason(showable(t, cx.passwords).then_some(t)))
    })
}

/// A comma-separated list with no empty element.
pub(super) fn split_list(v: &str, cx: &Ctx<'_>) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
    if items.iter().any(String::is_empty) {
        return Err(cx.err("empty host in the list"));
    }
    Ok(items)
}

/// Seconds as libpq reads them: an integer; `None` for an empty value, zero or less ("no
/// value").
fn parse_secs(key: &str, v: &str, cx: &Ctx<'_>) -> Result<Option<Duration>, ConfigError> {
    if v.is_empty() {
        return Ok(None);
    }
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
