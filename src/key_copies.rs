//! Per-thread copies of keys, for [`Rejected`](crate::Rejected): a rejection carries its key
//! without touching the key's shared reference count, which every thread rejecting calls on
//! the same breaker would otherwise write (one contended cache line per rejection).
//!
//! Each thread keeps its own reference-counted copy of the last few keys it rejected; a
//! rejection clones the copy, a count no other thread writes unless the rejection is sent to it.
//! An entry holds the key's `Arc<str>` too, so its address cannot be reused by another key while
//! the entry exists.

use std::cell::RefCell;
use std::sync::Arc;

/// Keys kept per thread: a thread rejecting calls on more breakers than this at once makes a
/// new copy (one allocation) on a miss.
const ENTRIES: usize = 4;

/// A key as a rejection holds it: one word.
pub(crate) type KeyCopy = Arc<Box<str>>;

struct Entry {
    /// The key this copy is of (kept alive, so its address identifies it).
    of: Arc<str>,
    copy: KeyCopy,
}

thread_local! {
    static COPIES: RefCell<([Option<Entry>; ENTRIES], usize)> =
        const { RefCell::new(([None, None, None, None], 0)) };
}

/// This thread's copy of `key`.
pub(crate) fn copy_of(key: &Arc<str>) -> KeyCopy {
    let fresh = || Arc::new(Box::<str>::from(&**key));
    COPIES
        .try_with(|cell| {
            let Ok(mut guard) = cell.try_borrow_mut() else {
                return fresh();
            };
            let (entries, next) = &mut *guard;
            if let Some(e) = entries.iter().flatten().find(|e| Arc::ptr_eq(&e.of, key)) {
                return e.copy.clone();
            }
            let copy = fresh();
            entries[*next] = Some(Entry {
                of: key.clone(),
                copy: copy.clone(),
            });
            *next = (*next + 1) % ENTRIES;
            copy
        })
        // The thread is exiting: no cache.
        .unwrap_or_else(|_| fresh())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reuses_its_copy_and_another_thread_has_its_own() {
        let key: Arc<str> = Arc::from("payments");
        let a = copy_of(&key);
        let b = copy_of(&key);
        assert!(Arc::ptr_eq(&a, &b), "one copy per thread");
        assert_eq!(&a[..], "payments");
        // `join` fails only if the thread panicked; `copy_of` does not panic.
        let other = std::thread::scope(|s| s.spawn(|| copy_of(&key)).join().expect("no panic"));
        assert!(!Arc::ptr_eq(&a, &other), "each thread its own copy");
        assert_eq!(&other[..], "payments");
    }

    #[test]
    fn keys_with_the_same_text_and_more_keys_than_entries_stay_apart() {
        let keys: Vec<Arc<str>> = (0..ENTRIES * 2)
            .map(|i| Arc::from(format!("k{i}")))
            .collect();
        for _ in 0..3 {
            for k in &keys {
                assert_eq!(&**copy_of(k), &**k);
            }
        }
        let twin: Arc<str> = Arc::from("k0");
        assert_eq!(&**copy_of(&twin), "k0");
    }
}
