//! Parsing and authenticating the notifications `rc_announce` sends (format 3,
//! `sql/objects/rc_announce.sql`).
//!
//! A payload counts only with a valid MAC: HMAC-SHA256 under the key that `rc_notify_secret()`
//! hands to the roles granted an instance's rights, over every field but the MAC, the commit
//! time `at_us` included. The listener then checks that time against the database's clock
//! (`listener.rs`), so a payload captured once cannot be sent again later. Every field is
//! checked and nothing here can panic.

use std::borrow::Cow;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::State;

/// NOTIFY refuses payloads of 8000 bytes or more; anything longer did not come from our trigger.
pub(crate) const MAX_PAYLOAD: usize = 8000;

/// The format this build reads and `rc_announce` writes.
const FORMAT: u64 = 3;

/// What a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// One row changed (or was deleted: then CLOSED).
    Row,
    /// The table was truncated: reload everything.
    Reset,
    /// A key's live configuration changed: read it again.
    Config,
    /// The fleet judges a key's failure rate for `remaining`: report it every interval.
    Judge,
    /// A group's counts changed: `key` is its name, `state` its own, `group` the counts.
    Group,
}

/// One change, as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) op: Op,
    pub(crate) namespace: String,
    pub(crate) key: String,
    pub(crate) state: State,
    /// The state string was not one we know; `state` is then Closed.
    pub(crate) unknown_state: Option<String>,
    pub(crate) version: i64,
    pub(crate) remaining: Duration,
    /// When the change committed, in microseconds since the Unix epoch by the database's clock.
    pub(crate) committed_at_us: i64,
    /// [`Op::Group`] only: its members open, and its members.
    pub(crate) group: Option<(u32, u32)>,
    /// The MAC as sent (lowercase hex) and the text it must cover.
    mac: String,
    signed: String,
}

/// Why a payload was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("payload of {0} bytes is over the 8000-byte NOTIFY limit")]
    TooLong(usize),
    #[error("payload is not the expected JSON: {0}")]
    Malformed(String),
    #[error("payload format version {0} is not supported (this build reads version 3)")]
    UnknownVersion(u64),
}

/// The key notifications are authenticated with: HMAC-SHA256 keyed once (the key's inner and
/// outer blocks hashed), then cloned for each message, which costs two SHA-256 runs over the
/// short message.
#[derive(Clone)]
pub(crate) struct NotifyKey(Hmac<Sha256>);

impl std::fmt::Debug for NotifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotifyKey(<redacted>)")
    }
}

impl NotifyKey {
    /// The key as `rc_notify_secret()` returns it (16 to 64 bytes).
    pub(crate) fn new(key: &[u8]) -> Result<NotifyKey, String> {
        if key.len() < 16 || key.len() > 64 {
            return Err(format!(
                "notification key of {} bytes (16 to 64 expected)",
                key.len()
            ));
        }
        Hmac::new_from_slice(key)
            .map(NotifyKey)
            .map_err(|e| format!("notification key: {e}"))
    }

    /// HMAC-SHA256 of `text`, lowercase hex (as the trigger sends it).
    #[cfg(test)]
    pub(crate) fn mac_hex(&self, text: &str) -> String {
        let mut mac = self.0.clone();
        mac.update(text.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// True when `change` carries a valid MAC under this key (compared in constant time).
    pub(crate) fn verify(&self, change: &Change) -> bool {
        let Some(sent) = unhex32(&change.mac) else {
            return false;
        };
        let mut mac = self.0.clone();
        mac.update(change.signed.as_bytes());
        mac.verify_slice(&sent).is_ok()
    }
}

/// 64 hex digits into 32 bytes.
fn unhex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[derive(Deserialize)]
struct Wire<'a> {
    v: u64,
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    ns: Cow<'a, str>,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    state: Cow<'a, str>,
    version: i64,
    remaining_ms: i64,
    at_us: i64,
    #[serde(borrow)]
    mac: Cow<'a, str>,
    /// Op "group" only.
    open: Option<i64>,
    members: Option<i64>,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u64,
}

/// Parses one payload (not yet authenticated: see [`NotifyKey::verify`]). Unknown state strings
/// become Closed (reported in `unknown_state`), a negative remaining time becomes zero.
pub(crate) fn parse(payload: &str) -> Result<Change, PayloadError> {
    if payload.len() >= MAX_PAYLOAD {
        return Err(PayloadError::TooLong(payload.len()));
    }
    let wire: Wire<'_> = match serde_json::from_str(payload) {
        Ok(w) => w,
        Err(e) => {
            // Another trigger may send a different shape: say so rather than "malformed".
            if let Ok(VersionOnly { v }) = serde_json::from_str(payload) {
                if v != FORMAT {
                    return Err(PayloadError::UnknownVersion(v));
                }
            }
            return Err(PayloadError::Malformed(e.to_string()));
        }
    };
    if wire.v != FORMAT {
        return Err(PayloadError::UnknownVersion(wire.v));
    }
    let op = match &*wire.op {
        "row" => Op::Row,
        "reset" => Op::Reset,
        "config" => Op::Config,
        "judge" => Op::Judge,
        "group" => Op::Group,
        other => {
            return Err(PayloadError::Malformed(format!(
                "unknown op {:?}",
                other.chars().take(20).collect::<String>()
            )))
        }
    };
    // Exactly what the trigger MACs: lengths in characters (the same in every server
    // encoding), so no two payloads share an input.
    let mut signed = format!(
        "3|{}|{}:{}|{}:{}|{}|{}|{}|{}",
        wire.op,
        wire.ns.chars().count(),
        wire.ns,
        wire.key.chars().count(),
        wire.key,
        wire.state,
        wire.version,
        wire.remaining_ms,
        wire.at_us
    );
    let group = match (op, wire.open, wire.members) {
        (Op::Group, Some(open), Some(members)) => {
            signed.push_str(&format!("|{open}|{members}"));
            let count = |n: i64| u32::try_from(n).ok();
            match (count(open), count(members)) {
                (Some(o), Some(m)) if o <= m => Some((o, m)),
                _ => {
                    return Err(PayloadError::Malformed(format!(
                        "group counts {open} of {members}"
                    )))
                }
            }
        }
        (Op::Group, _, _) => {
            return Err(PayloadError::Malformed(
                "a group's notification without its counts".into(),
            ))
        }
        _ => None,
    };
    if op != Op::Reset {
        // The columns are varchar(255): anything else was not written by the trigger, and must
        // not make the listener create cells without bound.
        for (what, text) in [("key", &wire.key), ("namespace", &wire.ns)] {
            let chars = text.chars().count();
            if chars == 0 || chars > 255 {
                return Err(PayloadError::Malformed(format!(
                    "{what} of {chars} characters (1 to 255 expected)"
                )));
            }
        }
    }
    let (state, unknown_state) = match (op, wire.state.parse::<State>()) {
        (Op::Row | Op::Group, Ok(s)) => (s, None),
        (Op::Row | Op::Group, Err(_)) => (State::Closed, Some(wire.state.into_owned())),
        _ => (State::Closed, None),
    };
    Ok(Change {
        op,
        namespace: wire.ns.into_owned(),
        key: wire.key.into_owned(),
        state,
        unknown_state,
        version: wire.version,
        remaining: super::statements::remaining(wire.remaining_ms),
        committed_at_us: wire.at_us,
        group,
        mac: wire.mac.into_owned(),
        signed,
    })
}

#[cfg(test)]
#[path = "payload_tests.rs"]
mod tests;
