//! Every statement the instance sends, in one place, with the columns it reads back.
//!
//! Each function is defined in `sql/objects/<name>.sql`; rows are decoded
//! once, by column name, into `RowState`, so a migration that renames or retypes a column fails
//! loudly here instead of being misread.

use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::Row;

use crate::error::StorageError;
use crate::fleet::precedence::Remote;
use crate::State;

/// Every row of a namespace: `o_key, o_state, o_version, o_remaining_ms`.
pub(crate) const SNAPSHOT: &str =
    "SELECT o_key, o_state, o_version, o_remaining_ms FROM public.rc_snapshot($1)";

/// Some rows of a namespace, to confirm notifications it does not take on trust: by key, not
/// through `rc_snapshot` (which would read the whole namespace for each batch).
pub(crate) const ROWS: &str =
    "SELECT o_key, o_state, o_version, o_remaining_ms FROM public.rc_rows($1, $2)";

/// The database's clock (microseconds since the Unix epoch, as notifications' `at_us`) and the
/// notification queue's usage: `o_now_us`, `o_queue_usage`.
pub(crate) const SERVER_STATUS: &str =
    "SELECT o_now_us, o_queue_usage FROM public.rc_server_status()";

/// The changes of a namespace (and resets) not visible to a snapshot, with the snapshot of this
/// poll in every row: `o_snapshot, o_key, o_state, o_version, o_remaining_ms, o_reset, o_at_us`.
/// A `NULL` snapshot asks for the current snapshot only (one row, no change). The function is in
/// `sql/objects/rc_changes_since.sql`.
pub(crate) const CHANGES_SINCE: Call = Call {
    op: "poll",
    sql: "SELECT * FROM public.rc_changes_since($1, $2)",
    types: &[Type::TEXT, Type::TEXT],
};

/// Names this instance on a pooled session, for the change log's `actor` (`sql/objects/rc_log_change.sql`).
pub(crate) const SET_INSTANCE: &str =
    "SELECT pg_catalog.set_config('resilient_circuit.instance', $1, false)";

/// The notification key and channel (`o_key`, `o_channel`), for roles granted an instance's
/// rights (refused otherwise).
pub(crate) const NOTIFY_SECRET: &str = "SELECT o_key, o_channel FROM public.rc_notify_secret()";

/// The live configurations of a namespace, all (`$2` NULL) or of some keys.
pub(crate) const CONFIGS: &str = "SELECT * FROM public.rc_configs($1, $2)";

/// A call whose commit does not wait for the WAL to reach the disk (`synchronous_commit` off
/// for its transaction only): the transitions an instance decides from outcomes it saw (trips,
/// probes, votes, rate reports). They reach the other instances as soon as they commit, about
/// 0.4 ms sooner on a disk that takes that long to flush; a server crash within the WAL writer's
/// delay (3 × `wal_writer_delay`, 600 ms by default) may forget one, and the instances then
/// reload the row as the database kept it and judge the dependency again. Manual overrides and
/// live configuration stay durable.
macro_rules! decided {
    ($call:literal) => {
        concat!(
            "SELECT t.* FROM pg_catalog.set_config('synchronous_commit', 'off', true) AS s, ",
            $call,
            " AS t"
        )
    };
}

/// A transition function's call: the statement and its parameters' types. Prepared with these
/// types once per connection on a session of the instance's own, else sent as an unnamed
/// statement with them (one round trip, nothing prepared) so that it works through a pooler in
/// transaction mode: see `pool.rs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    /// The `op` label of the call's metrics (`resilient_circuit_store_operation_duration_seconds`).
    pub(crate) op: &'static str,
    pub(crate) sql: &'static str,
    pub(crate) types: &'static [Type],
}

/// Trips: namespace, keys, cooldowns (ms), failure counts, logs, bases.
pub(crate) const TRIP_MANY: Call = Call {
    op: "publish_trips",
    sql: decided!("public.rc_trip_many($1, $2, $3, $4, $5, $6)"),
    types: &[
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
        Type::INT4_ARRAY,
        Type::JSONB_ARRAY,
        Type::INT8_ARRAY,
    ],
};

/// A group's members: namespace, group, keys, the cap's numerator and denominator, the
/// threshold's (NULLs: none); answers the group's state (`decode_group`).
pub(crate) const GROUP_JOIN: Call = Call {
    op: "join_group",
    sql: "SELECT * FROM public.rc_group_join($1, $2, $3, $4, $5, $6, $7)",
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::INT4,
    ],
};

/// The state of the groups named: namespace, names; a row per group (`decode_group`).
pub(crate) const GROUP_STATES: Call = Call {
    op: "group_states",
    sql: "SELECT * FROM public.rc_group_states($1, $2)",
    types: &[Type::TEXT, Type::TEXT_ARRAY],
};

/// A group's state from a row of `rc_group_view`'s columns (`o_members`, `o_open`, `o_state`,
/// `o_version`).
pub(crate) fn decode_group(
    row: &Row,
    during: &'static str,
) -> Result<crate::GroupState, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db(during, e);
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    let state: String = row.try_get("o_state").map_err(err)?;
    Ok(crate::GroupState {
        open: count(row.try_get("o_open").map_err(err)?),
        members: count(row.try_get("o_members").map_err(err)?),
        state: if state == "OPEN" {
            State::Open
        } else {
            State::Closed
        },
        version: row.try_get("o_version").map_err(err)?,
    })
}

/// Manual overrides: namespace, keys, states, cooldowns (ms).
pub(crate) const FORCE_MANY: Call = Call {
    op: "force_states",
    sql: "SELECT * FROM public.rc_force_many($1, $2, $3, $4)",
    types: &[
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
    ],
};

/// One probe lease: namespace, key, holder, lease (ms), probes, close threshold.
pub(crate) const ACQUIRE_PROBE: Call = Call {
    op: "acquire_probe",
    sql: decided!("public.rc_acquire_probe($1, $2, $3, $4, $5, $6)"),
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT4,
        Type::INT4,
    ],
};

/// One probe result: namespace, key, lease, success, probes, close threshold, cooldown (ms),
/// maximum cooldown (ms; NULL for a fixed cooldown, `sql/objects/rc_report_probe.sql`).
pub(crate) const REPORT_PROBE: Call = Call {
    op: "report_probe",
    sql: decided!("public.rc_report_probe($1, $2, $3, $4, $5, $6, $7, $8)"),
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::BOOL,
        Type::INT4,
        Type::INT4,
        Type::INT8,
        Type::INT8,
    ],
};

/// A quorum vote (`sql/objects/rc_vote.sql`): namespace, key, voter (the instance's stable
/// name), failures, calls, quorum, period (ms), cooldown (ms), basis. Answers as the others, plus
/// `o_votes`.
pub(crate) const VOTE: Call = Call {
    op: "vote",
    sql: decided!("public.rc_vote($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT4,
        Type::INT4,
        Type::INT8,
        Type::INT8,
        Type::INT8,
    ],
};

/// Fleet failure rates (`sql/objects/rc_report_rates.sql`): namespace, reporter (the instance's
/// stable name), its reporting interval (ms), keys, failures and calls over its last period,
/// limit numerators, limit denominators, minimum calls, periods (ms), cooldowns (ms). Answers as
/// the batched functions, plus `o_fleet_failures`, `o_fleet_calls` and `o_judged_ms`.
pub(crate) const REPORT_RATES: Call = Call {
    op: "report_rate",
    sql: decided!("public.rc_report_rates($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"),
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT_ARRAY,
        Type::INT8_ARRAY,
        Type::INT8_ARRAY,
        Type::INT4_ARRAY,
        Type::INT4_ARRAY,
        Type::INT4_ARRAY,
        Type::INT8_ARRAY,
        Type::INT8_ARRAY,
    ],
};

/// The keys of a namespace under a fleet-rate judgement: `o_key`, `o_remaining_ms`.
pub(crate) const JUDGED: &str = "SELECT o_key, o_remaining_ms FROM public.rc_judged($1)";

/// The functions the statements above and the administration API call, with their argument
/// types, as `pg_proc` lists them: `check` reports any the catalog lacks, so a migration cannot
/// drift from the code unseen.
pub(crate) const FUNCTIONS: &[&str] = &[
    "rc_snapshot(text)",
    "rc_rows(text,text[])",
    "rc_configs(text,text[])",
    "rc_server_status()",
    "rc_notify_secret()",
    "rc_changes_since(text,text)",
    "rc_trip_many(text,text[],bigint[],integer[],jsonb[],bigint[])",
    "rc_force_many(text,text[],text[],bigint[])",
    "rc_acquire_probe(text,text,text,bigint,integer,integer)",
    "rc_report_probe(text,text,bigint,boolean,integer,integer,bigint,bigint)",
    "rc_vote(text,text,text,integer,integer,integer,bigint,bigint,bigint)",
    "rc_report_rates(text,text,bigint,text[],bigint[],bigint[],integer[],integer[],integer[],bigint[],bigint[])",
    "rc_judged(text)",
    "rc_status(text)",
    "rc_history(text,text,bigint)",
    "rc_force(text,text,text,bigint)",
    "rc_delete(text,text)",
    "rc_configure(text,text,text,bigint,integer,integer,integer,integer,boolean,text,text,integer,bigint,integer,integer,integer,bigint)",
    "rc_group_join(text,text,text[],integer,integer,integer,integer)",
    "rc_group_states(text,text[])",
    "rc_group_configure(text,text,integer,integer,integer,integer,boolean,text)",
];

/// One row as a transition function answers it (`o_state, o_version, o_remaining_ms,
/// o_lease_id, o_retry_ms`, and for the batched ones `o_key`, `o_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowState {
    /// The state column as written (an unknown string is kept for the warning).
    pub(crate) state: String,
    pub(crate) version: i64,
    pub(crate) remaining_ms: i64,
    /// A probe lease granted by this call.
    pub(crate) lease_id: Option<i64>,
    /// No lease granted: how long until one may be.
    pub(crate) retry_ms: Option<i64>,
}

impl RowState {
    /// The row as a [`Remote`]; an unknown state string reads as CLOSED (with a warning).
    pub(crate) fn remote(&self, key: &str) -> Remote {
        Remote {
            state: parse_state(key, &self.state),
            version: self.version,
            remaining: remaining(self.remaining_ms),
        }
    }
}

/// Decodes a transition function's answer.
pub(crate) fn decode(row: &Row, during: &'static str) -> Result<RowState, StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db(during, e);
    Ok(RowState {
        state: row.try_get("o_state").map_err(err)?,
        version: row.try_get("o_version").map_err(err)?,
        remaining_ms: row.try_get("o_remaining_ms").map_err(err)?,
        lease_id: row.try_get("o_lease_id").map_err(err)?,
        retry_ms: row.try_get("o_retry_ms").map_err(err)?,
    })
}

/// Decodes `rc_vote`'s answer: the row, and the live votes counted with this one.
pub(crate) fn decode_vote(row: &Row) -> Result<(RowState, i32), StorageError> {
    let during = "casting a vote";
    let votes = row
        .try_get("o_votes")
        .map_err(|e| StorageError::db(during, e))?;
    Ok((decode(row, during)?, votes))
}

/// Decodes one row of a batched function: its key, and its state or the error the database
/// gave for that key alone.
pub(crate) fn decode_batch(
    row: &Row,
    during: &'static str,
) -> Result<(String, Result<RowState, String>), StorageError> {
    let err = |e: tokio_postgres::Error| StorageError::db(during, e);
    let key: String = row.try_get("o_key").map_err(err)?;
    let error: Option<String> = row.try_get("o_error").map_err(err)?;
    if let Some(e) = error {
        return Ok((key, Err(e)));
    }
    Ok((key, Ok(decode(row, during)?)))
}

/// Decodes a snapshot row: key and state.
pub(crate) fn decode_snapshot(row: &Row) -> Result<(String, Remote), StorageError> {
    let during = "reading the snapshot";
    let err = |e: tokio_postgres::Error| StorageError::db(during, e);
    let key: String = row.try_get("o_key").map_err(err)?;
    let state: String = row.try_get("o_state").map_err(err)?;
    let remote = Remote {
        state: parse_state(&key, &state),
        version: row.try_get("o_version").map_err(err)?,
        remaining: remaining(row.try_get("o_remaining_ms").map_err(err)?),
    };
    Ok((key, remote))
}

/// A state column; unknown strings (a hand-written row) count as CLOSED, with a warning.
pub(crate) fn parse_state(key: &str, state: &str) -> State {
    state.parse::<State>().unwrap_or_else(|_| {
        tracing::warn!(key = %key, state = %state, "row has an unknown state; treating it as CLOSED");
        State::Closed
    })
}

/// Milliseconds from the database into a duration; negative means over.
pub(crate) fn remaining(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A duration as the functions take it: whole milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
