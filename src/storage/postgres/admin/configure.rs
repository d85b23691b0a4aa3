//! `config`: a key's live configuration (`rc_breaker_config`), read (`rc_configs`) or changed
//! (`rc_configure`). Every running instance applies a change within its propagation time.

use std::time::Duration;

use tokio_postgres::types::Type;

use super::super::configs;
use super::AdminSession;
use crate::error::StorageError;
use crate::{ConfigError, LiveConfig, Mode, Ratio, TripPolicy};

/// A change to a key's live configuration: what is set changes, what is not keeps its stored
/// value; [`reset`](Self::reset) first deletes the stored configuration (the code's values,
/// mode normal).
///
/// ```
/// use resilient_circuit::admin::ConfigChange;
/// use resilient_circuit::{Mode, Ratio};
/// use std::time::Duration;
/// let change = ConfigChange::new()
///     .cooldown(Duration::from_secs(300))
///     .failure_limit(Ratio::new(3, 10))
///     .note("vendor degraded, ticket 42");
/// assert!(change.validate().is_ok());
/// assert!(ConfigChange::new().mode(Mode::ForcedOpen).validate().is_ok());
/// assert!(ConfigChange::new().failure_limit(Ratio::new(11, 10)).validate().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChange {
    reset: bool,
    mode: Option<Mode>,
    cooldown: Option<Duration>,
    failure_limit: Option<Ratio>,
    success_limit: Option<Ratio>,
    trip_policy: Option<TripPolicy>,
    note: Option<String>,
}

impl ConfigChange {
    /// A change of nothing (yet).
    pub fn new() -> ConfigChange {
        ConfigChange::default()
    }

    /// Deletes the stored configuration first: back to the code's values, mode normal, then
    /// what else this change sets.
    pub fn reset(mut self) -> Self {
        self.reset = true;
        self
    }

    /// How breakers treat calls.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The cooldown, instead of the code's.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = Some(cooldown);
        self
    }

    /// The failure limit, instead of the code's.
    pub fn failure_limit(mut self, limit: Ratio) -> Self {
        self.failure_limit = Some(limit);
        self
    }

    /// The success limit of a half-open round, instead of the code's.
    pub fn success_limit(mut self, limit: Ratio) -> Self {
        self.success_limit = Some(limit);
        self
    }

    /// Who opens the breaker for the fleet, instead of the code's policy.
    pub fn trip_policy(mut self, policy: TripPolicy) -> Self {
        self.trip_policy = Some(policy);
        self
    }

    /// Why, kept with the configuration (and in the change log when the mode opens or closes
    /// the breaker).
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// True when it changes something (a note alone changes nothing).
    pub fn changes_anything(&self) -> bool {
        self.reset
            || self.mode.is_some()
            || self.cooldown.is_some()
            || self.failure_limit.is_some()
            || self.success_limit.is_some()
            || self.trip_policy.is_some()
    }

    /// Checks every value as [`Builder::build`](crate::Builder::build) checks its arguments;
    /// the table's constraints check them again, whoever writes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        LiveConfig {
            mode: self.mode.unwrap_or_default(),
            cooldown: self.cooldown,
            failure_limit: self.failure_limit,
            success_limit: self.success_limit,
            trip_policy: self.trip_policy,
            version: 0,
        }
        .validate()
    }
}

impl AdminSession {
    /// `key`'s live configuration in namespace `ns`; `None` when it has none (the code's
    /// values, mode normal).
    pub async fn configuration(
        &self,
        ns: &str,
        key: &str,
    ) -> Result<Option<LiveConfig>, StorageError> {
        let during = "reading the live configuration";
        let keys = vec![key.to_owned()];
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM public.rc_configs($1, $2)",
                &[(&ns, Type::TEXT), (&keys, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|e| StorageError::db(during, e))?;
        rows.first().map(|r| live(r, during)).transpose()
    }

    /// Every live configuration of namespace `ns`, by key (keys without one have the code's
    /// values, mode normal): what a page of the whole namespace shows beside
    /// [`status`](AdminSession::status).
    pub async fn configurations(
        &self,
        ns: &str,
    ) -> Result<Vec<(String, LiveConfig)>, StorageError> {
        let during = "reading the live configurations";
        let keys: Option<Vec<String>> = None;
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM public.rc_configs($1, $2)",
                &[(&ns, Type::TEXT), (&keys, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|e| StorageError::db(during, e))?;
        rows.iter()
            .map(|r| {
                let key: String = r
                    .try_get("o_key")
                    .map_err(|e| StorageError::db(during, e))?;
                Ok((key, live(r, during)?))
            })
            .collect()
    }

    /// Changes `key`'s live configuration in namespace `ns` for every instance and returns it
    /// as stored (`None`: none is left, after a reset that set nothing). Checked first
    /// ([`ConfigChange::validate`]); refused for a role that is not an operator.
    pub async fn configure(
        &self,
        ns: &str,
        key: &str,
        change: &ConfigChange,
    ) -> Result<Option<LiveConfig>, StorageError> {
        let during = "changing the live configuration";
        change.validate()?;
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let cooldown_ms = change.cooldown.map(ms);
        let (f_num, f_den) = split(change.failure_limit);
        let (s_num, s_den) = split(change.success_limit);
        let mode = change.mode.map(Mode::as_str);
        let p = PolicyParams::of(change.trip_policy);
        let rows = self
            .client
            .query_typed(
                "SELECT * FROM public.rc_configure($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17)",
                &[
                    (&ns, Type::TEXT),
                    (&key, Type::TEXT),
                    (&mode, Type::TEXT),
                    (&cooldown_ms, Type::INT8),
                    (&f_num, Type::INT4),
                    (&f_den, Type::INT4),
                    (&s_num, Type::INT4),
                    (&s_den, Type::INT4),
                    (&change.reset, Type::BOOL),
                    (&change.note, Type::TEXT),
                    (&p.name, Type::TEXT),
                    (&p.instances, Type::INT4),
                    (&p.within_ms, Type::INT8),
                    (&p.rate_num, Type::INT4),
                    (&p.rate_den, Type::INT4),
                    (&p.min_calls, Type::INT4),
                    (&p.period_ms, Type::INT8),
                ],
            )
            .await
            .map_err(|e| StorageError::db(during, e))?;
        // Version 0: the row of a key left without a configuration (after a reset).
        Ok(rows
            .first()
            .map(|r| live(r, during))
            .transpose()?
            .filter(|c| c.version != 0))
    }
}

/// A row of `rc_configs` or `rc_configure`, read as instances read it.
fn live(row: &tokio_postgres::Row, during: &'static str) -> Result<LiveConfig, StorageError> {
    configs::parse(row).map_err(|e| super::breakers::unexpected(during, e.to_string()))
}

/// A trip policy as `rc_configure`'s parameters (all NULL: keep the stored one).
#[derive(Default)]
struct PolicyParams {
    name: Option<&'static str>,
    instances: Option<i32>,
    within_ms: Option<i64>,
    rate_num: Option<i32>,
    rate_den: Option<i32>,
    min_calls: Option<i32>,
    period_ms: Option<i64>,
}

impl PolicyParams {
    fn of(policy: Option<TripPolicy>) -> PolicyParams {
        let ms = |d: Duration| i64::try_from(d.as_millis()).ok();
        match policy {
            Some(TripPolicy::Quorum { instances, within }) => PolicyParams {
                name: Some("quorum"),
                instances: i32::try_from(instances).ok(),
                within_ms: ms(within),
                ..PolicyParams::default()
            },
            Some(TripPolicy::FleetRate {
                limit,
                min_calls,
                period,
            }) => {
                let (rate_num, rate_den) = split(Some(limit));
                PolicyParams {
                    name: Some("fleet_rate"),
                    rate_num,
                    rate_den,
                    min_calls: i32::try_from(min_calls).ok(),
                    period_ms: ms(period),
                    ..PolicyParams::default()
                }
            }
            Some(TripPolicy::AnyInstance) => PolicyParams {
                name: Some("any_instance"),
                ..PolicyParams::default()
            },
            None => PolicyParams::default(),
        }
    }
}

fn split(r: Option<Ratio>) -> (Option<i32>, Option<i32>) {
    match r {
        Some(r) => (
            i32::try_from(r.numerator()).ok(),
            i32::try_from(r.denominator()).ok(),
        ),
        None => (None, None),
    }
}
