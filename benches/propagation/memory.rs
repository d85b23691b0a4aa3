//! Phase 4, memory per breaker: what holding the fleet's keys costs an instance.
//!
//! A counting global allocator (live bytes requested) around connecting an instance that loads
//! 10,000 rows, less an instance of an empty namespace (the map entry, the cell, the key); then
//! `CircuitBreaker` handles built on each of those keys (their heap plus
//! `size_of::<CircuitBreaker>()`, as the handles themselves live in a Vec allocated before
//! counting); and breakers built on 10,000 keys the instance has never seen (the build creates the
//! cell). RSS deltas for reference. Runs on the namespaces phase 3 filled.
//!
//! The counting allocator is the bench binary's global allocator, so every phase runs on it; it
//! only adds a relaxed atomic add per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use resilient_circuit::{CircuitBreaker, Storage};

use crate::db::Target;
use crate::report::Report;
use crate::startup::Filled;
use crate::{Sizes, R};

struct CountingAlloc;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` unchanged and only keeps a counter on the side.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/status` (0 where unavailable).
fn rss_bytes() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub(crate) async fn phase(
    t: &Target,
    sizes: &Sizes,
    filled: &Filled,
    report: &mut Report,
) -> R<()> {
    report
        .section("4. memory: live heap bytes (counting allocator) of an instance holding the rows");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settle = || tokio::time::sleep(Duration::from_millis(100));
    let (l0, r0) = (live_bytes(), rss_bytes());
    let empty = Storage::connect_with(t.opts(filled.empty_ns)?).await?;
    settle().await;
    let (l1, r1) = (live_bytes(), rss_bytes());
    let full = Storage::connect_with(t.opts(filled.large_ns)?).await?;
    settle().await;
    let (l2, r2) = (live_bytes(), rss_bytes());
    let n = sizes.large_rows;
    let instance = l1 - l0;
    let per_key = (l2 - l1 - instance) as f64 / n as f64;
    let keys: Vec<String> = (1..=n).map(|i| format!("svc-{i:06}")).collect();
    let key_len = keys.iter().map(String::len).sum::<usize>() as f64 / n as f64;
    report.value(
        "instance, empty namespace",
        1,
        format!("{instance} B"),
        &format!("RSS +{} KiB", (r1 - r0) / 1024),
    );
    report.value(
        &format!("per key loaded ({n} rows)"),
        n,
        format!("{per_key:.0} B"),
        &format!(
            "{:.0} B beyond the {key_len:.0}-byte key; RSS +{:.0} B/key",
            per_key - key_len,
            (r2 - r1) as f64 / n as f64
        ),
    );
    // The handles' own bytes live wherever the application keeps them (here a Vec allocated
    // before counting): added as size_of, on top of the heap they allocate.
    let inline = std::mem::size_of::<CircuitBreaker>();
    let mut handles = Vec::with_capacity(n);
    let l3 = live_bytes();
    for k in &keys {
        handles.push(
            CircuitBreaker::builder(k.as_str())
                .storage(full.clone())
                .build()?,
        );
    }
    settle().await;
    let l4 = live_bytes();
    let per_handle = (l4 - l3) as f64 / n as f64;
    report.value(
        "per CircuitBreaker handle built on a loaded key",
        n,
        format!("{:.0} B", per_handle + inline as f64),
        &format!(
            "{per_handle:.0} B of heap + {inline} B of the handle itself (size_of); default \
             policy, no callback; in addition to the key's cell"
        ),
    );
    let loaded_total = per_key + per_handle + inline as f64;
    report.value(
        "per breaker, loaded key + its handle",
        n,
        format!("{loaded_total:.0} B"),
        &format!(
            "the map entry, the cell, the {key_len:.0}-byte key, the handle and its heap; \
             {:.0} B beyond the key",
            loaded_total - key_len
        ),
    );
    // Breakers on keys the instance has never seen: the build creates the cell.
    let fresh: Vec<String> = (1..=n).map(|i| format!("new-{i:06}")).collect();
    let mut fresh_handles = Vec::with_capacity(n);
    let l5 = live_bytes();
    for k in &fresh {
        fresh_handles.push(
            CircuitBreaker::builder(k.as_str())
                .storage(empty.clone())
                .build()?,
        );
    }
    settle().await;
    let l6 = live_bytes();
    let fresh_total = (l6 - l5) as f64 / n as f64 + inline as f64;
    report.value(
        "per breaker built on a new key (cell created by the build)",
        n,
        format!("{fresh_total:.0} B"),
        &format!(
            "everything the build allocates (map entry, cell, key copies, handle heap) + the \
             {inline}-byte handle; {:.0} B beyond the {key_len:.0}-byte key",
            fresh_total - key_len
        ),
    );
    report.goal(
        "memory per breaker, handle included, beyond the key",
        "<= 1 KiB",
        format!("{:.0} B", loaded_total - key_len),
        loaded_total - key_len <= 1024.0,
    );
    drop(fresh_handles);
    drop(handles);
    drop((empty, full));
    Ok(())
}
