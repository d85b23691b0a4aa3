//! `config`: a key's live configuration (`rc_breaker_config`, through `rc_configs` and
//! `rc_configure`), read or changed.
//! Every running instance applies a change within its propagation time (a NOTIFY, then one read
//! of the row); `--reset` returns the key to its code's values. Values are checked here first,
//! then by the table's constraints, so a bad one never reaches an instance.

use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::admin::ConfigChange;
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{Mode, Ratio, TripPolicy};

use super::text::escaped;
use super::{connect, namespace, CliError};

/// `rc_max_ms()`: the longest cooldown the SQL accepts (ten years).
const MAX_MS: u128 = 315_360_000_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The breaker's key.
    key: String,
    /// The namespace (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// Cooldown for every instance (e.g. 30s, 5m), instead of the code's.
    #[arg(long, value_name = "DURATION", value_parser = parse_cooldown)]
    cooldown: Option<Duration>,
    /// Failure limit K/N (trip on K failures in the last N calls), instead of the code's.
    #[arg(long, value_name = "K/N", value_parser = parse_ratio)]
    failure_limit: Option<Ratio>,
    /// Success limit K/N (half-open: N probes, close on K successes), instead of the code's.
    #[arg(long, value_name = "K/N", value_parser = parse_ratio)]
    success_limit: Option<Ratio>,
    /// normal, forced-open (OPEN everywhere until changed), disabled (admit all, count
    /// nothing) or metrics-only (admit all, count, never trip).
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    mode: Option<Mode>,
    /// Who opens the breaker for the fleet: any-instance, quorum (with --quorum and --within) or
    /// fleet-rate (with --rate, --min-calls and --period).
    #[arg(long, value_name = "POLICY", value_parser = ["any-instance", "quorum", "fleet-rate"])]
    trip_policy: Option<String>,
    /// Quorum: how many distinct instances must trip.
    #[arg(long, value_name = "K")]
    quorum: Option<u32>,
    /// Quorum: how long a vote counts (e.g. 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_cooldown)]
    within: Option<Duration>,
    /// Fleet rate: the failure rate K/N that opens the breaker (e.g. 1/2).
    #[arg(long, value_name = "K/N", value_parser = parse_ratio)]
    rate: Option<Ratio>,
    /// Fleet rate: the fewest calls the instances' reports must add up to.
    #[arg(long, value_name = "N")]
    min_calls: Option<u32>,
    /// Fleet rate: how long a report counts (at least 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_cooldown)]
    period: Option<Duration>,
    /// Delete the key's configuration first: back to the code's values, mode normal.
    #[arg(long)]
    reset: bool,
    /// Why, kept with the configuration (and in the change log when the mode opens or closes
    /// the breaker).
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
}

fn parse_cooldown(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 5m, 1h)"))?;
    if d.as_millis() > MAX_MS {
        return Err("at most 10 years (3650 days)".into());
    }
    Ok(d)
}

/// `K/N` with 1 <= K <= N <= 8192, as the builder takes it.
pub fn parse_ratio(s: &str) -> Result<Ratio, String> {
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not K/N (e.g. 3/10)"))?;
    let k: u32 = k
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {k:?} is not a whole number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a whole number"))?;
    if k == 0 || k > n || n > Ratio::MAX_DENOMINATOR {
        return Err(format!(
            "{s:?}: need 1 <= K <= N <= {}",
            Ratio::MAX_DENOMINATOR
        ));
    }
    Ok(Ratio::new(k, n))
}

/// The trip policy the arguments describe, checked as the builder checks one; `None` without
/// `--trip-policy` (then its numbers are refused: they would be silently ignored).
fn trip_policy(args: &Args) -> Result<Option<TripPolicy>, CliError> {
    let usage = |m: &str| CliError::Usage(m.to_owned());
    let quorum_args = args.quorum.is_some() || args.within.is_some();
    let rate_args = args.rate.is_some() || args.min_calls.is_some() || args.period.is_some();
    let policy = match args.trip_policy.as_deref() {
        None if quorum_args || rate_args => {
            return Err(usage(
                "--quorum, --within, --rate, --min-calls and --period go with --trip-policy",
            ))
        }
        None => return Ok(None),
        Some("any-instance") if quorum_args || rate_args => {
            return Err(usage("--trip-policy any-instance takes no numbers"))
        }
        Some("any-instance") => TripPolicy::AnyInstance,
        Some("quorum") if rate_args => {
            return Err(usage(
                "--trip-policy quorum takes --quorum and --within only",
            ))
        }
        Some("quorum") => TripPolicy::Quorum {
            instances: args
                .quorum
                .ok_or_else(|| usage("--trip-policy quorum needs --quorum K"))?,
            within: args
                .within
                .ok_or_else(|| usage("--trip-policy quorum needs --within DURATION"))?,
        },
        Some(_) if quorum_args => {
            return Err(usage(
                "--trip-policy fleet-rate takes --rate, --min-calls and --period only",
            ))
        }
        Some(_) => TripPolicy::FleetRate {
            limit: args
                .rate
                .ok_or_else(|| usage("--trip-policy fleet-rate needs --rate K/N"))?,
            min_calls: args
                .min_calls
                .ok_or_else(|| usage("--trip-policy fleet-rate needs --min-calls N"))?,
            period: args
                .period
                .ok_or_else(|| usage("--trip-policy fleet-rate needs --period DURATION"))?,
        },
    };
    policy
        .validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(Some(policy))
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse::<Mode>().map_err(|e| e.to_string())
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace);
    let mut change = ConfigChange::new();
    if args.reset {
        change = change.reset();
    }
    if let Some(mode) = args.mode {
        change = change.mode(mode);
    }
    if let Some(cooldown) = args.cooldown {
        change = change.cooldown(cooldown);
    }
    if let Some(limit) = args.failure_limit {
        change = change.failure_limit(limit);
    }
    if let Some(limit) = args.success_limit {
        change = change.success_limit(limit);
    }
    if let Some(policy) = trip_policy(&args)? {
        change = change.trip_policy(policy);
    }
    if let Some(note) = &args.note {
        change = change.note(note.clone());
    }
    change
        .validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    let session = connect(opts).await?;
    let live = if change.changes_anything() {
        session.configure(ns, &args.key, &change).await?
    } else {
        session.configuration(ns, &args.key).await?
    };
    let key = escaped(&args.key);
    let Some(live) = live else {
        say!(
            "{key} in namespace {}: mode normal, the code's values (no live configuration)",
            escaped(ns)
        );
        return Ok(ExitCode::SUCCESS);
    };
    let duration = |d: Duration| humantime::format_duration(d).to_string();
    let limit = |r: Option<Ratio>| r.map_or_else(|| "the code's".into(), |r| r.to_string());
    let trip = match live.trip_policy {
        None => "the code's".to_owned(),
        Some(TripPolicy::Quorum { instances, within }) => {
            format!("quorum of {instances} within {}", duration(within))
        }
        Some(TripPolicy::FleetRate {
            limit: rate,
            min_calls,
            period,
        }) => format!(
            "fleet rate {} over {}, at least {min_calls} calls",
            limit(Some(rate)),
            duration(period)
        ),
        Some(_) => "any instance".to_owned(),
    };
    say!(
        "{key} in namespace {}: mode {}, cooldown {}, failure limit {}, success limit {}, trip policy {}{}",
        escaped(ns),
        live.mode,
        live.cooldown.map_or_else(|| "the code's".into(), duration),
        limit(live.failure_limit),
        limit(live.success_limit),
        trip,
        format!(" (version {})", live.version)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_refuses_what_no_instance_could_use() {
        assert_eq!(parse_ratio("3/10"), Ok(Ratio::new(3, 10)));
        assert!(parse_ratio("0/10").is_err());
        assert!(parse_ratio("11/10").is_err());
        assert!(parse_ratio("1/9000").is_err());
        assert!(parse_ratio("3").is_err());
        assert!(parse_ratio("a/b").is_err());
        assert!(parse_cooldown("5m").is_ok());
        assert!(parse_cooldown("20000 years").is_err());
        assert!(parse_mode("forced-open").is_ok());
        assert!(parse_mode("sometimes").is_err());
    }
}
