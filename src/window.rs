//! [`OutcomeWindow`]: the last `n` outcomes of a breaker as a ring of bits.
//!
//! Pure data, no clock and no locking: the breaker keeps its half-open round and its slow-call
//! window in one, behind its private lock. (The closed count window is `cell/ring.rs`, recorded
//! without the lock and tested against this one.)

/// The last `capacity` outcomes, oldest overwritten first, with a running failure count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutcomeWindow {
    /// One bit per outcome, 1 = failure.
    bits: Box<[u64]>,
    capacity: u32,
    /// Index of the slot the next outcome goes to.
    next: u32,
    len: u32,
    failures: u32,
}

impl OutcomeWindow {
    pub(crate) fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1);
        let words = capacity.div_ceil(64) as usize;
        OutcomeWindow {
            bits: vec![0; words].into_boxed_slice(),
            capacity,
            next: 0,
            len: 0,
            failures: 0,
        }
    }

    pub(crate) fn push(&mut self, success: bool) {
        let (word, bit) = ((self.next / 64) as usize, self.next % 64);
        let mask = 1u64 << bit;
        if self.len == self.capacity && self.bits[word] & mask != 0 {
            self.failures -= 1; // the evicted outcome was a failure
        }
        if success {
            self.bits[word] &= !mask;
        } else {
            self.bits[word] |= mask;
            self.failures += 1;
        }
        self.next = (self.next + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    pub(crate) fn clear(&mut self) {
        self.bits.iter_mut().for_each(|w| *w = 0);
        self.next = 0;
        self.len = 0;
        self.failures = 0;
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn successes(&self) -> u32 {
        self.len - self.failures
    }

    /// Outcomes oldest first (true = success), the order of the Python package's
    /// `execution_log`: the reference `ring.rs` is tested against.
    #[cfg(test)]
    pub(crate) fn outcomes(&self) -> Vec<bool> {
        let start = if self.len == self.capacity {
            self.next
        } else {
            0
        };
        (0..self.len)
            .map(|i| {
                let idx = (start + i) % self.capacity;
                self.bits[(idx / 64) as usize] & (1 << (idx % 64)) == 0
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
