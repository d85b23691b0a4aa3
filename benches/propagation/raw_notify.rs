//! Phase 1, raw NOTIFY: the physical floor under every propagation figure.
//!
//! A bare tokio-postgres connection LISTENs on the crate's channel, driven with
//! `poll_fn(|cx| connection.poll_message(cx))`; another connection UPDATEs the state of a row of
//! `rc_circuit_breakers`, whose trigger NOTIFYs. Timed from just before the UPDATE is sent to the
//! notification's arrival on the listener's connection task. Each sample starts after 2 ms of
//! idleness, as every trip of phase 2 does (waking idle CPUs and sleeping backends costs several
//! hundred microseconds on a VM); a back-to-back series shows the busy-system figure. Over TLS as
//! the crate's default `sslmode=prefer` connects when the server offers it, and in plain TCP.
//! Also: the round trips of the UPDATE and of the crate's own `rc_trip()` / `rc_force()` called
//! bare, and `rc_trip()` to NOTIFY (the database's share of a trip); and, as a what-if, the
//! UPDATE with `synchronous_commit=off`.
//!
//! Why: no instance can learn of a change faster than the database delivers its NOTIFY, so phase
//! 2's propagation is read against these figures ([`Floor`]).

use std::time::{Duration, Instant};

use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::Client;

use crate::db::{recv_change, NotifyListener, Target, Transport};
use crate::report::{Report, Stats};
use crate::{Sizes, IDLE_GAP, R};

pub(crate) struct Floor {
    /// UPDATE -> NOTIFY over the crate's transport, starting from an idle system as a trip does.
    pub(crate) tls: Option<Stats>,
    /// The same in plain TCP.
    pub(crate) plain: Option<Stats>,
    /// UPDATE -> NOTIFY over the crate's transport, back to back (a busy system).
    pub(crate) busy: Option<Stats>,
}

/// `n` UPDATEs alternating the row's state, each timed to its NOTIFY on `listener`; returns the
/// NOTIFY latencies and the round trips. `flip` keeps the alternation going across calls.
#[allow(clippy::too_many_arguments)]
async fn update_loop(
    writer: &Client,
    listener: &mut NotifyListener,
    update: &tokio_postgres::Statement,
    ns: &str,
    flip: &mut usize,
    warmup: usize,
    n: usize,
    gap: Option<Duration>,
) -> R<(Vec<Duration>, Vec<Duration>)> {
    let (mut notify, mut rtt) = (Vec::new(), Vec::new());
    for k in 0..warmup + n {
        *flip += 1;
        let state = if *flip % 2 == 0 { "OPEN" } else { "CLOSED" };
        while listener.rx.try_recv().is_ok() {}
        if let Some(g) = gap {
            std::thread::sleep(g);
        }
        let t0 = Instant::now();
        let changed = writer.execute(update, &[&state, &ns]).await?;
        let done = t0.elapsed();
        if changed != 1 {
            return Err(format!("UPDATE changed {changed} rows").into());
        }
        let at = recv_change(&mut listener.rx, ns, "raw", state).await?;
        if k >= warmup {
            notify.push(at.saturating_duration_since(t0));
            rtt.push(done);
        }
    }
    Ok((notify, rtt))
}

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<Floor> {
    report.section("1. raw NOTIFY: UPDATE of a row of rc_circuit_breakers -> its trigger's NOTIFY on a bare listener");
    let mut floor = Floor {
        tls: None,
        plain: None,
        busy: None,
    };
    let (warmup, n) = (sizes.raw_warmup, sizes.raw_samples);
    let mut transports = vec![("TLS", t.transport.clone())];
    if !matches!(t.cfg.get_ssl_mode(), PgSslMode::Require) {
        transports.push(("plain TCP", Transport::Plain));
    }
    for (i, (label, transport)) in transports.iter().enumerate() {
        let ns = format!("raw{i}");
        let writer = transport.client(&t.cfg).await?;
        let encrypted: bool = writer
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?
            .get(0);
        writer
            .execute(
                "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
                 VALUES ('raw', $1, 'OPEN')",
                &[&ns],
            )
            .await?;
        let mut listener = transport.listener(&t.cfg).await?;
        let update = writer
            .prepare(
                "UPDATE public.rc_circuit_breakers SET state = $1 \
                 WHERE namespace = $2 AND resource_key = 'raw'",
            )
            .await?;
        let mut flip = 0;
        let (notify, rtt) = update_loop(
            &writer,
            &mut listener,
            &update,
            &ns,
            &mut flip,
            warmup,
            n,
            Some(IDLE_GAP),
        )
        .await?;
        let st = report.dist(
            &format!("UPDATE -> NOTIFY received ({label})"),
            &notify,
            &format!("2 ms idle before each, as phase 2's trips; encrypted: {encrypted}"),
        );
        if i > 0 {
            floor.plain = st;
            continue;
        }
        floor.tls = st;
        report.dist(
            &format!("UPDATE round trip ({label})"),
            &rtt,
            "execute() returned",
        );
        let (busy, _) = update_loop(
            &writer,
            &mut listener,
            &update,
            &ns,
            &mut flip,
            warmup,
            n,
            None,
        )
        .await?;
        floor.busy = report.dist(
            &format!("UPDATE -> NOTIFY received, back to back ({label})"),
            &busy,
            "no idle time between samples",
        );

        // The crate's transition functions, called bare: the database's share of a trip.
        let trip = writer
            .prepare("SELECT o_state FROM public.rc_trip($1, 'fn', $2, $3, $4)")
            .await?;
        let force = writer
            .prepare("SELECT o_state FROM public.rc_force($1, 'fn', 'CLOSED', 0)")
            .await?;
        let log = serde_json::json!([false]);
        let cooldown_ms: i64 = 3_600_000;
        let failures: i32 = 1;
        let (mut trip_notify, mut trip_rtt, mut force_rtt) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..warmup + n {
            while listener.rx.try_recv().is_ok() {}
            std::thread::sleep(IDLE_GAP);
            let t0 = Instant::now();
            let row = writer
                .query_one(&trip, &[&ns, &cooldown_ms, &failures, &log])
                .await?;
            let done = t0.elapsed();
            if row.get::<_, String>(0) != "OPEN" {
                return Err("rc_trip did not open".into());
            }
            let at = recv_change(&mut listener.rx, &ns, "fn", "OPEN").await?;
            std::thread::sleep(IDLE_GAP);
            let t1 = Instant::now();
            writer.query_one(&force, &[&ns]).await?;
            let forced = t1.elapsed();
            recv_change(&mut listener.rx, &ns, "fn", "CLOSED").await?;
            if k >= warmup {
                trip_notify.push(at.saturating_duration_since(t0));
                trip_rtt.push(done);
                force_rtt.push(forced);
            }
        }
        report.dist(
            &format!("rc_trip() -> NOTIFY received ({label})"),
            &trip_notify,
            "the crate's trip function called bare, 2 ms idle before",
        );
        report.dist(&format!("rc_trip() round trip ({label})"), &trip_rtt, "");
        report.dist(
            &format!("rc_force(CLOSED) round trip ({label})"),
            &force_rtt,
            "",
        );

        // What-if: the same UPDATE when the commit does not wait for the WAL flush.
        writer.batch_execute("SET synchronous_commit = off").await?;
        let (fast, _) = update_loop(
            &writer,
            &mut listener,
            &update,
            &ns,
            &mut flip,
            warmup,
            n,
            Some(IDLE_GAP),
        )
        .await?;
        writer.batch_execute("RESET synchronous_commit").await?;
        report.dist(
            &format!("what-if: UPDATE -> NOTIFY, synchronous_commit=off ({label})"),
            &fast,
            "commit does not wait for the WAL flush; 2 ms idle before each",
        );
    }
    Ok(floor)
}
