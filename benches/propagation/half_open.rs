//! Phase 9, half-open on PostgreSQL: a fleet-wide round of one probe, between two instances.
//!
//! Each round: A trips (cooldown 20 ms) and the database accepts it; once the cooldown is over,
//! B calls `acquire()`, which asks the database for the round's probe lease (`rc_acquire_probe`)
//! and waits for it; B reports a success (`rc_report_probe`), which closes the row; A applies
//! the close from its NOTIFY. Measured: B's admission (the lease round trip, as a caller waits
//! it), and from B's report to A reading CLOSED (report, commit, NOTIFY, apply).
//!
//! Why: the half-open path is the one that decides when a fleet trusts a dependency again; it
//! costs database round trips where the closed and open paths cost none.

use std::time::{Duration, Instant};

use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

use crate::db::Target;
use crate::report::Report;
use crate::{spin_until, Sizes, R, WAIT};

const COOLDOWN: Duration = Duration::from_millis(20);

pub(crate) async fn phase(t: &Target, sizes: &Sizes, report: &mut Report) -> R<()> {
    report.section("9. half-open on PostgreSQL: one probe leased, reported, seen elsewhere");
    let rounds = if sizes.quick { 5 } else { 200 };
    let ns = "half_open";
    let a = Storage::connect_with(t.opts(ns)?).await?;
    let b = Storage::connect_with(t.opts(ns)?).await?;
    let build = |s: &Storage| {
        CircuitBreaker::builder("probe-round")
            .storage(s.clone())
            .failure_limit(Ratio::new(1, 1))
            .success_limit(Ratio::new(1, 1))
            .cooldown(COOLDOWN)
            .probe_wait(Duration::from_secs(2))
            .build()
    };
    let (on_a, on_b) = (build(&a)?, build(&b)?);
    let (mut admitted, mut closed_elsewhere) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        if let Ok(p) = on_a.try_acquire() {
            p.failure();
        }
        if !a.flush(WAIT).await || !spin_until(WAIT, || on_b.state() == State::Open) {
            return Err("the trip did not reach B".into());
        }
        tokio::time::sleep(COOLDOWN + Duration::from_millis(2)).await;
        let asked = Instant::now();
        let permit = on_b.acquire().await?;
        admitted.push(asked.elapsed());
        let reported = Instant::now();
        permit.success();
        if !spin_until(WAIT, || on_a.state() == State::Closed) {
            return Err("the close did not reach A".into());
        }
        closed_elsewhere.push(reported.elapsed());
        // Let B's own view settle before the next trip.
        if !spin_until(WAIT, || on_b.state() == State::Closed) {
            return Err("B did not close".into());
        }
    }
    report.dist(
        "B's acquire() in a fleet round (probe lease)",
        &admitted,
        "rc_acquire_probe round trip, as the caller waits it",
    );
    report.dist(
        "B's success() -> A reads CLOSED",
        &closed_elsewhere,
        "rc_report_probe, commit, NOTIFY, A applies",
    );
    Ok(())
}
