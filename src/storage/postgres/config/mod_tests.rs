//! What the unit tests of `config/` share: the imports they all use, a password to look for,
//! and helpers to build a variable lookup and to inspect errors.

pub(super) use std::collections::HashMap;
pub(super) use std::net::Ipv4Addr;
pub(super) use std::path::Path;

pub(super) use tokio_postgres::config::{
    Host, SslMode as PgSslMode, TargetSessionAttrs as PgAttrs,
};

pub(super) use super::{PostgresOptions, SslMode};
pub(super) use crate::ConfigError;

pub(super) const PW: &str = "s3cr3t-PW";

/// A variable lookup over `vars`, for `PostgresOptions::from_lookup`.
pub(super) fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

pub(super) fn setting_name(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::InvalidSetting { name, .. } => name,
        other => panic!("not InvalidSetting: {other:?}"),
    }
}

pub(super) fn tcp(h: &str) -> Host {
    Host::Tcp(h.to_owned())
}

/// Asserts that no rendering of `e` shows the password.
pub(super) fn assert_hidden(e: &ConfigError) {
    assert!(!e.to_string().contains(PW), "password in Display: {e}");
    assert!(!format!("{e:?}").contains(PW), "password in Debug: {e:?}");
}
