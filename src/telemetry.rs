//! Metrics through the [`metrics`] facade: every name, label and handle in one place.
//!
//! Handles are made once (per key when a cell is made, per breaker handle for the opt-in call
//! metrics, per instance for the PostgreSQL ones) and kept, so a counted event is one call on a
//! cached handle, never a registry lookup. With no recorder installed when they are made they are
//! no-op handles for good: install the recorder before making storages and breakers.
//!
//! Nothing here runs on the closed-breaker admission or the clean-success path (`cell/mod.rs`); the
//! only per-call metrics are opt-in ([`Builder::call_metrics`](crate::Builder::call_metrics)).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::{ChangeOrigin, RejectReason, State};

/// The `namespace` label of keys in an in-memory storage (PostgreSQL storages use their
/// namespace).
pub(crate) const MEMORY_NAMESPACE: &str = "in-memory";

pub(crate) const STATE: &str = "resilient_circuit_state";
pub(crate) const CALLS: &str = "resilient_circuit_calls_total";
pub(crate) const REJECTED: &str = "resilient_circuit_rejected_calls_total";
pub(crate) const CALL_DURATION: &str = "resilient_circuit_call_duration_seconds";
pub(crate) const TRANSITIONS: &str = "resilient_circuit_transitions_total";
pub(crate) const WOULD_TRIP: &str = "resilient_circuit_would_trip_total";
pub(crate) const OPEN_UNTIL: &str = "resilient_circuit_open_until_timestamp_seconds";
pub(crate) const PROBES: &str = "resilient_circuit_half_open_probes_in_flight";
pub(crate) const CONNECTED: &str = "resilient_circuit_listener_connected";
pub(crate) const DEGRADED: &str = "resilient_circuit_degraded";
pub(crate) const RECONNECTS: &str = "resilient_circuit_listener_reconnects_total";
pub(crate) const NOTIFICATIONS: &str = "resilient_circuit_notifications_total";
pub(crate) const BAD_NOTIFICATIONS: &str = "resilient_circuit_bad_notifications_total";
pub(crate) const RESYNCS: &str = "resilient_circuit_resyncs_total";
pub(crate) const STORE_DURATION: &str = "resilient_circuit_store_operation_duration_seconds";
pub(crate) const STORE_ERRORS: &str = "resilient_circuit_store_errors_total";
pub(crate) const PENDING: &str = "resilient_circuit_pending_publications";
pub(crate) const NOTIFICATION_LAG: &str = "resilient_circuit_notification_lag_seconds";
pub(crate) const QUEUE_USAGE: &str = "resilient_circuit_notification_queue_usage";
pub(crate) const CONFIRMED: &str = "resilient_circuit_confirmed_notifications_total";
pub(crate) const OUTLIER: &str = "resilient_circuit_outlier";
pub(crate) const REFUSED_TRIPS: &str = "resilient_circuit_refused_trips_total";
pub(crate) const GROUP_OPEN_MEMBERS: &str = "resilient_circuit_group_open_members";
pub(crate) const GROUP_MEMBERS: &str = "resilient_circuit_group_members";
pub(crate) const GROUP_OPEN: &str = "resilient_circuit_group_open";

/// The label value of a state: lower case, as Prometheus labels usually are.
pub(crate) const fn state_label(s: State) -> &'static str {
    match s {
        State::Closed => "closed",
        State::Open => "open",
        State::HalfOpen => "half_open",
    }
}

const STATES: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

/// Describes every metric to the recorder (HELP lines), once per process.
fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_gauge!(
            STATE,
            "1 for the state the breaker is in, 0 for the two others"
        );
        describe_counter!(
            CALLS,
            "Calls that ran, by outcome (opt-in: Builder::call_metrics)"
        );
        describe_counter!(REJECTED, "Calls rejected without running, by reason");
        describe_histogram!(
            CALL_DURATION,
            Unit::Seconds,
            "Duration of calls run through call/call_with or the tower layer (opt-in: Builder::call_metrics)"
        );
        describe_counter!(TRANSITIONS, "State transitions applied to the key here");
        describe_counter!(
            WOULD_TRIP,
            "Times a metrics-only breaker's window reached its limit (a normal one would have opened)"
        );
        describe_gauge!(
            OPEN_UNTIL,
            Unit::Seconds,
            "Unix time at which the current cooldown ends; 0 when not open"
        );
        describe_gauge!(PROBES, "Half-open probe calls admitted and not finished");
        describe_gauge!(CONNECTED, "1 while the LISTEN connection is up");
        describe_gauge!(DEGRADED, "1 while breakers run on local state only");
        describe_counter!(RECONNECTS, "Times the LISTEN connection was lost");
        describe_counter!(NOTIFICATIONS, "Notifications received on the channel");
        describe_counter!(
            BAD_NOTIFICATIONS,
            "Notifications ignored as malformed or forged"
        );
        describe_counter!(RESYNCS, "Reloads of every row of the namespace");
        describe_histogram!(
            STORE_DURATION,
            Unit::Seconds,
            "Duration of database operations, by operation"
        );
        describe_counter!(STORE_ERRORS, "Failed database operations, by operation");
        describe_gauge!(
            PENDING,
            "Keys with a trip or override the database has not accepted yet"
        );
        describe_histogram!(
            NOTIFICATION_LAG,
            Unit::Seconds,
            "From a change's commit to this instance's snapshot, by the database's clock"
        );
        describe_gauge!(
            QUEUE_USAGE,
            "How full the server's notification queue is, 0 to 1 (a full one fails every commit that notifies)"
        );
        describe_gauge!(
            OUTLIER,
            "1 while the fleet holds this instance an outlier of the key (its failure rate far above the rest of the fleet's), 0 after"
        );
        describe_counter!(
            REFUSED_TRIPS,
            "Trips of this instance the database left CLOSED (a group at its cap)"
        );
        describe_gauge!(
            GROUP_OPEN_MEMBERS,
            "A group's members OPEN or HALF_OPEN, fleet-wide, as the database last counted them"
        );
        describe_gauge!(GROUP_MEMBERS, "A group's members");
        describe_gauge!(
            GROUP_OPEN,
            "1 while the group as a whole is OPEN (its open members reach its threshold), else 0"
        );
        describe_counter!(
            CONFIRMED,
            "Notifications read again from the table before they counted (stale, replayed, or lowering a state)"
        );
    });
}

/// Whether the fleet holds `instance` an outlier of `key` (`docs::outliers`); set when that
/// changes, which is rare, so the handle is not kept.
pub(crate) fn outlier(namespace: &str, key: &str, instance: &str, outlier: bool) {
    describe();
    metrics::gauge!(OUTLIER, "key" => key.to_owned(), "namespace" => namespace.to_owned(),
        "instance" => instance.to_owned())
    .set(if outlier { 1.0 } else { 0.0 });
}

/// A group's state as this instance last heard it (`docs::groups`); set when it changes, so
/// the handles are not kept.
pub(crate) fn group(namespace: &str, group: &str, state: &crate::GroupState) {
    describe();
    let labels = [
        ("namespace", namespace.to_owned()),
        ("group", group.to_owned()),
    ];
    metrics::gauge!(GROUP_OPEN_MEMBERS, &labels).set(f64::from(state.open));
    metrics::gauge!(GROUP_MEMBERS, &labels).set(f64::from(state.members));
    metrics::gauge!(GROUP_OPEN, &labels).set(if state.state == State::Open { 1.0 } else { 0.0 });
}

/// One key's metrics in one storage, made with its cell.
pub(crate) struct KeyMetrics {
    key: String,
    namespace: String,
    state: [Gauge; 3],
    rejected: [Counter; 3],
    open_until: Gauge,
    probes: Gauge,
}

impl KeyMetrics {
    pub(crate) fn new(key: &str, namespace: &str) -> Self {
        describe();
        let (k, ns) = (key.to_owned(), namespace.to_owned());
        let state = STATES.map(|s| {
            metrics::gauge!(STATE, "key" => k.clone(), "namespace" => ns.clone(), "state" => state_label(s))
        });
        let rejected = RejectReason::ALL.map(|r| {
            metrics::counter!(REJECTED, "key" => k.clone(), "namespace" => ns.clone(), "reason" => r.as_str())
        });
        KeyMetrics {
            open_until: metrics::gauge!(OPEN_UNTIL, "key" => k.clone(), "namespace" => ns.clone()),
            probes: metrics::gauge!(PROBES, "key" => k.clone(), "namespace" => ns.clone()),
            state,
            rejected,
            key: k,
            namespace: ns,
        }
    }

    /// Sets all three state gauges (the one of `now` to 1, the others to 0) and the cooldown's
    /// end (`open_for`: what is left of it, when open).
    pub(crate) fn state(&self, now: State, open_for: Option<Duration>) {
        for (s, g) in STATES.iter().zip(&self.state) {
            g.set(if *s == now { 1.0 } else { 0.0 });
        }
        self.open_until(open_for);
    }

    pub(crate) fn open_until(&self, open_for: Option<Duration>) {
        let at = open_for.map_or(0.0, |left| {
            (SystemTime::now() + left)
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        self.open_until.set(at);
    }

    /// A trip of ours the database left CLOSED (a group at its cap); rare, so not kept.
    pub(crate) fn refused_trip(&self) {
        metrics::counter!(REFUSED_TRIPS, "key" => self.key.clone(), "namespace" => self.namespace.clone())
            .increment(1);
    }

    pub(crate) fn transition(&self, from: State, to: State, origin: ChangeOrigin) {
        let origin = match origin {
            ChangeOrigin::Remote => "remote",
            _ => "local",
        };
        metrics::counter!(
            TRANSITIONS,
            "key" => self.key.clone(),
            "namespace" => self.namespace.clone(),
            "from" => state_label(from),
            "to" => state_label(to),
            "origin" => origin
        )
        .increment(1);
    }

    /// A metrics-only breaker's window reached its limit (`Mode::MetricsOnly`).
    pub(crate) fn would_trip(&self) {
        metrics::counter!(
            WOULD_TRIP,
            "key" => self.key.clone(),
            "namespace" => self.namespace.clone()
        )
        .increment(1);
    }

    pub(crate) fn rejected(&self, reason: RejectReason) {
        self.rejected[reason as usize].increment(1);
    }

    pub(crate) fn probe_started(&self) {
        self.probes.increment(1.0);
    }

    pub(crate) fn probe_ended(&self) {
        self.probes.decrement(1.0);
    }
}

/// A call's outcome, for [`CallMetrics`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallOutcome {
    Success,
    Failure,
    Cancelled,
}

/// The opt-in per-call metrics of one breaker handle.
pub(crate) struct CallMetrics {
    calls: [Counter; 3],
    duration: Histogram,
}

impl CallMetrics {
    pub(crate) fn new(key: &str, namespace: &str) -> Self {
        describe();
        let (k, ns) = (key.to_owned(), namespace.to_owned());
        CallMetrics {
            calls: ["success", "failure", "cancelled"].map(|o| {
                metrics::counter!(CALLS, "key" => k.clone(), "namespace" => ns.clone(), "outcome" => o)
            }),
            duration: metrics::histogram!(CALL_DURATION, "key" => k, "namespace" => ns),
        }
    }

    #[inline]
    pub(crate) fn call(&self, outcome: CallOutcome) {
        self.calls[outcome as usize].increment(1);
    }

    pub(crate) fn duration(&self, d: Duration) {
        self.duration.record(d.as_secs_f64());
    }
}

/// One PostgreSQL instance's metrics, labelled by its namespace.
pub(crate) struct InstanceMetrics {
    namespace: String,
    connected: Gauge,
    degraded: Gauge,
    pub(crate) reconnects: Counter,
    pub(crate) notifications: Counter,
    pub(crate) bad_notifications: Counter,
    pub(crate) resyncs: Counter,
    pub(crate) pending: Gauge,
    pub(crate) notification_lag: Histogram,
    pub(crate) queue_usage: Gauge,
    pub(crate) confirmed: Counter,
}

impl InstanceMetrics {
    pub(crate) fn new(namespace: &str) -> Self {
        describe();
        let ns = namespace.to_owned();
        InstanceMetrics {
            connected: metrics::gauge!(CONNECTED, "namespace" => ns.clone()),
            degraded: metrics::gauge!(DEGRADED, "namespace" => ns.clone()),
            reconnects: metrics::counter!(RECONNECTS, "namespace" => ns.clone()),
            notifications: metrics::counter!(NOTIFICATIONS, "namespace" => ns.clone()),
            bad_notifications: metrics::counter!(BAD_NOTIFICATIONS, "namespace" => ns.clone()),
            resyncs: metrics::counter!(RESYNCS, "namespace" => ns.clone()),
            pending: metrics::gauge!(PENDING, "namespace" => ns.clone()),
            notification_lag: metrics::histogram!(NOTIFICATION_LAG, "namespace" => ns.clone()),
            queue_usage: metrics::gauge!(QUEUE_USAGE, "namespace" => ns.clone()),
            confirmed: metrics::counter!(CONFIRMED, "namespace" => ns.clone()),
            namespace: ns,
        }
    }

    pub(crate) fn connected(&self, connected: bool) {
        self.connected.set(if connected { 1.0 } else { 0.0 });
        self.degraded.set(if connected { 0.0 } else { 1.0 });
    }

    /// One database operation (`op`: a short, fixed name) took `took`; `ok` says how it ended.
    pub(crate) fn store_operation(&self, op: &'static str, took: Duration, ok: bool) {
        metrics::histogram!(STORE_DURATION, "namespace" => self.namespace.clone(), "op" => op)
            .record(took.as_secs_f64());
        if !ok {
            metrics::counter!(STORE_ERRORS, "namespace" => self.namespace.clone(), "op" => op)
                .increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The first cells of the table rows of `docs::operating` that start with `prefix`.
    fn documented(prefix: &str) -> std::collections::BTreeSet<String> {
        include_str!("docs/operating.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .filter_map(|l| l.split('`').next())
            .filter(|name| name.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    /// The string constants of `src` whose value starts with `prefix`.
    fn in_code(src: &str, prefix: &str) -> std::collections::BTreeSet<String> {
        src.lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .flat_map(|l| l.split('"').skip(1).step_by(2))
            .filter(|s| s.starts_with(prefix) && !s.contains(' '))
            .map(str::to_owned)
            .collect()
    }

    /// `docs::operating` lists every metric this file defines, and no other.
    #[test]
    fn the_metrics_table_lists_every_metric() {
        let src = include_str!("telemetry.rs");
        let code = src.split("\n#[cfg(test)]").next().unwrap_or(src);
        let code = in_code(code, "resilient_circuit_");
        assert!(code.len() >= 20, "metric names not found: {code:?}");
        assert_eq!(documented("resilient_circuit_"), code);
    }

    /// `docs::operating`'s `op` table lists every label a database operation is recorded with.
    #[test]
    fn the_op_table_lists_every_operation() {
        let statements = include_str!("storage/postgres/statements.rs");
        let mut code: std::collections::BTreeSet<String> = statements
            .lines()
            .filter_map(|l| l.trim().strip_prefix("op: \""))
            .filter_map(|l| l.split('"').next())
            .map(str::to_owned)
            .collect();
        for src in [
            include_str!("storage/postgres/sync.rs"),
            include_str!("storage/postgres/poll.rs"),
        ] {
            for l in src.lines().filter(|l| l.contains(".store_operation(\"")) {
                if let Some(op) = l.split('"').nth(1) {
                    code.insert(op.to_owned());
                }
            }
        }
        assert!(code.len() >= 8, "operations not found: {code:?}");
        let table: std::collections::BTreeSet<String> = include_str!("docs/operating.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! | `op` |"))
            .skip(2)
            .take_while(|l| l.starts_with("//! | `"))
            .filter_map(|l| {
                l.strip_prefix("//! | `")?
                    .split('`')
                    .next()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(table, code);
    }
}
