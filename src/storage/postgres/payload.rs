//! Parsing of the NOTIFY payloads the trigger `rc_notify_change` sends (version 1).
//!
//! Payloads come from the database, and any writer with access to the channel can send one, so
//! every field is checked and nothing here can panic.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;

use crate::State;

/// NOTIFY refuses payloads of 8000 bytes or more; anything longer did not come from our trigger.
pub(crate) const MAX_PAYLOAD: usize = 8000;

/// One change of one row, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) namespace: String,
    pub(crate) key: String,
    pub(crate) state: State,
    /// The state string was not one we know; `state` is then Closed.
    pub(crate) unknown_state: Option<String>,
    pub(crate) version: i64,
    pub(crate) remaining: Duration,
}

/// Why a payload was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("payload of {0} bytes is over the 8000-byte NOTIFY limit")]
    TooLong(usize),
    #[error("payload is not the expected JSON: {0}")]
    Malformed(String),
    #[error("payload format version {0} is not supported (this build reads version 1)")]
    UnknownVersion(u64),
}

#[derive(Deserialize)]
struct Wire<'a> {
    v: u64,
    #[serde(borrow)]
    ns: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    state: Cow<'a, str>,
    version: i64,
    remaining_ms: i64,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

/// Parses one payload. Unknown state strings become Closed (reported in `unknown_state`), a
/// negative remaining time becomes zero.
pub(crate) fn parse(payload: &str) -> Result<Change, PayloadError> {
    if payload.len() >= MAX_PAYLOAD {
        return Err(PayloadError::TooLong(payload.len()));
    }
    let wire: Wire<'_> = match serde_json::from_str(payload) {
        Ok(w) => w,
        Err(e) => {
            // A newer trigger may send a different shape: say so rather than "malformed".
            if let Ok(VersionOnly { v }) = serde_json::from_str(payload) {
                if v != 1 {
                    return Err(PayloadError::UnknownVersion(v));
                }
            }
            return Err(PayloadError::Malformed(e.to_string()));
        }
    };
    if wire.v != 1 {
        return Err(PayloadError::UnknownVersion(wire.v));
    }
    // The columns are varchar(255): anything else was not written by the trigger, and must not
    // make the listener create cells without bound.
    for (what, text) in [("key", &wire.key), ("namespace", &wire.ns)] {
        let chars = text.chars().count();
        if chars == 0 || chars > 255 {
            return Err(PayloadError::Malformed(format!(
                "{what} of {chars} characters (1 to 255 expected)"
            )));
        }
    }
    let (state, unknown_state) = match wire.state.parse::<State>() {
        Ok(s) => (s, None),
        Err(_) => (State::Closed, Some(wire.state.into_owned())),
    };
    Ok(Change {
        namespace: wire.ns.into_owned(),
        key: wire.key.into_owned(),
        state,
        unknown_state,
        version: wire.version,
        remaining: remaining(wire.remaining_ms),
    })
}

/// Milliseconds from the database into a duration; negative means over.
pub(crate) fn remaining(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
