//! Time windows against a reference model: random successes, failures, slow calls and clock
//! steps on a breaker with `time_window`, and the same outcomes judged by the rule written out
//! plainly (the outcomes of the last ten slices, the failure and slow-call rates from the
//! minimum number of calls). The breaker must trip at exactly the outcome the model trips at.

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Success,
    Failure,
    /// A success that took the slow-call threshold.
    Slow,
    AdvanceMs(u64),
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    fail: (u32, u32),
    slow: Option<(u32, u32)>,
    minimum: u32,
    period_ms: u64,
}

/// The rule: outcomes (time, failure, slow) of the slices of the last period.
#[derive(Default)]
struct Model {
    outcomes: Vec<(u64, bool, bool)>,
}

impl Model {
    fn push(&mut self, l: &Limits, now_ns: u64, failure: bool, slow: bool) -> bool {
        self.outcomes.push((now_ns, failure, slow));
        let slice = l.period_ms * 1_000_000 / 10;
        let live: Vec<_> = self
            .outcomes
            .iter()
            .filter(|(t, _, _)| now_ns / slice - t / slice < 10)
            .collect();
        let calls = live.len() as u64;
        let failures = live.iter().filter(|o| o.1).count() as u64;
        let slow = live.iter().filter(|o| o.2).count() as u64;
        let at = |n: u64, (num, den): (u32, u32)| n * u64::from(den) >= u64::from(num) * calls;
        calls >= u64::from(l.minimum)
            && (at(failures, l.fail) || l.slow.is_some_and(|r| at(slow, r)))
    }
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        (1u32..=4, 4u32..=8),
        prop::option::of((1u32..=4, 4u32..=8)),
        1u32..=12,
        prop_oneof![Just(1_000u64), Just(60_000)],
    )
        .prop_map(|(fail, slow, minimum, period_ms)| Limits {
            fail,
            slow,
            minimum,
            period_ms,
        })
}

fn ops(period_ms: u64) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            6 => Just(Op::Success),
            2 => Just(Op::Failure),
            1 => Just(Op::Slow),
            1 => (0..period_ms / 4).prop_map(Op::AdvanceMs),
        ],
        1..200,
    )
}

const THRESHOLD: Duration = Duration::from_millis(50);

fn run(l: Limits, ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(4, Arc::new(clock.clone()));
    let mut b = CircuitBreaker::builder("time-model")
        .storage(storage)
        .failure_limit(Ratio::new(l.fail.0, l.fail.1))
        .minimum_calls(l.minimum)
        .time_window(Duration::from_millis(l.period_ms));
    if let Some((n, d)) = l.slow {
        b = b.slow_call(THRESHOLD, SlowCalls::Rate(Ratio::new(n, d)));
    }
    let cb = b.build().expect("valid limits");
    let mut model = Model::default();
    let mut now_ns = 0u64;
    for (step, op) in ops.iter().enumerate() {
        let (failure, slow) = match *op {
            Op::AdvanceMs(ms) => {
                clock.advance(Duration::from_millis(ms));
                now_ns += ms * 1_000_000;
                continue;
            }
            Op::Success => (false, false),
            Op::Failure => (true, false),
            Op::Slow => (false, l.slow.is_some()),
        };
        let permit = cb
            .try_acquire()
            .expect("closed: the test closes after a trip");
        match *op {
            Op::Failure => permit.failure(),
            Op::Slow => permit.record_timed(Outcome::Success, THRESHOLD),
            _ => permit.success(),
        }
        let trips = model.push(&l, now_ns, failure, slow);
        let want = if trips { Open } else { Closed };
        prop_assert_eq!(cb.state(), want, "step {} {:?}", step, op);
        if trips {
            cb.force_closed();
            model.outcomes.clear();
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { failure_persistence: None, ..Config::default() })]

    #[test]
    fn time_windows_trip_where_the_rule_says((l, ops) in limits().prop_flat_map(|l| (Just(l), ops(l.period_ms)))) {
        run(l, &ops)?;
    }
}

/// A success can trip a time window: the one that brings the period to its minimum of calls
/// while the failures are at the limit, and the first success after older successes left the
/// period (the rate rose without a call).
#[test]
fn a_success_trips_at_the_minimum_and_after_successes_expire() {
    let l = Limits {
        fail: (1, 2),
        slow: None,
        minimum: 4,
        period_ms: 1_000,
    };
    run(l, &[Op::Failure, Op::Failure, Op::Failure, Op::Success])
        .expect("3 failures, then the 4th call reaches the minimum");
    let clock = ManualClock::new();
    let storage = Storage::in_memory_with(4, Arc::new(clock.clone()));
    let cb = CircuitBreaker::builder("tw-expiring-successes")
        .storage(storage)
        .failure_limit(Ratio::new(1, 2))
        .minimum_calls(4)
        .time_window(Duration::from_secs(1))
        .build()
        .expect("valid");
    for _ in 0..20 {
        cb.try_acquire().expect("closed").success();
    }
    clock.advance(Duration::from_millis(500));
    for _ in 0..4 {
        cb.try_acquire().expect("closed").failure();
    }
    assert_eq!(cb.state(), Closed, "4 failures in 24 calls");
    clock.advance(Duration::from_millis(500));
    assert_eq!(cb.state(), Closed, "nothing judges without a call");
    cb.try_acquire().expect("closed").success();
    assert_eq!(
        cb.state(),
        Open,
        "the 20 successes left the period: 4 failures in 5 calls"
    );
}
