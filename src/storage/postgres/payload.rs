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
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The trigger's own output parses, spacing and all.
    #[test]
    fn parses_trigger_output() {
        let p = r#"{"v" : 1, "ns" : "default", "key" : "k\"1", "state" : "OPEN", "version" : 12, "remaining_ms" : 100}"#;
        let c = parse(p).expect("valid payload");
        assert_eq!(c.key, "k\"1");
        assert_eq!(c.state, State::Open);
        assert_eq!(c.version, 12);
        assert_eq!(c.remaining, Duration::from_millis(100));
    }

    /// Malformed, truncated, oversized and future payloads are refused with their reason.
    #[test]
    fn refuses_bad_payloads() {
        let good = r#"{"v":1,"ns":"d","key":"k","state":"OPEN","version":3,"remaining_ms":5}"#;
        assert!(matches!(
            parse(&good[..good.len() - 3]),
            Err(PayloadError::Malformed(_))
        ));
        assert!(matches!(parse("not json"), Err(PayloadError::Malformed(_))));
        assert!(matches!(
            parse(&"x".repeat(9000)),
            Err(PayloadError::TooLong(9000))
        ));
        assert!(matches!(
            parse(r#"{"v":2,"whatever":true}"#),
            Err(PayloadError::UnknownVersion(2))
        ));
        let neg =
            parse(r#"{"v":1,"ns":"d","key":"k","state":"BROKEN","version":3,"remaining_ms":-5}"#)
                .expect("parses");
        assert_eq!((neg.state, neg.remaining), (State::Closed, Duration::ZERO));
        assert_eq!(neg.unknown_state.as_deref(), Some("BROKEN"));
    }

    proptest! {
        /// No input makes the parser panic.
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = parse(&s);
        }

        /// Any key and namespace round-trip exactly through the JSON encoding.
        #[test]
        fn keys_round_trip(key in "\\PC{1,80}", ns in "\\PC{1,20}", version in any::<i64>(), ms in any::<i64>()) {
            let p = serde_json::json!({"v":1,"ns":ns,"key":key,"state":"HALF_OPEN","version":version,"remaining_ms":ms}).to_string();
            let c = parse(&p).expect("generated payloads are valid");
            prop_assert_eq!(c.key, key);
            prop_assert_eq!(c.namespace, ns);
            prop_assert_eq!(c.version, version);
            prop_assert_eq!(c.remaining, remaining(ms));
        }
    }
}
