//! Unit tests of `payload.rs`.

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
    let neg = parse(r#"{"v":1,"ns":"d","key":"k","state":"BROKEN","version":3,"remaining_ms":-5}"#)
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
