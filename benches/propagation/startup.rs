//! Phase 3, start-up: what it costs to start an instance, i.e. `Storage::connect_with` until it
//! returns with the namespace loaded.
//!
//! With 1,000 and 10,000 rows (a tenth OPEN), an empty namespace, and `sslmode=disable`; plus the
//! parts: a TLS context, a bare connection, the snapshot query alone. Why: an instance is useful
//! only once it holds the fleet's state, and a fleet restarts all at once; the parts say where
//! the time goes.

use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod};
use resilient_circuit::storage::postgres::{PostgresOptions, SslMode};
use resilient_circuit::Storage;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::Client;

use crate::db::{Target, Transport};
use crate::report::{ms, Report};
use crate::{Sizes, R};

/// What phase 3 leaves for phase 4: the namespaces it filled, and its connection (kept open
/// until phase 4 is done, as when both were one function).
pub(crate) struct Filled {
    pub(crate) _client: Client,
    /// A namespace without rows.
    pub(crate) empty_ns: &'static str,
    /// The namespace of `Sizes::large_rows` rows, a tenth OPEN.
    pub(crate) large_ns: &'static str,
}

async fn fill(c: &Client, ns: &str, rows: usize) -> R<()> {
    let n = i32::try_from(rows)?;
    c.execute(
        "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state, open_until) \
         SELECT 'svc-' || lpad(i::text, 6, '0'), $1, \
                CASE WHEN i % 10 = 0 THEN 'OPEN' ELSE 'CLOSED' END, \
                CASE WHEN i % 10 = 0 THEN now() + interval '1 hour' END \
         FROM generate_series(1, $2) AS i",
        &[&ns, &n],
    )
    .await?;
    Ok(())
}

async fn time_connects(
    t: &Target,
    ns: &str,
    expect: usize,
    samples: usize,
    tweak: impl Fn(PostgresOptions) -> PostgresOptions,
) -> R<Vec<Duration>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let opts = tweak(t.opts(ns)?);
        let t0 = Instant::now();
        let s = Storage::connect_with(opts).await?;
        let d = t0.elapsed();
        // Only non-CLOSED rows need a cell (a key without one is CLOSED): one row in ten.
        let expect = expect / 10;
        if s.len() != expect || s.is_degraded() {
            return Err(format!(
                "connect loaded {} keys (expected the {expect} OPEN ones), degraded: {}",
                s.len(),
                s.is_degraded()
            )
            .into());
        }
        drop(s);
        // Let the dropped instance's connections close before the next one.
        tokio::time::sleep(Duration::from_millis(20)).await;
        out.push(d);
    }
    Ok(out)
}

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<Filled> {
    report.section("3. start-up: Storage::connect_with until it returns with the namespace loaded");
    let c = t.client().await?;
    let (small_ns, large_ns) = ("start_small", "start_large");
    fill(&c, small_ns, sizes.small_rows).await?;
    fill(&c, large_ns, sizes.large_rows).await?;
    // One connect first: process-wide one-time costs (OpenSSL, first prepares) are not start-up.
    time_connects(t, "start_empty", 0, 1, |o| o).await?;

    let empty = time_connects(t, "start_empty", 0, sizes.small_samples, |o| o).await?;
    report.dist(
        "connect, empty namespace",
        &empty,
        "fixed cost of an instance",
    );
    let small = time_connects(t, small_ns, sizes.small_rows, sizes.small_samples, |o| o).await?;
    let small_st = report.dist(
        &format!("connect, {} rows", sizes.small_rows),
        &small,
        "a tenth OPEN",
    );
    let large = time_connects(t, large_ns, sizes.large_rows, sizes.large_samples, |o| o).await?;
    let large_st = report.dist(
        &format!("connect, {} rows", sizes.large_rows),
        &large,
        "a tenth OPEN",
    );
    if !matches!(t.cfg.get_ssl_mode(), PgSslMode::Require) {
        let plain = time_connects(t, small_ns, sizes.small_rows, sizes.small_samples, |o| {
            o.ssl_mode(SslMode::Disable)
        })
        .await?;
        report.dist(
            &format!("connect, {} rows, sslmode=disable", sizes.small_rows),
            &plain,
            "same, no TLS handshakes",
        );
    }

    // The parts.
    let mut ctx_build = Vec::new();
    for _ in 0..sizes.small_samples {
        let t0 = Instant::now();
        let b = SslConnector::builder(SslMethod::tls_client())?;
        drop(b.build());
        ctx_build.push(t0.elapsed());
    }
    report.dist(
        "  part: SslConnector::builder + build",
        &ctx_build,
        "connect builds two (pool + listener)",
    );
    for (label, transport) in [("TLS", t.transport.clone()), ("plain", Transport::Plain)] {
        if matches!(transport, Transport::Plain)
            && matches!(t.cfg.get_ssl_mode(), PgSslMode::Require)
        {
            continue;
        }
        let mut v = Vec::new();
        for _ in 0..sizes.small_samples {
            let t0 = Instant::now();
            let client = transport.client(&t.cfg).await?;
            v.push(t0.elapsed());
            drop(client);
        }
        report.dist(
            &format!("  part: one bare connection ({label})"),
            &v,
            "startup + auth, no query",
        );
    }
    let snapshot = c
        .prepare("SELECT o_key, o_state, o_version, o_remaining_ms FROM public.rc_snapshot($1)")
        .await?;
    let mut q = Vec::new();
    for _ in 0..sizes.large_samples.max(3) {
        let t0 = Instant::now();
        let rows = c.query(&snapshot, &[&large_ns]).await?;
        let mut open = 0usize;
        for r in &rows {
            let _key: String = r.try_get(0)?;
            let state: String = r.try_get(1)?;
            let _v: i64 = r.try_get(2)?;
            let _rem: i64 = r.try_get(3)?;
            open += usize::from(state == "OPEN");
        }
        q.push(t0.elapsed());
        if rows.len() != sizes.large_rows || open != sizes.large_rows / 10 {
            return Err("the snapshot query returned unexpected rows".into());
        }
    }
    report.dist(
        &format!(
            "  part: rc_snapshot() of {} rows + decode",
            sizes.large_rows
        ),
        &q,
        "on an open connection",
    );
    if let Some(s) = small_st {
        let target = format!("<= 20 ms ({} rows)", sizes.small_rows);
        report.goal(
            "connect with 1,000 rows (p50)",
            &target,
            format!("p50 {}, p99 {}", ms(s.p50), ms(s.p99)),
            s.p50 <= Duration::from_millis(20),
        );
    }
    if let Some(s) = large_st {
        let target = format!("<= 100 ms ({} rows)", sizes.large_rows);
        report.goal(
            "connect with 10,000 rows (p50)",
            &target,
            format!("p50 {}, p99 {}", ms(s.p50), ms(s.p99)),
            s.p50 <= Duration::from_millis(100),
        );
    }

    Ok(Filled {
        _client: c,
        empty_ns: "start_empty",
        large_ns,
    })
}
