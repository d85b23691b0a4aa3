//! The builder and its typed configuration errors.

use super::*;
use crate::breaker::cooldowns::growing;

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
