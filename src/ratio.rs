//! [`Ratio`]: the "k out of n" limits that decide when a breaker trips or closes.

use std::fmt;

/// A fraction `numerator / denominator` that doubles as a window size.
///
/// `Ratio::new(3, 10)` as a failure limit means "look at the last 10 outcomes and trip when at
/// least 3 of them are failures". The denominator is the window size, exactly as in the Python
/// Python package's `Fraction(3, 10)`.
///
/// `new` is infallible so that limits can be written in `const` items; the breaker builder
/// validates them and returns a [`ConfigError`](crate::ConfigError) for a zero denominator, a zero
/// numerator or a numerator above the denominator.
///
/// ```
/// use resilient_circuit::Ratio;
/// const TRIP_AT: Ratio = Ratio::new(3, 10);
/// assert_eq!(TRIP_AT.numerator(), 3);
/// assert_eq!(TRIP_AT.denominator(), 10);
/// assert_eq!(TRIP_AT.to_string(), "3/10");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ratio {
    num: u32,
    den: u32,
}

impl Ratio {
    /// The largest window the builder accepts. Windows are bit rings, so this bounds a breaker's
    /// memory (1 KiB of bits) and keeps every count in a `u32`.
    pub const MAX_DENOMINATOR: u32 = 8192;

    /// Makes `numerator / denominator`; never fails, see the type docs for validation.
    pub const fn new(numerator: u32, denominator: u32) -> Self {
        Ratio {
            num: numerator,
            den: denominator,
        }
    }

    /// The numerator: how many outcomes of the window must match.
    pub const fn numerator(&self) -> u32 {
        self.num
    }

    /// The denominator: the window size.
    pub const fn denominator(&self) -> u32 {
        self.den
    }

    /// Checks the ratio is usable as a limit; `what` names it in the error.
    pub(crate) fn validate(&self, what: &'static str) -> Result<(), crate::ConfigError> {
        let reason = if self.den == 0 {
            "the denominator (window size) is zero"
        } else if self.num == 0 {
            "the numerator is zero, so the limit would be met by an empty window"
        } else if self.num > self.den {
            "the numerator is above the denominator, so the limit could never be met"
        } else if self.den > Self::MAX_DENOMINATOR {
            "the denominator (window size) is above Ratio::MAX_DENOMINATOR (8192)"
        } else {
            return Ok(());
        };
        Err(crate::ConfigError::InvalidRatio {
            which: what,
            ratio: *self,
            reason,
        })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}
