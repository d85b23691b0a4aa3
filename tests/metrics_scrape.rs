//! The metrics as Prometheus sees them: a real exporter (`metrics-exporter-prometheus`, set up as
//! in `examples/prometheus.rs`) serving `/metrics` over HTTP, scraped with a plain TCP GET and
//! read with a real parser (`prometheus-parse`). Its own test binary: it installs the process-wide
//! recorder, which must happen before any storage or breaker is made.

#[allow(dead_code, unused_imports)] // this binary uses a few helpers of the shared kit
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use prometheus_parse::{Scrape, Value};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};
use support::breakers::{fail, options};
use support::proxy::{Mode, Proxy};
use support::{eventually, test_db};

/// Buckets for the two duration histograms, in seconds (as in the example).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One scrape: the raw text and its parse.
struct Scraped {
    text: String,
    parsed: Scrape,
}

impl Scraped {
    /// The value of the sample `name` whose labels include every pair of `labels`; `None` when
    /// there is none. Panics when several match (the test asks for one series).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<f64> = self
            .parsed
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
            .collect();
        assert!(
            hits.len() <= 1,
            "{name}{labels:?} matches {} series",
            hits.len()
        );
        hits.first().copied()
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in the scrape:\n{}", self.text))
    }

    /// Names of every series in the exposition, as PromQL sees them (`_bucket`, `_sum`,
    /// `_count` of histograms included).
    fn series_names(&self) -> BTreeSet<String> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// `GET /metrics` over a plain TCP connection, parsed.
fn scrape(addr: SocketAddr) -> Scraped {
    let mut s = TcpStream::connect(addr).expect("the exporter listens");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("a response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let text = body.to_owned();
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    Scraped { text, parsed }
}

/// Async wrapper, so the exporter's task keeps running on the test's runtime while we read.
async fn scrape_async(addr: SocketAddr) -> Scraped {
    tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .expect("scrape")
}

fn states(s: &Scraped, key: &str, ns: &str) -> [f64; 3] {
    ["closed", "open", "half_open"].map(|st| {
        s.get(
            "resilient_circuit_state",
            &[("key", key), ("namespace", ns), ("state", st)],
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_every_state_count_and_instance_metric() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(BUCKETS)
        .expect("valid buckets")
        .with_http_listener(addr)
        .build()
        .expect("an exporter");
    metrics::set_global_recorder(recorder).expect("the only recorder of this process");
    tokio::spawn(exporter);

    // In memory: closed → open → rejected → half-open → closed, with per-call metrics on.
    let key = "scrape_memory";
    let ns = "in-memory";
    let cb = CircuitBreaker::builder(key)
        .storage(Storage::in_memory())
        .failure_limit(Ratio::new(2, 2))
        .success_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_millis(200))
        .call_metrics(true)
        .build()
        .expect("valid");
    let s = eventually(Duration::from_secs(10), || async {
        TcpStream::connect(addr).is_ok()
    })
    .await;
    assert!(s, "the exporter listens on {addr}");
    assert_eq!(states(&scrape_async(addr).await, key, ns), [1.0, 0.0, 0.0]);

    fail(&cb).await;
    fail(&cb).await;
    assert_eq!(cb.state(), State::Open);
    let r = cb.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(r.expect_err("open").is_rejected());
    let s = scrape_async(addr).await;
    assert_eq!(states(&s, key, ns), [0.0, 1.0, 0.0], "{}", s.text);
    let labels = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("key", key), ("namespace", ns)];
        v.extend_from_slice(extra);
        v
    };
    let transition = |s: &Scraped, from, to| {
        s.value(
            "resilient_circuit_transitions_total",
            &labels(&[("from", from), ("to", to), ("origin", "local")]),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(transition(&s, "closed", "open"), 1.0);
    let calls = |s: &Scraped, outcome| {
        s.value(
            "resilient_circuit_calls_total",
            &labels(&[("outcome", outcome)]),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(calls(&s, "failure"), 2.0);
    let rejected = |s: &Scraped, reason| {
        s.get(
            "resilient_circuit_rejected_calls_total",
            &labels(&[("reason", reason)]),
        )
    };
    assert_eq!(rejected(&s, "open"), 1.0);
    assert_eq!(rejected(&s, "forced"), 0.0);
    let open_until = s.get(
        "resilient_circuit_open_until_timestamp_seconds",
        &labels(&[]),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        open_until > now - 1.0 && open_until < now + 1.0,
        "{open_until} vs {now}"
    );

    // The cooldown ends; the next call is the probe, and it closes the breaker.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let probe = cb.try_acquire().expect("a probe");
    assert!(probe.is_probe());
    assert_eq!(cb.state(), State::HalfOpen);
    let s = scrape_async(addr).await;
    assert_eq!(states(&s, key, ns), [0.0, 0.0, 1.0]);
    assert_eq!(
        s.get("resilient_circuit_half_open_probes_in_flight", &labels(&[])),
        1.0
    );
    let r = cb.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(r.expect_err("the only slot is taken").is_rejected());
    probe.success();
    assert_eq!(cb.state(), State::Closed);
    cb.call(|| async { Ok::<_, ()>(()) })
        .await
        .expect("closed again");
    drop(cb.try_acquire().expect("closed")); // a cancelled call
    let s = scrape_async(addr).await;
    assert_eq!(states(&s, key, ns), [1.0, 0.0, 0.0], "{}", s.text);
    assert_eq!(transition(&s, "open", "half_open"), 1.0);
    assert_eq!(transition(&s, "half_open", "closed"), 1.0);
    assert_eq!(rejected(&s, "half_open_full"), 1.0);
    assert_eq!(rejected(&s, "open"), 1.0, "each rejected call counted once");
    assert_eq!(calls(&s, "success"), 2.0);
    assert_eq!(calls(&s, "failure"), 2.0);
    assert_eq!(calls(&s, "cancelled"), 1.0);
    assert_eq!(
        s.get("resilient_circuit_half_open_probes_in_flight", &labels(&[])),
        0.0
    );
    assert_eq!(
        s.get(
            "resilient_circuit_open_until_timestamp_seconds",
            &labels(&[])
        ),
        0.0
    );
    // Timed: the three calls run through `call` (not the try_acquire permits).
    assert_eq!(
        s.get("resilient_circuit_call_duration_seconds", &labels(&[])),
        3.0
    );

    // An operator's override: rejections say so.
    cb.force_open(Duration::from_secs(60));
    let r = cb.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(r.expect_err("forced open").is_rejected());
    let s = scrape_async(addr).await;
    assert_eq!(rejected(&s, "forced"), 1.0);
    assert_eq!(states(&s, key, ns), [0.0, 1.0, 0.0]);
    cb.force_closed();

    // One PostgreSQL instance: the per-instance metrics, and a remote transition.
    let db = test_db().await;
    let pg_ns = "scrape_ns";
    let a = Storage::connect_with(options(&db).await.namespace(pg_ns))
        .await
        .expect("connects");
    let b = Storage::connect_with(options(&db).await.namespace(pg_ns))
        .await
        .expect("connects");
    let pg_key = "scrape_fleet";
    let build = |s: &Storage| {
        CircuitBreaker::builder(pg_key)
            .storage(s.clone())
            .failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_secs(60))
            .build()
            .expect("valid")
    };
    let (on_a, on_b) = (build(&a), build(&b));
    fail(&on_a).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.pending_publications() == 0 && on_b.state() == State::Open
        })
        .await
    );
    let pg = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("namespace", pg_ns)];
        v.extend_from_slice(extra);
        v
    };
    let ok = eventually(Duration::from_secs(10), || async {
        let s = scrape_async(addr).await;
        s.value("resilient_circuit_notifications_total", &pg(&[]))
            .is_some_and(|n| n >= 1.0)
            // b measured how long a's trip took to reach it
            && s.value("resilient_circuit_notification_lag_seconds", &pg(&[]))
                .is_some_and(|n| n >= 1.0)
            && s.value(
                "resilient_circuit_transitions_total",
                &pg(&[
                    ("key", pg_key),
                    ("from", "closed"),
                    ("to", "open"),
                    ("origin", "remote"),
                ]),
            ) == Some(1.0)
    })
    .await;
    let s = scrape_async(addr).await;
    assert!(ok, "a notification and b's remote transition:\n{}", s.text);
    assert_eq!(s.get("resilient_circuit_listener_connected", &pg(&[])), 1.0);

    assert_eq!(s.get("resilient_circuit_degraded", &pg(&[])), 0.0);
    assert_eq!(
        s.get("resilient_circuit_pending_publications", &pg(&[])),
        0.0
    );
    assert_eq!(
        s.value("resilient_circuit_listener_reconnects_total", &pg(&[])),
        Some(0.0)
    );
    assert!(
        s.get(
            "resilient_circuit_store_operation_duration_seconds",
            &pg(&[("op", "publish_trips")])
        ) >= 1.0
    );
    assert!(
        s.get(
            "resilient_circuit_store_operation_duration_seconds",
            &pg(&[("op", "snapshot")])
        ) >= 2.0,
        "one snapshot per instance"
    );
    assert_eq!(
        states(&s, pg_key, pg_ns),
        [0.0, 1.0, 0.0],
        "both instances agree"
    );
    assert_eq!(
        s.value(
            "resilient_circuit_store_errors_total",
            &pg(&[("op", "publish_trips")])
        ),
        None,
        "no error, no series"
    );

    // A metrics-only breaker (live configuration) counts what would have opened it.
    let trial = "scrape_trial";
    db.app_client()
        .await
        .execute(
            "SELECT FROM rc_configure($1, $2, p_mode => 'metrics_only')",
            &[&pg_ns, &trial],
        )
        .await
        .expect("configures");
    let on_trial = CircuitBreaker::builder(trial)
        .storage(a.clone())
        .failure_limit(Ratio::new(2, 2))
        .build()
        .expect("valid");
    assert!(
        eventually(Duration::from_secs(10), || async {
            on_trial.mode() == resilient_circuit::Mode::MetricsOnly
        })
        .await
    );
    fail(&on_trial).await;
    fail(&on_trial).await;
    assert_eq!(on_trial.state(), State::Closed);
    let s = scrape_async(addr).await;
    assert_eq!(
        s.value("resilient_circuit_would_trip_total", &pg(&[("key", trial)])),
        Some(1.0),
        "{}",
        s.text
    );

    // An instance that loses its connection: degraded, reconnecting, a trip pending and failing,
    // then all caught up once the path is back.
    let cut_ns = "scrape_cut";
    let proxy = Proxy::start(db.addr()).await;
    let c = Storage::connect_with(
        PostgresOptions::from_dsn(&db.app_conninfo_via(proxy.addr()).await)
            .expect("dsn")
            .namespace(cut_ns),
    )
    .await
    .expect("connects through the proxy");
    let cut = |extra: &[(&'static str, &'static str)]| {
        let mut v = vec![("namespace", cut_ns)];
        v.extend_from_slice(extra);
        v
    };
    proxy.set_mode(Mode::Cut);
    assert!(eventually(Duration::from_secs(20), || async { c.is_degraded() }).await);
    let on_c = CircuitBreaker::builder("scrape_cut_key")
        .storage(c.clone())
        .failure_limit(Ratio::new(1, 1))
        .cooldown(Duration::from_secs(60))
        .build()
        .expect("valid");
    fail(&on_c).await;
    let ok = eventually(Duration::from_secs(20), || async {
        let s = scrape_async(addr).await;
        s.value("resilient_circuit_degraded", &cut(&[])) == Some(1.0)
            && s.value("resilient_circuit_listener_connected", &cut(&[])) == Some(0.0)
            && s.value("resilient_circuit_listener_reconnects_total", &cut(&[])) >= Some(1.0)
            && s.value("resilient_circuit_pending_publications", &cut(&[])) == Some(1.0)
            && s.value(
                "resilient_circuit_store_errors_total",
                &cut(&[("op", "publish_trips")]),
            ) >= Some(1.0)
    })
    .await;
    assert!(ok, "the cut instance:\n{}", scrape_async(addr).await.text);
    proxy.set_mode(Mode::Pass);
    let ok = eventually(Duration::from_secs(30), || async {
        let s = scrape_async(addr).await;
        s.value("resilient_circuit_degraded", &cut(&[])) == Some(0.0)
            && s.value("resilient_circuit_listener_connected", &cut(&[])) == Some(1.0)
            && s.value("resilient_circuit_pending_publications", &cut(&[])) == Some(0.0)
    })
    .await;
    assert!(
        ok,
        "the instance is back:\n{}",
        scrape_async(addr).await.text
    );
    // A group: its counts, metered by the instance that joined it, and a trip the database
    // refused (the group at its cap), counted where it was made.
    let g_ns = "scrape_groups";
    let member = Storage::connect_with(options(&db).await.namespace(g_ns))
        .await
        .expect("connects");
    let group = member
        .group("hosts")
        .max_open(Ratio::new(1, 3))
        .open_at(Ratio::new(1, 3))
        .join(["a", "b", "c"])
        .await
        .expect("joins");
    for m in ["a", "b"] {
        let cb = group
            .member(m)
            .failure_limit(Ratio::new(1, 1))
            .cooldown(Duration::from_secs(60))
            .build()
            .expect("valid");
        fail(&cb).await;
        assert!(member.flush(Duration::from_secs(10)).await);
    }
    let in_group = [("namespace", g_ns), ("group", "hosts")];
    let ok = eventually(Duration::from_secs(10), || async {
        let s = scrape_async(addr).await;
        s.value("resilient_circuit_group_open_members", &in_group) == Some(1.0)
            && s.value("resilient_circuit_group_members", &in_group) == Some(3.0)
            && s.value("resilient_circuit_group_open", &in_group) == Some(1.0)
            && s.value(
                "resilient_circuit_refused_trips_total",
                &[("namespace", g_ns), ("key", "hosts/b")],
            ) == Some(1.0)
    })
    .await;
    assert!(ok, "the group:\n{}", scrape_async(addr).await.text);

    // An outlier: one instance failing every call, two healthy, under a fleet rate of 1 in 20;
    // the sick one meters itself, by its id (`name:pid:start`).
    let o_ns = "scrape_outliers";
    let mut pods = Vec::new();
    for i in 0..3 {
        let s = Storage::connect_with(
            options(&db)
                .await
                .namespace(o_ns)
                .fleet_rate_interval(Duration::from_millis(200))
                .instance_name(format!("scrape-pod-{i}")),
        )
        .await
        .expect("connects");
        let cb = CircuitBreaker::builder("shared")
            .storage(s.clone())
            .failure_limit(Ratio::new(5, 10))
            .cooldown(Duration::from_secs(60))
            .trip_policy(resilient_circuit::TripPolicy::FleetRate {
                limit: Ratio::new(1, 20),
                min_calls: 100,
                period: Duration::from_secs(60),
            })
            .build()
            .expect("valid");
        pods.push((s, cb));
    }
    for (_, cb) in &pods[..2] {
        for _ in 0..100 {
            let _ = cb.call(|| async { Ok::<_, ()>(()) }).await;
        }
    }
    for _ in 0..20 {
        fail(&pods[2].1).await;
    }
    let outlier = |s: &Scraped| {
        s.parsed
            .samples
            .iter()
            .filter(|x| x.metric == "resilient_circuit_outlier")
            .filter(|x| x.labels.get("namespace") == Some(o_ns))
            .filter(|x| x.labels.get("key") == Some("shared"))
            .map(|x| {
                let id = x.labels.get("instance").unwrap_or_default().to_owned();
                let v = match x.value {
                    Value::Gauge(v) | Value::Untyped(v) => v,
                    _ => f64::NAN,
                };
                (id, v)
            })
            .collect::<Vec<_>>()
    };
    let ok = eventually(Duration::from_secs(10), || async {
        let found = outlier(&scrape_async(addr).await);
        found.len() == 1 && found[0].0.starts_with("scrape-pod-2:") && found[0].1 == 1.0
    })
    .await;
    assert!(ok, "the outlier:\n{}", scrape_async(addr).await.text);

    let s = scrape_async(addr).await;

    if std::env::var_os("SHOW_SCRAPE").is_some() {
        eprintln!("{}", s.text);
    }
    // The dashboard only asks for series a real scrape has.
    let have = s.series_names();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/resilient-circuit.json"
        ))
        .expect("the dashboard ships"),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 5, "the dashboard has queries: {exprs:?}");
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                have.contains(&name),
                "the dashboard queries {name} ({expr}), which no scrape has; have {have:?}"
            );
        }
    }
}

/// Every `expr` string anywhere in the dashboard (panel targets and template variables).
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `resilient_circuit_*` names a PromQL expression references.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("resilient_circuit_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}
