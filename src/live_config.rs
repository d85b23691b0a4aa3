//! [`LiveConfig`] and [`Mode`]: a key's configuration as the shared table holds it
//! (`rc_breaker_config`, migration `0013`), overriding the values the code gave its breakers,
//! reaching every instance by NOTIFY and held in an `ArcSwap` per key.
//!
//! An instance applies only what it can use: a row is checked as the builder checks its
//! arguments, and one that fails keeps the configuration in force (with a warning).

use std::time::Duration;

use crate::policy::Policy;
use crate::{ConfigError, Ratio, TripPolicy, MAX_DURATION};

/// How a breaker treats calls, whatever its window says: set fleet-wide with
/// `resilient-circuit config KEY --mode ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Mode {
    /// As configured (the default).
    #[default]
    Normal,
    /// OPEN for every instance until the mode changes. The database holds the row OPEN (so
    /// services on the Python package obey too) and refuses `open`/`close` overrides meanwhile.
    ForcedOpen,
    /// Every call admitted, whatever the state; outcomes are not counted; never trips.
    Disabled,
    /// Every call admitted, whatever the state; outcomes are counted in the window (and
    /// metrics) but the breaker never trips: to try limits on live traffic.
    MetricsOnly,
}

impl Mode {
    /// The name the table and the command line use: `normal`, `forced_open`, `disabled`,
    /// `metrics_only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::ForcedOpen => "forced_open",
            Mode::Disabled => "disabled",
            Mode::MetricsOnly => "metrics_only",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::ForcedOpen,
            2 => Mode::Disabled,
            3 => Mode::MetricsOnly,
            _ => Mode::Normal,
        }
    }

    /// True when every call is admitted whatever the state.
    pub(crate) fn admits_all(self) -> bool {
        matches!(self, Mode::Disabled | Mode::MetricsOnly)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;

    /// Parses a mode name; `-` may stand for `_` (`forced-open`).
    fn from_str(s: &str) -> Result<Mode, ConfigError> {
        match s.replace('-', "_").as_str() {
            "normal" => Ok(Mode::Normal),
            "forced_open" => Ok(Mode::ForcedOpen),
            "disabled" => Ok(Mode::Disabled),
            "metrics_only" => Ok(Mode::MetricsOnly),
            _ => Err(ConfigError::InvalidSetting {
                name: "mode",
                reason: format!(
                    "{s:?} is not a mode: normal, forced_open, disabled or metrics_only"
                ),
            }),
        }
    }
}

/// A key's live configuration: the values that override the code's (`None`: the code's value
/// stands) and its mode. Read it with [`CircuitBreaker::live_config`](crate::CircuitBreaker::live_config).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveConfig {
    /// How the breaker treats calls.
    pub mode: Mode,
    /// Overrides [`Builder::cooldown`](crate::Builder::cooldown).
    pub cooldown: Option<Duration>,
    /// Overrides [`Builder::failure_limit`](crate::Builder::failure_limit).
    pub failure_limit: Option<Ratio>,
    /// Overrides [`Builder::success_limit`](crate::Builder::success_limit).
    pub success_limit: Option<Ratio>,
    /// Overrides [`Builder::trip_policy`](crate::Builder::trip_policy).
    pub trip_policy: Option<TripPolicy>,
    /// The row's version (a database sequence): a later configuration has a higher one.
    pub version: i64,
}

impl LiveConfig {
    /// Checks every value as [`Builder::build`](crate::Builder::build) checks its arguments.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(c) = self.cooldown {
            if c > MAX_DURATION {
                return Err(ConfigError::DurationTooLong {
                    name: "cooldown",
                    given: c,
                    max: MAX_DURATION,
                });
            }
        }
        if let Some(r) = self.failure_limit {
            r.validate("failure_limit")?;
        }
        if let Some(r) = self.success_limit {
            r.validate("success_limit")?;
        }
        if let Some(t) = self.trip_policy {
            t.validate()?;
        }
        Ok(())
    }

    /// The code's `policy` with this configuration's overrides.
    pub(crate) fn over(&self, policy: Policy) -> Policy {
        let mut p = policy;
        if let Some(c) = self.cooldown {
            p.cooldown = c;
            // A grown cooldown never rests less than the base.
            p.max_cooldown = p.max_cooldown.map(|m| m.max(c));
        }
        if let Some(f) = self.failure_limit {
            p.failure_limit = f;
            // A count window holds at most `n` outcomes: a minimum above it would never trip.
            if p.time_window.is_none() {
                p.minimum_calls = p.minimum_calls.map(|m| m.min(f.denominator()));
            }
        }
        if let Some(s) = self.success_limit {
            p.success_limit = Some(s);
        }
        if let Some(t) = self.trip_policy {
            p.trip = t;
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_from_the_tables_and_the_command_lines_spelling() {
        for m in [
            Mode::Normal,
            Mode::ForcedOpen,
            Mode::Disabled,
            Mode::MetricsOnly,
        ] {
            assert_eq!(m.as_str().parse::<Mode>().ok(), Some(m));
            assert_eq!(Mode::from_u8(m.to_u8()), m);
        }
        assert_eq!("forced-open".parse::<Mode>().ok(), Some(Mode::ForcedOpen));
        let e = "off".parse::<Mode>().expect_err("not a mode");
        assert!(e.to_string().contains("normal, forced_open"), "{e}");
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let code = Policy::default();
        let live = LiveConfig {
            failure_limit: Some(Ratio::new(1, 3)),
            ..LiveConfig::default()
        };
        let p = live.over(code);
        assert_eq!(p.failure_limit, Ratio::new(1, 3));
        assert_eq!(p.cooldown, code.cooldown);
        assert_eq!(p.success_limit, code.success_limit);
        // A smaller live window brings a code minimum above it down to it.
        let code = Policy {
            minimum_calls: Some(8),
            ..Policy::default()
        };
        let smaller = LiveConfig {
            failure_limit: Some(Ratio::new(1, 2)),
            ..LiveConfig::default()
        };
        assert_eq!(smaller.over(code).minimum_calls, Some(2));
        let bad = LiveConfig {
            success_limit: Some(Ratio::new(4, 3)),
            ..LiveConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
