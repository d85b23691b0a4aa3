//! The DSN parser: a `postgresql://` / `postgres://` URL or a libpq `key=value` conninfo string
//! becomes an [`Endpoint`], through the one table of libpq keys (`keys.rs`).
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

use super::endpoint::Endpoint;
use super::keys::{apply_param, handling, Handling::Refuse};
use super::redact::Ctx;
use crate::ConfigError;

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
