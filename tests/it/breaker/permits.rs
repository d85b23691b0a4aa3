//! Permits, borrowed and owned: cancelled and dropped ones return their slot, stale ones count as neither, and `call` classifies outcomes.

use super::*;

/// A probe permit dropped without an outcome gives its slot back and counts as neither.
#[test]
fn cancelled_probe_returns_its_slot() {
    let rig = Rig::new("cancel", r(1, 1), Some(r(2, 2)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let p1 = rig.admit("probe 1");
    let p2 = rig.admit("probe 2");
    rig.reject("full");
    drop(p2);
    let p3 = rig.admit("the dropped probe's slot");
    assert!(p3.is_probe());
    rig.reject("full again");
    p1.success();
    assert_eq!(rig.cb.state(), HalfOpen, "one probe still out");
    drop(p3);
    assert_eq!(rig.cb.state(), HalfOpen, "a drop is no outcome");
    rig.admit("slot back once more").success();
    assert_eq!(rig.cb.state(), Closed, "two successes of two");
}

/// A `call` future cancelled while its probe runs gives the slot back.
#[tokio::test(start_paused = true)]
async fn cancelled_call_future_returns_its_slot() {
    let rig = Rig::new("cancel-call", r(1, 1), Some(r(1, 1)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let pending = rig
        .cb
        .call(std::future::pending::<Result<(), std::io::Error>>);
    assert!(tokio::time::timeout(Duration::from_millis(5), pending)
        .await
        .is_err());
    assert_eq!(rig.cb.state(), HalfOpen);
    let ok = rig.cb.call(|| async { Ok::<_, std::io::Error>(7) }).await;
    assert_eq!(ok.unwrap(), 7, "the cancelled probe's slot is free again");
    assert_eq!(rig.cb.state(), Closed);
}

/// Dropping a permit admitted while closed is harmless: no outcome, no slot, no state change.
#[test]
fn dropped_closed_permit_counts_as_neither() {
    let rig = Rig::new("drop-closed", r(1, 2), None, 10);
    for _ in 0..10 {
        drop(rig.admit("closed"));
    }
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
    rig.admit("s").success();
    rig.admit("f").failure();
    assert_eq!(rig.cb.execution_log(), vec![true, false]);
    assert_eq!(rig.cb.state(), Open);
}

/// An owned permit moves into `tokio::spawn` and reports from there; it keeps working after every
/// handle of the caller is gone.
#[tokio::test]
async fn owned_permit_moves_into_a_spawned_task() {
    let rig = Rig::new("owned-spawn", r(2, 2), None, 10);
    let ok = rig.cb.try_acquire_owned().expect("closed");
    let failed = rig.cb.try_acquire_owned().expect("closed");
    assert!(!ok.is_probe());
    tokio::spawn(async move { ok.success() })
        .await
        .expect("task");
    assert_eq!(rig.cb.execution_log(), vec![true]);

    let spawned = tokio::spawn(async move { failed.failure() });
    let handle = rig.cb.clone();
    drop(rig.cb); // the permit holds its own handle
    spawned.await.expect("task");
    assert_eq!(handle.execution_log(), vec![true, false]);
    handle.try_acquire_owned().expect("closed").failure();
    assert_eq!(handle.state(), Open, "two failures of the last two");
    assert_eq!(rig.storage.state_of("owned-spawn"), Some(Open));
}

/// `acquire_owned`'s future is `'static` too: it can itself be spawned.
#[tokio::test]
async fn acquire_owned_future_spawns() {
    let rig = Rig::new("owned-acquire", r(1, 1), None, 10);
    let permit = tokio::spawn(rig.cb.acquire_owned())
        .await
        .expect("task")
        .expect("closed");
    permit.failure();
    assert_eq!(rig.cb.state(), Open);
    let rejected = tokio::spawn(rig.cb.acquire_owned())
        .await
        .expect("task")
        .expect_err("open");
    assert_eq!(rejected.state(), Open);
    assert_eq!(rejected.retry_after(), Some(Duration::from_millis(10)));
}

/// A dropped owned probe gives its slot back, as a borrowed one does: one probe, taken owned and
/// dropped, and the next caller is the probe.
#[test]
fn dropped_owned_probe_returns_its_slot() {
    let rig = Rig::new("owned-cancel", r(1, 1), Some(r(1, 1)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let probe = rig.cb.try_acquire_owned().expect("the one probe");
    assert!(probe.is_probe());
    assert_eq!(
        rig.cb.try_acquire_owned().expect_err("full").state(),
        HalfOpen
    );
    drop(probe);
    assert_eq!(rig.cb.state(), HalfOpen, "a drop is no outcome");
    let next = rig.cb.try_acquire_owned().expect("the slot is back");
    assert!(next.is_probe());
    next.success();
    assert_eq!(rig.cb.state(), Closed);
}

/// Owned and borrowed permits share one record path: mixed, they fill one window and trip it.
#[test]
fn owned_and_borrowed_permits_share_the_window() {
    let rig = Rig::new("owned-mixed", r(2, 4), None, 10);
    rig.cb
        .try_acquire_owned()
        .expect("closed")
        .record(Outcome::Success);
    rig.admit("borrowed").failure();
    rig.cb.try_acquire_owned().expect("closed").success();
    assert_eq!(rig.cb.execution_log(), vec![true, false, true]);
    rig.cb.try_acquire_owned().expect("closed").failure();
    assert_eq!(rig.cb.state(), Open);
    assert_eq!(rig.changes(), vec![(Closed, Open)]);
}

/// The opt-in call metrics count an owned permit's success, failure and drop (cancelled) the way
/// they count a borrowed permit's.
#[test]
fn owned_permits_count_in_call_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let cb = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder("owned-metrics")
            .storage(Storage::in_memory())
            .call_metrics(true)
            .failure_limit(r(5, 5))
            .build()
            .expect("valid")
    });
    let count = |outcome: &str| -> u64 {
        let text = handle.render();
        let needle = format!("outcome=\"{outcome}\"");
        text.lines()
            .filter(|l| l.starts_with("resilient_circuit_calls_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    cb.try_acquire().expect("closed").success();
    let borrowed = (count("success"), count("failure"), count("cancelled"));
    assert_eq!(borrowed, (1, 0, 0));
    cb.try_acquire_owned().expect("closed").success();
    cb.try_acquire().expect("closed").failure();
    cb.try_acquire_owned().expect("closed").failure();
    drop(cb.try_acquire().expect("closed"));
    drop(cb.try_acquire_owned().expect("closed"));
    assert_eq!(
        (count("success"), count("failure"), count("cancelled")),
        (2, 2, 2),
        "owned permits count like borrowed ones:\n{}",
        handle.render()
    );
}

/// Outcomes of permits admitted while closed and reported after a trip count as neither:
/// not in the open state, not as half-open probes, not in the next closed window.
#[test]
fn stale_closed_permits_count_as_neither() {
    let rig = Rig::new("stale", r(1, 1), Some(r(1, 1)), 10);
    let early: Vec<_> = (0..4).map(|_| rig.admit("closed")).collect();
    rig.admit("trip").failure();
    assert_eq!(rig.cb.state(), Open);
    let mut early = early.into_iter();

    early.next().unwrap().success(); // while open
    assert_eq!(rig.cb.state(), Open);

    rig.advance_ms(10);
    let probe = rig.admit("probe");
    early.next().unwrap().failure(); // while half-open: must not decide the round
    assert_eq!(rig.cb.state(), HalfOpen);
    drop(early.next().unwrap()); // a stale drop must not free a probe slot
    rig.reject("the only probe slot is taken");
    probe.success();
    assert_eq!(rig.cb.state(), Closed);

    early.next().unwrap().failure(); // after closing again: not in the new window
    assert_eq!(rig.cb.state(), Closed);
    assert_eq!(rig.cb.execution_log(), Vec::<bool>::new());
}

/// A probe of an earlier half-open round reported (or dropped) during a later round is ignored.
#[test]
fn stale_probes_of_an_earlier_round_count_as_neither() {
    let rig = Rig::new("stale-probe", r(1, 1), Some(r(2, 2)), 10);
    rig.trip(1);
    rig.advance_ms(10);
    let old = rig.admit("round 1 probe a");
    let old2 = rig.admit("round 1 probe b");
    // End the round by an override so `old` is left outstanding.
    rig.cb.force_open(Duration::from_millis(10));
    rig.advance_ms(10);
    let p1 = rig.admit("round 2 probe 1");
    let p2 = rig.admit("round 2 probe 2");
    old.failure();
    drop(old2);
    rig.reject("round 2 slots are still both taken");
    assert_eq!(rig.cb.state(), HalfOpen);
    p1.success();
    p2.success();
    assert_eq!(rig.cb.state(), Closed);
}

/// `call` counts Err as failure and every Ok (even Ok(503)) as success; `call_with` lets the
/// classifier count Ok(503) as a failure and an Err as a success.
#[tokio::test]
async fn call_and_call_with_classification() {
    let rig = Rig::new("http", r(1, 1), None, 10);
    let status = rig.cb.call(|| async { Ok::<u16, String>(503) }).await;
    assert_eq!(status.unwrap(), 503);
    assert_eq!(rig.cb.state(), Closed, "call: Ok(503) is a success");
    assert_eq!(rig.cb.execution_log(), vec![true]);

    let classify = |r: &Result<u16, String>| Outcome::failure_if(matches!(r, Ok(500..) | Err(_)));
    let ok = rig.cb.call_with(classify, || async { Ok(200) }).await;
    assert_eq!(ok.unwrap(), 200);
    assert_eq!(rig.cb.state(), Closed);

    let not_found = |_: &Result<u16, String>| Outcome::Success;
    let err = rig
        .cb
        .call_with(not_found, || async {
            Err("404 is the caller's fault".to_owned())
        })
        .await;
    assert_eq!(
        err.unwrap_err().into_inner().as_deref(),
        Some("404 is the caller's fault")
    );
    assert_eq!(rig.cb.state(), Closed, "an Err classified as success");

    let res = rig.cb.call_with(classify, || async { Ok(503) }).await;
    assert_eq!(res.unwrap(), 503, "the value is still returned");
    assert_eq!(rig.cb.state(), Open, "call_with: Ok(503) is a failure");

    let rig = Rig::new("errs", r(1, 1), None, 10);
    let err = rig
        .cb
        .call(|| async { Err::<(), _>(std::io::Error::other("boom")) })
        .await
        .unwrap_err();
    assert!(!err.is_rejected());
    assert_eq!(err.to_string(), "boom");
    assert_eq!(rig.cb.state(), Open, "call: Err is a failure");
}

/// `Outcome::from_result` and `failure_if` classify as documented.
#[test]
fn outcome_helpers() {
    assert_eq!(Outcome::from_result(&Ok::<_, ()>(503)), Outcome::Success);
    assert_eq!(Outcome::from_result(&Err::<(), _>(())), Outcome::Failure);
    assert_eq!(Outcome::failure_if(true), Outcome::Failure);
    assert_eq!(Outcome::failure_if(false), Outcome::Success);
}

/// `Permit::record` with an explicit Outcome is the same as `success`/`failure`.
#[test]
fn permit_record() {
    let rig = Rig::new("record", r(2, 3), None, 10);
    rig.admit("a").record(Outcome::Failure);
    rig.admit("b").record(Outcome::Success);
    rig.admit("c").record(Outcome::Failure);
    assert_eq!(rig.cb.execution_log(), vec![false, true, false]);
    assert_eq!(rig.cb.state(), Open);
}
