//! Live configuration from the table (`rc_breaker_config`, read through `rc_configs`): read at
//! every (re)load of the namespace, and for one key when a notification says it changed (op
//! `config`: a hint, after which the row is read). A row the instance cannot use is refused with
//! a warning and the configuration in force stays.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::Shared;
use crate::error::StorageError;
use crate::{ConfigError, LiveConfig, Mode, Ratio, TripPolicy};

/// Reads the configuration of `keys` (all of the namespace when `None`) and applies it. Returns
/// the keys that left `ForcedOpen`: their cells hold a state no reason backs any more, and the
/// caller reads their rows again.
pub(crate) async fn refresh(
    shared: &Shared,
    client: &Client,
    keys: Option<&[String]>,
) -> Result<Vec<String>, StorageError> {
    let keys: Option<Vec<String>> = keys.map(<[String]>::to_vec);
    let rows = client
        .query_typed(
            super::statements::CONFIGS,
            &[
                (&shared.opts.namespace, Type::TEXT),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| StorageError::db("reading the live configuration", e))?;
    let Some(storage) = shared.storage.upgrade() else {
        return Ok(Vec::new());
    };
    let mut released = Vec::new();
    let mut apply = |cell: &Arc<crate::cell::KeyCell>, live: Option<Arc<LiveConfig>>| {
        let applied = cell.set_live(live);
        if let Some(t) = applied.opened {
            shared.transitioned(cell, t, None, None);
        }
        if applied.released {
            released.push(cell.key.to_string());
        }
    };
    let mut present = HashSet::with_capacity(rows.len());
    for row in &rows {
        let key: String = row
            .try_get("o_key")
            .map_err(|e| StorageError::db("reading the live configuration", e))?;
        present.insert(key.clone());
        let config = match parse(row) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "ignoring a live configuration this instance cannot use; the one in force stays");
                continue;
            }
        };
        let key: Arc<str> = key.into();
        if storage
            .live
            .get(&key)
            .is_some_and(|held| *held.value() == config)
        {
            continue;
        }
        tracing::info!(key = %key, mode = %config.mode, cooldown = ?config.cooldown, failure_limit = ?config.failure_limit.map(|r| r.to_string()), success_limit = ?config.success_limit.map(|r| r.to_string()), trip_policy = ?config.trip_policy.map(|t| t.to_string()), "live configuration applied");
        storage.live.insert(key.clone(), config.clone());
        if let Some(cell) = storage.cells.get(&key).map(|c| c.clone()) {
            apply(&cell, Some(config));
        }
    }
    // Rows gone (deleted, reset): back to the code's values.
    let gone: Vec<Arc<str>> = match &keys {
        Some(asked) => asked
            .iter()
            .filter(|k| !present.contains(*k))
            .map(|k| Arc::from(k.as_str()))
            .collect(),
        None => storage
            .live
            .iter()
            .filter(|e| !present.contains(&**e.key()))
            .map(|e| e.key().clone())
            .collect(),
    };
    for key in gone {
        if storage.live.remove(&key).is_some() {
            tracing::info!(key = %key, "live configuration removed: the code's values apply");
        }
        if let Some(cell) = storage.cells.get(&key).map(|c| c.clone()) {
            apply(&cell, None);
        }
    }
    Ok(released)
}

/// One row as a checked [`LiveConfig`].
pub(crate) fn parse(row: &Row) -> Result<LiveConfig, ConfigError> {
    let bad = |e: tokio_postgres::Error| ConfigError::InvalidSetting {
        name: "live configuration",
        reason: e.to_string(),
    };
    let mode: String = row.try_get("o_mode").map_err(bad)?;
    let cooldown_ms: Option<i64> = row.try_get("o_cooldown_ms").map_err(bad)?;
    let ratio = |num: &str, den: &str| -> Result<Option<Ratio>, ConfigError> {
        let n: Option<i32> = row.try_get(num).map_err(bad)?;
        let d: Option<i32> = row.try_get(den).map_err(bad)?;
        match (n, d) {
            (None, None) => Ok(None),
            (Some(n), Some(d)) => {
                let (Ok(n), Ok(d)) = (u32::try_from(n), u32::try_from(d)) else {
                    return Err(ConfigError::InvalidSetting {
                        name: "live configuration",
                        reason: format!("a negative limit {n}/{d}"),
                    });
                };
                Ok(Some(Ratio::new(n, d)))
            }
            _ => Err(ConfigError::InvalidSetting {
                name: "live configuration",
                reason: format!("{num} and {den} must be both set or both NULL"),
            }),
        }
    };
    let cooldown = match cooldown_ms {
        None => None,
        Some(ms) => Some(Duration::from_millis(u64::try_from(ms).map_err(|_| {
            ConfigError::InvalidSetting {
                name: "live configuration",
                reason: format!("a negative cooldown of {ms} ms"),
            }
        })?)),
    };
    let millis = |column: &str| -> Result<Option<Duration>, ConfigError> {
        let ms: Option<i64> = row.try_get(column).map_err(bad)?;
        ms.map(|ms| {
            u64::try_from(ms)
                .map(Duration::from_millis)
                .map_err(|_| ConfigError::InvalidSetting {
                    name: "live configuration",
                    reason: format!("a negative {column} of {ms}"),
                })
        })
        .transpose()
    };
    let count = |column: &str| -> Result<Option<u32>, ConfigError> {
        let n: Option<i32> = row.try_get(column).map_err(bad)?;
        n.map(|n| {
            u32::try_from(n).map_err(|_| ConfigError::InvalidSetting {
                name: "live configuration",
                reason: format!("a negative {column} of {n}"),
            })
        })
        .transpose()
    };
    let policy: Option<String> = row.try_get("o_trip_policy").map_err(bad)?;
    let missing = |what: &str| ConfigError::InvalidTripPolicy {
        reason: format!("a live trip policy without its {what}"),
    };
    let trip_policy = match policy.as_deref() {
        None => None,
        Some("any_instance") => Some(TripPolicy::AnyInstance),
        Some("quorum") => Some(TripPolicy::Quorum {
            instances: count("o_quorum_instances")?.ok_or_else(|| missing("quorum_instances"))?,
            within: millis("o_quorum_within_ms")?.ok_or_else(|| missing("quorum_within_ms"))?,
        }),
        Some("fleet_rate") => Some(TripPolicy::FleetRate {
            limit: ratio("o_rate_num", "o_rate_den")?.ok_or_else(|| missing("rate"))?,
            min_calls: count("o_rate_min_calls")?.ok_or_else(|| missing("rate_min_calls"))?,
            period: millis("o_rate_period_ms")?.ok_or_else(|| missing("rate_period_ms"))?,
        }),
        Some(other) => {
            return Err(ConfigError::InvalidTripPolicy {
                reason: format!("{other:?} is not a trip policy"),
            })
        }
    };
    let config = LiveConfig {
        mode: mode.parse::<Mode>()?,
        cooldown,
        failure_limit: ratio("o_failure_num", "o_failure_den")?,
        success_limit: ratio("o_success_num", "o_success_den")?,
        trip_policy,
        version: row.try_get("o_version").map_err(bad)?,
    };
    config.validate()?;
    Ok(config)
}
