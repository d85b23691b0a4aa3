//! [`index`]: a number this thread holds alone, so that it can keep counters no other thread
//! writes (`rate.rs`), counted with a plain load and store instead of a locked add.
//!
//! A thread takes the lowest free number on its first call and gives it back when it exits;
//! the free list's mutex orders the last writes of the thread that gave a number back before the
//! first ones of the thread that takes it next, so no two threads ever write one counter. Only
//! the first [`EXCLUSIVE`] numbers are handed out: threads past them share one counter, counted
//! with an atomic add.

use std::cell::Cell;
use std::sync::Mutex;

/// How many threads may hold a number at once; enough for the worker and blocking threads that
/// call breakers in most processes.
pub(crate) const EXCLUSIVE: usize = 64;

/// Not yet asked for.
const UNSET: usize = usize::MAX;

/// Numbers given back, and the next never handed out.
static FREE: Mutex<(Vec<usize>, usize)> = Mutex::new((Vec::new(), 0));

thread_local! {
    /// This thread's number: [`UNSET`], or [`EXCLUSIVE`] for "none left, share". Without a
    /// destructor, so reading it is one load.
    static INDEX: Cell<usize> = const { Cell::new(UNSET) };
    /// Gives the number back when the thread exits (registered when it takes one).
    static LEASE: Lease = const { Lease };
}

struct Lease;

impl Drop for Lease {
    fn drop(&mut self) {
        // Anything this thread still counts after this (another destructor calling a breaker)
        // goes to the shared counter: the number may already be another thread's.
        let held = INDEX
            .try_with(|i| i.replace(EXCLUSIVE))
            .unwrap_or(EXCLUSIVE);
        if held < EXCLUSIVE {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            free.0.push(held);
        }
    }
}

/// This thread's number, below [`EXCLUSIVE`] if it holds one alone; [`EXCLUSIVE`] if not.
#[inline]
pub(crate) fn index() -> usize {
    match INDEX.try_with(Cell::get) {
        Ok(UNSET) => take(),
        Ok(i) => i,
        Err(_) => EXCLUSIVE,
    }
}

/// This thread's number as held: below [`EXCLUSIVE`] if it holds one alone, else at least
/// [`EXCLUSIVE`] (none to be had, or not asked for yet: [`index`] takes one). One load.
#[inline]
pub(crate) fn raw() -> usize {
    INDEX.try_with(Cell::get).unwrap_or(EXCLUSIVE)
}

#[cold]
fn take() -> usize {
    // Registering the lease first: a thread that cannot (it is exiting) shares.
    if LEASE.try_with(|_| ()).is_err() {
        return EXCLUSIVE;
    }
    let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
    let (given_back, next) = &mut *free;
    let taken = match given_back.pop() {
        Some(i) => i,
        None if *next < EXCLUSIVE => {
            *next += 1;
            *next - 1
        }
        None => EXCLUSIVE,
    };
    drop(free);
    INDEX.with(|i| i.set(taken));
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Barrier};

    /// Threads alive at once hold different numbers; a number given back is taken again.
    #[test]
    fn live_threads_hold_different_numbers_and_exited_ones_give_theirs_back() {
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let held: Vec<usize> = (0..threads)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let i = index();
                    assert_eq!(index(), i, "a thread keeps its number");
                    barrier.wait(); // all alive at once
                    i
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            // `join` fails only if the thread panicked: its assertion failed, and so does the
            // test, here.
            .map(|t| t.join().expect("the thread returns its number"))
            .collect();
        let distinct: HashSet<_> = held.iter().copied().filter(|&i| i < EXCLUSIVE).collect();
        let shared = held.iter().filter(|&&i| i == EXCLUSIVE).count();
        assert_eq!(
            distinct.len() + shared,
            threads,
            "no number is held twice: {held:?}"
        );
        assert_eq!(shared, 0, "eight threads fit: {held:?}");
    }

    /// Threads one after another, more than there are numbers: each finds the one its
    /// predecessor gave back, so none has to share.
    #[test]
    fn exited_threads_give_their_numbers_back() {
        for n in 0..2 * EXCLUSIVE {
            // `join` fails only if the thread panicked; `index` does not panic.
            let i = std::thread::spawn(index)
                .join()
                .expect("returns its number");
            assert!(i < EXCLUSIVE, "thread {n} found no free number");
        }
    }
}
