//! Unit tests of `payload.rs`.

use super::*;
use proptest::prelude::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const AT: i64 = 1_795_978_174_529_755;

/// A payload as the trigger builds it, MAC included.
#[allow(clippy::too_many_arguments)]
fn signed(op: &str, ns: &str, key: &str, state: &str, version: i64, ms: i64, at: i64) -> String {
    let k = NotifyKey::new(KEY).expect("key");
    let text = format!(
        "3|{op}|{}:{ns}|{}:{key}|{state}|{version}|{ms}|{at}",
        ns.chars().count(),
        key.chars().count()
    );
    let mac = k.mac_hex(&text);
    serde_json::json!({"v":3,"op":op,"ns":ns,"key":key,"state":state,"version":version,
                       "remaining_ms":ms,"at_us":at,"mac":mac})
    .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 of `data` under `key` by the primitive itself (any key length).
fn raw_mac(key: &[u8], data: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(data);
    hex(&mac.finalize().into_bytes())
}

/// HMAC-SHA256 against RFC 4231's test vectors: cases 1 and 4 through `NotifyKey` (keys of a
/// length it accepts), and 2 and 6 (a 4-byte key, a key longer than a block) through the
/// primitive it is built on.
#[test]
fn hmac_matches_rfc_4231() {
    let case1 = NotifyKey::new(&[0x0b; 20]).expect("key");
    assert_eq!(
        case1.mac_hex("Hi There"),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    let case4_key: Vec<u8> = (1..=25).collect();
    let mut case4 = NotifyKey::new(&case4_key).expect("key").0;
    case4.update(&[0xcd; 50]);
    assert_eq!(
        hex(&case4.finalize().into_bytes()),
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
    );
    assert_eq!(
        raw_mac(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        raw_mac(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        ),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

/// The trigger's own output parses, spacing and all, and its MAC verifies.
#[test]
fn parses_trigger_output() {
    let k = NotifyKey::new(KEY).expect("key");
    let text = format!("3|row|7:default|3:k\"1|OPEN|12|100|{AT}");
    let mac = k.mac_hex(&text);
    let p = format!(
        r#"{{"v" : 3, "op" : "row", "ns" : "default", "key" : "k\"1", "state" : "OPEN", "version" : 12, "remaining_ms" : 100, "at_us" : {AT}, "mac" : "{mac}"}}"#
    );
    let c = parse(&p).expect("valid payload");
    assert_eq!(c.key, "k\"1");
    assert_eq!(c.state, State::Open);
    assert_eq!(c.version, 12);
    assert_eq!(c.remaining, Duration::from_millis(100));
    assert_eq!(c.committed_at_us, AT);
    assert!(k.verify(&c));
}

/// The commit time is signed: a payload sent again with a newer time does not verify, and one
/// without a time is not this format.
#[test]
fn commit_time_is_signed() {
    let k = NotifyKey::new(KEY).expect("key");
    let mut wire: serde_json::Value =
        serde_json::from_str(&signed("row", "default", "k", "OPEN", 12, 100, AT)).expect("json");
    assert!(k.verify(&parse(&wire.to_string()).expect("valid")));
    wire["at_us"] = serde_json::json!(AT + 60_000_000);
    let replayed = parse(&wire.to_string()).expect("parses");
    assert!(!k.verify(&replayed), "an edited time must not verify");
    wire.as_object_mut().expect("object").remove("at_us");
    assert!(matches!(
        parse(&wire.to_string()),
        Err(PayloadError::Malformed(_))
    ));
}

/// Lengths are counted in characters, so a key outside ASCII signs the same whatever the
/// server's encoding (the trigger counts characters too).
#[test]
fn lengths_are_characters() {
    let k = NotifyKey::new(KEY).expect("key");
    let p = signed("row", "default", "café", "OPEN", 1, 0, AT);
    assert!(p.contains("café"));
    let c = parse(&p).expect("parses");
    assert!(c.signed.contains("|4:café|"), "{}", c.signed);
    assert!(k.verify(&c));
}

/// A MAC made with another key, or over other content, does not verify.
#[test]
fn forged_macs_do_not_verify() {
    let k = NotifyKey::new(KEY).expect("key");
    let good = parse(&signed("row", "d", "k", "OPEN", 3, 5, AT)).expect("parses");
    assert!(k.verify(&good));
    let other = NotifyKey::new(b"another key of thirty-two bytes!").expect("key");
    assert!(!other.verify(&good));
    let tampered =
        signed("row", "d", "k", "OPEN", 3, 5, AT).replace("\"version\":3", "\"version\":4");
    assert!(!k.verify(&parse(&tampered).expect("parses")));
    let no_mac = serde_json::json!({"v":3,"op":"row","ns":"d","key":"k","state":"OPEN",
        "version":3,"remaining_ms":5,"at_us":AT,"mac":""})
    .to_string();
    assert!(!k.verify(&parse(&no_mac).expect("parses")));
    assert!(NotifyKey::new(b"short").is_err());
}

/// A group's counts are signed with the rest: they parse, verify, and an edited count does
/// not verify; a group's notification without its counts, or with more open members than
/// members, is refused.
#[test]
fn group_counts_are_signed() {
    let k = NotifyKey::new(KEY).expect("key");
    let text = format!("3|group|7:default|8:payments|OPEN|40|0|{AT}|2|6");
    let mac = k.mac_hex(&text);
    let mut wire = serde_json::json!({"v":3,"op":"group","ns":"default","key":"payments",
        "state":"OPEN","version":40,"remaining_ms":0,"at_us":AT,"open":2,"members":6,
        "mac":mac});
    let c = parse(&wire.to_string()).expect("valid payload");
    assert_eq!(
        (c.op, c.state, c.group),
        (Op::Group, State::Open, Some((2, 6)))
    );
    assert!(k.verify(&c));
    wire["open"] = serde_json::json!(1);
    assert!(
        !k.verify(&parse(&wire.to_string()).expect("parses")),
        "an edited count"
    );
    wire["open"] = serde_json::json!(7);
    assert!(matches!(
        parse(&wire.to_string()),
        Err(PayloadError::Malformed(_))
    ));
    wire.as_object_mut().expect("object").remove("open");
    assert!(matches!(
        parse(&wire.to_string()),
        Err(PayloadError::Malformed(_))
    ));
    // On a row's notification the counts are not read, nor signed.
    let row = signed("row", "d", "k", "OPEN", 3, 5, AT);
    assert_eq!(parse(&row).expect("parses").group, None);
}

/// Malformed, truncated, oversized, old and future payloads are refused with their reason.
#[test]
fn refuses_bad_payloads() {
    let good = signed("row", "d", "k", "OPEN", 3, 5, AT);
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
        parse(r#"{"v":4,"whatever":true}"#),
        Err(PayloadError::UnknownVersion(4))
    ));
    assert!(matches!(
        parse(
            r#"{"v":2,"op":"row","ns":"d","key":"k","state":"OPEN","version":3,"remaining_ms":5,"mac":""}"#
        ),
        Err(PayloadError::UnknownVersion(2))
    ));
    assert!(matches!(
        parse(&signed("drop", "d", "k", "OPEN", 3, 5, AT)),
        Err(PayloadError::Malformed(_))
    ));
    let neg = parse(&signed("row", "d", "k", "BROKEN", 3, -5, AT)).expect("parses");
    assert_eq!((neg.state, neg.remaining), (State::Closed, Duration::ZERO));
    assert_eq!(neg.unknown_state.as_deref(), Some("BROKEN"));
    let reset = parse(&signed("reset", "", "", "CLOSED", 9, 0, AT)).expect("parses");
    assert_eq!(reset.op, Op::Reset);
    let config = parse(&signed("config", "d", "k", "", 9, 0, AT)).expect("parses");
    assert_eq!((config.op, config.unknown_state), (Op::Config, None));
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
    fn keys_round_trip(key in "\\PC{1,80}", ns in "\\PC{1,20}", version in any::<i64>(),
                       ms in any::<i64>(), at in any::<i64>()) {
        let p = signed("row", &ns, &key, "HALF_OPEN", version, ms, at);
        let c = parse(&p).expect("generated payloads are valid");
        prop_assert!(NotifyKey::new(KEY).expect("key").verify(&c));
        prop_assert_eq!(c.key, key);
        prop_assert_eq!(c.namespace, ns);
        prop_assert_eq!(c.version, version);
        prop_assert_eq!(c.committed_at_us, at);
        prop_assert_eq!(c.remaining, super::super::statements::remaining(ms));
    }
}
