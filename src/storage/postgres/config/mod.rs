//! [`PostgresOptions`]: connection and behaviour settings of the PostgreSQL backend, from a DSN
//! ([`PostgresOptions::from_dsn`]), the Python package's `RC_DB_*` variables
//! ([`PostgresOptions::from_env`], whose docs carry the table), or the typed builder.
//!
//! One concept per file, as sqlx splits its connect options:
//!
//! * `modes`: libpq's `sslmode` and `target_session_attrs` ([`SslMode`], [`TargetSessionAttrs`],
//!   [`ParseSslModeError`]);
//! * `redact`: the password wrapper and the rules for quoting input in errors;
//! * `endpoint`: where one connection goes, its TCP settings, and the one place where a DSN's
//!   TCP settings meet the options' values;
//! * `parse`: the URL and conninfo parser (and why it is not
//!   tokio-postgres's);
//! * `env`: `from_env` and the `RC_DB_*` table;
//! * `follow`: [`Follow`], listening or polling;
//! * `options`: [`PostgresOptions`] itself, its defaults and setters;
//! * `connection`: what the options become when connecting (checks, pool and listener configurations).
//!
//! # Secrets
//!
//! The password is kept in a wrapper whose `Debug` prints `"<redacted>"`, [`PostgresOptions`]'s
//! `Display` and `target()` leave it out, and error messages only quote a piece of the input when
//! it is a short plain token that neither contains nor is contained in the password.

mod connection;
mod endpoint;
mod env;
mod follow;
mod keys;
mod modes;
mod options;
mod parse;
mod redact;

pub(crate) use endpoint::TlsSettings;
pub use follow::{Follow, ParseFollowError};
pub use modes::{ParseSslModeError, SslMode, TargetSessionAttrs};
pub use options::PostgresOptions;

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
