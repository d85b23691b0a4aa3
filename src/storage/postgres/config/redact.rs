//! Keeping secrets out of output: the password wrapper ([`Secret`]), and the rules that decide
//! whether a piece of the input may be quoted in an error ([`Ctx`]).
//!
//! The rule: a value is quoted only when it is a short plain token (letters, digits, `.`, `_`,
//! `-`) that neither contains nor is contained in any password of the same input; otherwise the
//! error says "the value (not shown)".

use std::fmt;

use crate::ConfigError;

/// A password: never printed, by `Debug` or anything else.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(password: String) -> Self {
        Secret(password)
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt("<redacted>", f)
    }
}

/// True for a short value made of letters, digits, `.`, `_` and `-`: safe to quote in an error
/// when it is not part of the password (see [`quote`]).
pub(super) fn plain_token(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 40
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `value` may appear in an error: a plain token that neither contains nor is
/// contained in any password seen.
pub(super) fn showable(value: &str, passwords: &[String]) -> bool {
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
pub(super) struct Ctx<'a> {
    pub(super) name: &'static str,
    pub(super) passwords: &'a [String],
}

impl<'a> Ctx<'a> {
    pub(super) fn named(self, name: &'static str) -> Ctx<'a> {
        Ctx { name, ..self }
    }

    pub(super) fn err(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::InvalidSetting {
            name: self.name,
            reason: reason.into(),
        }
    }

    pub(super) fn quote(&self, value: &str) -> String {
        quote(value, self.passwords)
    }

    /// An option name for an error: libpq names are lower case with underscores.
    pub(super) fn key(&self, key: &str) -> String {
        if key.len() <= 40 && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            self.quote(key)
        } else {
            "an option name (not shown)".to_owned()
        }
    }
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
