//! Model-based test: random operation sequences run against a breaker on a `ManualClock` and
//! against a small, independent reference model of the spec; after every step the state, the
//! admit/reject decisions (with the rejecting state and time left), the closed window and the
//! cooldown must agree.
//!
//! Case count: proptest's default (256), overridable with `PROPTEST_CASES`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config;
use resilient_circuit::{CircuitBreaker, ManualClock, Permit, Ratio, State, Storage};

const MS: u64 = 1_000_000;

type Transitions = Vec<(State, State)>;

// ---------------------------------------------------------------------------------------------
// Reference model: the spec, written as plainly as possible
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Limits {
    fail_n: u32,
    fail_d: u32,
    success: Option<(u32, u32)>,
    cooldown_ms: u64,
}

impl Limits {
    /// Probes admitted in half-open: den of the success limit if set, else of the failure limit.
    fn probes(&self) -> u32 {
        self.success.map_or(self.fail_d, |(_, d)| d)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Admit {
        probe: bool,
    },
    Reject {
        state: State,
        retry_after_ns: Option<u64>,
    },
}

/// A permit in the model: the state "generation" it was admitted under and whether it is a
/// probe. Any transition starts a new generation; outcomes of older ones count as neither.
#[derive(Debug, Clone, Copy)]
struct ModelPermit {
    generation: u64,
    probe: bool,
}

#[derive(Debug)]
struct Model {
    limits: Limits,
    now_ns: u64,
    state: State,
    generation: u64,
    /// Last `fail_d` closed outcomes, oldest first (true = success).
    window: VecDeque<bool>,
    open_until_ns: u64,
    probes_free: u32,
    probe_successes: u32,
    probe_failures: u32,
    transitions: Vec<(State, State)>,
}

impl Model {
    fn new(limits: Limits) -> Self {
        Model {
            limits,
            now_ns: 0,
            state: State::Closed,
            generation: 0,
            window: VecDeque::new(),
            open_until_ns: 0,
            probes_free: 0,
            probe_successes: 0,
            probe_failures: 0,
            transitions: Vec::new(),
        }
    }

    fn go(&mut self, to: State) {
        self.transitions.push((self.state, to));
        self.state = to;
        self.generation += 1;
        self.probes_free = 0;
        match to {
            State::Closed => self.window.clear(),
            State::Open => self.open_until_ns = self.now_ns + self.limits.cooldown_ms * MS,
            State::HalfOpen => {
                self.probes_free = self.limits.probes();
                self.probe_successes = 0;
                self.probe_failures = 0;
            }
        }
    }

    fn acquire(&mut self) -> (Decision, Option<ModelPermit>) {
        if self.state == State::Open {
            if self.now_ns < self.open_until_ns {
                let left = self.open_until_ns - self.now_ns;
                return (
                    Decision::Reject {
                        state: State::Open,
                        retry_after_ns: Some(left),
                    },
                    None,
                );
            }
            self.go(State::HalfOpen);
        }
        let probe = match self.state {
            State::Closed => false,
            State::HalfOpen if self.probes_free > 0 => {
                self.probes_free -= 1;
                true
            }
            state => {
                return (
                    Decision::Reject {
                        state,
                        retry_after_ns: None,
                    },
                    None,
                )
            }
        };
        let permit = ModelPermit {
            generation: self.generation,
            probe,
        };
        (Decision::Admit { probe }, Some(permit))
    }

    fn report(&mut self, p: ModelPermit, success: bool) {
        if p.generation != self.generation {
            return; // admitted under an earlier state
        }
        match self.state {
            State::Closed => {
                self.window.push_back(success);
                if self.window.len() > self.limits.fail_d as usize {
                    self.window.pop_front();
                }
                let failures = self.window.iter().filter(|s| !**s).count() as u32;
                if self.window.len() == self.limits.fail_d as usize
                    && failures >= self.limits.fail_n
                {
                    self.go(State::Open);
                }
            }
            State::HalfOpen => {
                if success {
                    self.probe_successes += 1;
                } else {
                    self.probe_failures += 1;
                }
                let reported = self.probe_successes + self.probe_failures;
                let close = match self.limits.success {
                    Some((n, _)) => self.probe_successes >= n,
                    None => self.probe_failures < self.limits.fail_n,
                };
                // Could the round still close if every probe yet to report succeeded?
                let may_close = match self.limits.success {
                    Some((n, _)) => self.probe_successes + (self.limits.probes() - reported) >= n,
                    None => self.probe_failures < self.limits.fail_n,
                };
                if reported == self.limits.probes() {
                    self.go(if close { State::Closed } else { State::Open });
                } else if !may_close {
                    // The round ends as soon as closing has become impossible.
                    self.go(State::Open);
                }
            }
            State::Open => unreachable!("no permit is admitted in an open generation"),
        }
    }

    fn cancel(&mut self, p: ModelPermit) {
        if p.probe && p.generation == self.generation && self.state == State::HalfOpen {
            self.probes_free += 1;
        }
    }

    fn cooldown_remaining_ns(&self) -> u64 {
        if self.state == State::Open {
            self.open_until_ns.saturating_sub(self.now_ns)
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations and the runner
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    /// Reports the outcome of held permit `idx % held`.
    Report {
        idx: usize,
        success: bool,
    },
    /// Drops held permit `idx % held` without an outcome.
    Drop {
        idx: usize,
    },
    /// Advances the manual clock.
    Advance {
        ms: u64,
    },
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        (1u32..=5).prop_flat_map(|d| (1..=d, Just(d))),
        prop::option::of((1u32..=4).prop_flat_map(|d| (1..=d, Just(d)))),
        prop_oneof![Just(0u64), 1u64..=40],
    )
        .prop_map(|((fail_n, fail_d), success, cooldown_ms)| Limits {
            fail_n,
            fail_d,
            success,
            cooldown_ms,
        })
}

fn op(max_ms: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(idx, success)| Op::Report { idx, success }),
        // Mostly failures, so breakers actually trip.
        2 => any::<usize>().prop_map(|idx| Op::Report { idx, success: false }),
        1 => any::<usize>().prop_map(|idx| Op::Drop { idx }),
        2 => (0..=max_ms).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn scenario() -> impl Strategy<Value = (Limits, Vec<Op>)> {
    limits().prop_flat_map(|l| {
        let max_ms = l.cooldown_ms * 2 + 2;
        (Just(l), prop::collection::vec(op(max_ms), 1..150))
    })
}

/// Runs `ops` on a real breaker and on the model; checks every step. Returns the transitions
/// seen by the callback and the model's, for the callback property.
fn run(limits: Limits, ops: &[Op]) -> Result<(Transitions, Transitions), TestCaseError> {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(4, Arc::new(clock.clone()));
    let seen: Arc<Mutex<Vec<(State, State)>>> = Arc::default();
    let sink = seen.clone();
    let mut b = CircuitBreaker::builder("model")
        .storage(storage)
        .failure_limit(Ratio::new(limits.fail_n, limits.fail_d))
        .cooldown(Duration::from_millis(limits.cooldown_ms))
        .on_status_change(move |c| sink.lock().unwrap().push((c.from, c.to)));
    if let Some((n, d)) = limits.success {
        b = b.success_limit(Ratio::new(n, d));
    }
    let cb = b.build().expect("valid limits");
    let mut model = Model::new(limits);
    let mut held: Vec<(Permit<'_>, ModelPermit)> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Acquire => {
                let (want, mp) = model.acquire();
                let got = match cb.try_acquire() {
                    Ok(p) => {
                        let d = Decision::Admit {
                            probe: p.is_probe(),
                        };
                        if let Some(mp) = mp {
                            held.push((p, mp));
                        }
                        d
                    }
                    Err(r) => Decision::Reject {
                        state: r.state(),
                        retry_after_ns: r.retry_after().map(|d| d.as_nanos() as u64),
                    },
                };
                prop_assert_eq!(&got, &want, "step {} {:?}: admission", step, op);
            }
            Op::Report { idx, success } => {
                if held.is_empty() {
                    continue;
                }
                let (p, mp) = held.swap_remove(idx % held.len());
                model.report(mp, *success);
                if *success {
                    p.success();
                } else {
                    p.failure();
                }
            }
            Op::Drop { idx } => {
                if held.is_empty() {
                    continue;
                }
                let (p, mp) = held.swap_remove(idx % held.len());
                model.cancel(mp);
                drop(p);
            }
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(*ms));
                model.now_ns += ms * MS;
            }
        }
        prop_assert_eq!(cb.state(), model.state, "step {} {:?}: state", step, op);
        prop_assert_eq!(
            cb.cooldown_remaining(),
            Duration::from_nanos(model.cooldown_remaining_ns()),
            "step {} {:?}: cooldown remaining",
            step,
            op
        );
        let window: Vec<bool> = model.window.iter().copied().collect();
        prop_assert_eq!(
            cb.execution_log(),
            window,
            "step {} {:?}: closed window",
            step,
            op
        );
    }
    drop(held);
    let seen = seen.lock().unwrap().clone();
    Ok((seen, model.transitions))
}

fn config() -> Config {
    // Config::default() honours PROPTEST_CASES (256 when unset). No regression files: this test
    // must not write into the source tree.
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The breaker's state, admit/reject decisions, window and cooldown match the reference
    /// model after every step of any operation sequence.
    #[test]
    fn breaker_matches_reference_model((limits, ops) in scenario()) {
        run(limits, &ops)?;
    }

    /// on_status_change reports exactly the model's transitions, once each, in order.
    #[test]
    fn callbacks_match_reference_model((limits, ops) in scenario()) {
        let (seen, expected) = run(limits, &ops)?;
        prop_assert_eq!(seen, expected);
    }
}
