//! Checks of process-wide behaviour, in a test binary of their own so that nothing else in the
//! process installs a metrics recorder or builds a breaker without a storage first.

#[allow(dead_code, unused_imports)] // this binary uses a few helpers of the shared kit
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
use support::breakers::{fail, fleet_probe, published, Logs};
use support::{eventually, test_db, unique_key};

/// Counts every counter increment by name.
#[derive(Default)]
struct Counting(Mutex<HashMap<String, Arc<Count>>>);

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
    }
    fn absolute(&self, n: u64) {
        self.0.store(n, Ordering::SeqCst);
    }
}

impl Counting {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
    }
}

impl Recorder for &'static Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// A rejected `call` counts once in `resilient_circuit_rejected_calls_total`, on the
/// fleet path too (once per call, not once per look at the state). And a breaker built without a
/// storage says at INFO which storage it uses.
#[tokio::test]
async fn rejections_count_once_and_the_default_storage_says_so() {
    static COUNTING: std::sync::OnceLock<&'static Counting> = std::sync::OnceLock::new();
    let counting: &'static Counting = COUNTING.get_or_init(|| Box::leak(Box::default()));
    metrics::set_global_recorder(counting).expect("the only recorder of this process");
    let rejected = || counting.get("resilient_circuit_rejected_calls_total");

    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let local = CircuitBreaker::builder(unique_key("global"))
        .failure_limit(Ratio::new(1, 1))
        .build()
        .expect("valid");
    assert!(
        logs.text().contains("process-wide in-memory store"),
        "INFO names the default storage:\n{}",
        logs.text()
    );
    fail(&local).await;
    let before = rejected();
    let r = local.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(r.expect_err("open").is_rejected());
    assert_eq!(rejected() - before, 1, "in memory");

    // The fleet path: a half-open round whose only slot another instance holds.
    let db = test_db().await;
    let opts = PostgresOptions::from_dsn(&db.app_conninfo().await).expect("dsn");
    let a = Storage::connect_with(opts.clone()).await.expect("connects");
    let b = Storage::connect_with(opts).await.expect("connects");
    let key = unique_key("fleet");
    let build = |s: &Storage| {
        CircuitBreaker::builder(&key)
            .storage(s.clone())
            .failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_millis(50))
            .build()
            .expect("valid")
    };
    let (on_a, on_b) = (build(&a), build(&b));
    fail(&on_a).await;
    published(&a).await;
    let probe = fleet_probe(&on_a).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            on_b.state() == State::HalfOpen
        })
        .await
    );
    for _ in 0..5 {
        let before = rejected();
        let r = on_b.call(|| async { Ok::<_, ()>(()) }).await;
        assert!(r.expect_err("the round is full").is_rejected());
        assert_eq!(rejected() - before, 1, "one rejected call, one count");
    }
    drop(probe);
}
