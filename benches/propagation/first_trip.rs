//! Phase 10, part one: what the first trip after a quiet spell costs now that idle pooled
//! connections are closed (`pool_idle_timeout`).
//!
//! Instance A (its pool reaped after 300 ms idle) trips; instance B watches. Each sample times
//! `Permit::failure` until the database accepted the trip (`Storage::flush` returns) and until
//! B's snapshot is OPEN (the change's `seen_at`), with A's pool warm (the override that closed
//! the key a moment before used it) or reaped to nothing (A's sessions are down to its listener,
//! read in `pg_stat_activity`), so that the trip's call first opens a connection: TCP, TLS when
//! on, start-up, authentication and the `SET` of the server-side time limits. Both transports
//! when the server offers TLS. Beside it, what one new connection costs the server in CPU (bare
//! connections, opened and closed), which is what a too-short idle timeout would spend over and
//! over.

use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use resilient_circuit::storage::postgres::SslMode;
use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio_postgres::Client;

use crate::db::{Target, Transport};
use crate::report::{ms, Report};
use crate::server_cpu::ServerCpu;
use crate::{trip_fast, Sizes, R, WAIT};

/// A's idle timeout: short, so that a reaped sample waits little.
const IDLE: Duration = Duration::from_millis(300);
/// Bare connections opened to price one on the server.
const CONNECTS: usize = 30;

/// How A reaches the server.
#[derive(Clone, Copy)]
enum Link {
    Plain,
    Tls,
}

impl Link {
    fn label(self) -> &'static str {
        match self {
            Link::Plain => "plain TCP",
            Link::Tls => "TLS",
        }
    }
}

/// Sessions whose `application_name` is `name`: A's listener and its pooled connections (the
/// option names both when there is no listener DSN).
async fn sessions(admin: &Client, name: &str) -> R<i64> {
    Ok(admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .await?
        .get(0))
}

/// Waits for B's change of `key` to `to`; returns when B applied it.
async fn seen(changes: &mut resilient_circuit::Changes, key: &str, to: State) -> R<SystemTime> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(Ok(c))) if c.key == key && c.to == to => return Ok(c.seen_at),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("B's change stream ended".into()),
            Err(_) => return Err(format!("B did not see {key} -> {to} within {WAIT:?}").into()),
        }
    }
}

/// Warm and reaped samples over one link: (failure -> accepted, failure -> B sees OPEN) each.
async fn samples(
    t: &Target,
    admin: &Client,
    link: Link,
    n: usize,
) -> R<[(Vec<Duration>, Vec<Duration>); 2]> {
    let name = format!("rc-first-trip-{}", std::process::id());
    let mut opts = t
        .opts("first_trip")?
        .application_name(name.as_str())
        .pool_idle_timeout(IDLE);
    if let Link::Plain = link {
        opts = opts.ssl_mode(SslMode::Disable);
    }
    let a = Storage::connect_with(opts).await?;
    let b = Storage::connect_with(t.opts("first_trip")?).await?;
    let key = format!("first-trip-{}", link.label().replace(' ', "-"));
    let on_a = trip_fast(CircuitBreaker::builder(key.as_str()).storage(a.clone())).build()?;
    let _on_b = trip_fast(CircuitBreaker::builder(key.as_str()).storage(b.clone())).build()?;
    let mut changes = b.changes();
    let mut out: [(Vec<Duration>, Vec<Duration>); 2] = Default::default();
    // One unrecorded round first: the row is inserted, and B holds the key.
    for round in 0..=2 * n {
        let reaped = round % 2 == 1;
        if reaped {
            let down = crate::support::eventually(WAIT, || async {
                sessions(admin, &name).await.ok() == Some(1)
            })
            .await;
            if !down {
                return Err(format!("A's pool was not reaped within {WAIT:?}").into());
            }
        }
        let t0 = Instant::now();
        let t0_wall = SystemTime::now();
        on_a.try_acquire()
            .map_err(|r| format!("A is not closed before round {round}: {r}"))?
            .failure();
        if !a.flush(WAIT).await {
            return Err("A's trip was not accepted within 5 s".into());
        }
        let accepted = t0.elapsed();
        let at_b = seen(&mut changes, &key, State::Open)
            .await?
            .duration_since(t0_wall)
            .unwrap_or_default();
        if round > 0 {
            let slot = &mut out[usize::from(reaped)];
            slot.0.push(accepted);
            slot.1.push(at_b);
        }
        on_a.force_closed();
        if !a.flush(WAIT).await {
            return Err("A's override was not accepted within 5 s".into());
        }
        seen(&mut changes, &key, State::Closed).await?;
    }
    Ok(out)
}

/// Server CPU and client time for one bare connection (connect, one query, close) over
/// `transport`, averaged over [`CONNECTS`].
async fn connection_cost(
    t: &Target,
    transport: &Transport,
    cpu: Option<&ServerCpu>,
) -> R<(Duration, Option<Duration>)> {
    let before = cpu.and_then(ServerCpu::used);
    let t0 = Instant::now();
    for _ in 0..CONNECTS {
        let c = transport.client(&t.cfg).await?;
        c.simple_query("SELECT 1").await?;
        drop(c);
    }
    let client = t0.elapsed() / CONNECTS as u32;
    // The last backends exit after the client closes; let the postmaster reap them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = match (before, cpu.and_then(ServerCpu::used)) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) / CONNECTS as u32),
        _ => None,
    };
    Ok((client, server))
}

pub(crate) async fn measure(
    t: &Target,
    sizes: &Sizes,
    cpu: Option<&ServerCpu>,
    report: &mut Report,
) -> R<()> {
    let admin = t.client().await?;
    let tls_on: String = admin.query_one("SHOW ssl", &[]).await?.get(0);
    let mut links = vec![Link::Plain];
    if tls_on == "on" {
        links.push(Link::Tls);
    }
    for link in links {
        let [warm, reaped] = samples(t, &admin, link, sizes.first_trip_samples).await?;
        let what = link.label();
        report.dist(
            &format!("first trip, pool warm ({what}): failure -> accepted"),
            &warm.0,
            "Storage::flush returns",
        );
        report.dist(
            &format!("first trip, pool reaped ({what}): failure -> accepted"),
            &reaped.0,
            "the call opens a connection first",
        );
        report.dist(
            &format!("first trip, pool warm ({what}): failure -> OPEN on B"),
            &warm.1,
            "B's snapshot",
        );
        report.dist(
            &format!("first trip, pool reaped ({what}): failure -> OPEN on B"),
            &reaped.1,
            "B's snapshot",
        );
        let transport = match link {
            Link::Plain => Transport::Plain,
            Link::Tls => t.transport.clone(),
        };
        let (client, server) = connection_cost(t, &transport, cpu).await?;
        report.value(
            &format!("one new connection ({what}): client time, server CPU"),
            CONNECTS,
            ms(client),
            &match server {
                Some(s) => format!(
                    "server CPU {} per connection (connect, SELECT 1, close)",
                    ms(s)
                ),
                None => "server CPU not readable here".to_owned(),
            },
        );
    }
    Ok(())
}
