//! Phase 5, fan-out to many instances: 50 `Storage`s, one breaker each on one key; instance 0
//! trips; each other instance's `on_status_change` notes when it went OPEN.
//!
//! Why: every instance has a listener connection of its own, and the database delivers one
//! NOTIFY to each; the question is whether the last of a fleet hears of a trip as soon as the
//! first.
//!
//! 50 instances need 100 connections: when the server has no room for them (the default
//! `max_connections` is 100), the full run starts a private cluster with the tests' kit
//! (`tests/support/cluster.rs`: the local PostgreSQL binaries, or `RC_TEST_PG_BINDIR`) with the
//! main server's durability and TLS settings and `max_connections=200`, and says so; without
//! one (or in the quick run) it uses as many instances as the server has room for.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio_postgres::{Client, Config};

use crate::db::{create_bench_db, free_slots, recv_change, Target};
use crate::report::{ms, Report};
use crate::support::cluster::PgTools;
use crate::support::Cluster;
use crate::{
    reclose, spin_until, trip_fast, Sizes, FLEET_WARMUP, IDLE_GAP, R, SLOT_HEADROOM, WAIT,
};

/// Settings of the main server that the private cluster copies, so the figures compare (they
/// override the test cluster's own `fsync=off` etc.).
async fn mirrored_settings(admin: &Client) -> R<Vec<(String, String)>> {
    let rows = admin
        .query(
            "SELECT name, setting FROM pg_settings WHERE name IN \
             ('fsync', 'synchronous_commit', 'full_page_writes', 'autovacuum', 'shared_buffers', \
              'wal_level', 'ssl', 'ssl_cert_file', 'ssl_key_file')",
            &[],
        )
        .await?;
    let mut out: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|(_, v)| !v.is_empty() && !v.contains(char::is_whitespace))
        .collect();
    // TLS settings only when TLS is on.
    if !out.iter().any(|(k, v)| k == "ssl" && v == "on") {
        out.retain(|(k, _)| !k.starts_with("ssl"));
    }
    Ok(out)
}

/// A throwaway cluster from the tests' kit (its watchdog removes it even if this process is
/// killed) with the main server's settings, then `extra` (which win); should it not start with
/// the main server's TLS settings (e.g. a certificate it cannot read), one without them.
pub(crate) async fn private_cluster(admin: &Client, extra: &[(String, String)]) -> R<Cluster> {
    if PgTools::find().is_none() {
        return Err("no PostgreSQL server binaries (initdb, pg_ctl) found".into());
    }
    let mut settings = mirrored_settings(admin).await?;
    settings.extend_from_slice(extra);
    let start = |settings: Vec<(String, String)>| async move {
        AssertUnwindSafe(Cluster::start_with(&settings))
            .catch_unwind()
            .await
            .map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "starting the cluster panicked".to_owned())
            })
    };
    match start(settings.clone()).await {
        Ok(c) => Ok(c),
        Err(e) => {
            eprintln!(
                "   private cluster with the main server's TLS settings failed ({e}); retrying without TLS"
            );
            let without_ssl = settings
                .into_iter()
                .filter(|(k, _)| !k.starts_with("ssl"))
                .collect();
            Ok(start(without_ssl).await?)
        }
    }
}

/// A private cluster ([`private_cluster`]) and a benchmark database on it, for a phase that
/// needs more connections than the main server has free.
pub(crate) async fn private_target(
    main: &Target,
    admin: &Client,
    extra: &[(String, String)],
) -> R<(Cluster, Target)> {
    let cluster = private_cluster(admin, extra).await?;
    let dsn = cluster.conninfo("postgres");
    let mut cfg: Config = dsn.parse()?;
    cfg.connect_timeout(WAIT);
    let pc_admin = main.transport.client(&cfg).await?;
    let target = create_bench_db(&pc_admin, &cfg, &dsn, &main.transport, "private cluster").await?;
    Ok((cluster, target))
}

pub(crate) async fn phase(
    main: &Target,
    admin: &Client,
    sizes: &Sizes,
    report: &mut Report,
) -> R<()> {
    report.section(
        "5. fleet: instance 0 trips -> each other instance sees OPEN (its on_status_change)",
    );
    let wanted = sizes.fleet_instances;
    let free = free_slots(admin).await?;
    let mut n = wanted;
    let mut cluster = None;
    let mut private = None;
    if free < 2 * wanted + 1 + SLOT_HEADROOM {
        if !sizes.quick {
            match private_target(main, admin, &[]).await {
                Ok((c, target)) => {
                    report.note(format!(
                        "phase 5 ran on a private cluster (same binaries and machine, the main \
                         server's fsync/synchronous_commit/TLS settings, max_connections=200): the \
                         main server has {free} free connection slots, {wanted} instances need {}",
                        2 * wanted
                    ));
                    private = Some(target);
                    cluster = Some(c);
                }
                Err(e) => report.note(format!("no private cluster for phase 5: {e}")),
            }
        }
        if private.is_none() {
            n = free
                .saturating_sub(SLOT_HEADROOM + 1)
                .div_euclid(2)
                .clamp(2, wanted);
            if n < wanted {
                report.note(format!(
                    "phase 5 used {n} instances, not {wanted}: the server has {free} free connection slots"
                ));
            }
        }
    }
    let t = private.as_ref().unwrap_or(main);
    let result = run_fleet(t, n, sizes, report).await;
    drop(private);
    drop(cluster);
    result
}

async fn run_fleet(t: &Target, n: usize, sizes: &Sizes, report: &mut Report) -> R<()> {
    if t.label != "main" {
        // The floor on this server, for comparison.
        let c = t.client().await?;
        c.execute(
            "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) VALUES ('raw', 'fleetraw', 'CLOSED')",
            &[],
        )
        .await?;
        let mut l = t.transport.listener(&t.cfg).await?;
        let update = c
            .prepare(
                "UPDATE public.rc_circuit_breakers SET state = $1 WHERE namespace = 'fleetraw'",
            )
            .await?;
        let mut v = Vec::new();
        for k in 0..sizes.raw_warmup + sizes.raw_samples / 5 {
            let state = if k % 2 == 0 { "OPEN" } else { "CLOSED" };
            std::thread::sleep(IDLE_GAP);
            let t0 = Instant::now();
            c.execute(&update, &[&state]).await?;
            let at = recv_change(&mut l.rx, "fleetraw", "raw", state).await?;
            if k >= sizes.raw_warmup {
                v.push(at.saturating_duration_since(t0));
            }
        }
        report.dist(
            &format!("raw UPDATE -> NOTIFY on the {}", t.label),
            &v,
            "floor of this server",
        );
    }
    let base = Instant::now();
    let slots: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (mut storages, mut cbs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let t_connect = Instant::now();
    for i in 0..n {
        let s = Storage::connect_with(t.opts("fleet")?).await?;
        let slots = slots.clone();
        let cb = trip_fast(CircuitBreaker::builder("fleet_key").storage(s.clone()))
            .on_status_change(move |c| {
                if c.to == State::Open {
                    let at = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    slots[i].store(at.max(1), Ordering::Release);
                }
            })
            .build()?;
        storages.push(s);
        cbs.push(cb);
    }
    let connect_all = t_connect.elapsed();
    let (mut each, mut last) = (Vec::new(), Vec::new());
    for trip in 0..FLEET_WARMUP + sizes.fleet_trips {
        for s in slots.iter() {
            s.store(0, Ordering::Release);
        }
        let t0 = base.elapsed();
        cbs[0]
            .try_acquire()
            .map_err(|r| format!("instance 0 is not closed before trip {trip}: {r}"))?
            .failure();
        let all_seen = spin_until(WAIT, || {
            slots[1..].iter().all(|s| s.load(Ordering::Acquire) != 0)
        });
        if !all_seen {
            let missing = slots[1..]
                .iter()
                .filter(|s| s.load(Ordering::Acquire) == 0)
                .count();
            return Err(format!("{missing} of {} instances never saw the trip", n - 1).into());
        }
        if trip >= FLEET_WARMUP {
            let mut worst = Duration::ZERO;
            for s in &slots[1..] {
                let d = Duration::from_nanos(s.load(Ordering::Acquire)).saturating_sub(t0);
                worst = worst.max(d);
                each.push(d);
            }
            last.push(worst);
        }
        reclose(&storages[0], &cbs[0], &cbs)?;
    }
    report.value(
        &format!("connect {n} instances one after another"),
        n,
        ms(connect_all),
        &format!("{} per instance", ms(connect_all / n as u32)),
    );
    let st = report.dist(
        &format!("trip -> OPEN on each of {} other instances", n - 1),
        &each,
        &format!(
            "{} trips x {} instances, on the {}",
            sizes.fleet_trips,
            n - 1,
            t.label
        ),
    );
    report.dist(
        "trip -> OPEN on the last instance of the fleet",
        &last,
        "per trip, the slowest instance",
    );
    if let Some(s) = st {
        report.goal(
            &format!("{n} instances p99"),
            "<= 10 ms (50 instances)",
            ms(s.p99),
            s.p99 <= Duration::from_millis(10) && n >= 50,
        );
    }
    drop(cbs);
    drop(storages);
    Ok(())
}
