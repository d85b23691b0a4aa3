//! `config`: a key's live configuration (`rc_breaker_config`, through `rc_configs` and
//! `rc_configure`), read or changed.
//! Every running instance applies a change within its propagation time (a NOTIFY, then one read
//! of the row); `--reset` returns the key to its code's values. Values are checked here first,
//! then by the table's constraints, so a bad one never reaches an instance.

use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{Mode, Ratio, TripPolicy};

use tokio_postgres::types::Type;

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
fn parse_ratio(s: &str) -> Result<Ratio, String> {
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
    let policy = trip_policy(&args)?;
    let session = connect(opts).await?;
    let changing = args.reset
        || args.mode.is_some()
        || args.cooldown.is_some()
        || args.failure_limit.is_some()
        || args.success_limit.is_some()
        || policy.is_some();
    let rows = if changing {
        let cooldown_ms = args
            .cooldown
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let (f_num, f_den) = split(args.failure_limit);
        let (s_num, s_den) = split(args.success_limit);
        let mode = args.mode.map(Mode::as_str);
        let p = PolicyParams::of(policy);
        session
            .client()
            .query_typed(
                "SELECT * FROM public.rc_configure($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17)",
                &[
                    (&ns, Type::TEXT),
                    (&args.key, Type::TEXT),
                    (&mode, Type::TEXT),
                    (&cooldown_ms, Type::INT8),
                    (&f_num, Type::INT4),
                    (&f_den, Type::INT4),
                    (&s_num, Type::INT4),
                    (&s_den, Type::INT4),
                    (&args.reset, Type::BOOL),
                    (&args.note, Type::TEXT),
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
            .map_err(|e| CliError::db("changing the live configuration", e))?
    } else {
        let keys = vec![args.key.clone()];
        session
            .client()
            .query_typed(
                "SELECT * FROM public.rc_configs($1, $2)",
                &[(&ns, Type::TEXT), (&keys, Type::TEXT_ARRAY)],
            )
            .await
            .map_err(|e| CliError::db("reading the live configuration", e))?
    };
    let key = escaped(&args.key);
    let Some(row) = rows.first() else {
        say!(
            "{key} in namespace {}: mode normal, the code's values (no live configuration)",
            escaped(ns)
        );
        return Ok(ExitCode::SUCCESS);
    };
    let mode: String = row.get("o_mode");
    let cooldown: Option<i64> = row.get("o_cooldown_ms");
    let limit = |num: &str, den: &str| match (
        row.get::<_, Option<i32>>(num),
        row.get::<_, Option<i32>>(den),
    ) {
        (Some(k), Some(n)) => format!("{k}/{n}"),
        _ => "the code's".into(),
    };
    let version: i64 = row.get("o_version");
    let ms = |column: &str| {
        let ms: Option<i64> = row.get(column);
        humantime::format_duration(Duration::from_millis(
            ms.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0),
        ))
        .to_string()
    };
    let trip = match row.get::<_, Option<String>>("o_trip_policy").as_deref() {
        None => "the code's".to_owned(),
        Some("quorum") => format!(
            "quorum of {} within {}",
            row.get::<_, Option<i32>>("o_quorum_instances").unwrap_or(0),
            ms("o_quorum_within_ms")
        ),
        Some("fleet_rate") => format!(
            "fleet rate {} over {}, at least {} calls",
            limit("o_rate_num", "o_rate_den"),
            ms("o_rate_period_ms"),
            row.get::<_, Option<i32>>("o_rate_min_calls").unwrap_or(0)
        ),
        Some(other) => other.replace('_', " "),
    };
    say!(
        "{key} in namespace {}: mode {}, cooldown {}, failure limit {}, success limit {}, trip policy {}{}",
        escaped(ns),
        escaped(&mode),
        cooldown.map_or_else(
            || "the code's".into(),
            |ms| humantime::format_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
                .to_string()
        ),
        limit("o_failure_num", "o_failure_den"),
        limit("o_success_num", "o_success_den"),
        escaped(&trip),
        if version == 0 {
            " (no live configuration: the code's values)".to_owned()
        } else {
            format!(" (version {version})")
        }
    );
    Ok(ExitCode::SUCCESS)
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
            Some(_) => PolicyParams {
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
