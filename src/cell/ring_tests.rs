//! Unit tests of `ring.rs`: the ring against [`OutcomeWindow`] as the reference model, the packed
//! rule against the policy's own verdict, and concurrent pushes.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::policy::Policy;
use crate::window::OutcomeWindow;
use crate::Ratio;

#[derive(Debug, Clone)]
enum Op {
    Push(bool),
    Clear,
    Resize(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => any::<bool>().prop_map(Op::Push),
        1 => Just(Op::Clear),
        1 => (1u32..=300).prop_map(Op::Resize),
    ]
}

proptest! {
    /// On one thread the ring is the reference window: the same failures, length and outcomes
    /// after every operation, and its running count equals the exact one.
    #[test]
    fn one_thread_matches_the_reference_window(
        capacity in 1u32..=300,
        ops in proptest::collection::vec(op(), 0..2_000),
    ) {
        let ring = Ring::new(capacity, 7);
        let mut model = OutcomeWindow::new(capacity);
        for op in ops {
            match op {
                Op::Push(success) => {
                    let p = ring.push(7, !success).expect("same generation");
                    let before = model.failures();
                    model.push(success);
                    prop_assert_eq!(p.len, model.len());
                    prop_assert_eq!(p.capacity, model.capacity());
                    // A bit flips when a failure lands on a success or the reverse; a filling
                    // window's slots start as successes.
                    let evicted_failure = before + u32::from(!success) != model.failures();
                    prop_assert_eq!(p.flipped, evicted_failure == success);
                }
                Op::Clear => {
                    ring.clear(7);
                    model.clear();
                }
                Op::Resize(c) => {
                    ring.resize(c, 7);
                    model = OutcomeWindow::new(c);
                }
            }
            prop_assert_eq!(ring.counts(), (model.failures(), model.len(), model.capacity()));
            prop_assert_eq!(ring.failures_at_most(), model.failures());
            prop_assert_eq!(ring.outcomes(), model.outcomes());
        }
    }

    /// The lock-free rule says "may trip" exactly when the policy trips on the exact counts, for
    /// every failure limit and minimum the builder accepts.
    #[test]
    fn the_packed_rule_is_the_policys_verdict(
        den in 1u32..=8192,
        num_share in 0.0f64..=1.0,
        min_share in proptest::option::of(0.0f64..=1.0),
        len_share in 0.0f64..=1.0,
        fail_share in 0.0f64..=1.0,
    ) {
        let num = ((f64::from(den) * num_share) as u32).clamp(1, den);
        let policy = Policy {
            failure_limit: Ratio::new(num, den),
            minimum_calls: min_share.map(|m| ((f64::from(den) * m) as u32).clamp(1, den)),
            ..Policy::default()
        };
        let rule = Rule::of(&policy);
        prop_assert!(rule.lock_free());
        let len = (f64::from(den) * len_share) as u32;
        let failures = (f64::from(len) * fail_share) as u32;
        prop_assert_eq!(
            rule.may_trip(failures, len),
            policy.closed_trips_at(failures, len, den),
            "{}/{} min {:?}: {} of {}", num, den, policy.minimum_calls, failures, len
        );
    }
}

#[test]
fn an_outcome_of_another_generation_is_refused() {
    let ring = Ring::new(10, 1);
    assert!(ring.push(0, true).is_none());
    assert!(ring.push(2, true).is_none());
    assert_eq!(ring.counts(), (0, 0, 10));
    ring.clear(2);
    assert!(ring.push(1, true).is_none(), "cleared into generation 2");
    assert!(ring.push(2, true).is_some());
    assert_eq!(ring.counts(), (1, 1, 10));
}

#[test]
fn windows_the_rule_cannot_judge_alone_take_the_lock() {
    let timed = Policy {
        time_window: Some(std::time::Duration::from_secs(10)),
        ..Policy::default()
    };
    assert!(!Rule::of(&timed).lock_free());
    let slow = Policy {
        slow_call: Some((
            std::time::Duration::from_millis(5),
            crate::SlowCalls::Rate(Ratio::new(1, 2)),
        )),
        ..Policy::default()
    };
    assert!(!Rule::of(&slow).lock_free());
    assert!(Rule::of(&Policy::default()).lock_free());
}

/// Threads pushing at once, across resizes: every claimed slot is written once, so after they
/// stop the window is full, its exact count is what the last `capacity` writes left, and the
/// running count is never below it (here, with no clear racing, equal to the bits it covers).
#[test]
fn concurrent_pushes_lose_no_slot_and_keep_the_count() {
    for capacity in [10u32, 100, 1000] {
        let ring = Arc::new(Ring::new(capacity, 3));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    let mut failures = 0u32;
                    for i in 0..20_000u32 {
                        let fail = (i + t) % 7 == 0;
                        failures += u32::from(fail);
                        ring.push(3, fail).expect("same generation");
                    }
                    failures
                })
            })
            .collect();
        for t in threads {
            t.join().expect("pusher");
        }
        let (failures, len, cap) = ring.counts();
        assert_eq!((len, cap), (capacity, capacity));
        assert_eq!(ring.failures_at_most(), failures, "window {capacity}");
        // Each thread fails one call in 7; the last `capacity` writes hold about that share.
        assert!(failures <= capacity);
        let outcomes = ring.outcomes();
        assert_eq!(
            outcomes.iter().filter(|s| !**s).count() as u32,
            failures,
            "the outcomes and the count agree"
        );
    }
}
