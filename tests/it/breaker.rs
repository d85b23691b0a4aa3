//! Behaviour of one in-memory breaker against the spec: every transition, rejection, cooldown,
//! half-open probes, stale permits, callbacks, classification, overrides, configuration errors
//! and the bounded store. Time is a `ManualClock`: nothing here sleeps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use resilient_circuit::{
    Builder, Change, ChangeOrigin, CircuitBreaker, CircuitError, ConfigError, ManualClock, Outcome,
    OwnedPermit, Permit, Ratio, RejectReason, Rejected, SlowCalls, State, Storage, MAX_KEY_LEN,
};

use State::{Closed, HalfOpen, Open};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

type Log = Arc<Mutex<Vec<Change>>>;

/// One breaker on its own store with a manual clock and a callback that logs every change.
struct Rig {
    cb: CircuitBreaker,
    clock: ManualClock,
    storage: Storage,
    log: Log,
}

impl Rig {
    fn new(key: &str, failure: Ratio, success: Option<Ratio>, cooldown_ms: u64) -> Rig {
        let clock = ManualClock::new();
        let storage = Storage::in_memory_with(64, Arc::new(clock.clone()));
        let log: Log = Arc::default();
        let sink = log.clone();
        let mut b = CircuitBreaker::builder(key)
            .storage(storage.clone())
            .failure_limit(failure)
            .cooldown(Duration::from_millis(cooldown_ms))
            .on_status_change(move |c| sink.lock().unwrap().push(c.clone()));
        if let Some(s) = success {
            b = b.success_limit(s);
        }
        Rig {
            cb: b.build().expect("valid config"),
            clock,
            storage,
            log,
        }
    }

    fn advance_ms(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    fn changes(&self) -> Vec<(State, State)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.from, c.to))
            .collect()
    }

    /// `changes()` without OPEN -> HALF_OPEN, for tests about something else.
    fn changes_except_open_to_half_open(&self) -> Vec<(State, State)> {
        let mut c = self.changes();
        c.retain(|t| *t != (Open, HalfOpen));
        c
    }

    /// Acquires, panicking with `what` on rejection.
    fn admit(&self, what: &str) -> Permit<'_> {
        self.cb
            .try_acquire()
            .unwrap_or_else(|r| panic!("{what}: expected admission, got {r}"))
    }

    fn reject(&self, what: &str) -> Rejected {
        match self.cb.try_acquire() {
            Ok(p) => panic!(
                "{what}: expected rejection, admitted (probe: {})",
                p.is_probe()
            ),
            Err(r) => r,
        }
    }

    /// Trips a breaker whose failure limit is n/n (or any limit met by `den` failures).
    fn trip(&self, den: u32) {
        for _ in 0..den {
            self.admit("trip").failure();
        }
        assert_eq!(self.cb.state(), Open, "trip");
    }
}

fn r(n: u32, d: u32) -> Ratio {
    Ratio::new(n, d)
}

// ---------------------------------------------------------------------------------------------
// Table of transitions
// ---------------------------------------------------------------------------------------------

/// One step of a transition row.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Must be admitted; reports success.
    S,
    /// Must be admitted; reports failure.
    F,
    /// Must be rejected.
    Rej,
    /// Advances the manual clock by this many milliseconds.
    Wait(u64),
}
use Step::{Rej, Wait, F, S};

struct Row {
    name: &'static str,
    failure: Ratio,
    success: Option<Ratio>,
    cooldown_ms: u64,
    steps: &'static [Step],
    state: State,
    changes: &'static [(State, State)],
}

const C_O: (State, State) = (Closed, Open);
const O_H: (State, State) = (Open, HalfOpen);
const H_O: (State, State) = (HalfOpen, Open);
const H_C: (State, State) = (HalfOpen, Closed);

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "under the limit stays closed",
            failure: r(3, 5),
            success: None,
            cooldown_ms: 100,
            steps: &[F, F, S, S, S, S, S, F],
            state: Closed,
            changes: &[],
        },
        Row {
            name: "a window that is not full never trips",
            failure: r(3, 5),
            success: None,
            cooldown_ms: 100,
            steps: &[F, F, F, F],
            state: Closed,
            changes: &[],
        },
        Row {
            name: "full window at the limit trips",
            failure: r(3, 5),
            success: None,
            cooldown_ms: 100,
            steps: &[F, S, F, S, F],
            state: Open,
            changes: &[C_O],
        },
        Row {
            name: "the window slides: old failures fall out",
            failure: r(2, 3),
            success: None,
            cooldown_ms: 100,
            steps: &[F, S, S, F, S, S, F, S, F],
            state: Open,
            changes: &[C_O],
        },
        Row {
            name: "1/1 trips on the first failure",
            failure: r(1, 1),
            success: None,
            cooldown_ms: 100,
            steps: &[S, S, F],
            state: Open,
            changes: &[C_O],
        },
        Row {
            name: "open rejects until the cooldown ends",
            failure: r(1, 1),
            success: None,
            cooldown_ms: 100,
            steps: &[F, Rej, Wait(50), Rej, Wait(49), Rej],
            state: Open,
            changes: &[C_O],
        },
        Row {
            name: "after the cooldown a call goes half-open and a good probe closes (no success limit)",
            failure: r(1, 1),
            success: None,
            cooldown_ms: 100,
            steps: &[F, Wait(100), S],
            state: Closed,
            changes: &[C_O, O_H, H_C],
        },
        Row {
            name: "no success limit: probes at the failure limit reopen",
            failure: r(2, 3),
            success: None,
            cooldown_ms: 100,
            steps: &[F, F, F, Wait(100), S, F, F],
            state: Open,
            changes: &[C_O, O_H, H_O],
        },
        Row {
            name: "no success limit: probes under the failure limit close",
            failure: r(2, 3),
            success: None,
            cooldown_ms: 100,
            steps: &[F, F, F, Wait(100), F, S, S],
            state: Closed,
            changes: &[C_O, O_H, H_C],
        },
        Row {
            name: "no success limit: half-open waits for all den probes while it may still close",
            failure: r(2, 3),
            success: None,
            cooldown_ms: 100,
            steps: &[F, F, F, Wait(100), F, S],
            state: HalfOpen,
            changes: &[C_O, O_H],
        },
        Row {
            name: "no success limit: probes reaching the failure limit reopen before the rest report",
            failure: r(1, 3),
            success: None,
            cooldown_ms: 100,
            steps: &[F, F, F, Wait(100), F],
            state: Open,
            changes: &[C_O, O_H, H_O],
        },
        Row {
            name: "success limit met closes",
            failure: r(1, 1),
            success: Some(r(2, 3)),
            cooldown_ms: 100,
            steps: &[F, Wait(100), S, F, S],
            state: Closed,
            changes: &[C_O, O_H, H_C],
        },
        Row {
            name: "success limit missed reopens (even with successes first)",
            failure: r(1, 1),
            success: Some(r(2, 3)),
            cooldown_ms: 100,
            steps: &[F, Wait(100), S, F, F],
            state: Open,
            changes: &[C_O, O_H, H_O],
        },
        Row {
            name: "success limit: failures that make closing impossible reopen before the rest report",
            failure: r(1, 1),
            success: Some(r(2, 3)),
            cooldown_ms: 100,
            steps: &[F, Wait(100), F, F],
            state: Open,
            changes: &[C_O, O_H, H_O],
        },
        Row {
            name: "success limit: an early success majority still waits for every probe",
            failure: r(1, 1),
            success: Some(r(2, 3)),
            cooldown_ms: 100,
            steps: &[F, Wait(100), S, S],
            state: HalfOpen,
            changes: &[C_O, O_H],
        },
        Row {
            name: "reopening starts a new full cooldown",
            failure: r(1, 1),
            success: None,
            cooldown_ms: 100,
            steps: &[F, Wait(100), F, Rej, Wait(99), Rej, Wait(1), S],
            state: Closed,
            changes: &[C_O, O_H, H_O, O_H, H_C],
        },
        Row {
            name: "closing empties the window",
            failure: r(2, 2),
            success: None,
            cooldown_ms: 10,
            // The failure before the trip must not be remembered: one failure after closing
            // leaves it closed, the second trips.
            steps: &[F, F, Wait(10), S, S, F, S, F, F],
            state: Open,
            changes: &[C_O, O_H, H_C, C_O],
        },
        Row {
            name: "zero cooldown: the next call after a trip is a probe",
            failure: r(1, 1),
            success: None,
            cooldown_ms: 0,
            steps: &[F, S],
            state: Closed,
            changes: &[C_O, O_H, H_C],
        },
        Row {
            name: "a full cycle twice",
            failure: r(1, 2),
            success: Some(r(1, 1)),
            cooldown_ms: 5,
            steps: &[S, F, Wait(5), F, Wait(5), S, F, S, Wait(5), S],
            state: Closed,
            changes: &[C_O, O_H, H_O, O_H, H_C, C_O, O_H, H_C],
        },
    ]
}

/// Every row of the transition table ends in its expected state with exactly its expected
/// callbacks (all rows are checked; mismatches are listed together).
#[test]
fn transition_table() {
    let mut mismatches = Vec::new();
    for (i, row) in rows().iter().enumerate() {
        let rig = Rig::new(
            &format!("row-{i}"),
            row.failure,
            row.success,
            row.cooldown_ms,
        );
        let mut step_error = None;
        for (j, step) in row.steps.iter().enumerate() {
            if let Wait(ms) = step {
                rig.advance_ms(*ms);
                continue;
            }
            let ok = match (step, rig.cb.try_acquire()) {
                (S, Ok(p)) => {
                    p.success();
                    true
                }
                (F, Ok(p)) => {
                    p.failure();
                    true
                }
                (Rej, Err(_)) => true,
                (_, _) => false,
            };
            if !ok {
                step_error = Some(format!("step {j} ({step:?}) in state {}", rig.cb.state()));
                break;
            }
        }
        let log = rig.log.lock().unwrap().clone();
        let changes = rig.changes();
        if step_error.is_some() || rig.cb.state() != row.state || changes != row.changes {
            mismatches.push(format!(
                "row {i} {:?}: {}expected {:?} with {:?}, got {:?} with {:?}",
                row.name,
                step_error.map(|e| format!("{e}; ")).unwrap_or_default(),
                row.state,
                row.changes,
                rig.cb.state(),
                changes
            ));
        }
        for c in &log {
            assert_eq!(c.key, format!("row-{i}"));
            assert_eq!(c.origin, ChangeOrigin::Local);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} rows differ:\n{}",
        mismatches.len(),
        rows().len(),
        mismatches.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Rejection and cooldown
// ---------------------------------------------------------------------------------------------

/// An open breaker rejects through `call` (without running the closure) and `try_acquire`, with
/// the key, the state, the time left and a readable message.
#[tokio::test]
async fn open_rejects_without_running() {
    let rig = Rig::new("payments", r(1, 1), None, 1_000);
    rig.trip(1);
    rig.advance_ms(400);

    let ran = AtomicUsize::new(0);
    let res = rig
        .cb
        .call(|| async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        })
        .await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "the closure must not run");
    let err = res.unwrap_err();
    assert!(err.is_rejected());
    let rej = err.rejected().expect("a rejection").clone();
    assert_eq!(rej.key(), "payments");
    assert_eq!(rej.state(), Open);
    assert_eq!(rej.retry_after(), Some(Duration::from_millis(600)));
    assert!(matches!(err, CircuitError::Rejected(_)));
    let msg = rej.to_string();
    assert!(msg.contains("payments") && msg.contains("OPEN"), "{msg}");

    let rej = rig.reject("try_acquire");
    assert_eq!(rej.state(), Open);
    assert_eq!(rej.retry_after(), Some(Duration::from_millis(600)));

    // `acquire` does not wait on an in-memory store.
    let rej = rig.cb.acquire().await.unwrap_err();
    assert_eq!(rej.state(), Open);
}

/// The cooldown runs on the storage's clock: `cooldown_remaining` counts down, the breaker
/// still reports Open after it ends, and the first call exactly at the deadline is a probe.
#[test]
fn cooldown_follows_the_manual_clock() {
    let rig = Rig::new("cooldown", r(1, 1), None, 300);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    rig.trip(1);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::from_millis(300));
    rig.advance_ms(299);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::from_millis(1));
    rig.reject("1 ms before the deadline");
    rig.advance_ms(1);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    assert_eq!(rig.cb.state(), Open, "nothing moves until a call");
    let p = rig.admit("at the deadline");
    assert!(p.is_probe());
    assert_eq!(rig.cb.state(), HalfOpen);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    p.success();
    assert_eq!(rig.cb.state(), Closed);
}

/// A long wait after the deadline is no different from reaching it exactly.
#[test]
fn cooldown_long_overdue() {
    let rig = Rig::new("overdue", r(1, 1), None, 300);
    rig.trip(1);
    rig.clock.advance(Duration::from_secs(86_400 * 365));
    rig.admit("a year later").success();
    assert_eq!(rig.cb.state(), Closed);
}

// ---------------------------------------------------------------------------------------------
// Half-open probes
// ---------------------------------------------------------------------------------------------

/// Half-open admits exactly `den` concurrent probes (success limit's den when set, else the
/// failure limit's) and rejects everyone else as HalfOpen until the probes decide.
#[test]
fn half_open_probe_limit() {
    for (failure, success, den) in [
        (r(1, 1), Some(r(2, 3)), 3),
        (r(1, 1), Some(r(1, 1)), 1),
        (r(2, 4), None, 4),
        (r(1, 1), None, 1),
    ] {
        let rig = Rig::new("probes", failure, success, 10);
        rig.trip(failure.denominator());
        rig.advance_ms(10);
        let probes: Vec<_> = (0..den)
            .map(|i| rig.admit(&format!("probe {i} of {den}")))
            .collect();
        assert!(probes.iter().all(Permit::is_probe));
        for _ in 0..3 {
            let rej = rig.reject("probe slots are full");
            assert_eq!(rej.state(), HalfOpen);
            assert_eq!(rej.retry_after(), None);
        }
        assert_eq!(rig.cb.state(), HalfOpen);
        for p in probes {
            p.success();
        }
        assert_eq!(rig.cb.state(), Closed, "{failure} {success:?}");
        assert!(!rig.admit("closed again").is_probe());
    }
}

/// A probe permit dropped without an outcome gives its slot back and counts as neither.
#[test]
fn cancelled_probe_returns_its_slot() {
    let rig = Rig::new("cancel", r(1, 1), Some(r(2, 2)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let p1 = rig.admit("probe 1");
    let p2 = rig.admit("probe 2");
    rig.reject("full");
    drop(p2);
    let p3 = rig.admit("the dropped probe's slot");
    assert!(p3.is_probe());
    rig.reject("full again");
    p1.success();
    assert_eq!(rig.cb.state(), HalfOpen, "one probe still out");
    drop(p3);
    assert_eq!(rig.cb.state(), HalfOpen, "a drop is no outcome");
    rig.admit("slot back once more").success();
    assert_eq!(rig.cb.state(), Closed, "two successes of two");
}

/// A `call` future cancelled while its probe runs gives the slot back.
#[tokio::test(start_paused = true)]
async fn cancelled_call_future_returns_its_slot() {
    let rig = Rig::new("cancel-call", r(1, 1), Some(r(1, 1)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let pending = rig
        .cb
        .call(std::future::pending::<Result<(), std::io::Error>>);
    assert!(tokio::time::timeout(Duration::from_millis(5), pending)
        .await
        .is_err());
    assert_eq!(rig.cb.state(), HalfOpen);
    let ok = rig.cb.call(|| async { Ok::<_, std::io::Error>(7) }).await;
    assert_eq!(ok.unwrap(), 7, "the cancelled probe's slot is free again");
    assert_eq!(rig.cb.state(), Closed);
}

/// Dropping a permit admitted while closed is harmless: no outcome, no slot, no state change.
#[test]
fn dropped_closed_permit_counts_as_neither() {
    let rig = Rig::new("drop-closed", r(1, 2), None, 10);
    for _ in 0..10 {
        drop(rig.admit("closed"));
    }
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    rig.admit("s").success();
    rig.admit("f").failure();
    assert_eq!(rig.cb.execution_log(), vec![true, false]);
    assert_eq!(rig.cb.state(), Open);
}

// ---------------------------------------------------------------------------------------------
// Owned permits
// ---------------------------------------------------------------------------------------------

/// An owned permit moves into `tokio::spawn` and reports from there; it keeps working after every
/// handle of the caller is gone.
#[tokio::test]
async fn owned_permit_moves_into_a_spawned_task() {
    let rig = Rig::new("owned-spawn", r(2, 2), None, 10);
    let ok = rig.cb.try_acquire_owned().expect("closed");
    let failed = rig.cb.try_acquire_owned().expect("closed");
    assert!(!ok.is_probe());
    tokio::spawn(async move { ok.success() })
        .await
        .expect("task");
    assert_eq!(rig.cb.execution_log(), vec![true]);

    let spawned = tokio::spawn(async move { failed.failure() });
    let handle = rig.cb.clone();
    drop(rig.cb); // the permit holds its own handle
    spawned.await.expect("task");
    assert_eq!(handle.execution_log(), vec![true, false]);
    handle.try_acquire_owned().expect("closed").failure();
    assert_eq!(handle.state(), Open, "two failures of the last two");
    assert_eq!(rig.storage.state_of("owned-spawn"), Some(Open));
}

/// `acquire_owned`'s future is `'static` too: it can itself be spawned.
#[tokio::test]
async fn acquire_owned_future_spawns() {
    let rig = Rig::new("owned-acquire", r(1, 1), None, 10);
    let permit = tokio::spawn(rig.cb.acquire_owned())
        .await
        .expect("task")
        .expect("closed");
    permit.failure();
    assert_eq!(rig.cb.state(), Open);
    let rejected = tokio::spawn(rig.cb.acquire_owned())
        .await
        .expect("task")
        .expect_err("open");
    assert_eq!(rejected.state(), Open);
    assert_eq!(rejected.retry_after(), Some(Duration::from_millis(10)));
}

/// A dropped owned probe gives its slot back, as a borrowed one does: one probe, taken owned and
/// dropped, and the next caller is the probe.
#[test]
fn dropped_owned_probe_returns_its_slot() {
    let rig = Rig::new("owned-cancel", r(1, 1), Some(r(1, 1)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let probe = rig.cb.try_acquire_owned().expect("the one probe");
    assert!(probe.is_probe());
    assert_eq!(
        rig.cb.try_acquire_owned().expect_err("full").state(),
        HalfOpen
    );
    drop(probe);
    assert_eq!(rig.cb.state(), HalfOpen, "a drop is no outcome");
    let next = rig.cb.try_acquire_owned().expect("the slot is back");
    assert!(next.is_probe());
    next.success();
    assert_eq!(rig.cb.state(), Closed);
}

/// Owned and borrowed permits share one record path: mixed, they fill one window and trip it.
#[test]
fn owned_and_borrowed_permits_share_the_window() {
    let rig = Rig::new("owned-mixed", r(2, 4), None, 10);
    rig.cb
        .try_acquire_owned()
        .expect("closed")
        .record(Outcome::Success);
    rig.admit("borrowed").failure();
    rig.cb.try_acquire_owned().expect("closed").success();
    assert_eq!(rig.cb.execution_log(), vec![true, false, true]);
    rig.cb.try_acquire_owned().expect("closed").failure();
    assert_eq!(rig.cb.state(), Open);
    assert_eq!(rig.changes(), vec![(Closed, Open)]);
}

/// The opt-in call metrics count an owned permit's success, failure and drop (cancelled) the way
/// they count a borrowed permit's.
#[test]
fn owned_permits_count_in_call_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let cb = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder("owned-metrics")
            .storage(Storage::in_memory())
            .call_metrics(true)
            .failure_limit(r(5, 5))
            .build()
            .expect("valid")
    });
    let count = |outcome: &str| -> u64 {
        let text = handle.render();
        let needle = format!("outcome=\"{outcome}\"");
        text.lines()
            .filter(|l| l.starts_with("resilient_circuit_calls_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    cb.try_acquire().expect("closed").success();
    let borrowed = (count("success"), count("failure"), count("cancelled"));
    assert_eq!(borrowed, (1, 0, 0));
    cb.try_acquire_owned().expect("closed").success();
    cb.try_acquire().expect("closed").failure();
    cb.try_acquire_owned().expect("closed").failure();
    drop(cb.try_acquire().expect("closed"));
    drop(cb.try_acquire_owned().expect("closed"));
    assert_eq!(
        (count("success"), count("failure"), count("cancelled")),
        (2, 2, 2),
        "owned permits count like borrowed ones:\n{}",
        handle.render()
    );
}

// ---------------------------------------------------------------------------------------------
// Stale permits
// ---------------------------------------------------------------------------------------------

/// Outcomes of permits admitted while closed and reported after a trip count as neither:
/// not in the open state, not as half-open probes, not in the next closed window.
#[test]
fn stale_closed_permits_count_as_neither() {
    let rig = Rig::new("stale", r(1, 1), Some(r(1, 1)), 10);
    let early: Vec<_> = (0..4).map(|_| rig.admit("closed")).collect();
    rig.admit("trip").failure();
    assert_eq!(rig.cb.state(), Open);
    let mut early = early.into_iter();

    early.next().unwrap().success(); // while open
    assert_eq!(rig.cb.state(), Open);

    rig.advance_ms(10);
    let probe = rig.admit("probe");
    early.next().unwrap().failure(); // while half-open: must not decide the round
    assert_eq!(rig.cb.state(), HalfOpen);
    drop(early.next().unwrap()); // a stale drop must not free a probe slot
    rig.reject("the only probe slot is taken");
    probe.success();
    assert_eq!(rig.cb.state(), Closed);

    early.next().unwrap().failure(); // after closing again: not in the new window
    assert_eq!(rig.cb.state(), Closed);
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
}

/// A probe of an earlier half-open round reported (or dropped) during a later round is ignored.
#[test]
fn stale_probes_of_an_earlier_round_count_as_neither() {
    let rig = Rig::new("stale-probe", r(1, 1), Some(r(2, 2)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let old = rig.admit("round 1 probe a");
    let old2 = rig.admit("round 1 probe b");
    // End the round by an override so `old` is left outstanding.
    rig.cb.force_open(Duration::from_millis(10));
    rig.advance_ms(10);
    let p1 = rig.admit("round 2 probe 1");
    let p2 = rig.admit("round 2 probe 2");
    old.failure();
    drop(old2);
    rig.reject("round 2 slots are still both taken");
    assert_eq!(rig.cb.state(), HalfOpen);
    p1.success();
    p2.success();
    assert_eq!(rig.cb.state(), Closed);
}

// ---------------------------------------------------------------------------------------------
// Callbacks
// ---------------------------------------------------------------------------------------------

/// Minimal reproduction: the cooldown ending (OPEN -> HALF_OPEN on the next call) fires the
/// on_status_change callback like every other transition.
#[test]
fn callback_fires_on_open_to_half_open() {
    let rig = Rig::new("o-to-h", r(1, 1), None, 10);
    rig.trip(1);
    rig.advance_ms(10);
    let probe = rig.admit("probe");
    assert_eq!(rig.cb.state(), HalfOpen);
    assert_eq!(
        rig.changes(),
        vec![C_O, O_H],
        "OPEN -> HALF_OPEN must be reported"
    );
    probe.success();
}

/// Callbacks see each transition once, in order, with the key, from, to and Local origin; every
/// handle's callback on the key gets them; a dropped handle's callback stops.
#[test]
fn callbacks_order_and_fan_out() {
    let rig = Rig::new("fan-out", r(1, 1), None, 10);
    let other_log: Log = Arc::default();
    let sink = other_log.clone();
    let other = CircuitBreaker::builder("fan-out")
        .storage(rig.storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(move |c| sink.lock().unwrap().push(c.clone()))
        .build()
        .unwrap();

    rig.trip(1);
    other.force_closed();
    other.force_open(Duration::from_millis(5));
    drop(other);
    rig.cb.force_closed();

    let expect = vec![C_O, (Open, Closed), (Closed, Open), (Open, Closed)];
    assert_eq!(rig.changes(), expect);
    let theirs: Vec<_> = other_log
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.from, c.to))
        .collect();
    assert_eq!(
        theirs,
        expect[..3].to_vec(),
        "dropped handle's callback stops"
    );
    for c in rig.log.lock().unwrap().iter() {
        assert_eq!(c.key, "fan-out");
        assert_eq!(c.origin, ChangeOrigin::Local);
    }
}

/// A panicking callback neither breaks the breaker nor stops other callbacks on the key.
#[test]
fn panicking_callback_leaves_the_breaker_working() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let boom = CircuitBreaker::builder("panicky")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(|c| panic!("callback panics on {} -> {}", c.from, c.to))
        .build()
        .unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let calm = CircuitBreaker::builder("panicky")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap();

    boom.try_acquire().unwrap().failure();
    assert_eq!(boom.state(), Open);
    assert!(boom.try_acquire().is_err());
    clock.advance(Duration::from_millis(10));
    boom.try_acquire().unwrap().success();
    assert_eq!(boom.state(), Closed);
    boom.force_open(Duration::from_secs(1));
    calm.force_closed();
    assert_eq!(calm.state(), Closed);
    calm.try_acquire().unwrap().failure();
    assert_eq!(calm.state(), Open);
    // C->O, (O->H), H->C, C->O, O->C, C->O: the calm callback ran for every one of them.
    assert!(seen.load(Ordering::SeqCst) >= 5);
}

/// Callbacks run outside every lock: one may read state, acquire, report and force the very
/// breaker that is notifying it without deadlocking.
#[test]
fn callbacks_run_outside_locks() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let slot: Arc<OnceLock<CircuitBreaker>> = Arc::default();
    let seen: Log = Arc::default();
    let (slot2, seen2) = (slot.clone(), seen.clone());
    let cb = CircuitBreaker::builder("reentrant")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .on_status_change(move |c| {
            seen2.lock().unwrap().push(c.clone());
            if let Some(me) = slot2.get() {
                assert_eq!(me.state(), c.to, "the new state is visible to the callback");
                let _ = me.cooldown_remaining();
                let _ = me.execution_log();
                if let Ok(p) = me.try_acquire() {
                    drop(p);
                }
                // Building another handle touches the storage map and the callback list.
                let _peer = CircuitBreaker::builder("reentrant")
                    .storage(me.storage().clone())
                    .failure_limit(r(1, 1))
                    .cooldown(Duration::from_millis(10))
                    .build()
                    .unwrap();
                if c.to == Open && c.from == Closed {
                    me.force_closed(); // a nested transition from inside a callback
                }
            }
        })
        .build()
        .unwrap();
    slot.set(cb.clone()).unwrap();
    cb.try_acquire().unwrap().failure();
    assert_eq!(cb.state(), Closed, "the callback's force_closed won");
    let changes: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.from, c.to))
        .collect();
    assert_eq!(changes, vec![C_O, (Open, Closed)]);
}

// ---------------------------------------------------------------------------------------------
// call() vs call_with()
// ---------------------------------------------------------------------------------------------

/// `call` counts Err as failure and every Ok (even Ok(503)) as success; `call_with` lets the
/// classifier count Ok(503) as a failure and an Err as a success.
#[tokio::test]
async fn call_and_call_with_classification() {
    let rig = Rig::new("http", r(1, 1), None, 10);
    let status = rig.cb.call(|| async { Ok::<u16, String>(503) }).await;
    assert_eq!(status.unwrap(), 503);
    assert_eq!(rig.cb.state(), Closed, "call: Ok(503) is a success");
    assert_eq!(rig.cb.execution_log(), vec![true]);

    let classify = |r: &Result<u16, String>| Outcome::failure_if(matches!(r, Ok(500..) | Err(_)));
    let ok = rig.cb.call_with(classify, || async { Ok(200) }).await;
    assert_eq!(ok.unwrap(), 200);
    assert_eq!(rig.cb.state(), Closed);

    let not_found = |_: &Result<u16, String>| Outcome::Success;
    let err = rig
        .cb
        .call_with(not_found, || async {
            Err("404 is the caller's fault".to_owned())
        })
        .await;
    assert_eq!(
        err.unwrap_err().into_inner().as_deref(),
        Some("404 is the caller's fault")
    );
    assert_eq!(rig.cb.state(), Closed, "an Err classified as success");

    let res = rig.cb.call_with(classify, || async { Ok(503) }).await;
    assert_eq!(res.unwrap(), 503, "the value is still returned");
    assert_eq!(rig.cb.state(), Open, "call_with: Ok(503) is a failure");

    let rig = Rig::new("errs", r(1, 1), None, 10);
    let err = rig
        .cb
        .call(|| async { Err::<(), _>(std::io::Error::other("boom")) })
        .await
        .unwrap_err();
    assert!(!err.is_rejected());
    assert_eq!(err.to_string(), "boom");
    assert_eq!(rig.cb.state(), Open, "call: Err is a failure");
}

/// `Outcome::from_result` and `failure_if` classify as documented.
#[test]
fn outcome_helpers() {
    assert_eq!(Outcome::from_result(&Ok::<_, ()>(503)), Outcome::Success);
    assert_eq!(Outcome::from_result(&Err::<(), _>(())), Outcome::Failure);
    assert_eq!(Outcome::failure_if(true), Outcome::Failure);
    assert_eq!(Outcome::failure_if(false), Outcome::Success);
}

/// `Permit::record` with an explicit Outcome is the same as `success`/`failure`.
#[test]
fn permit_record() {
    let rig = Rig::new("record", r(2, 3), None, 10);
    rig.admit("a").record(Outcome::Failure);
    rig.admit("b").record(Outcome::Success);
    rig.admit("c").record(Outcome::Failure);
    assert_eq!(rig.cb.execution_log(), vec![false, true, false]);
    assert_eq!(rig.cb.state(), Open);
}

// ---------------------------------------------------------------------------------------------
// Overrides
// ---------------------------------------------------------------------------------------------

/// `force_open` opens for the given cooldown (not the policy's), notifies, is shared by every
/// handle of the key, and its cooldown ends in a normal half-open round.
#[test]
fn force_open() {
    let rig = Rig::new("force-open", r(5, 10), None, 60_000);
    let twin = CircuitBreaker::builder("force-open")
        .storage(rig.storage.clone())
        .failure_limit(r(5, 10))
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    twin.force_open(Duration::from_millis(50));
    assert_eq!(rig.cb.state(), Open);
    assert_eq!(
        rig.reject("forced").retry_after(),
        Some(Duration::from_millis(50))
    );
    rig.advance_ms(50);
    let probes: Vec<_> = (0..10).map(|i| rig.admit(&format!("probe {i}"))).collect();
    rig.reject("ten probes out");
    for p in probes {
        p.success();
    }
    assert_eq!(rig.cb.state(), Closed);
    // OPEN -> HALF_OPEN is left out here: `callback_fires_on_open_to_half_open` covers it.
    assert_eq!(rig.changes_except_open_to_half_open(), vec![C_O, H_C]);
}

/// `force_closed` closes from open and from half-open, empties the window, notifies, and makes
/// outstanding probes stale.
#[test]
fn force_closed() {
    let rig = Rig::new("force-closed", r(2, 3), None, 10);
    rig.admit("f").failure();
    rig.admit("s").success();
    rig.cb.force_closed(); // already closed: empties the window, no callback
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    assert!(rig.changes().is_empty());

    for _ in 0..3 {
        rig.admit("f").failure();
    }
    rig.cb.force_closed();
    assert_eq!(rig.cb.state(), Closed);
    assert_eq!(rig.cb.cooldown_remaining(), Duration::ZERO);
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    rig.admit("f").failure();
    rig.admit("f").failure();
    assert_eq!(rig.cb.state(), Closed, "window of 3 not full after closing");
    rig.admit("f").failure();
    assert_eq!(rig.cb.state(), Open);

    rig.advance_ms(10);
    let probe = rig.admit("probe");
    assert_eq!(rig.cb.state(), HalfOpen);
    rig.cb.force_closed();
    probe.failure(); // stale: the round ended
    assert_eq!(rig.cb.state(), Closed);
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    // OPEN -> HALF_OPEN is left out here: `callback_fires_on_open_to_half_open` covers it.
    assert_eq!(
        rig.changes_except_open_to_half_open(),
        vec![C_O, (Open, Closed), C_O, H_C]
    );
}

/// `force_open` on an open breaker restarts its cooldown with the new duration.
#[test]
fn force_open_while_open_resets_cooldown() {
    let rig = Rig::new("re-force", r(1, 1), None, 100);
    rig.trip(1);
    rig.advance_ms(90);
    rig.cb.force_open(Duration::from_millis(500));
    assert_eq!(rig.cb.cooldown_remaining(), Duration::from_millis(500));
    assert_eq!(rig.changes(), vec![C_O], "Open -> Open is no transition");
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

fn builder(key: &str) -> Builder {
    CircuitBreaker::builder(key).storage(Storage::in_memory())
}

/// Invalid ratios are refused as `InvalidRatio` naming the limit, the ratio and the reason.
#[test]
fn config_rejects_bad_ratios() {
    let cases: Vec<(Ratio, &str)> = vec![
        (r(1, 0), "denominator"),
        (r(0, 0), "denominator"),
        (r(0, 5), "numerator is zero"),
        (r(6, 5), "above the denominator"),
        (r(1, Ratio::MAX_DENOMINATOR + 1), "MAX_DENOMINATOR"),
    ];
    for (ratio, cause) in cases {
        for which in ["failure_limit", "success_limit"] {
            let b = builder("cfg");
            let b = if which == "failure_limit" {
                b.failure_limit(ratio)
            } else {
                b.success_limit(ratio)
            };
            let err = b.build().unwrap_err();
            match &err {
                ConfigError::InvalidRatio {
                    which: w,
                    ratio: got,
                    ..
                } => {
                    assert_eq!(*w, which);
                    assert_eq!(*got, ratio);
                }
                other => panic!("{which} {ratio}: expected InvalidRatio, got {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(which), "{msg}");
            assert!(msg.contains(&ratio.to_string()), "{msg}");
            assert!(msg.contains(cause), "{msg} should name {cause:?}");
        }
    }
    for ok in [r(1, 1), r(1, Ratio::MAX_DENOMINATOR), r(5, 5)] {
        builder("cfg-ok")
            .failure_limit(ok)
            .success_limit(ok)
            .build()
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}

/// Bad keys are refused with their own variants and messages; 255 bytes is the limit in bytes.
#[test]
fn config_rejects_bad_keys() {
    let err = builder("").build().unwrap_err();
    assert_eq!(err, ConfigError::EmptyKey);
    assert!(err.to_string().contains("empty"), "{err}");

    let long = "k".repeat(MAX_KEY_LEN + 1);
    let err = builder(&long).build().unwrap_err();
    assert_eq!(err, ConfigError::KeyTooLong { len: 256 });
    assert!(
        err.to_string().contains("256") && err.to_string().contains("255"),
        "{err}"
    );

    // 128 two-byte characters: 128 chars but 256 bytes.
    let wide = "é".repeat(128);
    assert_eq!(
        builder(&wide).build().unwrap_err(),
        ConfigError::KeyTooLong { len: 256 }
    );
    builder(&"k".repeat(MAX_KEY_LEN))
        .build()
        .expect("255 bytes is allowed");
    builder("ünïcødé-🔑 ok")
        .build()
        .expect("non-ASCII printable keys are fine");

    for (key, index) in [
        ("a\nb", 1),
        ("\tx", 0),
        ("abc\u{7f}", 3),
        ("é\u{0}", 2),
        ("x\u{85}", 1),
    ] {
        let err = builder(key).build().unwrap_err();
        assert!(
            matches!(&err, ConfigError::KeyControlCharacter { key: k, index: i } if k == key && *i == index),
            "{key:?}: {err:?}"
        );
        assert!(err.to_string().contains("control character"), "{err}");
    }
}

/// A second builder for a live key with a different policy gets `ConflictingPolicy` (naming the
/// key and the limits in force); the same policy shares the state; once every handle is gone, a
/// new policy is accepted.
#[test]
fn config_conflicting_policy() {
    let storage = Storage::in_memory();
    let first = CircuitBreaker::builder("shared")
        .storage(storage.clone())
        .failure_limit(r(3, 10))
        .cooldown(Duration::from_secs(30))
        .build()
        .unwrap();
    let clone = first.clone();
    drop(first);
    for b in [
        CircuitBreaker::builder("shared").failure_limit(r(4, 10)),
        CircuitBreaker::builder("shared")
            .failure_limit(r(3, 10))
            .cooldown(Duration::from_secs(31)),
        CircuitBreaker::builder("shared")
            .failure_limit(r(3, 10))
            .cooldown(Duration::from_secs(30))
            .success_limit(r(1, 1)),
    ] {
        let err = b.storage(storage.clone()).build().unwrap_err();
        match &err {
            ConfigError::ConflictingPolicy { key, existing } => {
                assert_eq!(key, "shared");
                assert!(existing.contains("3/10"), "{existing}");
            }
            other => panic!("expected ConflictingPolicy, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("shared") && msg.contains("3/10"), "{msg}");
    }
    // The failed builds changed nothing.
    assert_eq!(clone.state(), Closed);
    let same = CircuitBreaker::builder("shared")
        .storage(storage.clone())
        .failure_limit(r(3, 10))
        .cooldown(Duration::from_secs(30))
        .build()
        .expect("same policy shares the state");
    same.force_open(Duration::from_secs(1));
    assert_eq!(clone.state(), Open, "one state per key per storage");
    // A different storage is a different state and may use any policy.
    let elsewhere = CircuitBreaker::builder("shared")
        .storage(Storage::in_memory())
        .failure_limit(r(1, 1))
        .build()
        .unwrap();
    assert_eq!(elsewhere.state(), Closed);
    drop((clone, same));
    let renewed = CircuitBreaker::builder("shared")
        .storage(storage.clone())
        .failure_limit(r(1, 2))
        .build()
        .expect("no live handle: the new policy is taken");
    assert_eq!(renewed.state(), Open, "the state is kept");
}

/// A key with no live handle takes a new policy; its half-open round must then follow the new
/// probe count: at most the new `den` probes, decided by the new limits.
#[test]
fn new_policy_on_idle_half_open_key_uses_its_probe_count() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let old = CircuitBreaker::builder("repolicy")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .success_limit(r(5, 5))
        .cooldown(Duration::from_millis(10))
        .build()
        .unwrap();
    old.try_acquire().unwrap().failure();
    clock.advance(Duration::from_millis(10));
    drop(old.try_acquire().unwrap()); // enters half-open; the cancelled probe frees its slot
    assert_eq!(old.state(), HalfOpen);
    drop(old);

    let new = CircuitBreaker::builder("repolicy")
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(10))
        .build()
        .unwrap();
    assert_eq!(new.state(), HalfOpen);
    let admitted: Vec<_> = std::iter::from_fn(|| new.try_acquire().ok())
        .take(10)
        .collect();
    assert_eq!(
        admitted.len(),
        1,
        "half-open admits at most den = 1 probe under the new policy"
    );
}

// ---------------------------------------------------------------------------------------------
// The bounded in-memory store
// ---------------------------------------------------------------------------------------------

fn idle_key(storage: &Storage, key: &str) {
    CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .build()
        .unwrap()
        .try_acquire()
        .unwrap()
        .success();
}

/// Past its capacity the store drops idle keys and never holds more than `capacity` of them.
#[test]
fn eviction_respects_capacity() {
    let mut over = Vec::new();
    for capacity in [1usize, 2, 4, 7, 8, 16, 64] {
        let storage = Storage::in_memory_with(capacity, Arc::new(ManualClock::new()));
        let mut max = 0;
        for i in 0..capacity * 10 {
            idle_key(&storage, &format!("idle-{i}"));
            max = max.max(storage.len());
        }
        if max > capacity {
            over.push(format!("capacity {capacity}: held {max} idle keys"));
        }
        assert!(!storage.is_empty());
    }
    assert!(over.is_empty(), "{}", over.join("; "));
}

/// An open breaker is never evicted, even with no live handle and long past its cooldown; keys
/// with live handles are never evicted either; the store grows past capacity rather than forget.
#[test]
fn eviction_spares_open_and_live_keys() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(8, Arc::new(clock.clone()));
    for i in 0..3 {
        let cb = CircuitBreaker::builder(format!("open-{i}"))
            .storage(storage.clone())
            .failure_limit(r(1, 1))
            .cooldown(Duration::from_secs(60))
            .build()
            .unwrap();
        cb.try_acquire().unwrap().failure();
    }
    let live: Vec<CircuitBreaker> = (0..3)
        .map(|i| {
            let cb = CircuitBreaker::builder(format!("live-{i}"))
                .storage(storage.clone())
                .failure_limit(r(2, 2))
                .build()
                .unwrap();
            cb.try_acquire().unwrap().failure(); // remembered: one failure of two
            cb
        })
        .collect();
    clock.advance(Duration::from_secs(3600));
    for i in 0..200 {
        idle_key(&storage, &format!("idle-{i}"));
    }
    for i in 0..3 {
        assert_eq!(storage.state_of(&format!("open-{i}")), Some(Open));
    }
    for (i, cb) in live.iter().enumerate() {
        let again = CircuitBreaker::builder(format!("live-{i}"))
            .storage(storage.clone())
            .failure_limit(r(2, 2))
            .build()
            .unwrap();
        assert_eq!(
            again.execution_log(),
            vec![false],
            "live key kept its window"
        );
        again.try_acquire().unwrap().failure();
        assert_eq!(cb.state(), Open, "same cell as the live handle");
    }
    assert!(storage.len() <= 8 + 1, "len {}", storage.len());

    // Full of open keys: the store grows rather than evict one.
    let storage = Storage::in_memory_with(8, Arc::new(ManualClock::new()));
    for i in 0..20 {
        let cb = CircuitBreaker::builder(format!("o{i}"))
            .storage(storage.clone())
            .build()
            .unwrap();
        cb.force_open(Duration::from_secs(1));
    }
    assert_eq!(storage.len(), 20);
    assert!(storage.states().iter().all(|(_, s)| *s == Open));
}

/// `Storage::in_memory()` is bounded at `DEFAULT_MEMORY_CAPACITY` (8,192) keys: three times as
/// many idle keys never make it hold more, it stays near the bound (it drops an eighth at a
/// time), and open keys and keys with live handles made before them are all kept.
#[test]
fn default_store_is_bounded_at_8192_keys() {
    use resilient_circuit::storage::DEFAULT_MEMORY_CAPACITY as CAPACITY;
    assert_eq!(CAPACITY, 8192, "the README promises 8,192");
    let storage = Storage::in_memory();
    let open: Vec<String> = (0..50).map(|i| format!("open-{i}")).collect();
    for key in &open {
        // No handle is kept: only being open protects it.
        CircuitBreaker::builder(key.as_str())
            .storage(storage.clone())
            .build()
            .unwrap()
            .force_open(Duration::from_secs(3600));
    }
    let live: Vec<CircuitBreaker> = (0..50)
        .map(|i| {
            let cb = CircuitBreaker::builder(format!("live-{i}"))
                .storage(storage.clone())
                .failure_limit(r(2, 2))
                .build()
                .unwrap();
            cb.try_acquire().unwrap().failure(); // one failure remembered, still closed
            cb
        })
        .collect();
    let idle_total = 3 * CAPACITY;
    let mut max = 0;
    for i in 0..idle_total {
        idle_key(&storage, &format!("idle-{i}"));
        max = max.max(storage.len());
    }
    assert!(max <= CAPACITY, "held {max} keys, capacity {CAPACITY}");
    let len = storage.len();
    assert!(
        len >= CAPACITY - CAPACITY / 8 - 1,
        "idle keys are dropped an eighth at a time, not all at once: {len} held"
    );
    let states = storage.states();
    let idle_held = states
        .iter()
        .filter(|(k, _)| k.starts_with("idle-"))
        .count();
    assert!(
        idle_held < idle_total && idle_held + open.len() + live.len() == len,
        "{idle_held} of {idle_total} idle keys held, {len} keys in all"
    );
    for key in &open {
        assert_eq!(storage.state_of(key), Some(Open), "{key} was dropped");
    }
    for (i, cb) in live.iter().enumerate() {
        let again = CircuitBreaker::builder(format!("live-{i}"))
            .storage(storage.clone())
            .failure_limit(r(2, 2))
            .build()
            .unwrap();
        assert_eq!(
            again.execution_log(),
            vec![false],
            "live-{i} kept its window"
        );
        assert_eq!(cb.state(), Closed);
    }
}

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// Handles, storages and errors can cross threads; handles and storages are cheap clones.
#[test]
fn static_assertions() {
    fn send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    fn send_sync<T: Send + Sync>() {}
    fn send_sync_static<T: Send + Sync + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    send_sync_clone::<CircuitBreaker>();
    send_sync_clone::<Storage>();
    send_sync_clone::<ManualClock>();
    send_sync_clone::<Rejected>();
    send_sync_clone::<ConfigError>();
    send_sync_clone::<Change>();
    send_sync_clone::<Ratio>();
    send_sync::<Permit<'static>>();
    send_sync_static::<OwnedPermit>();
    send_sync::<Builder>();
    error::<Rejected>();
    error::<ConfigError>();
    error::<CircuitError<std::io::Error>>();
    // A call future can be spawned on a multi-threaded runtime.
    fn spawnable<F: std::future::Future + Send>(_: F) {}
    let cb = Rig::new("types", r(1, 1), None, 1).cb;
    let owned = cb.acquire_owned();
    spawnable(async move { cb.call(|| async { Ok::<_, std::io::Error>(()) }).await });
    // `acquire_owned`'s future and its permit are `Send + 'static`.
    fn spawnable_static<F: std::future::Future + Send + 'static>(_: F) {}
    spawnable_static(owned);
}

/// A rejection names its key whatever its length: copied up to 30 bytes, shared beyond, and
/// multi-byte characters intact at the boundary.
#[tokio::test]
async fn rejections_carry_keys_of_every_length() {
    let storage = Storage::in_memory();
    for key in [
        "k".to_owned(),
        "a".repeat(30),
        "b".repeat(31),
        format!("{}é", "c".repeat(28)), // 30 bytes, the last two one character
        format!("{}é", "d".repeat(29)), // 31 bytes
        "ключ-".repeat(20),
    ] {
        let cb = CircuitBreaker::builder(key.as_str())
            .storage(storage.clone())
            .build()
            .expect("valid key");
        cb.force_open(Duration::from_secs(60));
        let r = cb.try_acquire().expect_err("open");
        assert_eq!(r.key(), key);
        assert_eq!(r.clone().key(), key);
        assert_eq!(
            r.to_string(),
            format!("circuit breaker {key:?} is OPEN: call rejected without running")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Growing cooldowns
// ---------------------------------------------------------------------------------------------

/// A breaker that trips on one failure, rests `base` ms, and grows to at most `max` ms.
fn growing(storage: &Storage, key: &str, base: u64, max: u64) -> CircuitBreaker {
    CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(r(1, 1))
        .cooldown(Duration::from_millis(base))
        .max_cooldown(Duration::from_millis(max))
        .build()
        .expect("valid growing breaker")
}

/// Lets the cooldown pass on `clock`, fails the probe, and returns the new cooldown.
fn fail_round(clock: &ManualClock, cb: &CircuitBreaker) -> Duration {
    clock.advance(cb.cooldown_remaining());
    cb.try_acquire()
        .expect("a probe after the cooldown")
        .failure();
    assert_eq!(cb.state(), Open, "a failed round reopens");
    cb.cooldown_remaining()
}

/// True when `d` is `want_ms` less at most 10% (the jitter), never more.
fn jittered(d: Duration, want_ms: u64) -> bool {
    let want = Duration::from_millis(want_ms);
    d <= want && d >= want - want / 10
}

/// Each failed half-open round doubles the cooldown (less at most 10% of jitter) up to the
/// maximum; a trip from CLOSED rests the base. A round that closes, and `force_closed`, start
/// the count again; `force_open` neither counts nor resets.
#[test]
fn cooldown_grows_per_reopen_caps_and_resets() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(16, Arc::new(clock.clone()));
    let cb = growing(&storage, "growing", 100, 500);
    cb.try_acquire().unwrap().failure();
    assert_eq!(
        cb.cooldown_remaining(),
        Duration::from_millis(100),
        "a trip rests the base"
    );
    for want in [200, 400, 500, 500] {
        let left = fail_round(&clock, &cb);
        assert!(
            jittered(left, want),
            "expected about {want} ms, got {left:?}"
        );
        let rejected = cb.try_acquire().expect_err("open");
        assert_eq!(
            rejected.retry_after(),
            Some(left),
            "retry_after says the grown cooldown"
        );
    }

    // A round that closes: the next trip rests the base, and growth starts again.
    clock.advance(cb.cooldown_remaining());
    cb.try_acquire().expect("probe").success();
    assert_eq!(cb.state(), Closed);
    cb.try_acquire().unwrap().failure();
    assert_eq!(cb.cooldown_remaining(), Duration::from_millis(100));
    let left = fail_round(&clock, &cb);
    assert!(
        jittered(left, 200),
        "after a close, the first reopen rests ~200 ms: {left:?}"
    );
    let left = fail_round(&clock, &cb);
    assert!(jittered(left, 400), "{left:?}");

    // A manual open in between neither counts nor resets.
    cb.force_open(Duration::from_millis(50));
    assert_eq!(cb.cooldown_remaining(), Duration::from_millis(50));
    let left = fail_round(&clock, &cb);
    assert!(jittered(left, 500), "the third reopen, capped: {left:?}");

    // A manual close resets it too.
    cb.force_closed();
    cb.try_acquire().unwrap().failure();
    assert_eq!(cb.cooldown_remaining(), Duration::from_millis(100));
    let left = fail_round(&clock, &cb);
    assert!(
        jittered(left, 200),
        "after force_closed, ~200 ms again: {left:?}"
    );
}

/// Without `max_cooldown` every reopen rests the base cooldown exactly (today's behaviour), and
/// with it, keys reopened at the same instant get different cooldowns (the jitter spreads their
/// probes), each within 10% under the cap.
#[test]
fn fixed_by_default_and_jitter_spreads_keys() {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(64, Arc::new(clock.clone()));
    let fixed = Rig::new("fixed", r(1, 1), None, 100);
    fixed.admit("trip").failure();
    for _ in 0..3 {
        fixed.advance_ms(100);
        fixed.admit("probe").failure();
        assert_eq!(fixed.cb.cooldown_remaining(), Duration::from_millis(100));
    }

    let keys: Vec<CircuitBreaker> = (0..8)
        .map(|i| growing(&storage, &format!("spread{i}"), 100, 150))
        .collect();
    for cb in &keys {
        cb.try_acquire().unwrap().failure();
    }
    clock.advance(Duration::from_millis(100));
    let mut left: Vec<Duration> = keys
        .iter()
        .map(|cb| {
            cb.try_acquire().expect("probe").failure();
            cb.cooldown_remaining()
        })
        .collect();
    for d in &left {
        assert!(jittered(*d, 150), "capped at 150 ms, less jitter: {d:?}");
    }
    left.sort();
    left.dedup();
    assert!(
        left.len() > 1,
        "eight keys reopened together all rest {left:?}"
    );
}

/// `max_cooldown` below the cooldown or above `MAX_DURATION` is refused with a clear error, and a
/// second breaker of the key with another maximum is a conflicting policy that names it.
#[test]
fn config_max_cooldown() {
    let err = CircuitBreaker::builder("maxed")
        .storage(Storage::in_memory())
        .cooldown(Duration::from_secs(10))
        .max_cooldown(Duration::from_secs(9))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        ConfigError::MaxCooldownBelowCooldown {
            max_cooldown: Duration::from_secs(9),
            cooldown: Duration::from_secs(10),
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("max_cooldown of 9s") && msg.contains("cooldown of 10s"),
        "{msg}"
    );

    let too_long = resilient_circuit::MAX_DURATION + Duration::from_secs(1);
    let err = CircuitBreaker::builder("maxed")
        .storage(Storage::in_memory())
        .max_cooldown(too_long)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, ConfigError::DurationTooLong { name: "max_cooldown", given, .. } if given == too_long),
        "{err:?}"
    );
    // Equal to the cooldown is allowed (no growth, but jitter), as is MAX_DURATION itself.
    for max in [Duration::from_secs(30), resilient_circuit::MAX_DURATION] {
        CircuitBreaker::builder("maxed")
            .storage(Storage::in_memory())
            .cooldown(Duration::from_secs(30))
            .max_cooldown(max)
            .build()
            .expect("a valid maximum");
    }

    let storage = Storage::in_memory();
    let _first = growing(&storage, "maxed", 100, 1000);
    for b in [
        CircuitBreaker::builder("maxed").max_cooldown(Duration::from_millis(2000)),
        CircuitBreaker::builder("maxed"),
    ] {
        let err = b
            .storage(storage.clone())
            .failure_limit(r(1, 1))
            .cooldown(Duration::from_millis(100))
            .build()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ConfigError::ConflictingPolicy { .. }) && msg.contains("max_cooldown 1s"),
            "{msg}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Minimum calls, time window, slow calls
// ---------------------------------------------------------------------------------------------

/// A breaker on its own store with a manual clock, configured by `f` on top of a failure limit.
fn windowed(key: &str, failure: Ratio, f: impl FnOnce(Builder) -> Builder) -> Rig {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(64, Arc::new(clock.clone()));
    let b = CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(failure)
        .cooldown(Duration::from_millis(100));
    Rig {
        cb: f(b).build().expect("valid config"),
        clock,
        storage,
        log: Log::default(),
    }
}

/// Runs `steps` (S or F; must be admitted), then checks the state.
fn run(rig: &Rig, steps: &[Step], state: State, what: &str) {
    for s in steps {
        match s {
            S => rig.admit(what).success(),
            F => rig.admit(what).failure(),
            Rej => drop(rig.reject(what)),
            Wait(ms) => rig.advance_ms(*ms),
        }
    }
    assert_eq!(rig.cb.state(), state, "{what}");
}

/// With `minimum_calls(n)` a count window that is not full is judged from its `n`th outcome,
/// at the failure limit's rate; never before.
#[test]
fn minimum_calls_no_trip_before_n_trip_at_n() {
    let rig = windowed("min-calls", r(5, 10), |b| b.minimum_calls(4));
    run(
        &rig,
        &[F, F, F],
        Closed,
        "3 failures in 3 calls: under 4 calls",
    );
    run(&rig, &[S], Open, "3 failures in 4 calls: at least 5/10");

    let rig = windowed("min-calls-rate", r(5, 10), |b| b.minimum_calls(4));
    run(&rig, &[S, S, S, F], Closed, "1 in 4 is under 50%");
    run(&rig, &[F], Closed, "2 in 5 is under 50%");
    run(&rig, &[F], Open, "3 in 6 is 50%");

    // The default is the full window: nine failures out of nine do not trip 5/10.
    let rig = windowed("min-calls-default", r(5, 10), |b| b);
    run(&rig, &[F; 9], Closed, "window not full");
    run(&rig, &[S], Open, "full window, 9 failures");
}

/// A time window forgets failures older than its period, and trips at the failure limit read
/// as a rate once it holds `minimum_calls` calls; successes count toward that rate.
#[test]
fn time_window_old_failures_expire() {
    let rig = windowed("tw-expire", r(1, 2), |b| {
        b.time_window(Duration::from_secs(10)).minimum_calls(4)
    });
    run(&rig, &[F, F, F], Closed, "3 calls: under the minimum");
    rig.advance_ms(11_000);
    run(
        &rig,
        &[F],
        Closed,
        "the 3 old failures expired: 1 call in the period",
    );
    run(&rig, &[S, S], Closed, "3 calls in the period");
    run(&rig, &[F], Open, "2 failures in 4 calls: 50%");
}

#[test]
fn time_window_trips_at_the_rate() {
    let rig = windowed("tw-rate", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60)).minimum_calls(10)
    });
    run(&rig, &[S, S, S, S, S, S, F, F, F, F], Closed, "4 in 10");
    run(&rig, &[F], Closed, "5 in 11");
    run(&rig, &[F], Open, "6 in 12: 50%");
    assert_eq!(
        rig.cb.execution_log().len(),
        2,
        "the last `denominator` outcomes"
    );

    // Many successes dilute failures: 10 failures after 100 successes are under 50%.
    let rig = windowed("tw-dilute", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60)).minimum_calls(10)
    });
    run(&rig, &[S; 100], Closed, "successes");
    run(&rig, &[F; 10], Closed, "10 in 110");
    // ...until the successes leave the period: with slices of 6 s, those of t = 0 are gone at
    // 60 s, the failures (at 59 s) stay until 66 s.
    let rig = windowed("tw-slide", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60)).minimum_calls(10)
    });
    run(&rig, &[S; 100], Closed, "successes at t = 0");
    rig.advance_ms(59_000);
    run(&rig, &[F; 9], Closed, "9 in 109");
    rig.advance_ms(1_000);
    run(
        &rig,
        &[F],
        Open,
        "the successes expired: 10 failures in 10 calls",
    );
}

/// After a trip and a good probe, the time window starts empty.
#[test]
fn time_window_starts_empty_after_closing() {
    let rig = windowed("tw-reset", r(1, 2), |b| {
        b.time_window(Duration::from_secs(60))
            .minimum_calls(2)
            .success_limit(r(1, 1))
    });
    run(&rig, &[F, F], Open, "trip");
    run(&rig, &[Wait(100), S], Closed, "a good probe closes");
    run(
        &rig,
        &[F],
        Closed,
        "one call since closing: under the minimum",
    );
    run(&rig, &[S], Open, "1 in 2");
}

/// With `SlowCalls::AsFailure`, `call` times the call on the storage's clock and a call of at
/// least the threshold is a failure, even when it returned `Ok`.
#[tokio::test]
async fn slow_calls_as_failure() {
    let rig = windowed("slow-failure", r(2, 2), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    });
    let clock = rig.clock.clone();
    let takes = |ms: u64| {
        let clock = clock.clone();
        move || async move {
            clock.advance(Duration::from_millis(ms));
            Ok::<_, std::io::Error>(ms)
        }
    };
    assert_eq!(rig.cb.call(takes(99)).await.unwrap(), 99);
    assert_eq!(
        rig.cb.call(takes(100)).await.unwrap(),
        100,
        "still returned"
    );
    assert_eq!(rig.cb.execution_log(), vec![true, false], "100 ms is slow");
    assert_eq!(rig.cb.state(), Closed);
    let classify = |_: &Result<u64, std::io::Error>| Outcome::Success;
    rig.cb.call_with(classify, takes(500)).await.unwrap();
    assert_eq!(rig.cb.state(), Open, "a slow success is a failure");
}

/// With `SlowCalls::Rate`, slow calls keep their outcome and trip on their own rate, over the
/// same window and minimum number of calls.
#[test]
fn slow_call_rate() {
    let slow = Duration::from_millis(300);
    let rig = windowed("slow-rate", r(5, 10), |b| {
        b.slow_call(Duration::from_millis(200), SlowCalls::Rate(r(3, 10)))
    });
    for _ in 0..8 {
        rig.admit("fast").success();
    }
    for _ in 0..2 {
        rig.admit("slow").record_timed(Outcome::Success, slow);
    }
    assert_eq!(rig.cb.state(), Closed, "2 slow in 10");
    assert!(
        rig.cb.execution_log().iter().all(|s| *s),
        "slow calls are not failures"
    );
    rig.admit("slow").record_timed(Outcome::Success, slow);
    assert_eq!(rig.cb.state(), Open, "3 slow in the last 10");

    // The slow calls slide out of the count window like failures do.
    let rig = windowed("slow-rate-slides", r(5, 10), |b| {
        b.slow_call(Duration::from_millis(200), SlowCalls::Rate(r(3, 10)))
    });
    for _ in 0..2 {
        rig.admit("slow").record_timed(Outcome::Success, slow);
    }
    for _ in 0..10 {
        rig.admit("fast").success();
    }
    rig.admit("slow").record_timed(Outcome::Failure, slow);
    assert_eq!(
        rig.cb.state(),
        Closed,
        "1 slow in the last 10: the first two left"
    );

    // And in a time window, with its minimum.
    let rig = windowed("slow-rate-timed", r(1, 2), |b| {
        b.time_window(Duration::from_secs(10))
            .minimum_calls(4)
            .slow_call(Duration::from_millis(200), SlowCalls::Rate(r(1, 2)))
    });
    for _ in 0..3 {
        rig.admit("slow").record_timed(Outcome::Success, slow);
    }
    assert_eq!(rig.cb.state(), Closed, "3 calls: under the minimum");
    rig.admit("fast")
        .record_timed(Outcome::Success, Duration::from_millis(10));
    assert_eq!(rig.cb.state(), Open, "3 slow in 4");
}

/// Permits: `record_timed` judges the duration; plain `success` is a call of unknown duration,
/// never slow; on a breaker without a threshold `record_timed` is `record`. Owned permits too.
#[test]
fn permit_record_timed() {
    let rig = windowed("permit-timed", r(1, 1), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    });
    rig.admit("plain").success();
    rig.admit("fast")
        .record_timed(Outcome::Success, Duration::from_millis(99));
    rig.cb
        .try_acquire_owned()
        .expect("closed")
        .record_timed(Outcome::Success, Duration::from_millis(50));
    assert_eq!(rig.cb.state(), Closed);
    rig.cb
        .try_acquire_owned()
        .expect("closed")
        .record_timed(Outcome::Success, Duration::from_millis(100));
    assert_eq!(rig.cb.state(), Open, "owned, slow: a failure");

    let rig = windowed("permit-untimed", r(1, 1), |b| b);
    rig.admit("no threshold")
        .record_timed(Outcome::Success, Duration::from_secs(3600));
    assert_eq!(rig.cb.state(), Closed, "no threshold: never slow");
}

/// Half-open rounds keep their rules: with `AsFailure` a slow probe is a failed probe; with a
/// rate, a probe is judged by its outcome alone.
#[test]
fn slow_probes() {
    let rig = windowed("slow-probe-failure", r(1, 1), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::AsFailure)
    });
    run(&rig, &[F, Wait(100)], Open, "tripped, cooldown over");
    let probe = rig.admit("probe");
    assert!(probe.is_probe());
    probe.record_timed(Outcome::Success, Duration::from_millis(150));
    assert_eq!(rig.cb.state(), Open, "a slow probe failed");

    let rig = windowed("slow-probe-rate", r(1, 1), |b| {
        b.slow_call(Duration::from_millis(100), SlowCalls::Rate(r(1, 1)))
    });
    run(&rig, &[F, Wait(100)], Open, "tripped, cooldown over");
    rig.admit("probe")
        .record_timed(Outcome::Success, Duration::from_millis(150));
    assert_eq!(rig.cb.state(), Closed, "a slow but good probe closes");
    rig.admit("closed")
        .record_timed(Outcome::Success, Duration::from_millis(150));
    assert_eq!(rig.cb.state(), Open, "closed again, 1 slow in 1 trips");
}

/// Every new setting is validated with its own error and a message naming it.
#[test]
fn config_rejects_bad_windows_and_thresholds() {
    let ten_years_and_a_bit = resilient_circuit::MAX_DURATION + Duration::from_secs(1);
    let cases: Vec<(Builder, &str)> = vec![
        (
            builder("cfg").minimum_calls(0),
            "invalid minimum_calls 0: zero",
        ),
        (
            builder("cfg").failure_limit(r(5, 10)).minimum_calls(11),
            "invalid minimum_calls 11: above the failure limit's denominator",
        ),
        (
            builder("cfg").time_window(Duration::ZERO),
            "invalid time_window 0ns: shorter than MIN_TIME_WINDOW",
        ),
        (
            builder("cfg").time_window(Duration::from_millis(9)),
            "invalid time_window 9ms",
        ),
        (
            builder("cfg").time_window(ten_years_and_a_bit),
            "time_window of",
        ),
        (
            builder("cfg").slow_call(Duration::ZERO, SlowCalls::AsFailure),
            "invalid slow_call threshold 0ns: zero",
        ),
        (
            builder("cfg").slow_call(ten_years_and_a_bit, SlowCalls::AsFailure),
            "slow_call threshold of",
        ),
        (
            builder("cfg").slow_call(Duration::from_secs(1), SlowCalls::Rate(r(0, 10))),
            "invalid slow_call rate 0/10",
        ),
        (
            builder("cfg").slow_call(Duration::from_secs(1), SlowCalls::Rate(r(3, 2))),
            "invalid slow_call rate 3/2",
        ),
    ];
    for (b, expected) in cases {
        let err = b.build().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(expected),
            "{msg:?} should contain {expected:?}"
        );
        let typed = matches!(
            err,
            ConfigError::InvalidMinimumCalls { .. }
                | ConfigError::InvalidTimeWindow { .. }
                | ConfigError::InvalidSlowCallThreshold { .. }
                | ConfigError::DurationTooLong { .. }
                | ConfigError::InvalidRatio { .. }
        );
        assert!(typed, "{err:?}");
    }
    // Limits that work: any minimum with a time window, the extremes of each setting.
    builder("cfg-ok")
        .failure_limit(r(5, 10))
        .time_window(resilient_circuit::MIN_TIME_WINDOW)
        .minimum_calls(u32::MAX)
        .slow_call(Duration::from_nanos(1), SlowCalls::Rate(r(1, 1)))
        .build()
        .expect("valid");
    builder("cfg-ok2")
        .failure_limit(r(5, 10))
        .minimum_calls(10)
        .time_window(resilient_circuit::MAX_DURATION)
        .slow_call(resilient_circuit::MAX_DURATION, SlowCalls::AsFailure)
        .build()
        .expect("valid");
}

/// The new settings are part of the policy: a second breaker of a live key that differs in any
/// of them is refused, and the message names the settings in force.
#[test]
fn config_conflicting_windows() {
    let storage = Storage::in_memory();
    let b = || {
        CircuitBreaker::builder("shared-windows")
            .storage(storage.clone())
            .failure_limit(r(1, 2))
            .time_window(Duration::from_secs(30))
            .minimum_calls(20)
            .slow_call(Duration::from_millis(250), SlowCalls::AsFailure)
    };
    let _first = b().build().expect("first");
    let _same = b().build().expect("same settings share the state");
    for other in [
        b().minimum_calls(21),
        b().time_window(Duration::from_secs(31)),
        b().slow_call(Duration::from_millis(250), SlowCalls::Rate(r(1, 2))),
        b().slow_call(Duration::from_millis(251), SlowCalls::AsFailure),
    ] {
        match other.build().unwrap_err() {
            ConfigError::ConflictingPolicy { existing, .. } => {
                for part in [
                    "time_window 30s",
                    "minimum_calls 20",
                    "slow_call over 250ms as failures",
                ] {
                    assert!(existing.contains(part), "{existing:?} lacks {part:?}");
                }
            }
            e => panic!("expected ConflictingPolicy, got {e:?}"),
        }
    }
    let plain = CircuitBreaker::builder("shared-plain")
        .storage(storage.clone())
        .build()
        .unwrap();
    let err = CircuitBreaker::builder("shared-plain")
        .storage(storage.clone())
        .minimum_calls(3)
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("count window of 10, minimum_calls 10, no slow_call"),
        "{err}"
    );
    drop(plain);
}

/// A rejection says why: open after failures, half-open with every slot taken, or open on
/// purpose (forced); the same reason whichever way the call was refused.
#[tokio::test]
async fn rejections_say_why() {
    let rig = Rig::new("why", Ratio::new(1, 1), None, 100);
    rig.admit("closed").failure();
    assert_eq!(rig.reject("tripped").reason(), RejectReason::Open);
    let by_call = rig
        .cb
        .call(|| async { Ok::<_, std::io::Error>(()) })
        .await
        .expect_err("open");
    assert_eq!(
        by_call.rejected().map(Rejected::reason),
        Some(RejectReason::Open)
    );
    rig.advance_ms(100);
    let probe = rig.admit("the cooldown is over: a probe");
    assert_eq!(
        rig.reject("the probe's slot is taken").reason(),
        RejectReason::HalfOpenFull
    );
    probe.success();
    rig.cb.force_open(Duration::from_secs(60));
    let forced = rig.reject("forced open");
    assert_eq!(forced.reason(), RejectReason::Forced);
    assert_eq!(forced.state(), Open, "still OPEN");
    assert!(forced
        .retry_after()
        .is_some_and(|d| d <= Duration::from_secs(60)));
    assert_eq!(
        rig.cb.try_acquire_owned().map(|_| ()).unwrap_err().reason(),
        RejectReason::Forced
    );
    assert_eq!(RejectReason::HalfOpenFull.to_string(), "half_open_full");
}
