//! Cheap randomness for spreading timers apart (backoffs, grown cooldowns, a self-check's
//! channel name): it only has to differ between keys, instances and calls, not be unpredictable,
//! so it needs no dependency. Not for cryptography: the notification key and channel are made
//! by the database (migrations `0006` and `0014`).
//!
//! std's `RandomState` draws random keys once per thread and steps them for each new one;
//! hashing the clock with a fresh one gives a new value each call.

use std::hash::{BuildHasher, Hasher};

/// A fresh 64-bit value.
fn next() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A number in `[0, bound)` (0 when `bound` is 0).
pub(crate) fn below(bound: u64) -> u64 {
    next() % bound.max(1)
}

/// A fraction in `[0, 1)`.
pub(crate) fn fraction() -> f64 {
    // The top 53 bits: uniform in [0, 1) as an f64.
    (next() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_in_range_and_differ() {
        let draws: Vec<u64> = (0..1000).map(|_| below(10)).collect();
        assert!(draws.iter().all(|&d| d < 10));
        assert!((0..10).all(|v| draws.contains(&v)), "every value drawn");
        assert_eq!(below(0), 0);
        let fractions: Vec<f64> = (0..1000).map(|_| fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(fractions.iter().any(|&f| f < 0.5) && fractions.iter().any(|&f| f >= 0.5));
    }
}
