//! Phase 7, round trips: what an instance asks of the database, counted on the wire.
//!
//! One instance whose connections go through the proxy of phase 2 (plain TCP), which counts the
//! round trips each connection starts (Sync and Query messages; the listener's connection, told
//! apart by its `application_name`, separately): while building a breaker, during a million
//! healthy `try_acquire` + `success` and 100,000 healthy `call().await`, per transition one at a
//! time (trip / `force_closed`, each acknowledged before the next), and per transition when 100
//! keys trip, then close, at once. Why: the healthy path must cost the database nothing, and a
//! burst of transitions should share round trips rather than queue one each.

use std::time::{Duration, Instant};

use resilient_circuit::{CircuitBreaker, Storage};

use crate::db::Target;
use crate::report::{ms, Report};
use crate::wire_proxy::{proxied_opts, tcp_upstream, WireProxy};
use crate::{spin_until, trip_fast, Sizes, IDLE_GAP, R, WAIT};

/// Waits until `storage` has no transition in flight or queued.
fn settled(storage: &Storage) -> R<()> {
    if !spin_until(WAIT, || storage.pending_publications() == 0) {
        return Err("a transition was not acknowledged within 5 s".into());
    }
    Ok(())
}

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section(
        "7. wire: round trips one instance starts (Sync/Query messages seen by a proxy, plain TCP)",
    );
    let Some(addr) = tcp_upstream(&t.cfg) else {
        report.note("phase 7 skipped: the server is not on TCP".into());
        return Ok(());
    };
    let proxy = WireProxy::start(addr)?;
    let storage = Storage::connect_with(proxied_opts(t, "wire", &proxy)?).await?;
    let quiet = || tokio::time::sleep(Duration::from_millis(100));
    quiet().await;
    let (p0, l0) = proxy.round_trips();
    let healthy = CircuitBreaker::builder("healthy")
        .storage(storage.clone())
        .build()?;
    quiet().await;
    let (p1, l1) = proxy.round_trips();
    report.value(
        "round trips to build a breaker (pool)",
        1,
        (p1 - p0).to_string(),
        &format!(
            "CircuitBreaker::builder(..).build() on a new key; since connect: pool {p0}, \
             listener {l0} (LISTEN, the reload)"
        ),
    );

    // Healthy calls: the synchronous pair and the async call.
    let (n_sync, n_async) = if sizes.quick {
        (10_000u64, 1_000u64)
    } else {
        (1_000_000, 100_000)
    };
    let t0 = Instant::now();
    for _ in 0..n_sync {
        healthy
            .try_acquire()
            .map_err(|r| format!("the healthy breaker rejected: {r}"))?
            .success();
    }
    for _ in 0..n_async {
        healthy
            .call(|| async { Ok::<_, ()>(()) })
            .await
            .map_err(|_| "the healthy breaker's call failed")?;
    }
    let calls_took = t0.elapsed();
    quiet().await;
    let (p2, l2) = proxy.round_trips();
    let calls = n_sync + n_async;
    report.value(
        "round trips per healthy call (pool)",
        calls,
        format!("{}", (p2 - p1) as f64 / calls as f64),
        &format!(
            "{} in all during {n_sync} try_acquire+success and {n_async} call().await ({}, \
             then 100 ms); the listener's own: {} in the same {} (heartbeats, per instance)",
            p2 - p1,
            ms(calls_took),
            l2 - l1,
            ms(calls_took + Duration::from_millis(100)),
        ),
    );

    // Transitions one at a time: trip, wait for the acknowledgement, rest, force_closed, ...
    let cb = trip_fast(CircuitBreaker::builder("cycled").storage(storage.clone())).build()?;
    let cycles = if sizes.quick { 10 } else { 200 };
    let mut counted = (0, 0);
    for i in 0..3 + cycles {
        if i == 3 {
            quiet().await;
            counted.0 = proxy.round_trips().0;
        }
        cb.try_acquire()
            .map_err(|r| format!("the cycled breaker is not closed: {r}"))?
            .failure();
        settled(&storage)?;
        std::thread::sleep(IDLE_GAP);
        cb.force_closed();
        settled(&storage)?;
        std::thread::sleep(IDLE_GAP);
    }
    quiet().await;
    counted.1 = proxy.round_trips().0;
    report.value(
        "round trips per transition, one at a time (pool)",
        2 * cycles,
        format!(
            "{:.2}",
            (counted.1 - counted.0) as f64 / (2 * cycles) as f64
        ),
        &format!(
            "{} for {cycles} trips + {cycles} force_closed, each acknowledged before the next",
            counted.1 - counted.0
        ),
    );

    // A burst: many keys change at once and share statements.
    let burst = if sizes.quick { 10 } else { 100 };
    let many: Vec<CircuitBreaker> = (0..burst)
        .map(|i| {
            trip_fast(CircuitBreaker::builder(format!("burst-{i}")).storage(storage.clone()))
                .build()
        })
        .collect::<Result<_, _>>()?;
    quiet().await;
    let b0 = proxy.round_trips().0;
    for cb in &many {
        cb.try_acquire()
            .map_err(|r| format!("a burst breaker is not closed: {r}"))?
            .failure();
    }
    settled(&storage)?;
    quiet().await;
    let b1 = proxy.round_trips().0;
    for cb in &many {
        cb.force_closed();
    }
    settled(&storage)?;
    quiet().await;
    let b2 = proxy.round_trips().0;
    report.value(
        &format!("round trips per transition, {burst} keys tripped at once (pool)"),
        burst,
        format!("{:.2}", (b1 - b0) as f64 / burst as f64),
        &format!("{} in all", b1 - b0),
    );
    report.value(
        &format!("round trips per transition, {burst} keys force_closed at once (pool)"),
        burst,
        format!("{:.2}", (b2 - b1) as f64 / burst as f64),
        &format!("{} in all", b2 - b1),
    );
    drop((many, cb, healthy));
    drop(storage);
    drop(proxy);
    Ok(())
}
