//! Hostile input: rows written by hand that break the rules, forged or broken notification
//! payloads, keys made to break quoting, and bad configuration. Nothing may panic, every other
//! key must keep working, and no error may show a password.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use resilient_circuit::storage::postgres::{PostgresOptions, SslMode};
use resilient_circuit::{ChangeOrigin, CircuitBreaker, ConfigError, State, Storage, StorageError};
use support::breakers::{
    fail, insert_open, instance, panics, signed_payload, trip_fast, Logs, Watched,
};
use support::{eventually, test_db, unique_key, Cluster, TestDb};
use tokio_postgres::Client;

use crate::support::WAIT;

/// A password that must never show up in an error, a `Debug` or a log line.
const PASSWORD: &str = "Hunter2-s3cr3t-PW";

/// Sends `payload` on the secret channel the trigger notifies on (read as the owner: `client` is
/// `TestDb::client`'s), where instances listen: a forgery there is judged by its MAC and fields,
/// not simply unheard.
async fn notify(client: &Client, payload: &str) {
    client
        .execute(
            "SELECT pg_notify((SELECT channel FROM public.rc_notify_key), $1)",
            &[&payload],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_notify of {} bytes: {e}", payload.len()));
}

/// The local clock in microseconds since the Unix epoch: a fresh `at_us` for a forgery (the
/// database runs on this machine).
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

/// HMAC-SHA256 of `text` under `key`, in lowercase hex: how a role holding some other key would
/// sign a forgery.
fn hmac_hex(key: &[u8], text: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(text.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A plain LISTEN on the breakers' secret channel (read as the owner): the raw payloads, as the
/// trigger sends them. Drop the handle to stop it.
async fn listen(db: &TestDb) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures_util::StreamExt;
    let (client, mut connection) = db
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .expect("listener connects");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    let channel = support::breakers::notify_channel(&client).await;
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .expect("LISTEN");
    (client, rx)
}

/// What a hand-written row must look like from an instance.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Seen {
    /// Unknown state: CLOSED, with a warning.
    Unknown,
    Closed,
    HalfOpen,
    /// OPEN with its cooldown already over.
    OpenOver,
    /// OPEN for about an hour.
    OpenHour,
    /// OPEN for more than a century.
    OpenForever,
}

/// (key suffix, state, open_until, failure_count, execution_log, expected), as SQL literals.
const HOSTILE_ROWS: &[(&str, &str, &str, &str, &str, Seen)] = &[
    ("broken", "'BROKEN'", "NULL", "0", "NULL", Seen::Unknown),
    ("empty-state", "''", "NULL", "0", "NULL", Seen::Unknown),
    (
        "lowercase",
        "'open'",
        "now() + interval '1 hour'",
        "1",
        "'[false]'",
        Seen::Unknown,
    ),
    (
        "open-null-until",
        "'OPEN'",
        "NULL",
        "0",
        "NULL",
        Seen::OpenOver,
    ),
    (
        "negative-count",
        "'OPEN'",
        "now() + interval '1 hour'",
        "-5",
        "'[]'",
        Seen::OpenHour,
    ),
    (
        "infinity",
        "'OPEN'",
        "'infinity'",
        "0",
        "NULL",
        Seen::OpenForever,
    ),
    (
        "minus-infinity",
        "'OPEN'",
        "'-infinity'",
        "0",
        "NULL",
        Seen::OpenOver,
    ),
    (
        "max-timestamp",
        "'OPEN'",
        "'294276-12-31 23:59:59+00'",
        "2147483647",
        "NULL",
        Seen::OpenForever,
    ),
    (
        "past",
        "'OPEN'",
        "now() - interval '1 hour'",
        "0",
        "NULL",
        Seen::OpenOver,
    ),
    (
        "log-object",
        "'CLOSED'",
        "NULL",
        "0",
        "'{\"a\":1}'",
        Seen::Closed,
    ),
    (
        "log-numbers",
        "'OPEN'",
        "now() + interval '1 hour'",
        "2",
        "'[1,2]'",
        Seen::OpenHour,
    ),
    (
        "log-json-null",
        "'CLOSED'",
        "NULL",
        "-2147483648",
        "'null'",
        Seen::Closed,
    ),
    (
        "half-open-infinity",
        "'HALF_OPEN'",
        "'infinity'",
        "0",
        "'\"x\"'",
        Seen::HalfOpen,
    ),
    (
        "closed-with-until",
        "'CLOSED'",
        "now() + interval '1 hour'",
        "0",
        "'[true,true]'",
        Seen::Closed,
    ),
];

async fn insert_hostile_rows(client: &Client, prefix: &str) {
    for (suffix, state, until, count, log, _) in HOSTILE_ROWS {
        client
            .batch_execute(&format!(
                "INSERT INTO rc_circuit_breakers (resource_key, state, open_until, failure_count, execution_log)
                 VALUES ('{prefix}{suffix}', {state}, {until}, {count}, {log})"
            ))
            .await
            .unwrap_or_else(|e| panic!("inserting {prefix}{suffix}: {e}"));
    }
}

/// Checks every hostile row of `prefix` as `storage` sees it; returns the problems.
fn check_hostile_rows(storage: &Storage, prefix: &str) -> Vec<String> {
    let century = Duration::from_secs(100 * 365 * 86_400);
    let mut problems = Vec::new();
    for (suffix, _, _, _, _, seen) in HOSTILE_ROWS {
        let key = format!("{prefix}{suffix}");
        // A key the instance holds no cell for is CLOSED (CLOSED rows need none).
        let state = storage.state_of(&key).unwrap_or(State::Closed);
        let cb = CircuitBreaker::builder(key.as_str())
            .storage(storage.clone())
            .build()
            .expect("valid");
        let left = cb.cooldown_remaining();
        let ok = match seen {
            Seen::Unknown | Seen::Closed => state == State::Closed,
            Seen::HalfOpen => state == State::HalfOpen,
            Seen::OpenOver => state == State::Open && left.is_zero(),
            Seen::OpenHour => {
                state == State::Open
                    && left > Duration::from_secs(3000)
                    && left <= Duration::from_secs(3600)
            }
            Seen::OpenForever => state == State::Open && left > century,
        };
        if !ok {
            problems.push(format!(
                "{key}: expected {seen:?}, instance has {state} with {left:?} left"
            ));
        }
    }
    problems
}

/// Hand-written rows breaking the rules (unknown or empty states, NULL/±infinity/max open_until, out-of-range counts, junk execution_log) never panic an instance, whether read by the snapshot or by NOTIFY: unknown states are CLOSED with a warning naming the key from every instance, infinity is a century-long cooldown, NULL and -infinity are over (and probe), counts and logs are not read, and a normal key still propagates after them.
#[tokio::test]
async fn hostile_rows_are_tolerated() {
    let (logs, _guard) = Logs::capture();
    let panics_before = panics();
    let db = test_db().await;
    let a = instance(&db).await;
    let client = db.client().await;
    // Read by a snapshot: rows already there when an instance connects.
    insert_hostile_rows(&client, "pre-").await;
    let b = instance(&db).await;
    let problems = check_hostile_rows(&b, "pre-");
    assert!(problems.is_empty(), "snapshot: {problems:#?}");

    // Read by notifications, then a normal key written after them.
    insert_hostile_rows(&client, "post-").await;
    let normal = unique_key("normal");
    let mut on_a = Watched::new(&a, &normal, |b| b);
    let mut on_b = Watched::new(&b, &normal, |b| b);
    insert_open(&client, &normal).await;
    assert!(
        on_a.reaches(State::Open).await,
        "a normal key still propagates"
    );
    assert!(
        on_b.reaches(State::Open).await,
        "a normal key still propagates"
    );
    for (who, storage, prefix) in [(&"a", &a, "pre-"), (&"a", &a, "post-"), (&"b", &b, "post-")] {
        let problems = check_hostile_rows(storage, prefix);
        assert!(
            problems.is_empty(),
            "instance {who}, {prefix}: {problems:#?}"
        );
    }

    // A cooldown that is over by NULL or -infinity lets a probe through the database.
    for suffix in ["open-null-until", "minus-infinity"] {
        let key = format!("pre-{suffix}");
        let cb = CircuitBreaker::builder(key.as_str())
            .storage(b.clone())
            .build()
            .expect("valid");
        let ran = cb.call(|| async { Ok::<_, ()>("probed") }).await;
        assert_eq!(ran.ok(), Some("probed"), "{key} admits a probe");
        assert_eq!(cb.state(), State::HalfOpen, "{key}");
    }

    // Warnings: an unknown state is reported with its key by every instance that reads it,
    // by snapshot or by NOTIFY (pre- rows: A by NOTIFY, B by its snapshot; post- rows: both by
    // NOTIFY). The other kinds (NULL, -infinity or infinity open_until, out-of-range counts,
    // junk execution_log) are read without a warning: the cooldown as checked above, and the
    // count and the log not at all.
    let text = logs.text();
    for prefix in ["pre-", "post-"] {
        for (suffix, ..) in HOSTILE_ROWS.iter().filter(|r| r.5 == Seen::Unknown) {
            let key = format!("{prefix}{suffix}");
            let warnings = text
                .lines()
                .filter(|l| {
                    l.contains("WARN")
                        && l.contains("unknown state")
                        && l.contains(&format!("key={key} "))
                })
                .count();
            assert!(
                warnings >= 2,
                "a warning naming {key} from each instance, got {warnings}:\n{text}"
            );
        }
    }
    assert_eq!(panics(), panics_before, "something panicked (see stderr)");
}

/// Broken or foreign notification payloads on the instances' secret channel (malformed, empty, truncated, 7999 bytes, nested, older formats, wrong types, missing fields, a MAC that does not verify, stale or other-namespace versions) are ignored and the listener survives: the next real change applies, first and exactly.
#[tokio::test]
async fn hostile_payloads_are_ignored() {
    let panics_before = panics();
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("target");
    let mut w = Watched::new(&a, &key, |b| b);
    let client = db.client().await;
    let huge = 1_000_000_000_000_000i64; // far above any real version: applied, it would pin the key
                                         // The current format (3), fresh, with a MAC that does not verify; the variants below break
                                         // one field each, so the parser, not only the MAC check, has to refuse them.
    let at = now_us();
    let mac = "00".repeat(32);
    let valid = serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":3_600_000,"at_us":at,"mac":mac}).to_string();
    let payloads: Vec<String> = vec![
        String::new(),
        "not json".into(),
        "{".into(),
        "null".into(),
        "[1,2]".into(),
        "{\"v\":3}".into(),
        valid.clone(),
        valid[..valid.len() - 5].to_owned(),
        valid[..valid.len() / 2].to_owned(),
        "x".repeat(7999),
        format!("{}{}", "[".repeat(3999), "]".repeat(3999)),
        // Older formats: unauthenticated (1) and without a commit time (2).
        serde_json::json!({"v":1,"ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1}).to_string(),
        serde_json::json!({"v":2,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"mac":mac}).to_string(),
        serde_json::json!({"v":"3","op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge.to_string(),"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":1.0e15,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":1,"version":huge,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":42,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":null,"key":key,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":"1","at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at.to_string(),"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"drop","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at}).to_string(),
        format!(r#"{{"v":3,"op":"row","ns":"default","key":"\ud800","state":"OPEN","version":{huge},"remaining_ms":1,"at_us":{at},"mac":"{mac}"}}"#),
        serde_json::json!({"v":3,"op":"row","ns":"other","key":key,"state":"OPEN","version":huge,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":0,"remaining_ms":1,"at_us":at,"mac":mac}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":-1,"remaining_ms":-1,"at_us":at,"mac":mac}).to_string(),
    ];
    for p in &payloads {
        notify(&client, p).await;
    }
    // 8000 bytes and more never leave the server.
    let refused = client
        .execute(
            "SELECT pg_notify((SELECT channel FROM public.rc_notify_key), $1)",
            &[&"x".repeat(8000)],
        )
        .await;
    assert!(refused.is_err(), "NOTIFY refuses 8000 bytes");

    // The real change, sent after all of them on the same channel.
    insert_open(&client, &key).await;
    let first = tokio::time::timeout(WAIT, w.changes.recv())
        .await
        .expect("the listener survived and applied the real change")
        .expect("open channel");
    assert_eq!(
        (first.from, first.to, first.origin),
        (State::Closed, State::Open, ChangeOrigin::Remote),
        "the first change is the real one"
    );
    let left = w.cb.cooldown_remaining();
    assert!(
        left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
        "the real row's cooldown, not a forged one: {left:?}"
    );
    client
        .execute(
            "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL WHERE resource_key = $1",
            &[&key],
        )
        .await
        .expect("real close");
    assert!(
        w.reaches(State::Closed).await,
        "later real changes apply: no forged version was kept"
    );
    assert_eq!(panics(), panics_before, "something panicked (see stderr)");
    let keys: Vec<String> = a.states().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [key], "no payload made a cell");
}

/// Well-formed payloads naming a key no row can hold (over 255 characters; one of them 7999 bytes, the most NOTIFY carries) are ignored, though fresh and validly signed: they make no cell on the instance.
#[tokio::test]
async fn payloads_with_impossible_keys_are_ignored() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("after");
    let mut w = Watched::new(&a, &key, |b| b);
    let client = db.client().await;
    let payload = |key: String| {
        let client = &client;
        async move {
            signed_payload(
                client,
                "default",
                &key,
                "OPEN",
                1_000_000_000_000,
                3_600_000,
                None,
            )
            .await
        }
    };
    let longest = "k".repeat(7999 - payload(String::new()).await.len());
    let longest_payload = payload(longest.clone()).await;
    assert_eq!(longest_payload.len(), 7999);
    let just_over = "k".repeat(256);
    for p in [longest_payload, payload(just_over).await] {
        notify(&client, &p).await;
    }
    insert_open(&client, &key).await;
    assert!(w.reaches(State::Open).await, "the listener carries on");
    let made: Vec<usize> = a
        .states()
        .into_iter()
        .filter(|(k, _)| *k != key)
        .map(|(k, _)| k.len())
        .collect();
    assert!(
        made.is_empty(),
        "forged payloads made cells for keys of {made:?} ASCII characters, which no row (varchar(255)) can hold"
    );
}

/// Forged notifications sent on the instances' secret channel (as a role that learnt its name
/// could) are ignored: the old unauthenticated format, a current-format payload without a MAC,
/// with a MAC made under another key, or a real payload replayed with its key and version
/// changed. Notifications are delivered in
/// commit order, so once a real change sent after them has arrived, they have all been judged.
#[tokio::test]
async fn forged_notifications_are_ignored() {
    let db = test_db().await;
    let a = instance(&db).await;
    let key = unique_key("forged");
    let w = Watched::new(&a, &key, |b| b);
    let client = db.client().await;
    // A real payload to tamper with: the trigger's, captured on our own LISTEN.
    let (listener, mut notes) = listen(&db).await;
    let marker = unique_key("marker");
    insert_open(&client, &marker).await;
    let real = tokio::time::timeout(WAIT, notes.recv())
        .await
        .expect("the trigger notifies")
        .expect("listener alive");
    drop(listener);
    let replayed = real
        .replace(&marker, &key)
        .replace("\"version\" : ", "\"version\" : 9");
    let at = now_us();
    let (version, remaining) = (i64::MAX, 3_600_000i64);
    let signed = format!(
        "3|row|7:default|{}:{key}|OPEN|{version}|{remaining}|{at}",
        key.chars().count()
    );
    let forgeries = [
        serde_json::json!({"v":1,"ns":"default","key":key,"state":"OPEN","version":version,"remaining_ms":remaining}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":version,"remaining_ms":remaining,"at_us":at,"mac":""}).to_string(),
        serde_json::json!({"v":3,"op":"row","ns":"default","key":key,"state":"OPEN","version":version,"remaining_ms":remaining,"at_us":at,"mac":hmac_hex(b"another key, not the table's one", &signed)}).to_string(),
        replayed,
    ];
    for f in &forgeries {
        notify(&client, f).await;
    }
    let mut on_a = Watched::new(&a, &marker, |b| b);
    client
        .execute(
            "UPDATE rc_circuit_breakers SET state = 'CLOSED', open_until = NULL WHERE resource_key = $1",
            &[&marker],
        )
        .await
        .expect("a real change after the forgeries");
    assert!(on_a.reaches(State::Closed).await, "the real change arrives");
    assert_eq!(w.cb.state(), State::Closed, "no forgery opened {key}");
    let unused = unique_key("unused");
    notify(&client, &serde_json::json!({"v":3,"op":"row","ns":"default","key":unused,"state":"OPEN","version":1,"remaining_ms":1,"at_us":now_us(),"mac":"00"}).to_string()).await;
    client
        .execute(
            "UPDATE rc_circuit_breakers SET state = 'OPEN' WHERE resource_key = $1",
            &[&marker],
        )
        .await
        .expect("another real change");
    assert!(on_a.reaches(State::Open).await, "the real change arrives");
    assert_eq!(
        a.state_of(&unused),
        None,
        "no forgery made a cell for {unused}"
    );
}

/// Keys with quotes, backslashes, multi-byte Unicode, JSON and SQL-injection text, and exactly 255 bytes are stored and matched byte for byte (tripped on A, seen on B, one row each); 256 bytes and control characters are refused; the table survives.
#[tokio::test]
async fn hostile_keys_round_trip_exactly() {
    let db = test_db().await;
    let (a, b) = (instance(&db).await, instance(&db).await);
    let client = db.client().await;
    let key_255 = format!("{}x", "é".repeat(127));
    assert_eq!(key_255.len(), 255);
    let keys: Vec<String> = vec![
        r#"it's "quoted""#.into(),
        r"back\slash\\ and \n not a newline".into(),
        "日本語-ключ-🔥-ñ".into(),
        "é-composed".into(),
        "e\u{301}-composed".into(),
        "Case".into(),
        key_255.clone(),
        "k".repeat(255),
        "x'); DROP TABLE rc_circuit_breakers; --".into(),
        "'; SELECT pg_sleep(30); --".into(),
        r#"{"v":1,"ns":"default","key":"k","state":"CLOSED","version":1}"#.into(),
        "$1 %s {} \\x00 %00".into(),
        "  spaces around  ".into(),
        "\u{200b}zero-width".into(),
    ];
    // Twins that must stay apart from the keys above.
    let twins = ["case", "k", "spaces around", "zero-width"];
    let mut on_b: Vec<Watched> = keys
        .iter()
        .map(|k| Watched::new(&b, k, trip_fast))
        .collect();
    let twin_breakers: Vec<CircuitBreaker> = twins
        .iter()
        .map(|k| {
            trip_fast(CircuitBreaker::builder(*k).storage(b.clone()))
                .build()
                .expect("valid")
        })
        .collect();
    for k in &keys {
        let cb = trip_fast(CircuitBreaker::builder(k.as_str()).storage(a.clone()))
            .build()
            .unwrap_or_else(|e| panic!("{k:?} is a valid key: {e}"));
        fail(&cb).await;
        assert_eq!(cb.state(), State::Open);
    }
    for w in &mut on_b {
        assert!(
            w.reaches(State::Open).await,
            "{:?} seen on the other instance",
            w.cb.key()
        );
    }
    assert!(eventually(WAIT, || async { a.pending_publications() == 0 }).await);
    for t in &twin_breakers {
        assert_eq!(t.state(), State::Closed, "{:?} stays apart", t.key());
    }
    let stored: BTreeSet<String> = client
        .query("SELECT resource_key FROM rc_circuit_breakers", &[])
        .await
        .expect("the table still exists")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(stored, expected, "each key stored exactly, nothing else");
    for k in &keys {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM rc_circuit_breakers WHERE resource_key = $1 AND state = 'OPEN'",
                &[k],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 1, "{k:?}");
    }
    let table: Option<String> = client
        .query_one(
            "SELECT to_regclass('public.rc_circuit_breakers')::text",
            &[],
        )
        .await
        .expect("to_regclass")
        .get(0);
    assert!(table.is_some(), "the table survived");

    // The column is varchar(255) in characters: another writer (SQL, the Python package) may
    // store a longer key in bytes, and instances must carry it too.
    let wide = "é".repeat(255);
    let mut on_a = Watched::new(&a, "sentinel-after-wide", |b| b);
    client
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) VALUES ($1, 'OPEN', now() + interval '1 hour'), ('sentinel-after-wide', 'OPEN', now() + interval '1 hour')",
            &[&wide],
        )
        .await
        .expect("a 255-character, 510-byte key fits the column");
    assert!(on_a.reaches(State::Open).await);
    assert_eq!(a.state_of(&wide), Some(State::Open));

    let too_long = "é".repeat(128);
    assert_eq!(
        CircuitBreaker::builder(too_long.as_str())
            .storage(a.clone())
            .build()
            .err(),
        Some(ConfigError::KeyTooLong { len: 256 })
    );
    assert!(matches!(
        CircuitBreaker::builder("a\0b").storage(a.clone()).build(),
        Err(ConfigError::KeyControlCharacter { index: 1, .. })
    ));
    assert!(matches!(
        CircuitBreaker::builder("line\nbreak")
            .storage(a.clone())
            .build(),
        Err(ConfigError::KeyControlCharacter { index: 4, .. })
    ));
}

/// Asserts that neither `Display` nor `Debug` of `e` shows the password.
fn assert_hidden(what: &str, e: &(impl std::fmt::Display + std::fmt::Debug)) {
    let (shown, debug) = (e.to_string(), format!("{e:?}"));
    assert!(
        !shown.contains(PASSWORD) && !debug.contains(PASSWORD),
        "{what} shows the password: {shown} / {debug}"
    );
}

fn setting_name(e: &ConfigError) -> &'static str {
    match e {
        ConfigError::InvalidSetting { name, .. } => name,
        other => panic!("expected InvalidSetting, got {other:?}"),
    }
}

/// Bad DSNs (non-numeric port, unknown sslmode) and missing certificate files give typed errors naming the setting and cause, never the password.
#[tokio::test]
async fn bad_settings_give_typed_errors() {
    let base = format!("host=127.0.0.1 user=postgres dbname=x password={PASSWORD}");
    for (dsn, needle) in [
        (format!("{base} port=54x2"), "port"),
        (
            format!("postgresql://postgres:{PASSWORD}@127.0.0.1:54x2/x"),
            "port",
        ),
        (format!("{base} port={PASSWORD}"), "port"),
        (format!("{base} sslmode=bogus"), "sslmode"),
        (format!("{base} sslmode=allow"), "sslmode"),
        (
            format!("postgresql://postgres:{PASSWORD}@127.0.0.1/x?sslmode=verify_full"),
            "sslmode",
        ),
    ] {
        let e = PostgresOptions::from_dsn(&dsn).expect_err(&dsn.replace(PASSWORD, "***"));
        assert_eq!(setting_name(&e), "dsn");
        assert!(e.to_string().contains(needle), "{e}");
        assert_hidden("from_dsn", &e);
        // The same through Storage::connect: a StorageError::Config.
        let e = Storage::connect(&dsn).await.expect_err("refused");
        assert!(
            matches!(e, StorageError::Config(ConfigError::InvalidSetting { .. })),
            "{e:?}"
        );
        assert_hidden("connect", &e);
    }
    assert!("bogus".parse::<SslMode>().is_err());

    // Missing certificate files: a TLS error naming the setting and the file, at connect.
    for (extra, needle) in [
        (
            "sslmode=verify-full sslrootcert=/nonexistent/rc-root.pem",
            "sslrootcert",
        ),
        (
            "sslmode=require sslcert=/nonexistent/rc-client.pem sslkey=/nonexistent/rc-client.key",
            "sslcert",
        ),
    ] {
        let opts = PostgresOptions::from_dsn(&format!("{base} port=5432 {extra}")).expect("parses");
        assert_hidden("options", &opts);
        assert!(!opts.to_string().contains(PASSWORD));
        match Storage::connect_with(opts).await {
            Err(e @ StorageError::Tls(_)) => {
                let shown = e.to_string();
                assert!(
                    shown.contains(needle) && shown.contains("/nonexistent/"),
                    "{shown}"
                );
                assert_hidden("TLS error", &e);
            }
            other => panic!("{extra}: expected StorageError::Tls, got {other:?}"),
        }
    }
}

/// RC_DB_* variables with bad values fail with a ConfigError naming the variable and never the password (checked in child processes: this test binary never changes its own environment).
#[test]
fn bad_variables_name_the_variable() {
    let exe = std::env::current_exe().expect("test binary path");
    for (var, value, needle) in [
        ("RC_DB_PORT", "54x2", "RC_DB_PORT"),
        ("RC_DB_PORT", PASSWORD, "RC_DB_PORT"),
        ("RC_DB_SSLMODE", "bogus", "RC_DB_SSLMODE"),
        ("RC_DB_STRICT", "maybe", "RC_DB_STRICT"),
        (
            "RC_DB_STATEMENT_TIMEOUT_MS",
            "soon",
            "RC_DB_STATEMENT_TIMEOUT_MS",
        ),
    ] {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "hostile::env_probe_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env_clear()
            .env("RC_DB_HOST", "127.0.0.1")
            .env("RC_DB_PASSWORD", PASSWORD)
            .env(var, value)
            .output()
            .expect("running the child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout}");
        // The harness prints "test hostile::env_probe_child ... " before the child's first line.
        let line = |tag: &str| {
            stdout
                .lines()
                .find_map(|l| l.split_once(tag).map(|(_, rest)| rest))
                .unwrap_or_else(|| panic!("no {tag} from the child: {stdout}"))
                .to_owned()
        };
        assert_eq!(line("CHILD-NAME "), needle, "{var}={value}");
        let shown = line("CHILD-DISPLAY ");
        assert!(shown.contains(needle), "{shown}");
        assert!(
            !stdout.contains(PASSWORD),
            "{var}: the password is shown: {stdout}"
        );
    }
}

/// Helper of `bad_variables_name_the_variable`: prints what `PostgresOptions::from_env` says.
#[test]
#[ignore = "run by bad_variables_name_the_variable in a child process with RC_DB_* set"]
fn env_probe_child() {
    match PostgresOptions::from_env() {
        Ok(o) => println!("CHILD-OK {}", o.map(|o| o.to_string()).unwrap_or_default()),
        Err(e) => {
            if let ConfigError::InvalidSetting { name, .. } = &e {
                println!("CHILD-NAME {name}");
            }
            println!("CHILD-DISPLAY {e}");
            println!("CHILD-DEBUG {e:?}");
        }
    }
}

/// A wrong password (server with scram-sha-256) and a database that does not exist: a strict start fails with StorageError::Connect naming the cause, a non-strict one starts degraded and logs the cause; the password appears nowhere.
#[tokio::test]
async fn wrong_password_and_missing_database() {
    let (logs, _guard) = Logs::capture();
    let cluster = Cluster::start().await;
    let db = cluster.create_db().await;
    let admin = cluster.client("postgres").await;
    let right = "Right-pw-0";
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD '{right}'"
        ))
        .await
        .expect("set a password");
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost all all ::1/128 scram-sha-256\n",
    )
    .expect("rewrite pg_hba.conf");
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");
    // The reload is asynchronous: wait until a connection without a password is refused.
    let no_password = cluster.config(&db);
    assert!(
        eventually(WAIT, || async {
            no_password.connect(tokio_postgres::NoTls).await.is_err()
        })
        .await,
        "pg_hba.conf now asks for a password"
    );
    let dsn = |password: &str, dbname: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname} password={password} sslmode=disable",
            cluster.port()
        )
    };
    let ok = Storage::connect_with(
        PostgresOptions::from_dsn(&dsn(right, &db))
            .expect("parses")
            .auto_create(true)
            .strict(true),
    )
    .await
    .expect("the right password works");
    assert!(!ok.is_degraded());

    for (dsn, cause) in [
        (dsn(PASSWORD, &db), "password authentication failed"),
        (
            dsn(right, "rc_no_such_database").replace(right, PASSWORD),
            "password authentication failed",
        ),
        (dsn(right, "rc_no_such_database"), "does not exist"),
    ] {
        let strict = PostgresOptions::from_dsn(&dsn)
            .expect("parses")
            .strict(true);
        match Storage::connect_with(strict).await {
            Err(e @ StorageError::Connect { .. }) => {
                assert!(e.to_string().contains(cause), "{e}");
                assert_hidden("Connect error", &e);
            }
            other => panic!("expected StorageError::Connect ({cause}), got {other:?}"),
        }
        let lenient = Storage::connect_with(PostgresOptions::from_dsn(&dsn).expect("parses"))
            .await
            .expect("a non-strict start runs on local state");
        assert!(lenient.is_degraded());
        let text = logs.text();
        assert!(
            text.lines()
                .any(|l| l.contains("WARN") && l.contains(cause)),
            "the warning names the cause ({cause}):\n{text}"
        );
    }
    let text = logs.text();
    assert!(
        !text.contains(PASSWORD),
        "a log line shows the password:\n{text}"
    );
}
