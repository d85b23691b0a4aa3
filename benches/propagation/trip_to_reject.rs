//! Phase 2, trip-to-reject: how long after instance A trips a key instance B rejects calls on
//! it, the headline figure of the crate.
//!
//! Instances A and B (two `Storage`s, same namespace and key, failure limit 1/1, one-hour
//! cooldown). A thread spins on B's `try_acquire` (yielding between looks) and notes the first
//! rejection; the main thread notes the time just before A's tripping `try_acquire().failure()`.
//! B's `on_status_change` also notes when B applied the change. Then A `force_closed()`s, both
//! must read CLOSED again, and 2 ms pass before the next trip.
//!
//! After each trip and its re-close, the same run takes one raw UPDATE -> NOTIFY sample (as in
//! phase 1, bare connections) with the same spinner spinning on B and the same 2 ms of rest
//! before: the floor under the trips' own conditions, which the propagation is divided by (and by
//! phase 1's back-to-back and from-idle floors, which ran without the spinner).
//!
//! Also: without the spinner (a bare listener on the side notes when the NOTIFY reaches one more
//! connection), tripped from a tokio task (as an async application does), and, as a what-if, with
//! the crate's connections at `synchronous_commit=off` (a DSN `options` setting).
//!
//! **B's own share**: B's connections go through a proxy in this process (plain TCP, std threads)
//! that notes the instant just before it writes the NotificationResponse's bytes to B's listener
//! socket; from there to B's first rejection (spinner) and to B's callback, all on one clock. The
//! proxy hop is outside that interval. In the same run A goes through a proxy of its own, which
//! notes when A's statement is complete on the wire: **A's own share** (the failure to its
//! statement written) and the database's (that statement to the NOTIFY at B's socket).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, State, Storage};
use tokio_postgres::Client;

use crate::db::{recv_change, NotifyListener, Target};
use crate::raw_notify::Floor;
use crate::report::{ms, ratio, Report};
use crate::wire_proxy::{proxied_opts, tcp_upstream, WireProxy};
use crate::{reclose, spin_until, trip_fast, Sizes, ASYNC_COMMIT, IDLE_GAP, R, WAIT};

/// A thread spinning on a breaker's `try_acquire` until the first rejection, on demand.
struct Spinner {
    arm: Option<std_mpsc::Sender<()>>,
    spinning: Arc<AtomicBool>,
    /// Ends a spin that is not waiting for a rejection (a floor sample).
    stop: Arc<AtomicBool>,
    result: std_mpsc::Receiver<Option<Instant>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn spawn(cb: CircuitBreaker) -> R<Spinner> {
        let (arm_tx, arm_rx) = std_mpsc::channel::<()>();
        let (res_tx, res_rx) = std_mpsc::channel();
        let spinning = Arc::new(AtomicBool::new(false));
        let flag = spinning.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rejection-spinner".into())
            .spawn(move || {
                while arm_rx.recv().is_ok() {
                    let deadline = Instant::now() + WAIT;
                    flag.store(true, Ordering::Release);
                    let seen = loop {
                        match cb.try_acquire() {
                            Ok(permit) => drop(permit),
                            Err(_) => break Some(Instant::now()),
                        }
                        if Instant::now() >= deadline || stopped.load(Ordering::Acquire) {
                            break None;
                        }
                        // Two cores only: leave the other runnable threads (the listener, the
                        // database's backends) their turn.
                        std::thread::yield_now();
                    };
                    flag.store(false, Ordering::Release);
                    if res_tx.send(seen).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Spinner {
            arm: Some(arm_tx),
            spinning,
            stop,
            result: res_rx,
            thread: Some(thread),
        })
    }

    /// Starts a spin and returns once the thread is spinning.
    fn arm(&self) -> R<()> {
        self.arm.as_ref().ok_or("spinner stopped")?.send(())?;
        if !spin_until(WAIT, || self.spinning.load(Ordering::Acquire)) {
            return Err("the spinner thread did not start".into());
        }
        Ok(())
    }

    /// Ends a spin during which no rejection is expected; an error if there was one.
    fn stop(&self) -> R<()> {
        self.stop.store(true, Ordering::Release);
        let seen = self.result.recv_timeout(WAIT + Duration::from_secs(1))?;
        self.stop.store(false, Ordering::Release);
        match seen {
            None => Ok(()),
            Some(_) => Err("B rejected during a floor sample".into()),
        }
    }

    fn first_rejection(&self) -> R<Instant> {
        self.result
            .recv_timeout(WAIT + Duration::from_secs(1))?
            .ok_or_else(|| "B never rejected within 5 s".into())
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.arm = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The two instances of phase 2 and what B's callback noted.
struct Pair {
    a: Storage,
    /// Kept so that B lives as long as the pair (its breaker holds it too).
    _b: Storage,
    a_cb: CircuitBreaker,
    b_cb: CircuitBreaker,
    applied: Arc<Slot>,
}

/// An instant written by a callback, waited for without polling (a condition variable), so the
/// waiting thread takes no CPU from the path being measured.
#[derive(Default)]
struct Slot {
    at: Mutex<Option<Instant>>,
    set: Condvar,
}

impl Slot {
    fn put(&self, at: Instant) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        self.set.notify_all();
    }

    fn take(&self) -> Option<Instant> {
        self.at.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Waits until an instant is there and takes it.
    fn wait(&self, timeout: Duration) -> Option<Instant> {
        let guard = self.at.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .set
            .wait_timeout_while(guard, timeout, |at| at.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.take()
    }
}

impl Pair {
    async fn connect(t: &Target, ns: &str, options: Option<&str>) -> R<Pair> {
        Pair::connect_with(t.opts_with(ns, options)?, t.opts_with(ns, options)?).await
    }

    async fn connect_with(a_opts: PostgresOptions, b_opts: PostgresOptions) -> R<Pair> {
        let a = Storage::connect_with(a_opts).await?;
        let b = Storage::connect_with(b_opts).await?;
        let key = "payments_api";
        let applied = Arc::new(Slot::default());
        let slot = applied.clone();
        let a_cb = trip_fast(CircuitBreaker::builder(key).storage(a.clone())).build()?;
        let b_cb = trip_fast(CircuitBreaker::builder(key).storage(b.clone()))
            .on_status_change(move |c| {
                if c.to == State::Open {
                    slot.put(Instant::now());
                }
            })
            .build()?;
        Ok(Pair {
            a,
            _b: b,
            a_cb,
            b_cb,
            applied,
        })
    }

    fn take_applied(&self) -> Option<Instant> {
        self.applied.take()
    }
}

/// Samples of one series of trips, from the tripping call's start.
#[derive(Default)]
struct TripSamples {
    /// B's first rejection (spinner runs only).
    rejected: Vec<Duration>,
    /// B's `on_status_change` saw OPEN.
    applied: Vec<Duration>,
    /// A bare listener of the same database received the NOTIFY (decomposition runs only).
    notified: Vec<Duration>,
    /// Raw UPDATE -> NOTIFY samples taken between the trips, under the same spinner.
    floor: Vec<Duration>,
    /// Proxied B only: from the trip to the proxy handing the NOTIFY to B's listener socket.
    to_wire: Vec<Duration>,
    /// Proxied B only: from that hand-over to B's first rejection (spinner).
    wire_to_rejected: Vec<Duration>,
    /// Proxied B only: from that hand-over to B's `on_status_change`.
    wire_to_applied: Vec<Duration>,
    /// Proxied B only: samples where B's rejection or callback came before the hand-over's
    /// instant (impossible unless the clocks disagree; counted, not clamped).
    wire_negative: usize,
    /// Proxied A only: from the trip to its statement complete at A's proxy.
    a_share: Vec<Duration>,
    /// Proxied A and B: from A's statement at its proxy to the NOTIFY handed to B's socket.
    db_share: Vec<Duration>,
}

/// A raw UPDATE -> NOTIFY probe on bare connections, sampled between the trips of a series.
struct FloorProbe {
    writer: Client,
    listener: NotifyListener,
    update: tokio_postgres::Statement,
    ns: String,
    flip: usize,
}

impl FloorProbe {
    async fn new(t: &Target, ns: &str) -> R<FloorProbe> {
        let writer = t.client().await?;
        writer
            .execute(
                "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
                 VALUES ('raw', $1, 'CLOSED')",
                &[&ns],
            )
            .await?;
        let listener = t.transport.listener(&t.cfg).await?;
        let update = writer
            .prepare(
                "UPDATE public.rc_circuit_breakers SET state = $1 \
                 WHERE namespace = $2 AND resource_key = 'raw'",
            )
            .await?;
        Ok(FloorProbe {
            writer,
            listener,
            update,
            ns: ns.to_owned(),
            flip: 0,
        })
    }

    /// One sample, with `spinner` spinning on B throughout as during a trip.
    async fn sample(&mut self, spinner: Option<&Spinner>) -> R<Duration> {
        self.flip += 1;
        let state = if self.flip % 2 == 0 { "CLOSED" } else { "OPEN" };
        while self.listener.rx.try_recv().is_ok() {}
        if let Some(s) = spinner {
            s.arm()?;
        }
        let t0 = Instant::now();
        let changed = self
            .writer
            .execute(&self.update, &[&state, &self.ns])
            .await?;
        let at = recv_change(&mut self.listener.rx, &self.ns, "raw", state).await?;
        if let Some(s) = spinner {
            s.stop()?;
        }
        if changed != 1 {
            return Err(format!("UPDATE changed {changed} rows").into());
        }
        Ok(at.saturating_duration_since(t0))
    }
}

/// What a series of trips measures besides B's callback.
#[derive(Default)]
struct Extras<'a> {
    /// A thread spinning on B's `try_acquire` notes B's first rejection.
    spinner: Option<&'a Spinner>,
    /// A bare listener notes the NOTIFY's arrival on a connection of its own.
    raw: Option<&'a mut NotifyListener>,
    /// Trip from a tokio task rather than the bench's main thread.
    from_task: bool,
    /// After each trip (and its re-close), a raw UPDATE -> NOTIFY sample under the same spinner.
    floor: Option<&'a mut FloorProbe>,
    /// B's connections go through this proxy, which notes when it handed the NOTIFY to B.
    wire: Option<&'a WireProxy>,
    /// A's connections go through this proxy, which notes when A's statement was complete.
    a_wire: Option<&'a WireProxy>,
}

/// `warmup + n` trips by A, each followed by a fleet-wide close.
async fn trips(p: &Pair, ns: &str, warmup: usize, n: usize, mut x: Extras<'_>) -> R<TripSamples> {
    let mut out = TripSamples::default();
    let all = [p.a_cb.clone(), p.b_cb.clone()];
    let key = p.a_cb.key().to_owned();
    for i in 0..warmup + n {
        p.take_applied();
        if let Some(l) = x.raw.as_deref_mut() {
            while l.rx.try_recv().is_ok() {}
        }
        if let Some(w) = x.wire {
            w.clear_notifications();
        }
        if let Some(s) = x.spinner {
            s.arm()?;
        }
        let t0 = if x.from_task {
            // As an async application trips: on a runtime worker, whose spawns stay local.
            let a_cb = p.a_cb.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                a_cb.try_acquire().map(|permit| {
                    permit.failure();
                    t0
                })
            })
            .await?
            .map_err(|r| format!("A is not closed before trip {i}: {r}"))?
        } else {
            let t0 = Instant::now();
            p.a_cb
                .try_acquire()
                .map_err(|r| format!("A is not closed before trip {i}: {r}"))?
                .failure();
            t0
        };
        let rejected = match x.spinner {
            Some(s) => Some(s.first_rejection()?),
            None => None,
        };
        let cb_at = p.applied.wait(WAIT).ok_or("B's callback never saw OPEN")?;
        if p.b_cb.try_acquire().is_ok() {
            return Err("B admitted a call after applying OPEN".into());
        }
        let notified = match x.raw.as_deref_mut() {
            Some(l) => Some(recv_change(&mut l.rx, ns, &key, "OPEN").await?),
            None => None,
        };
        let wired = match x.wire {
            Some(w) => Some(w.notified(ns, &key, "OPEN")?),
            None => None,
        };
        let sent = match x.a_wire {
            Some(w) => Some(w.statement_after(t0)?),
            None => None,
        };
        if i >= warmup {
            if let Some(r) = rejected {
                out.rejected.push(r.saturating_duration_since(t0));
            }
            out.applied.push(cb_at.saturating_duration_since(t0));
            if let Some(at) = notified {
                out.notified.push(at.saturating_duration_since(t0));
            }
            if let Some(s) = sent {
                out.a_share.push(s.saturating_duration_since(t0));
                if let Some(w) = wired {
                    out.db_share.push(w.saturating_duration_since(s));
                }
            }
            if let Some(w) = wired {
                out.to_wire.push(w.saturating_duration_since(t0));
                for (end, into) in [
                    (rejected, &mut out.wire_to_rejected),
                    (Some(cb_at), &mut out.wire_to_applied),
                ] {
                    match end.map(|e| e.checked_duration_since(w)) {
                        Some(Some(d)) => into.push(d),
                        Some(None) => out.wire_negative += 1,
                        None => {}
                    }
                }
            }
        }
        reclose(&p.a, &p.a_cb, &all)?;
        if let Some(f) = x.floor.as_deref_mut() {
            // reclose() ended with 2 ms of rest, as before a trip; rest again after the sample
            // so that the next trip starts from the same idleness.
            let d = f.sample(x.spinner).await?;
            if i >= warmup {
                out.floor.push(d);
            }
            std::thread::sleep(IDLE_GAP);
        }
    }
    Ok(out)
}

pub(crate) async fn phase(t: &Target, sizes: &Sizes, floor: &Floor, report: &mut Report) -> R<()> {
    report.section("2. trip-to-reject: A trips (failure on a 1/1 breaker) -> B's first rejection");
    let pair = Pair::connect(t, "prop", None).await?;

    // The headline: a thread spinning on B's try_acquire. Between the trips, under the same
    // spinner and after the same rest, a raw UPDATE -> NOTIFY sample on bare connections: the
    // floor under the very conditions of the trips.
    let spinner = Spinner::spawn(pair.b_cb.clone())?;
    let mut probe = FloorProbe::new(t, "floor_spin").await?;
    let spun = trips(
        &pair,
        "prop",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            spinner: Some(&spinner),
            floor: Some(&mut probe),
            ..Extras::default()
        },
    )
    .await?;
    drop(spinner);
    drop(probe);
    let st = report.dist(
        "trip -> B's first rejection (spinner)",
        &spun.rejected,
        "spinning thread on B's try_acquire",
    );
    report.dist(
        "trip -> B applied it (callback, same trips)",
        &spun.applied,
        "B's on_status_change",
    );
    let same_run = report.dist(
        "raw UPDATE -> NOTIFY between those trips (same spinner)",
        &spun.floor,
        "bare connections; spinner on B, 2 ms rest before, as each trip",
    );
    if let (Some(s), Some(f)) = (st, same_run) {
        report.value(
            "  ratio to the same-run floor (spinner)",
            spun.rejected.len(),
            format!("{} / {}", ratio(s.p50, f.p50), ratio(s.p99, f.p99)),
            "p50 / p99 of trip -> rejection over p50 / p99 of the floor above",
        );
    }
    if let (Some(s), Some(b)) = (st, floor.busy) {
        report.value(
            "  ratio to the back-to-back floor (phase 1)",
            spun.rejected.len(),
            format!("{} / {}", ratio(s.p50, b.p50), ratio(s.p99, b.p99)),
            "p50 / p99; that floor ran with no spinner and no rest between samples",
        );
    }
    if let (Some(s), Some(f)) = (st, floor.tls) {
        report.value(
            "  ratio to the from-idle floor (phase 1)",
            spun.rejected.len(),
            format!("{} / {}", ratio(s.p50, f.p50), ratio(s.p99, f.p99)),
            "p50 / p99; that floor ran with no spinner, 2 ms rest before each sample",
        );
    }

    // Without the spinner, with a bare listener on the side (A's and the database's share as
    // one more listener connection sees it).
    let mut raw = t.transport.listener(&t.cfg).await?;
    let quiet = trips(
        &pair,
        "prop",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            raw: Some(&mut raw),
            ..Extras::default()
        },
    )
    .await?;
    report.dist(
        "trip -> B applied it (no spinner)",
        &quiet.applied,
        "only B's callback; the main thread blocks on a condvar",
    );
    report.dist(
        "  trip -> NOTIFY on a bare listener",
        &quiet.notified,
        "A's spawn, pool, rc_trip(), commit, NOTIFY, delivery to another connection",
    );

    // The same, tripped from a runtime task as an async application would.
    let in_task = trips(
        &pair,
        "prop",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            raw: Some(&mut raw),
            from_task: true,
            ..Extras::default()
        },
    )
    .await?;
    report.dist(
        "trip from a tokio task -> B applied it",
        &in_task.applied,
        "no spinner; the crate's spawn stays on the worker",
    );
    report.dist("  trip -> NOTIFY on a bare listener", &in_task.notified, "");
    // What the crate's own connections are.
    let c = t.client().await?;
    let rows = c
        .query(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.application_name LIKE 'resilient-circuit%' \
             ORDER BY 1",
            &[],
        )
        .await?;
    let described: Vec<String> = rows
        .iter()
        .map(|r| format!("{} ssl={}", r.get::<_, String>(0), r.get::<_, bool>(1)))
        .collect();
    report.note(format!(
        "the crate's connections during phase 2: {}",
        described.join(", ")
    ));
    drop(raw);
    if let Some(s) = st {
        report.goal(
            "propagation p50",
            "<= 0.5 ms",
            ms(s.p50),
            s.p50 <= Duration::from_micros(500),
        );
        report.goal(
            "propagation p99",
            "<= 2 ms",
            ms(s.p99),
            s.p99 <= Duration::from_millis(2),
        );
    }

    // B's own share, on one clock: B's connections go through a proxy in this process that notes
    // the instant it hands the NOTIFY's bytes to B's listener socket; the spinner and B's
    // callback note when B's snapshot shows OPEN.
    match tcp_upstream(&t.cfg) {
        None => report.note("B's own share not measured: the server is not on TCP".into()),
        Some(addr) => {
            let proxy = WireProxy::start(addr)?;
            let a_proxy = WireProxy::start(addr)?;
            let wired = Pair::connect_with(
                proxied_opts(t, "prop_wire", &a_proxy)?,
                proxied_opts(t, "prop_wire", &proxy)?,
            )
            .await?;
            let spinner = Spinner::spawn(wired.b_cb.clone())?;
            let w = trips(
                &wired,
                "prop_wire",
                sizes.trip_warmup,
                sizes.trips,
                Extras {
                    spinner: Some(&spinner),
                    wire: Some(&proxy),
                    a_wire: Some(&a_proxy),
                    ..Extras::default()
                },
            )
            .await?;
            drop(spinner);
            report.dist(
                "B's share: NOTIFY handed to B's socket -> B's first rejection",
                &w.wire_to_rejected,
                "B proxied, plain TCP; spinner on B; one process, one clock",
            );
            report.dist(
                "B's share: NOTIFY handed to B's socket -> B's callback",
                &w.wire_to_applied,
                "same trips; B's on_status_change",
            );
            report.dist(
                "A's share: trip -> its statement complete at A's proxy",
                &w.a_share,
                "A proxied too, plain TCP: the cell, the outbox, the hop to the I/O runtime, \
                 a pooled connection, the statement written",
            );
            report.dist(
                "the database's share: A's statement at its proxy -> NOTIFY handed to B's socket",
                &w.db_share,
                "the call, its commit, the NOTIFY's delivery, and two proxy hops",
            );
            report.dist(
                "  trip -> NOTIFY handed to B's socket (through the proxies)",
                &w.to_wire,
                "A's and the database's share plus the proxy hops",
            );
            report.dist(
                "  trip -> B's first rejection (through the proxy)",
                &w.rejected,
                "includes the proxy hop; not comparable with the headline",
            );
            if w.wire_negative > 0 {
                report.note(format!(
                    "B's share: {} samples had B's rejection or callback before the proxy's \
                     hand-over instant; left out",
                    w.wire_negative
                ));
            }
            // The same proxies without the spinner, where both cores may idle between trips:
            // from a plain thread (the crate's runtime must be woken) and from a runtime task.
            for (from_task, how) in [(false, "plain thread"), (true, "tokio task")] {
                let q = trips(
                    &wired,
                    "prop_wire",
                    sizes.trip_warmup,
                    sizes.trips,
                    Extras {
                        wire: Some(&proxy),
                        a_wire: Some(&a_proxy),
                        from_task,
                        ..Extras::default()
                    },
                )
                .await?;
                report.dist(
                    &format!("A's share, no spinner, tripped from a {how}"),
                    &q.a_share,
                    "trip -> A's statement complete at its proxy",
                );
                report.dist(
                    &format!("  the database's share, no spinner, from a {how}"),
                    &q.db_share,
                    "A's statement at its proxy -> NOTIFY handed to B's socket",
                );
                report.dist(
                    &format!("  B's share, no spinner, from a {how}"),
                    &q.wire_to_applied,
                    "NOTIFY handed to B's socket -> B's callback",
                );
            }
            drop(wired);
            drop(proxy);
            drop(a_proxy);
        }
    }

    drop(pair);

    // What-if: the crate's connections with synchronous_commit=off (a DSN option, no code change).
    let pair = Pair::connect(t, "prop_async", Some(ASYNC_COMMIT)).await?;
    let spinner = Spinner::spawn(pair.b_cb.clone())?;
    let fast = trips(
        &pair,
        "prop_async",
        sizes.trip_warmup,
        sizes.trips,
        Extras {
            spinner: Some(&spinner),
            ..Extras::default()
        },
    )
    .await?;
    drop(spinner);
    report.dist(
        "what-if: synchronous_commit=off (spinner)",
        &fast.rejected,
        "options=-c synchronous_commit=off in the DSN",
    );
    drop(pair);
    Ok(())
}
