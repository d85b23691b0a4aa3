//! Unit tests of `env.rs`: the `RC_DB_*` variables, and the copy of their table in `docs::postgres`.

use super::super::endpoint::DEFAULT_PORT;
use super::super::tests::*;
use super::*;

/// RC_DB_PORT may list one port per host of RC_DB_HOST, as libpq's PGPORT; a count that fits
/// neither one for all nor one per host is refused.
#[test]
fn env_port_per_host() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "pg-a,pg-b"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_PORT", "5433, 5434"),
    ]))
    .unwrap()
    .unwrap();
    let c = o.pg_config("x").unwrap();
    assert_eq!(c.get_hosts(), [tcp("pg-a"), tcp("pg-b")]);
    assert_eq!(c.get_ports(), [5433, 5434]);
    let e = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "a,b,c"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_PORT", "1,2"),
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("2 ports for 3 hosts"), "{e}");
    assert_hidden(&e);
}

/// Bad values of RC_DB_PORT, the *_MS variables, RC_NAMESPACE and RC_DB_LISTENER_DSN name their
/// variable and hide the password.
#[test]
fn env_bad_values() {
    let base = [("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)];
    for (var, v) in [
        ("RC_DB_PORT", "54x2"),
        ("RC_DB_PORT", "70000"),
        ("RC_DB_PORT", PW),
        ("RC_DB_PORT", "5432,"),
        ("RC_DB_RECONCILE_INTERVAL_MS", "0"),
        ("RC_DB_STATEMENT_TIMEOUT_MS", "-5"),
        ("RC_DB_CONNECT_TIMEOUT_MS", "1.5"),
        ("RC_DB_POOL_IDLE_TIMEOUT_MS", "30s"),
        ("RC_DB_POOL_IDLE_TIMEOUT_MS", "-1"),
        ("RC_NAMESPACE", &"n".repeat(256)),
        ("RC_NAMESPACE", "a\tb"),
        ("RC_DB_LISTENER_DSN", "postgresql://u:s3cr3t-PW@h:x/d"),
    ] {
        let e = PostgresOptions::from_lookup(env(&[base[0], base[1], (var, v)])).unwrap_err();
        assert_eq!(setting_name(&e), var, "{var}={v}: {e}");
        assert_hidden(&e);
    }
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "a,,b"), ("RC_DB_PASSWORD", PW)]))
        .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_HOST");
}

/// Booleans accept 1/true/yes/on and 0/false/no/off in any case; anything else names the variable.
#[test]
fn env_booleans() {
    let base = [("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)];
    for (v, want) in [
        ("1", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("0", false),
        ("false", false),
        ("NO", false),
        ("off", false),
    ] {
        let o = PostgresOptions::from_lookup(env(&[
            base[0],
            base[1],
            ("RC_DB_STRICT", v),
            ("RC_DB_AUTO_CREATE", v),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((o.strict, o.auto_create), (want, want), "{v}");
    }
    for var in ["RC_DB_STRICT", "RC_DB_AUTO_CREATE"] {
        let e = PostgresOptions::from_lookup(env(&[base[0], base[1], (var, "2")])).unwrap_err();
        assert_eq!(setting_name(&e), var);
    }
}

/// RC_DB_HOST with RC_DB_PASSWORD selects PostgreSQL with the Python package's defaults (5432,
/// resilient_circuit_db, postgres, prefer).
#[test]
fn env_discrete_defaults() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "db.internal"),
        ("RC_DB_PASSWORD", PW),
    ]))
    .unwrap()
    .unwrap();
    let c = o.pg_config("x").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db.internal")]);
    assert!(c.get_ports().is_empty() || c.get_ports() == [5432]);
    assert_eq!(c.get_dbname(), Some("resilient_circuit_db"));
    assert_eq!(c.get_user(), Some("postgres"));
    assert_eq!(c.get_password(), Some(PW.as_bytes()));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Prefer);
    assert_eq!(o.target(), "db.internal:5432/resilient_circuit_db");
    assert_eq!(o.namespace, "default");
    assert!(!o.strict && !o.auto_create && o.listener.is_none());
    assert_eq!(o.statement_timeout, Duration::from_secs(2));
    assert_eq!(o.reconcile_interval, Duration::from_secs(30));
    assert_eq!(o.network.connect_timeout, Duration::from_secs(5));
}

/// RC_DB_DSN wins over the discrete variables and its errors are named RC_DB_DSN.
#[test]
fn env_dsn_wins() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_DSN", "postgresql://app:s3cr3t-PW@dsnhost/dsndb"),
        ("RC_DB_HOST", "other"),
        ("RC_DB_PASSWORD", "other"),
        ("RC_DB_SSLMODE", "verify-full"),
        ("RC_DB_PORT", "not-a-port"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(o.target(), "dsnhost:5432/dsndb");
    assert_eq!(
        o.tls_settings().mode,
        SslMode::Prefer,
        "discrete TLS variables are ignored with a DSN, as the Python package"
    );
    let e =
        PostgresOptions::from_lookup(env(&[("RC_DB_DSN", "postgresql://app:s3cr3t-PW@h:bad/d")]))
            .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_DSN");
    assert_hidden(&e);
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_DSN", "host=h")])).unwrap_err();
    assert_eq!(
        setting_name(&e),
        "RC_DB_DSN",
        "a DSN without user fails at from_env: {e}"
    );
}

/// Every RC_* variable reaches its setting.
#[test]
fn env_every_variable() {
    let o = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "db1,db2"),
        ("RC_DB_PORT", " 6432 "),
        ("RC_DB_NAME", "rc"),
        ("RC_DB_USER", "svc"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_SSLMODE", "verify-full"),
        ("RC_DB_SSLROOTCERT", "/ca.pem"),
        ("RC_DB_SSLCERT", "/c.pem"),
        ("RC_DB_SSLKEY", "/k.pem"),
        ("RC_DB_STRICT", "1"),
        ("RC_DB_AUTO_CREATE", "yes"),
        ("RC_NAMESPACE", "tenant-a"),
        ("RC_DB_LISTENER_DSN", "postgresql://direct:5432"),
        ("RC_DB_RECONCILE_INTERVAL_MS", "45000"),
        ("RC_DB_STATEMENT_TIMEOUT_MS", "750"),
        ("RC_DB_CONNECT_TIMEOUT_MS", "2500"),
        ("RC_DB_POOL_IDLE_TIMEOUT_MS", "120000"),
    ]))
    .unwrap()
    .unwrap();
    let c = o.pg_config("x").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db1"), tcp("db2")]);
    assert_eq!(c.get_ports(), [6432]);
    assert_eq!(c.get_dbname(), Some("rc"));
    assert_eq!(c.get_user(), Some("svc"));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(c.get_connect_timeout(), Some(&Duration::from_millis(2500)));
    let t = o.tls_settings();
    assert_eq!(t.mode, SslMode::VerifyFull);
    assert_eq!(t.rootcert.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(t.cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(t.key.as_deref(), Some(Path::new("/k.pem")));
    assert!(o.strict && o.auto_create);
    assert_eq!(o.namespace, "tenant-a");
    assert_eq!(o.reconcile_interval, Duration::from_secs(45));
    assert_eq!(o.statement_timeout, Duration::from_millis(750));
    assert_eq!(o.pool_idle_timeout, Duration::from_secs(120));
    let l = o.listener_pg_config().unwrap();
    assert_eq!(l.get_hosts(), [tcp("direct")]);
    assert_eq!(l.get_ports(), [5432]);
    assert_eq!(l.get_user(), Some("svc"), "inherited");
    assert_eq!(l.get_password(), Some(PW.as_bytes()), "inherited");
    assert_eq!(l.get_dbname(), Some("rc"), "inherited");
    assert_eq!(
        o.listener_tls_settings().mode,
        SslMode::VerifyFull,
        "inherited"
    );
}

/// Only one of RC_DB_HOST / RC_DB_PASSWORD is an error naming the other (the Python package silently
/// stayed in memory).
#[test]
fn env_host_without_password_and_back() {
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "db")])).unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_PASSWORD");
    assert!(e.to_string().contains("missing"), "{e}");
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_PASSWORD", PW)])).unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_HOST");
    assert_hidden(&e);
    let e = PostgresOptions::from_lookup(env(&[("RC_DB_LISTENER_DSN", "postgresql://direct")]))
        .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_LISTENER_DSN");
}

/// RC_DB_POOL_IDLE_TIMEOUT_MS=0 keeps pooled connections for the life of the instance (the other
/// *_MS variables refuse zero); unset, they are closed after the default 60 s.
#[test]
fn env_pool_idle_timeout_zero_means_never() {
    let base = [("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)];
    let o = PostgresOptions::from_lookup(env(&[
        base[0],
        base[1],
        ("RC_DB_POOL_IDLE_TIMEOUT_MS", " 0 "),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(o.pool_idle_timeout, Duration::ZERO);
    assert_eq!(o.pool_reaping(), None);
    let o = PostgresOptions::from_lookup(env(&base)).unwrap().unwrap();
    assert_eq!(o.pool_reaping(), Some(Duration::from_secs(60)));
    let o = PostgresOptions::from_lookup(env(&[
        base[0],
        base[1],
        ("RC_DB_POOL_IDLE_TIMEOUT_MS", "250"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(o.pool_reaping(), Some(Duration::from_millis(250)));
}

/// Nothing set selects in-memory storage (Ok(None)); unrelated variables alone do not select
/// PostgreSQL.
#[test]
fn env_nothing_set_is_none() {
    assert!(PostgresOptions::from_lookup(env(&[])).unwrap().is_none());
    assert!(PostgresOptions::from_lookup(env(&[
        ("RC_NAMESPACE", "x"),
        ("RC_DB_STRICT", "1"),
        ("RC_DB_DSN", "  ")
    ]))
    .unwrap()
    .is_none());
}

/// Rows of a markdown table whose first cell names an `RC_*` variable, as (variable cell,
/// default cell); `///` prefixes are stripped, so this reads rustdoc tables too.
fn env_table<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("///").map_or(l, str::trim_start);
            let cells: Vec<&str> = l.strip_prefix('|')?.split('|').map(str::trim).collect();
            (cells.len() >= 3 && cells[0].starts_with("`RC_"))
                .then(|| (cells[0].to_owned(), cells[1].to_owned()))
        })
        .collect()
}

/// The table on `PostgresOptions::from_env` (this file's sibling `env.rs`).
fn doc_table() -> Vec<(String, String)> {
    let src = include_str!("env.rs");
    let doc = &src[..src.find("pub fn from_env").expect("from_env in env.rs")];
    env_table(doc.lines())
}

/// The variable names of a table's first cell (`` `RC_DB_SSLCERT` / `RC_DB_SSLKEY` `` is two).
fn names(cell: &str) -> Vec<String> {
    cell.split('/')
        .map(|n| n.trim().trim_matches('`').to_owned())
        .collect()
}

/// The reference's copy of the `RC_DB_*` table (`docs::postgres`, section "Connection
/// settings") lists the same variables with the same defaults as the one on
/// `PostgresOptions::from_env`, so the two cannot drift.
#[test]
fn readme_env_table_matches_from_env_docs() {
    let page = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/src/docs/postgres.rs"));
    let start = page
        .find("\n//! ## Connection settings\n")
        .expect("docs::postgres has a Connection settings section");
    let section = &page[start + 1..];
    let end = section[3..]
        .find("\n//! ## ")
        .map_or(section.len(), |i| i + 3);
    // Rustdoc lines of the page, `//!` stripped, so that `env_table` reads them as markdown.
    let page_rows = env_table(section[..end].lines().map(|l| {
        let l = l.trim_start();
        l.strip_prefix("//!").map_or(l, str::trim_start)
    }));
    let doc_rows = doc_table();
    assert!(
        doc_rows.len() >= 10,
        "from_env's table not found: {doc_rows:?}"
    );
    let as_map = |rows: &[(String, String)]| -> std::collections::BTreeMap<String, String> {
        rows.iter().cloned().collect()
    };
    assert_eq!(
        as_map(&doc_rows).len(),
        doc_rows.len(),
        "a variable twice in from_env's table"
    );
    assert_eq!(
        as_map(&page_rows),
        as_map(&doc_rows),
        "docs::postgres's RC_DB_* table (left) differs from PostgresOptions::from_env's (right)"
    );
}

/// The table on `from_env` lists exactly the variables `env.rs` reads, and its defaults are
/// the values the code falls back on.
#[test]
fn from_env_docs_match_the_code() {
    let src = include_str!("env.rs");
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut read: Vec<String> = code
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("RC_") && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        .map(str::to_owned)
        .collect();
    read.sort();
    read.dedup();
    let rows = doc_table();
    let mut documented: Vec<String> = rows.iter().flat_map(|(v, _)| names(v)).collect();
    documented.sort();
    assert_eq!(
        documented, read,
        "from_env's table (left) vs the variables env.rs reads"
    );

    let o = PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)]))
        .unwrap()
        .unwrap();
    let tick = |v: &dyn std::fmt::Display| format!("`{v}`");
    let flag = |b: bool| tick(&u8::from(b));
    let ms = |d: Duration| tick(&d.as_millis());
    let port = o.conn.ports.first().copied().unwrap_or(DEFAULT_PORT);
    let actual = [
        ("RC_DB_PORT", tick(&port)),
        ("RC_DB_NAME", tick(o.conn.dbname.as_ref().unwrap())),
        ("RC_DB_USER", tick(o.conn.user.as_ref().unwrap())),
        ("RC_DB_SSLMODE", tick(&o.tls_settings().mode)),
        ("RC_DB_STRICT", flag(o.strict)),
        ("RC_DB_AUTO_CREATE", flag(o.auto_create)),
        ("RC_DB_TRANSACTION_POOLER", flag(o.transaction_pooler)),
        ("RC_DB_FOLLOW", tick(&o.follow)),
        ("RC_DB_POLL_INTERVAL_MS", ms(o.poll_interval)),
        ("RC_NAMESPACE", tick(&o.namespace)),
        ("RC_DB_RECONCILE_INTERVAL_MS", ms(o.reconcile_interval)),
        ("RC_DB_STATEMENT_TIMEOUT_MS", ms(o.statement_timeout)),
        ("RC_DB_CONNECT_TIMEOUT_MS", ms(o.network.connect_timeout)),
        ("RC_DB_POOL_IDLE_TIMEOUT_MS", ms(o.pool_idle_timeout)),
    ];
    for (cell, default) in &rows {
        for name in names(cell) {
            let want = actual
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("unset".to_owned(), |(_, d)| d.clone());
            assert_eq!(default, &want, "default of {name} in from_env's table");
        }
    }
}

#[test]
fn follow_mode_and_poll_interval_come_from_the_environment() {
    let base = [("RC_DB_HOST", "h"), ("RC_DB_PASSWORD", PW)];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut vars = base.to_vec();
        vars.extend_from_slice(extra);
        PostgresOptions::from_lookup(env(&vars))
    };
    let o = with(&[
        ("RC_DB_FOLLOW", " Poll "),
        ("RC_DB_POLL_INTERVAL_MS", "100"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(o.follow, super::super::Follow::Poll);
    assert_eq!(o.poll_interval, Duration::from_millis(100));
    let e = with(&[("RC_DB_FOLLOW", "notify")]).unwrap_err().to_string();
    assert!(
        e.contains("RC_DB_FOLLOW") && e.contains("listen or poll"),
        "{e}"
    );
    let e = with(&[("RC_DB_POLL_INTERVAL_MS", "0")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("RC_DB_POLL_INTERVAL_MS"), "{e}");
}
