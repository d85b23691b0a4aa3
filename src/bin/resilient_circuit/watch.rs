//! `watch`: one line per transition of a namespace's breakers, until Ctrl-C. Built on
//! [`Storage::changes`]: the command is one more instance of the fleet that holds no breakers,
//! so it sees what every instance sees, through the same listener, reconnects and reloads.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{Change, ChangeKind, ChangeOrigin, State, Storage};
use tokio_stream::StreamExt;

use super::text::escaped;
use super::{namespace, CliError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The namespace to watch (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace).to_owned();
    // Strict: an operator asking to watch wants to hear that the database is not there.
    let storage = Storage::connect_with(opts.clone().namespace(&ns).strict(true)).await?;
    let mut changes = storage.changes();
    // The namespace's groups, for their counts' news (a group created later is not followed).
    let session = super::connect(opts).await?;
    for g in session.groups(&ns).await? {
        storage.group(g.name).follow().await?;
    }
    drop(session);
    eprintln!(
        "watching namespace {} on {opts} (Ctrl-C to stop)",
        escaped(&ns)
    );
    let mut now_not_closed: Vec<(String, State)> = storage
        .states()
        .into_iter()
        .filter(|(_, s)| *s != State::Closed)
        .collect();
    now_not_closed.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, state) in &now_not_closed {
        eprintln!("now {state}: {}", escaped(key));
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Polls the connection flag, which has no event of its own, to tell the operator.
    let mut health = tokio::time::interval(Duration::from_secs(1));
    let mut degraded = false;
    let mut out = std::io::stdout();
    loop {
        let next = tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            _ = health.tick() => {
                if storage.is_degraded() != degraded {
                    degraded = !degraded;
                    if degraded {
                        eprintln!("lost the database: reconnecting (changes made meanwhile are shown when it is back)");
                    } else {
                        eprintln!("connected again: every row reloaded");
                    }
                }
                continue;
            }
            next = changes.next() => next,
        };
        match next {
            None => return Err(CliError::Problem("the change stream ended".into())),
            Some(Err(lagged)) => eprintln!("{lagged}: this terminal is too slow"),
            Some(Ok(change)) => writeln!(out, "{}", line(&change))?,
        }
        out.flush()?;
    }
}

/// `TIME NAMESPACE KEY STATE vVERSION from=STATE origin=local|remote [delay=MSms]`; for a
/// group's counts `TIME NAMESPACE group NAME STATE open=K/N from=STATE`; for an outlier
/// `TIME NAMESPACE KEY STATE outlier=yes|no`.
fn line(c: &Change) -> String {
    let time = humantime::format_rfc3339_millis(c.seen_at);
    match c.kind {
        ChangeKind::Outlier { outlier } => {
            let yes = if outlier { "yes" } else { "no" };
            return format!(
                "{time} {} {} {} outlier={yes}",
                escaped(&c.namespace),
                escaped(&c.key),
                c.to
            );
        }
        ChangeKind::Group { open, members } => {
            return format!(
                "{time} {} group {} {} open={open}/{members} from={}",
                escaped(&c.namespace),
                escaped(&c.key),
                c.to,
                c.from
            );
        }
        _ => {}
    }
    let version = c
        .version
        .map_or_else(|| "v-".to_owned(), |v| format!("v{v}"));
    let origin = match c.origin {
        ChangeOrigin::Local => "local",
        _ => "remote",
    };
    let mut line = format!(
        "{time} {} {} {} {version} from={} origin={origin}",
        escaped(&c.namespace),
        escaped(&c.key),
        c.to,
        c.from
    );
    if let Some(delay) = c.delay() {
        line.push_str(&format!(" delay={:.1}ms", delay.as_secs_f64() * 1e3));
    }
    line
}
