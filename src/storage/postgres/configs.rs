//! Live configuration from the table (`rc_breaker_config`, `sql/migrations/0013_live_config.sql`): read at
//! every (re)load of the namespace, and for one key when the channel `rc_breaker_config` says it
//! changed (the notification is a hint: the row is read, so it needs no MAC). A row the instance
//! cannot use is refused with a warning and the configuration in force stays.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row};

use super::Shared;
use crate::error::StorageError;
use crate::{ConfigError, LiveConfig, Mode, Ratio, TripPolicy};

/// The channel the table's trigger NOTIFYs on a change, with `{"ns", "key"}`.
pub(crate) const CHANNEL: &str = "rc_breaker_config";

/// The rows of a namespace, all (`$2` NULL) or those of some keys.
const READ: &str = "SELECT resource_key, mode, cooldown_ms, failure_num, failure_den, \
     success_num, success_den, trip_policy, quorum_instances, quorum_within_ms, rate_num, \
     rate_den, rate_min_calls, rate_period_ms, version FROM public.rc_breaker_config \
     WHERE namespace = $1 AND ($2::text[] IS NULL OR resource_key = ANY($2))";

/// A notification's payload: which key changed.
#[derive(serde::Deserialize)]
struct Changed {
    ns: String,
    key: String,
}

/// The key a notification of `CHANNEL` names, if it is of `namespace`; `Err` for a payload that
/// is not the trigger's (then everything is read again).
pub(crate) fn changed_key(payload: &str, namespace: &str) -> Result<Option<String>, String> {
    let c: Changed = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    Ok((c.ns == namespace).then_some(c.key))
}

/// Reads the configuration of `keys` (all of the namespace when `None`) and applies it.
pub(crate) async fn refresh(
    shared: &Shared,
    client: &Client,
    keys: Option<&[String]>,
) -> Result<(), StorageError> {
    let keys: Option<Vec<String>> = keys.map(<[String]>::to_vec);
    let rows = client
        .query_typed(
            READ,
            &[
                (&shared.opts.namespace, Type::TEXT),
                (&keys, Type::TEXT_ARRAY),
            ],
        )
        .await
        .map_err(|e| StorageError::db("reading the live configuration", e))?;
    let Some(storage) = shared.storage.upgrade() else {
        return Ok(());
    };
    let mut present = HashSet::with_capacity(rows.len());
    for row in &rows {
        let key: String = row
            .try_get("resource_key")
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
            cell.set_live(Some(config));
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
            cell.set_live(None);
        }
    }
    Ok(())
}

/// One row as a checked [`LiveConfig`].
fn parse(row: &Row) -> Result<LiveConfig, ConfigError> {
    let bad = |e: tokio_postgres::Error| ConfigError::InvalidSetting {
        name: "live configuration",
        reason: e.to_string(),
    };
    let mode: String = row.try_get("mode").map_err(bad)?;
    let cooldown_ms: Option<i64> = row.try_get("cooldown_ms").map_err(bad)?;
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
    let policy: Option<String> = row.try_get("trip_policy").map_err(bad)?;
    let missing = |what: &str| ConfigError::InvalidTripPolicy {
        reason: format!("a live trip policy without its {what}"),
    };
    let trip_policy = match policy.as_deref() {
        None => None,
        Some("any_instance") => Some(TripPolicy::AnyInstance),
        Some("quorum") => Some(TripPolicy::Quorum {
            instances: count("quorum_instances")?.ok_or_else(|| missing("quorum_instances"))?,
            within: millis("quorum_within_ms")?.ok_or_else(|| missing("quorum_within_ms"))?,
        }),
        Some("fleet_rate") => Some(TripPolicy::FleetRate {
            limit: ratio("rate_num", "rate_den")?.ok_or_else(|| missing("rate"))?,
            min_calls: count("rate_min_calls")?.ok_or_else(|| missing("rate_min_calls"))?,
            period: millis("rate_period_ms")?.ok_or_else(|| missing("rate_period_ms"))?,
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
        failure_limit: ratio("failure_num", "failure_den")?,
        success_limit: ratio("success_num", "success_den")?,
        trip_policy,
        version: row.try_get("version").map_err(bad)?,
    };
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_notification_names_a_key_of_its_namespace() {
        let p = r#"{"ns": "checkout", "key": "payments"}"#;
        assert_eq!(
            super::changed_key(p, "checkout"),
            Ok(Some("payments".into()))
        );
        assert_eq!(super::changed_key(p, "default"), Ok(None));
        assert!(super::changed_key("not json", "default").is_err());
    }
}
