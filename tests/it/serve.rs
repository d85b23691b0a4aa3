//! `resilient-circuit serve`, end to end: the built binary against a fresh database, its page in
//! a real browser (Debian's `chromium`, driven through `chromedriver`, which `scripts/test.sh`
//! installs), its `/metrics` and its writes over HTTP. The server connects as roles that own
//! nothing and hold only what `setup` grants.
//!
//! One chromedriver serves every test of the binary (started on first use, stopped when the
//! test process exits, however it exits); each test has a browser session of its own.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes_body::{get, post};
use fantoccini::{Client, ClientBuilder, Locator};
use resilient_circuit::admin::{Override, RoleKind};
use resilient_circuit::State;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::breakers::{options, published, quick_trip, Watched};
use crate::support::{test_db, unique_key, TestDb, WAIT};

/// A key no page may obey: markup, a script, an entity and an attribute breakout.
const HOSTILE: &str = "<img src=x onerror=\"document.body.dataset.pwned='img'\"><script>document.body.dataset.pwned='script'</script>&amp;\"'";

/// A running `serve`, killed when dropped.
struct Served {
    child: tokio::process::Child,
    url: String,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
}

/// Starts `serve` (the binary `RC_SERVE_BIN` names, else the one cargo built with this test) on a free loopback port with `conninfo`, `args` and, when given, the write
/// token in RC_SERVE_TOKEN; returns once it said where it listens.
async fn serve(conninfo: &str, args: &[&str], token: Option<&str>) -> Served {
    let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut cmd = crate::cli::command(conninfo, &all);
    if let Some(bin) = std::env::var_os("RC_SERVE_BIN") {
        let mut other = tokio::process::Command::new(bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RC_") {
                other.env_remove(k);
            }
        }
        other
            .env("RC_DB_DSN", conninfo)
            .args(&all)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd = other;
    }
    if let Some(t) = token {
        cmd.env("RC_SERVE_TOKEN", t);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let Some(line) = tokio::time::timeout(WAIT, stdout.next_line())
        .await
        .expect("serve announces itself within the wait")
        .expect("reads")
    else {
        let mut said = String::new();
        while let Ok(Some(l)) = stderr.next_line().await {
            said.push_str(&l);
        }
        panic!("serve ended before listening: {said}");
    };
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Served { child, url, stderr }
}

/// The test database with its schema, and a token.
async fn set_up() -> (TestDb, String) {
    let db = test_db().await;
    let _ = db.app().await; // the schema, as `setup` makes it
    let token = format!("{:032x}", rand_u128());
    (db, token)
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    u128::from(h.finish()) << 64 | u128::from(h.finish().rotate_left(17))
}

// --- the browser ---------------------------------------------------------------------------

/// The chromedriver of this test process: its port. Started under a `sh` in a process group of
/// its own that waits for its stdin to close (at this process's exit) and then kills the group,
/// browsers included.
// The shell is never waited for: it outlives this process by design, to stop the driver.
#[allow(clippy::zombie_processes)]
fn chromedriver() -> u16 {
    static DRIVER: OnceLock<(u16, std::sync::Mutex<std::process::ChildStdin>)> = OnceLock::new();
    let (port, _) = DRIVER.get_or_init(|| {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install the Debian packages chromium and chromium-driver (scripts/test.sh does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "/usr/bin/chromedriver --port={port} --allowed-ips=127.0.0.1 >/dev/null 2>&1 & cat >/dev/null; kill -TERM -$$ 2>/dev/null"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starts chromedriver");
        let stdin = child.stdin.take().expect("piped stdin");
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        (port, std::sync::Mutex::new(stdin))
    });
    *port
}

/// A new headless chromium session.
async fn browser() -> Client {
    let port = chromedriver();
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000", "--no-first-run", "--disable-extensions"]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!("an object literal")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a chromium session")
}

/// Runs `script` (a function body returning a value) until it returns something truthy, at
/// most `within`; returns that value, or panics naming `what` and the last value.
async fn until(c: &Client, within: Duration, what: &str, script: &str) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = c.execute(script, vec![]).await.expect("the script runs");
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {v} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The script's text for the row of `key` (found by comparing the data attribute, so the key
/// may hold anything).
fn row_of(key: &str) -> String {
    format!(
        "const k = {}; const tr = [...document.querySelectorAll('#rows tr')].find(t => t.dataset.key === k);",
        json!(key)
    )
}

/// Where the screenshots go: the target directory (an artifact of the run).
fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-…
    exe.ancestors()
        .nth(3)
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir)
}

/// The page lists every row, updates a trip made by an instance within a second without a
/// reload, draws it on the timeline, shows a hostile key and note as text, and filters.
#[tokio::test]
async fn the_page_shows_the_fleet_live_and_keys_as_text() {
    let (db, _) = set_up().await;
    // Reads, and hears notifications: an instance's rights, not an operator's.
    let viewer = db.role_of(&[RoleKind::Instance]).await;
    let mut admin = db.admin_session().await;
    admin
        .force(
            "default",
            HOSTILE,
            Override::Open { hold: None },
            Some("<b>bold</b> note"),
        )
        .await
        .expect("seeds the hostile key");
    let calm = unique_key("calm");
    admin
        .force("default", &calm, Override::Closed, Some("seed"))
        .await
        .expect("seeds a closed key");

    let served = serve(&db.conninfo_as(&viewer), &[], None).await;
    let c = browser().await;
    c.goto(&served.url).await.expect("the page loads");
    until(
        &c,
        WAIT,
        "the table is filled",
        "return Number(document.body.dataset.loaded || 0) >= 2;",
    )
    .await;

    // The hostile key and note are text: the same characters, no element made of them, nothing
    // run.
    let shown = c
        .execute(
            &format!(
                "{} return tr ? tr.querySelector('td.key').textContent : null;",
                row_of(HOSTILE)
            ),
            vec![],
        )
        .await
        .expect("reads the key cell");
    assert_eq!(shown, json!(HOSTILE), "the key is shown as it is");
    let made = c
        .execute(
            "return document.querySelectorAll('#rows img, #rows script, #timeline img, #timeline script, #detail b').length;",
            vec![],
        )
        .await
        .expect("counts elements");
    assert_eq!(made, json!(0), "no element was made of a key or note");
    c.execute(
        &format!(
            "{} tr.querySelector('td.key').click(); return true;",
            row_of(HOSTILE)
        ),
        vec![],
    )
    .await
    .expect("selects the key");
    let history = until(
        &c,
        WAIT,
        "the key's history is shown",
        "const li = document.querySelector('#history li'); return li && li.textContent.includes('note') ? li.textContent : null;",
    )
    .await;
    assert!(
        history
            .as_str()
            .is_some_and(|h| h.contains("note: <b>bold</b> note")),
        "the note is text: {history}"
    );
    let pwned = c
        .execute(
            "return [document.body.dataset.pwned || null, document.querySelectorAll('#detail b, #history b').length];",
            vec![],
        )
        .await
        .expect("reads");
    assert_eq!(
        pwned,
        json!([null, 0]),
        "nothing of the key or note ran or became markup"
    );
    let controls = c
        .execute(
            "return getComputedStyle(document.getElementById('writes')).display;",
            vec![],
        )
        .await
        .expect("reads");
    assert_eq!(controls, json!("none"), "a read-only page offers no writes");

    // A trip by an instance of the fleet reaches the page within a second, without a reload.
    let storage = crate::support::breakers::instance(&db).await;
    let tripped = unique_key("tripped");
    let cb = quick_trip(&storage, &tripped, Duration::from_secs(60));
    c.execute("window.__sameDocument = true; return true;", vec![])
        .await
        .expect("marks the document");
    let _ = cb.call(|| async { Err::<(), _>("down") }).await;
    let tripped_at = Instant::now();
    until(
        &c,
        Duration::from_secs(1),
        "the trip shows within a second",
        &format!(
            "{} return tr && tr.dataset.state === 'OPEN';",
            row_of(&tripped)
        ),
    )
    .await;
    let latency = tripped_at.elapsed();
    eprintln!("the trip showed on the page {latency:?} after the call failed");
    assert_eq!(
        c.execute("return window.__sameDocument === true;", vec![])
            .await
            .expect("reads"),
        json!(true),
        "no reload"
    );
    published(&storage).await;

    // The timeline draws an OPEN stretch in the key's lane.
    until(
        &c,
        WAIT,
        "the timeline shows the trip",
        &format!(
            "const k = {}; const g = [...document.querySelectorAll('#timeline g')].find(g => g.dataset.key === k); return g && g.querySelectorAll('rect.open').length > 0;",
            json!(tripped)
        ),
    )
    .await;
    // The row learns its cooldown and last change (who tripped it) from the round after.
    until(
        &c,
        WAIT,
        "the row says who tripped it and how long it rests",
        &format!("{} return tr && tr.querySelector('td.left').textContent.endsWith('s') && tr.querySelector('td.last').textContent.includes('instance');", row_of(&tripped)),
    )
    .await;

    // Small enough for the README (`src/docs/fleet-page.png` is one of these).
    c.set_window_size(1280, 780).await.expect("resizes");
    let png = c.screenshot().await.expect("a screenshot");
    let path = target_dir().join("serve-fleet-page.png");
    std::fs::write(&path, &png).expect("writes the screenshot");
    eprintln!("screenshot: {}", path.display());

    // Filtering by state hides the CLOSED row and keeps the OPEN ones.
    let visible = c
        .execute(
            "const s = document.getElementById('f-state'); s.value = 'OPEN'; s.dispatchEvent(new Event('change'));\
             return [...document.querySelectorAll('#rows tr')].filter(t => !t.hidden).map(t => t.dataset.key).sort();",
            vec![],
        )
        .await
        .expect("filters");
    let mut open = vec![HOSTILE.to_owned(), tripped.clone()];
    open.sort();
    assert_eq!(visible, json!(open), "only the OPEN keys are shown");
    let by_key = c
        .execute(
            &format!("const s = document.getElementById('f-state'); s.value = ''; s.dispatchEvent(new Event('change'));\
             const k = document.getElementById('f-key'); k.value = {}; k.dispatchEvent(new Event('input'));\
             return [...document.querySelectorAll('#rows tr')].filter(t => !t.hidden).map(t => t.dataset.key);", json!(calm)),
            vec![],
        )
        .await
        .expect("filters");
    assert_eq!(by_key, json!([calm]), "only the key typed is shown");
    c.close().await.expect("ends the session");
}

/// From the page, a write without the token is refused and changes nothing; with it, it is
/// applied, recorded with the note typed, and every instance obeys it.
#[tokio::test]
async fn writes_need_the_token_and_reach_every_instance() {
    let (db, token) = set_up().await;
    let operator = db.role_of(&[RoleKind::Operator]).await;
    let key = unique_key("decreed");
    let mut admin = db.admin_session().await;
    admin
        .force("default", &key, Override::Closed, Some("seed"))
        .await
        .expect("seeds the key");
    // Two instances of the fleet, each with its breaker on the key.
    let (one, two) = (
        resilient_circuit::Storage::connect_with(options(&db).await)
            .await
            .expect("connects"),
        resilient_circuit::Storage::connect_with(options(&db).await)
            .await
            .expect("connects"),
    );
    let mut on_one = Watched::new(&one, &key, |b| b);
    let mut on_two = Watched::new(&two, &key, |b| b);

    let served = serve(
        &db.conninfo_as(&operator),
        &["--allow-writes"],
        Some(&token),
    )
    .await;
    let c = browser().await;
    c.goto(&served.url).await.expect("the page loads");
    until(
        &c,
        WAIT,
        "the table is filled",
        &format!("{} return !!tr;", row_of(&key)),
    )
    .await;
    c.execute(
        &format!(
            "{} tr.querySelector('td.key').click(); return true;",
            row_of(&key)
        ),
        vec![],
    )
    .await
    .expect("selects the key");
    c.wait()
        .for_element(Locator::Css("#writes:not([hidden])"))
        .await
        .expect("the write controls show");
    c.find(Locator::Id("w-note"))
        .await
        .expect("the note field")
        .send_keys("vendor outage, ticket 7")
        .await
        .expect("types");

    // Without the token: refused, and nothing changed.
    c.find(Locator::Id("w-open"))
        .await
        .expect("the open button")
        .click()
        .await
        .expect("clicks");
    let refused = until(
        &c,
        WAIT,
        "the refusal is shown",
        "const r = document.getElementById('write-result'); return r.dataset.ok === 'no' ? r.textContent : null;",
    )
    .await;
    assert!(
        refused.as_str().is_some_and(|r| r.contains("401")),
        "{refused}"
    );
    assert_eq!(on_one.cb.state(), State::Closed);
    let log = admin.history("default", &key, None).await.expect("reads");
    assert!(
        log.iter().all(|e| e.to != Some(State::Open)),
        "a refused write reached the log: {log:?}"
    );

    // A wrong token: refused too.
    let field = c
        .find(Locator::Id("w-token"))
        .await
        .expect("the token field");
    field
        .send_keys("not-the-token-at-all")
        .await
        .expect("types");
    c.execute(
        "document.getElementById('write-result').dataset.ok = ''; return true;",
        vec![],
    )
    .await
    .expect("resets");
    c.find(Locator::Id("w-open"))
        .await
        .expect("the open button")
        .click()
        .await
        .expect("clicks");
    until(
        &c,
        WAIT,
        "the wrong token is refused",
        "const r = document.getElementById('write-result'); return r.dataset.ok === 'no' && r.textContent.includes('401');",
    )
    .await;
    assert_eq!(on_one.cb.state(), State::Closed);

    // With the token: applied, on the page and on every instance, with the note in the log.
    field.clear().await.expect("clears");
    field.send_keys(&token).await.expect("types");
    c.execute(
        "document.getElementById('write-result').dataset.ok = ''; return true;",
        vec![],
    )
    .await
    .expect("resets");
    c.find(Locator::Id("w-open"))
        .await
        .expect("the open button")
        .click()
        .await
        .expect("clicks");
    let applied = until(
        &c,
        WAIT,
        "the write is applied",
        "const r = document.getElementById('write-result'); return r.dataset.ok ? r.dataset.ok + ': ' + r.textContent : null;",
    )
    .await;
    assert!(
        applied
            .as_str()
            .is_some_and(|a| a.starts_with("yes: open: OPEN")),
        "{applied}"
    );
    until(
        &c,
        WAIT,
        "the page shows it OPEN",
        &format!("{} return tr && tr.dataset.state === 'OPEN';", row_of(&key)),
    )
    .await;
    assert!(
        on_one.reaches(State::Open).await,
        "the first instance obeys"
    );
    assert!(
        on_two.reaches(State::Open).await,
        "the second instance obeys"
    );
    let log = admin.history("default", &key, None).await.expect("reads");
    let opened = log
        .iter()
        .rfind(|e| e.to == Some(State::Open))
        .unwrap_or_else(|| panic!("the open is in the log: {log:?}"));
    assert_eq!(
        opened.why.as_ref().and_then(|w| w.get("note")),
        Some(&json!("vendor outage, ticket 7")),
        "{opened:?}"
    );
    assert_eq!(
        opened.actor.as_ref().and_then(|a| a.get("user")),
        Some(&json!(operator.name())),
        "the write ran as the server's role: {opened:?}"
    );

    // And back, closed for every instance.
    c.execute(
        "document.getElementById('write-result').dataset.ok = ''; return true;",
        vec![],
    )
    .await
    .expect("resets");
    c.find(Locator::Id("w-close"))
        .await
        .expect("the close button")
        .click()
        .await
        .expect("clicks");
    until(
        &c,
        WAIT,
        "the close is applied",
        "return document.getElementById('write-result').dataset.ok === 'yes';",
    )
    .await;
    assert!(
        on_one.reaches(State::Closed).await,
        "the first instance obeys"
    );
    assert!(
        on_two.reaches(State::Closed).await,
        "the second instance obeys"
    );
    c.close().await.expect("ends the session");
    drop(served);
}

// --- over HTTP -----------------------------------------------------------------------------

/// A tiny HTTP/1 client for the tests (hyper).
mod bytes_body {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    /// Status, headers and body of one answer.
    pub struct Answer {
        pub status: u16,
        pub headers: hyper::HeaderMap,
        pub body: String,
    }

    async fn send(request: hyper::Request<Full<Bytes>>) -> Answer {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let response = tokio::time::timeout(super::WAIT, client.request(request))
            .await
            .expect("an answer within the wait")
            .expect("the request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("reads the body")
            .to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// An open event stream.
    pub struct Events {
        body: hyper::body::Incoming,
        text: String,
    }

    impl Events {
        /// The next event's name and data, within the wait.
        pub async fn next_event(&mut self) -> (String, String) {
            tokio::time::timeout(super::WAIT, async {
                loop {
                    if let Some(end) = self.text.find("\n\n") {
                        let event: String = self.text.drain(..end + 2).collect();
                        let field = |name: &str| {
                            event
                                .lines()
                                .find_map(|l| l.strip_prefix(name))
                                .unwrap_or("")
                                .to_owned()
                        };
                        if event.starts_with(':') {
                            continue; // a keep-alive comment
                        }
                        return (field("event: "), field("data: "));
                    }
                    let frame = self
                        .body
                        .frame()
                        .await
                        .expect("the stream goes on")
                        .expect("reads the stream");
                    if let Some(data) = frame.data_ref() {
                        self.text.push_str(&String::from_utf8_lossy(data));
                    }
                }
            })
            .await
            .expect("an event within the wait")
        }
    }

    pub async fn events(url: &str) -> Events {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let request = hyper::Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("a request");
        let response = tokio::time::timeout(super::WAIT, client.request(request))
            .await
            .expect("an answer within the wait")
            .expect("the stream opens");
        assert_eq!(response.status().as_u16(), 200);
        Events {
            body: response.into_body(),
            text: String::new(),
        }
    }

    /// A GET that names `host` in its Host header.
    pub async fn get_for(url: &str, host: &str) -> Answer {
        send(
            hyper::Request::get(url)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .expect("a request"),
        )
        .await
    }

    pub async fn get(url: &str) -> Answer {
        send(
            hyper::Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("a request"),
        )
        .await
    }

    pub async fn post(url: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
        let mut r = hyper::Request::post(url).header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        send(r.body(Full::new(Bytes::from(body))).expect("a request")).await
    }
}

/// A label value as the exposition format escapes it, read back (`prometheus-parse` leaves
/// the escapes as they are).
fn unescape(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A group is listed with its name as text, its members open of how many, its cap, threshold
/// and own state; a member's trip shows as new counts without a reload; `/metrics` has the
/// group's gauges.
#[tokio::test]
async fn groups_show_live_with_their_counts_as_text() {
    let (db, _) = set_up().await;
    let viewer = db.role_of(&[RoleKind::Instance]).await;
    let instance = resilient_circuit::Storage::connect_with(options(&db).await)
        .await
        .expect("connects");
    let name = format!("{}<b>g</b>", unique_key("grp"));
    let group = instance
        .group(&name)
        .max_open(resilient_circuit::Ratio::new(2, 3))
        .open_at(resilient_circuit::Ratio::new(1, 3))
        .join(["host-0", "host-1", "host-2"])
        .await
        .expect("joins");

    let served = serve(&db.conninfo_as(&viewer), &[], None).await;
    let c = browser().await;
    c.goto(&served.url).await.expect("the page loads");
    let line = format!(
        "const n = {}; const li = [...document.querySelectorAll('#groups li')].find(l => l.dataset.group === n);",
        json!(name)
    );
    let shown = until(
        &c,
        WAIT,
        "the group is listed",
        &format!("{line} return li ? li.textContent : null;"),
    )
    .await;
    assert_eq!(
        shown,
        json!(format!(
            "{name}0 of 3 members open · at most 2/3 · opens at 1/3CLOSED"
        )),
        "the name is text, the counts and state follow"
    );
    let made = c
        .execute(
            "return document.querySelectorAll('#groups b').length;",
            vec![],
        )
        .await
        .expect("counts elements");
    assert_eq!(made, json!(0), "no element made of a group's name");

    // A member's trip on the instance: the page shows the new counts and the group OPEN (a
    // third of its members), without a reload.
    let cb = quick_trip(&instance, &group.key("host-1"), Duration::from_secs(60));
    let _ = cb.call(|| async { Err::<(), _>(()) }).await;
    published(&instance).await;
    until(
        &c,
        WAIT,
        "the group's new counts",
        &format!(
            "{line} return li && li.dataset.open === '1' && li.querySelector('.st').textContent === 'OPEN';"
        ),
    )
    .await;

    // /metrics has the group, its label escaped as the format wants.
    let m = get(&format!("{}metrics", served.url)).await;
    assert_eq!(m.status, 200, "{}", m.body);
    let want = format!(
        "resilient_circuit_fleet_group_open_members{{namespace=\"default\",group=\"{name}\"}} 1"
    );
    assert!(m.body.contains(&want), "{want} in\n{}", m.body);
    let want =
        format!("resilient_circuit_fleet_group_open{{namespace=\"default\",group=\"{name}\"}} 1");
    assert!(m.body.contains(&want), "{want} in\n{}", m.body);
    c.close().await.expect("the session ends");
}

/// `/metrics` has every key of the table with its state, label values escaped as the format
/// requires (a parser reads the keys back exactly), and the rows per state.
#[tokio::test]
async fn metrics_show_every_key_with_labels_escaped() {
    let (db, _) = set_up().await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let mut admin = db.admin_session().await;
    let keys = [
        unique_key("quote\"back\\slash"),
        unique_key("line\nfeed"),
        unique_key("plain"),
    ];
    for k in &keys[..2] {
        admin
            .force("default", k, Override::Open { hold: None }, None)
            .await
            .expect("opens");
    }
    admin
        .force("default", &keys[2], Override::Closed, None)
        .await
        .expect("closes");
    let served = serve(&db.conninfo_as(&reader), &[], None).await;
    let a = get(&format!("{}metrics", served.url)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        a.headers
    );
    let scrape = prometheus_parse::Scrape::parse(a.body.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition parses");
    let state_of = |key: &str| -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "resilient_circuit_fleet_state")
            .filter(|s| s.labels.get("key").map(unescape).as_deref() == Some(key))
            .map(|s| {
                let value = match s.value {
                    prometheus_parse::Value::Gauge(v) => v,
                    _ => f64::NAN,
                };
                (s.labels.get("state").unwrap_or("").to_owned(), value)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for (key, open) in [(&keys[0], 1.0), (&keys[1], 1.0), (&keys[2], 0.0)] {
        assert_eq!(
            state_of(key),
            vec![
                ("closed".to_owned(), 1.0 - open),
                ("half_open".to_owned(), 0.0),
                ("open".to_owned(), open)
            ],
            "{key:?} in\n{}",
            a.body
        );
    }
    let rows = |state: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "resilient_circuit_fleet_rows" && s.labels.get("state") == Some(state)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!((rows("open"), rows("closed")), (Some(2.0), Some(1.0)));
    drop(served);
}

/// Started without `--allow-writes` the server is read-only; with it, it refuses to start
/// without a token (or with one too short to be one); its page carries the headers that keep
/// a key from running, and no inline script.
#[tokio::test]
async fn the_server_is_read_only_unless_told_and_never_without_a_token() {
    let (db, token) = set_up().await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let dsn = db.conninfo_as(&reader);

    let r = crate::cli::run(
        &dsn,
        &["serve", "--allow-writes", "--listen", "127.0.0.1:0"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("RC_SERVE_TOKEN"), "{}", r.stderr);
    let mut cmd = crate::cli::command(
        &dsn,
        &["serve", "--allow-writes", "--listen", "127.0.0.1:0"],
    );
    let short = cmd
        .env("RC_SERVE_TOKEN", "short")
        .output()
        .await
        .expect("runs");
    assert_eq!(short.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16"));
    let help = crate::cli::ok(&dsn, &["serve", "--help"]).await;
    assert!(
        help.stdout.contains("[default: 127.0.0.1:9100]"),
        "loopback by default: {}",
        help.stdout
    );
    assert!(
        !help.stdout.contains("--token "),
        "no token on the command line: {}",
        help.stdout
    );

    // A token without --allow-writes changes nothing: read-only.
    let served = serve(&dsn, &[], Some(&token)).await;
    let page = get(&served.url).await;
    assert_eq!(page.status, 200);
    for (name, value) in [
        ("content-security-policy", "default-src 'self'"),
        ("x-content-type-options", "nosniff"),
    ] {
        let got = page
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(got.starts_with(value), "{name}: {got:?}");
    }
    assert!(
        page.body.contains("<script src=\"app.js\""),
        "{}",
        page.body
    );
    assert_eq!(
        page.body.matches("<script").count(),
        1,
        "no inline script: {}",
        page.body
    );
    // A page of another site whose name resolves here (DNS rebinding) gets nothing.
    let rebound =
        bytes_body::get_for(&format!("{}api/state", served.url), "evil.example:9100").await;
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    assert!(!rebound.body.contains("rows"), "{}", rebound.body);
    let key = unique_key("untouched");
    let w = post(
        &format!("{}api/open", served.url),
        Some(&token),
        json!({"key": key, "note": "try"}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(w.status, 403, "{}", w.body);
    assert!(w.body.contains("read-only"), "{}", w.body);
    drop(served);
}

/// A reader's server shows the fleet, but its writes, with the right token, fail cleanly: a
/// 403 that says the role may not, not a 500. Requests the server cannot take are refused
/// before the database: too large, a key no breaker could have, no note, a wrong token.
#[tokio::test]
async fn a_readers_writes_fail_cleanly_and_bad_requests_are_refused() {
    let (db, token) = set_up().await;
    let reader = db.role_of(&[RoleKind::Reader]).await;
    let key = unique_key("watched");
    let mut admin = db.admin_session().await;
    admin
        .force("default", &key, Override::Closed, Some("seed"))
        .await
        .expect("seeds");
    let mut served = serve(&db.conninfo_as(&reader), &["--allow-writes"], Some(&token)).await;
    let state = get(&format!("{}api/state", served.url)).await;
    assert_eq!(state.status, 200, "{}", state.body);
    let state: Value = serde_json::from_str(&state.body).expect("JSON");
    assert_eq!(state["writes"], json!(true));
    assert!(
        state["rows"]
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["key"] == json!(key))),
        "{state}"
    );
    let history = get(&format!("{}api/history?key={key}", served.url)).await;
    assert_eq!(history.status, 200, "{}", history.body);
    assert!(history.body.contains("note: seed"), "{}", history.body);

    // It follows the fleet by polling: a change made elsewhere reaches its event stream.
    let mut stream = bytes_body::events(&format!("{}events", served.url)).await;
    let (name, hello) = stream.next_event().await;
    assert_eq!(name, "hello", "{hello}");
    let elsewhere = unique_key("elsewhere");
    admin
        .force("default", &elsewhere, Override::Open { hold: None }, None)
        .await
        .expect("opens");
    let (name, change) = stream.next_event().await;
    assert_eq!(name, "change", "{change}");
    let change: Value = serde_json::from_str(&change).expect("JSON");
    assert_eq!(
        (&change["key"], &change["to"]),
        (&json!(elsewhere), &json!("OPEN")),
        "{change}"
    );
    // Following by polling, it has the database: the page does not say it lost it.
    let state = get(&format!("{}api/state", served.url)).await;
    let state: Value = serde_json::from_str(&state.body).expect("JSON");
    assert_eq!(state["degraded"], json!(false), "{state}");

    let open = |token: Option<&str>, body: Value| {
        let url = format!("{}api/open", served.url);
        let token = token.map(str::to_owned);
        async move { post(&url, token.as_deref(), body.to_string().into_bytes()).await }
    };
    let denied = open(Some(&token), json!({"key": key, "note": "as a reader"})).await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let error: Value = serde_json::from_str(&denied.body).expect("a JSON error");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|e| e.contains("permission denied")),
        "{}",
        denied.body
    );
    let log = admin.history("default", &key, None).await.expect("reads");
    assert_eq!(log.len(), 1, "only the seed: {log:?}");

    let wrong = open(
        Some("0123456789abcdef0123"),
        json!({"key": key, "note": "x"}),
    )
    .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(
        wrong
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_eq!(
        open(None, json!({"key": key, "note": "x"})).await.status,
        401
    );
    let bad_key = open(Some(&token), json!({"key": "a\u{7}b", "note": "x"})).await;
    assert_eq!(bad_key.status, 400, "{}", bad_key.body);
    assert!(bad_key.body.contains("control"), "{}", bad_key.body);
    let no_note = open(Some(&token), json!({"key": key, "note": "  "})).await;
    assert_eq!(no_note.status, 400, "{}", no_note.body);
    let unknown = open(
        Some(&token),
        json!({"key": key, "note": "x", "sql": "DROP"}),
    )
    .await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let huge = post(
        &format!("{}api/open", served.url),
        Some(&token),
        vec![b' '; 64 * 1024],
    )
    .await;
    assert_eq!(huge.status, 413, "{}", huge.body);

    // The server's log names each write tried (keys escaped), and never the token.
    let line = tokio::time::timeout(WAIT, async {
        while let Some(line) = served.stderr.next_line().await.expect("reads") {
            if line.contains("(note: as a reader)") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("the write is logged within the wait")
    .expect("a line");
    assert!(line.contains(&format!("open {key} ")), "{line}");
    assert!(line.contains("permission denied"), "{line}");
    assert!(!line.contains(&token), "{line}");
}

// --- figures -------------------------------------------------------------------------------

/// `(utime + stime)` of process `pid` in clock ticks, and its resident and peak resident set
/// in KiB.
fn usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reads stat");
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reads status");
    let kib = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmRSS:"), kib("VmHWM:"))
}

/// The figures of the operating reference: time to first render with 10,000 keys (in
/// chromium, from navigation start to the table filled), 100 viewers connected to the event
/// stream while 100 transitions a second stream through (does every viewer receive every
/// change; the server's CPU), and the server's memory. Run by `scripts/serve-figures.sh`
/// against a release build of the command.
#[tokio::test]
#[ignore = "figures, not a check: scripts/serve-figures.sh"]
async fn figures() {
    use http_body_util::BodyExt;
    const KEYS: usize = 10_000;
    const VIEWERS: usize = 100;
    const PER_SECOND: usize = 100;
    const SECONDS: usize = 10;

    let (db, _) = set_up().await;
    let viewer_role = db.role_of(&[RoleKind::Instance]).await;
    let admin = db.client().await;
    admin
        .execute(
            "INSERT INTO public.rc_circuit_breakers (resource_key, state, open_until)
             SELECT 'service-' || lpad(i::text, 5, '0'),
                    CASE WHEN i % 50 = 0 THEN 'OPEN' ELSE 'CLOSED' END,
                    CASE WHEN i % 50 = 0 THEN now() + interval '1 hour' END
             FROM generate_series(1, $1::int) AS i",
            &[&(KEYS as i32)],
        )
        .await
        .expect("seeds the keys");
    let mut served = serve(&db.conninfo_as(&viewer_role), &[], None).await;
    let pid = served.child.id().expect("the server's pid");
    let (_, rss_start, _) = usage(pid);

    let c = browser().await;
    let mut renders = Vec::new();
    for _ in 0..3 {
        c.goto(&served.url).await.expect("the page loads");
        let at = until(
            &c,
            Duration::from_secs(60),
            "the table is filled",
            &format!("return Number(document.body.dataset.loaded || 0) >= {KEYS} && document.body.dataset.renderedAt;"),
        )
        .await;
        renders.push(
            at.as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN),
        );
    }
    c.close().await.expect("ends the session");
    let (_, rss_page, _) = usage(pid);
    eprintln!("first render (navigation start to table filled), 3 loads: {renders:.0?} ms");

    // The viewers: each counts the `change` events it receives.
    let counts: Vec<Arc<AtomicUsize>> = (0..VIEWERS)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let reloads = Arc::new(AtomicUsize::new(0));
    let hellos = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for count in &counts {
        let url = format!("{}events", served.url);
        let count = count.clone();
        let reloads = reloads.clone();
        let hellos = hellos.clone();
        tasks.push(tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Empty<hyper::body::Bytes>>();
            let response = client
                .request(
                    hyper::Request::get(url)
                        .body(http_body_util::Empty::new())
                        .expect("a request"),
                )
                .await
                .expect("the stream opens");
            let mut body = response.into_body();
            let mut text = String::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                    while let Some(end) = text.find("\n\n") {
                        let event: String = text.drain(..end + 2).collect();
                        if event.starts_with("event: change") {
                            count.fetch_add(1, Ordering::Relaxed);
                        } else if event.starts_with("event: reload") {
                            reloads.fetch_add(1, Ordering::Relaxed);
                        } else if event.starts_with("event: hello") {
                            hellos.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    // A viewer's hello comes once it is subscribed.
    assert!(
        crate::support::eventually(WAIT, || async { hellos.load(Ordering::Relaxed) == VIEWERS })
            .await,
        "every viewer is connected: {} of {VIEWERS}",
        hellos.load(Ordering::Relaxed)
    );
    let flap = |i: usize| format!("flap-{:03}", i % 500);
    admin
        .execute(
            "SELECT * FROM public.rc_force_many('default', ARRAY['warm-up'], ARRAY['OPEN'], ARRAY[60000::bigint])",
            &[],
        )
        .await
        .expect("forces");
    assert!(
        crate::support::eventually(WAIT, || async {
            counts.iter().all(|c| c.load(Ordering::Relaxed) == 1)
        })
        .await,
        "every viewer saw the warm-up"
    );

    let (cpu_before, _, _) = usage(pid);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let per_tick = PER_SECOND / 10;
    let mut sent = 0usize;
    for round in 0..SECONDS * 10 {
        tick.tick().await;
        let keys: Vec<String> = (0..per_tick).map(|j| flap(round * per_tick + j)).collect();
        // Each key alternates: OPEN on its odd visits, CLOSED on its even ones.
        let state = if (round * per_tick / 500) % 2 == 0 {
            "OPEN"
        } else {
            "CLOSED"
        };
        let states = vec![state.to_owned(); per_tick];
        let ms = vec![60_000_i64; per_tick];
        let rows = admin
            .query(
                "SELECT o_error FROM public.rc_force_many('default', $1, $2, $3)",
                &[&keys, &states, &ms],
            )
            .await
            .expect("forces");
        sent += rows
            .iter()
            .filter(|r| r.get::<_, Option<String>>(0).is_none())
            .count();
    }
    let elapsed = started.elapsed();
    let expected = sent + 1;
    let all = crate::support::eventually(Duration::from_secs(30), || async {
        counts.iter().all(|c| c.load(Ordering::Relaxed) >= expected)
    })
    .await;
    let (cpu_after, rss_stream, hwm) = usage(pid);
    let received: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "FIGURES ({} keys, release: {})",
        KEYS,
        std::env::var("RC_SERVE_BIN").unwrap_or_else(|_| "no (debug build)".into())
    );
    eprintln!("  first render (navigation start to table filled), 3 loads: {renders:.0?} ms");
    eprintln!(
        "  {VIEWERS} viewers, {sent} transitions in {elapsed:.1?} ({:.0}/s): every viewer got every change: {all}; min {} max {} of {expected}; reloads {}",
        sent as f64 / elapsed.as_secs_f64(),
        received.iter().min().unwrap_or(&0),
        received.iter().max().unwrap_or(&0),
        reloads.load(Ordering::Relaxed)
    );
    eprintln!(
        "  server CPU during the stream: {:.0}% of one core",
        (cpu_after - cpu_before) as f64 / ticks_per_s / elapsed.as_secs_f64() * 100.0
    );
    eprintln!(
        "  server RSS: {} MiB at start, {} MiB after the page, {} MiB after the stream (peak {} MiB)",
        rss_start / 1024,
        rss_page / 1024,
        rss_stream / 1024,
        hwm / 1024
    );
    eprintln!("  load average: {}", load.trim());
    for t in tasks {
        t.abort();
    }
    let _ = served.child.kill().await;
    assert!(all, "a viewer missed changes: {received:?}");
}

/// The operating reference shows the README's screenshot: `src/docs/fleet-page.png.b64` is
/// `src/docs/fleet-page.png` in base64 (rustdoc pages cannot show a file beside them).
/// To replace both: `base64 -w0 src/docs/fleet-page.png > src/docs/fleet-page.png.b64`.
#[test]
fn the_reference_shows_the_readmes_screenshot() {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let png = include_bytes!("../../src/docs/fleet-page.png");
    let mut encoded = String::with_capacity(png.len() * 4 / 3 + 4);
    for chunk in png.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                encoded.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                encoded.push('=');
            }
        }
    }
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    assert!(
        png.len() < 150 * 1024,
        "small enough for the README: {} bytes",
        png.len()
    );
    assert!(
        encoded == include_str!("../../src/docs/fleet-page.png.b64").trim_end(),
        "src/docs/fleet-page.png.b64 is not src/docs/fleet-page.png: run base64 -w0 src/docs/fleet-page.png > src/docs/fleet-page.png.b64"
    );
}
