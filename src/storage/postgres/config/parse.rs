//! The DSN parser: a `postgresql://` / `postgres://` URL or a libpq `key=value` conninfo string
//! becomes an [`Endpoint`], through the one table of libpq keys ([`KEYS`]).
//!
//! # Why not `tokio_postgres::Config`'s `FromStr`
//!
//! tokio-postgres 0.7 parses both forms too, and its tokenizers are close to these. Delegating to
//! it would change what `from_dsn` accepts and what its errors say, because its parser:
//!
//! * refuses `sslmode=verify-ca` and `verify-full` (it knows `disable`, `prefer`, `require`), and
//!   matches `sslmode` case-sensitively where libpq (and [`SslMode`]'s `FromStr`) does not;
//! * refuses `sslrootcert`, `sslcert` and `sslkey` as unknown options, and has no `Config` field
//!   to carry them (the TLS connector needs them, see `tls.rs`);
//! * reads `tcp_user_timeout` in seconds, where libpq reads milliseconds (`9000` would be 2.5 h);
//! * refuses libpq's `keepalives_count` (it calls it `keepalives_retries`),
//!   `fallback_application_name`, `client_encoding`, `gssencmode`, `sslsni` and `sslcompression`,
//!   which libpq DSNs carry and this crate accepts;
//! * refuses an empty unquoted conninfo value (`password=` at the end: "unexpected EOF") and
//!   keeps an empty URL value (`?password=` is an empty password), where libpq reads "unset";
//! * ends a URL's credentials at the first `@`, so an unencoded `@` in a password, which libpq
//!   reads (it splits at the last `@` of the authority), turns the rest into the host name;
//! * accepts `sslnegotiation=direct`, which this crate's TLS connector cannot do;
//! * puts an unknown option's name verbatim in its error's cause (`source()`, `Debug`), so a
//!   stray password token such as `password=x s3cr3t=1` ends up in logs, while its `Display`
//!   only says "invalid connection string", naming neither the key nor the source (`dsn`,
//!   `RC_DB_DSN`, `listener_dsn`);
//! * cannot tell a key the DSN gave from tokio-postgres's own default (`keepalives`,
//!   `connect_timeout`, `target_session_attrs`, …), which the listener's inheritance and the
//!   setters' precedence need.
//!
//! So both forms are split and decoded here, and `parse_tests.rs` pins the differences above
//! against tokio-postgres itself, so an upgrade that closes them shows up as a failing test.

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
enum Handling {
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
const KEYS: &[(&str, Handling)] = &[
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
fn handling(key: &str) -> Option<Handling> {
    KEYS.iter().find(|(k, _)| *k == key).map(|(_, h)| *h)
}

/// Applies one libpq key to `ep`, as [`KEYS`] says; the last occurrence of a key wins.
fn apply_param(ep: &mut Endpoint, key: &str, v: &str, cx: &Ctx<'_>) -> Result<(), ConfigError> {
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

/// Parses a DSN into an endpoint; errors carry `name` and never a password.
pub(super) fn parse_dsn(dsn: &str, name: &'static str) -> Result<Endpoint, ConfigError> {
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
    for (key, value) in &pairs {
        apply_param(&mut ep, key, value, &cx)?;
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
            let what = if handling(key).is_some_and(|h| !matches!(h, Refuse)) {
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
