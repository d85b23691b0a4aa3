//! Fleet failure rates ([`TripPolicy::FleetRate`](crate::TripPolicy)): the instance's reporter.
//!
//! Every call of a fleet-rate breaker is counted locally (`cell/rate.rs`). Every
//! `fleet_rate_interval` the reporter samples each such key's counts and computes its calls and
//! failures over the last period; it reports a key, in one statement for all of them
//! (`rc_report_rates`, `sql/objects/rc_report_rates.sql`), when
//!
//! * its own rate over the period reaches the limit, or
//! * the fleet judges the key: some instance's rate reached the limit within the last period,
//!   and the database said so (a notification, a report's answer, the full load).
//!
//! So the database judges the rate of the whole fleet, the healthy instances' calls included,
//! and a fleet whose every instance stays under the limit sends nothing at all (the fleet's
//! rate is a weighted average of the instances' rates: it cannot reach the limit if none does).
//! Each report replaces the instance's previous one, and counts for three intervals: the fleet
//! rate is the sum of every instance's latest counts, each over its last period (give or take
//! one interval).
//!
//! The answer also says whether the fleet holds this instance an outlier of the key
//! ([`docs::outliers`](crate::docs::outliers)): then its breaker judges its own window, as when
//! alone, and the metric, the log and the change stream say so.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{statements, Shared};
use crate::cell::KeyCell;
use crate::clock::duration_nanos;
use crate::fleet::precedence::Call;
use crate::State;

/// How many judged keys are kept before the ended ones are first swept out.
const JUDGED_SWEEP: usize = 64;

/// The reporter task of one instance: samples and reports every `fleet_rate_interval` until the
/// instance shuts down.
pub(crate) async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<()>) {
    let every = shared.opts.fleet_rate_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        shared.report_rates().await;
    }
}

/// One key's report.
struct Report {
    cell: Arc<KeyCell>,
    failures: i64,
    calls: i64,
    limit: (i32, i32),
    min_calls: i32,
    period_ms: i64,
    period: Duration,
    cooldown_ms: i64,
}

impl Shared {
    /// Samples every fleet-rate key and sends the reports due (see the module doc); also run
    /// by [`Storage::flush`](crate::Storage::flush), so that a process about to stop tells the
    /// fleet what it counted.
    pub(crate) async fn report_rates(self: &Arc<Self>) {
        // One round at a time (the interval's, the one a judgement's notice starts, a flush's):
        // an older round's answer applied after a newer one's would undo what it said.
        let _round = self.unanswered.rate_round().await;
        let now = self.clock.now_nanos();
        let mut due = Vec::new();
        for cell in self.cells() {
            let Some(rate) = cell.rate() else {
                continue;
            };
            let policy = cell.policy();
            let Some((limit, min_calls, period)) = policy.trip.fleet_rate() else {
                continue;
            };
            if rate.outlier_lapsed(now) {
                // It stopped reporting (its rate fell under the limit): no longer an outlier.
                self.outlier_changed(&cell, false);
            }
            let counts = rate.sample(now, duration_nanos(period));
            // Open or probing, the round decides now; but an outlier opened by its own window
            // reports on, so that it stays one until its rate heals (its reports do not count).
            if (cell.state() != State::Closed && !rate.outlier(now)) || counts.calls == 0 {
                continue;
            }
            let (num, den) = (limit.numerator(), limit.denominator());
            let at_limit = counts.failures > 0
                && u128::from(counts.failures) * u128::from(den)
                    >= u128::from(num) * u128::from(counts.calls);
            if !at_limit && !rate.judged(now) {
                continue;
            }
            let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            due.push(Report {
                failures: int(counts.failures),
                calls: int(counts.calls),
                limit: (
                    i32::try_from(num).unwrap_or(i32::MAX),
                    i32::try_from(den).unwrap_or(i32::MAX),
                ),
                min_calls: i32::try_from(min_calls).unwrap_or(i32::MAX),
                period_ms: statements::millis(period),
                period,
                cooldown_ms: statements::millis(policy.cooldown),
                cell,
            });
        }
        if due.is_empty() || self.is_degraded() {
            return; // alone, each breaker judges its own window (`Policy::closed_trips`)
        }
        // Counted until answered, so that `Storage::flush` waits for the reports.
        let _in_flight = self.report_started();
        // Sorted, so that two instances lock the same keys in the same order.
        due.sort_by(|a, b| a.cell.key.cmp(&b.cell.key));
        let keys: Vec<String> = due.iter().map(|r| r.cell.key.to_string()).collect();
        let failures: Vec<i64> = due.iter().map(|r| r.failures).collect();
        let calls: Vec<i64> = due.iter().map(|r| r.calls).collect();
        let nums: Vec<i32> = due.iter().map(|r| r.limit.0).collect();
        let dens: Vec<i32> = due.iter().map(|r| r.limit.1).collect();
        let mins: Vec<i32> = due.iter().map(|r| r.min_calls).collect();
        let periods: Vec<i64> = due.iter().map(|r| r.period_ms).collect();
        let cooldowns: Vec<i64> = due.iter().map(|r| r.cooldown_ms).collect();
        let interval_ms = statements::millis(self.opts.fleet_rate_interval);
        let during = "reporting failure rates";
        let rows = match self
            .call_many(
                during,
                statements::REPORT_RATES,
                &[
                    &self.opts.namespace,
                    &self.holder,
                    &interval_ms,
                    &keys,
                    &failures,
                    &calls,
                    &nums,
                    &dens,
                    &mins,
                    &periods,
                    &cooldowns,
                ],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                // Nothing is lost: the next interval reports the counts of its own last period.
                tracing::warn!(key = %keys[0], more = keys.len() - 1, error = %e, "could not report failure rates; the next interval reports them again");
                return;
            }
        };
        let answered_at = self.clock.now_nanos();
        for row in &rows {
            match statements::decode_batch(row, during) {
                Ok((key, Ok(state))) => {
                    let Some(report) = due.iter().find(|r| *r.cell.key == *key) else {
                        continue;
                    };
                    let judged_ms: Option<i64> = row.try_get("o_judged_ms").ok().flatten();
                    if let (Some(ms), Some(rate)) = (judged_ms, report.cell.rate()) {
                        let left = duration_nanos(statements::remaining(ms));
                        rate.judged_until(answered_at.saturating_add(left));
                    }
                    let outlier: Option<bool> = row.try_get("o_outlier").ok().flatten();
                    if let (Some(outlier), Some(rate)) = (outlier, report.cell.rate()) {
                        // As long as the database counts the report: three intervals, at
                        // most the period (rc_report_rates).
                        let until = match outlier {
                            true => answered_at.saturating_add(
                                duration_nanos(
                                    report.period.min(self.opts.fleet_rate_interval * 3),
                                )
                                .max(1),
                            ),
                            false => 0,
                        };
                        if rate.outlier_until(answered_at, until) {
                            self.outlier_changed(&report.cell, outlier);
                        }
                    }
                    // An OPEN row is the fleet's rate reaching the limit: newer than what the
                    // cell holds, so it applies like any notification.
                    self.answered(&report.cell, Call::Other, &state);
                }
                Ok((key, Err(e))) => {
                    tracing::warn!(key = %key, error = %e, "the database refused a failure rate report");
                }
                Err(e) => tracing::warn!(error = %e, "unreadable answer to a failure rate report"),
            }
        }
    }

    /// The fleet started or stopped holding this instance an outlier of `cell`'s key: the
    /// metric, a log line and the change stream say so (`docs::outliers`).
    fn outlier_changed(&self, cell: &KeyCell, outlier: bool) {
        crate::telemetry::outlier(&self.opts.namespace, &cell.key, &self.holder, outlier);
        if outlier {
            tracing::warn!(key = %cell.key, instance = %self.holder, "the fleet holds this instance an outlier of the key: its failure rate is far above the rest of the fleet's, so its reports no longer count and its own breaker judges its window");
        } else {
            tracing::info!(key = %cell.key, instance = %self.holder, "no longer an outlier of the key");
        }
        cell.feed.news(
            &cell.key,
            cell.state(),
            crate::ChangeKind::Outlier { outlier },
        );
    }

    /// [`report_rates`](Self::report_rates) as a task of its own: the fleet started judging a
    /// key, and waits one interval for every instance's counts.
    pub(crate) async fn report_rates_now(self: Arc<Self>) {
        self.report_rates().await;
    }

    /// The fleet judges `key` for `left` from now: its breaker reports every interval until then.
    pub(crate) fn judged(&self, key: &str, left: Duration) {
        let now = self.clock.now_nanos();
        let until = now.saturating_add(duration_nanos(left));
        // Kept for a breaker not built yet (`SharedStore::judged_until`). The ended ones are
        // swept out each time the map reaches a power of two past JUDGED_SWEEP keys: it holds
        // little more than the keys judged now, at an amortized constant cost.
        let len = self.judged.len();
        if len >= JUDGED_SWEEP && len.is_power_of_two() {
            self.judged.retain(|_, u| *u > now);
        }
        let mut kept = self.judged.entry(Arc::from(key)).or_insert(0);
        *kept = (*kept).max(until);
        drop(kept);
        let Some(storage) = self.storage.upgrade() else {
            return;
        };
        if let Some(cell) = storage.cells.get(key).map(|c| c.clone()) {
            if let Some(rate) = cell.rate() {
                rate.judged_until(until);
            }
        }
    }
}
