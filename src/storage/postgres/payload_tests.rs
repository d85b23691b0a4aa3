//! Unit tests of `payload.rs`.

use super::*;
use proptest::prelude::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A payload as the trigger builds it, MAC included.
fn signed(op: &str, ns: &str, key: &str, state: &str, version: i64, ms: i64) -> String {
    let k = NotifyKey::new(KEY).expect("key");
    let text = format!(
        "2|{op}|{}:{ns}|{}:{key}|{state}|{version}|{ms}",
        ns.len(),
        key.len()
    );
    let mac = k.mac_hex(&text).expect("mac");
    serde_json::json!({"v":2,"op":op,"ns":ns,"key":key,"state":state,"version":version,"remaining_ms":ms,"mac":mac}).to_string()
}

/// The trigger's own output parses, spacing and all, and its MAC verifies.
#[test]
fn parses_trigger_output() {
    let k = NotifyKey::new(KEY).expect("key");
    let text = "2|row|7:default|3:k\"1|OPEN|12|100";
    let mac = k.mac_hex(text).expect("mac");
    let p = format!(
        r#"{{"v" : 2, "op" : "row", "ns" : "default", "key" : "k\"1", "state" : "OPEN", "version" : 12, "remaining_ms" : 100, "mac" : "{mac}"}}"#
    );
    let c = parse(&p).expect("valid payload");
    assert_eq!(c.key, "k\"1");
    assert_eq!(c.state, State::Open);
    assert_eq!(c.version, 12);
    assert_eq!(c.remaining, Duration::from_millis(100));
    assert_eq!(
        c.committed_at_us, None,
        "a trigger before migration 7 sends no time"
    );
    assert!(k.verify(&c));
}

/// Migration 7's commit time is read, and left out of the MAC: a payload verifies with or
/// without it, so listeners of either build accept the other's trigger during an upgrade.
#[test]
fn commit_time_is_read_and_not_signed() {
    let k = NotifyKey::new(KEY).expect("key");
    let mut wire: serde_json::Value =
        serde_json::from_str(&signed("row", "default", "k", "OPEN", 12, 100)).expect("json");
    wire["at_us"] = serde_json::json!(1_795_978_174_529_755_i64);
    let c = parse(&wire.to_string()).expect("valid payload");
    assert_eq!(c.committed_at_us, Some(1_795_978_174_529_755));
    assert!(k.verify(&c));
    wire["at_us"] = serde_json::json!("yesterday");
    assert!(matches!(
        parse(&wire.to_string()),
        Err(PayloadError::Malformed(_))
    ));
}

/// A MAC made with another key, or over other content, does not verify.
#[test]
fn forged_macs_do_not_verify() {
    let k = NotifyKey::new(KEY).expect("key");
    let good = parse(&signed("row", "d", "k", "OPEN", 3, 5)).expect("parses");
    assert!(k.verify(&good));
    let other = NotifyKey::new(b"another key of thirty-two bytes!").expect("key");
    assert!(!other.verify(&good));
    let tampered = signed("row", "d", "k", "OPEN", 3, 5).replace("\"version\":3", "\"version\":4");
    assert!(!k.verify(&parse(&tampered).expect("parses")));
    let no_mac = serde_json::json!({"v":2,"op":"row","ns":"d","key":"k","state":"OPEN","version":3,"remaining_ms":5,"mac":""}).to_string();
    assert!(!k.verify(&parse(&no_mac).expect("parses")));
    assert!(NotifyKey::new(b"short").is_err());
}

/// Malformed, truncated, oversized, old and future payloads are refused with their reason.
#[test]
fn refuses_bad_payloads() {
    let good = signed("row", "d", "k", "OPEN", 3, 5);
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
        parse(r#"{"v":3,"whatever":true}"#),
        Err(PayloadError::UnknownVersion(3))
    ));
    assert!(matches!(
        parse(r#"{"v":1,"ns":"d","key":"k","state":"OPEN","version":3,"remaining_ms":5}"#),
        Err(PayloadError::UnknownVersion(1))
    ));
    assert!(matches!(
        parse(&signed("drop", "d", "k", "OPEN", 3, 5)),
        Err(PayloadError::Malformed(_))
    ));
    let neg = parse(&signed("row", "d", "k", "BROKEN", 3, -5)).expect("parses");
    assert_eq!((neg.state, neg.remaining), (State::Closed, Duration::ZERO));
    assert_eq!(neg.unknown_state.as_deref(), Some("BROKEN"));
    let reset = parse(&signed("reset", "", "", "CLOSED", 9, 0)).expect("parses");
    assert_eq!(reset.op, Op::Reset);
}

proptest! {
    /// No input makes the parser panic.
    #[test]
    fn never_panics(s in ".{0,300}") {
        let _ = parse(&s);
    }

    /// Any key and namespace round-trip exactly through the JSON encoding, and the MAC input is
    /// rebuilt byte for byte.
    #[test]
    fn keys_round_trip(key in "\\PC{1,80}", ns in "\\PC{1,20}", version in any::<i64>(), ms in any::<i64>()) {
        let p = signed("row", &ns, &key, "HALF_OPEN", version, ms);
        let c = parse(&p).expect("generated payloads are valid");
        prop_assert!(NotifyKey::new(KEY).expect("key").verify(&c));
        prop_assert_eq!(c.key, key);
        prop_assert_eq!(c.namespace, ns);
        prop_assert_eq!(c.version, version);
        prop_assert_eq!(c.remaining, super::super::statements::remaining(ms));
    }
}
