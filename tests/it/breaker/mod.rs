//! Behaviour of one in-memory breaker against the spec: every transition, rejection, cooldown,
//! half-open probes, stale permits, callbacks, classification, overrides, configuration errors
//! and the bounded store. Time is a `ManualClock`: nothing here sleeps. This file is the rig;
//! each subject is a module of its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use resilient_circuit::{
    Builder, Change, ChangeOrigin, CircuitBreaker, CircuitError, ConfigError, ManualClock, Outcome,
    OwnedPermit, Permit, Ratio, RejectReason, Rejected, SlowCalls, State, Storage, MAX_KEY_LEN,
};

use State::{Closed, HalfOpen, Open};

mod callbacks;
mod config;
mod cooldowns;
mod overrides;
mod permits;
mod states;
mod store;
mod time_model;
mod windows;

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
