//! libpq's enumerated connection modes: `sslmode` ([`SslMode`], with its parse error) and
//! `target_session_attrs` ([`TargetSessionAttrs`]), and how each maps onto tokio-postgres's
//! narrower enums.

use std::fmt;
use std::str::FromStr;

use super::redact::plain_token;

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
pub(super) fn sslmode_reason(shown: Option<&str>) -> String {
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
    pub(super) fn to_tokio(self) -> tokio_postgres::config::TargetSessionAttrs {
        use tokio_postgres::config::TargetSessionAttrs as T;
        match self {
            TargetSessionAttrs::Any => T::Any,
            TargetSessionAttrs::ReadWrite => T::ReadWrite,
            TargetSessionAttrs::ReadOnly => T::ReadOnly,
        }
    }
}

#[cfg(test)]
#[path = "modes_tests.rs"]
mod tests;
