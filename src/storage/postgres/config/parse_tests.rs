//! Unit tests of `parse.rs`: both DSN forms, the key table, and the differences from
//! tokio-postgres's parser that justify it.

use proptest::prelude::*;

use super::super::keys::KEYS;
use super::super::redact::Secret;
use super::super::tests::*;
use super::*;
use std::net::IpAddr;
use std::time::Duration;

/// A URL with every part (multi-host, ports, percent-encoding, query keys) lands in the right
/// fields.
#[test]
fn url_form_parses_every_part() {
    let o = PostgresOptions::from_dsn(
        "postgresql://app%20user:s3cr3t-PW@db1.example:6432,db2.example/break%2Fers?sslmode=verify-full&sslrootcert=/etc/ca.pem&sslcert=/c.pem&sslkey=/k.pem&target_session_attrs=read-write&connect_timeout=7&application_name=svc&options=-c%20lock_timeout%3D100",
    )
    .unwrap();
    let c = o.pg_config("resilient-circuit").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db1.example"), tcp("db2.example")]);
    assert_eq!(c.get_ports(), [6432, 5432]);
    assert_eq!(c.get_user(), Some("app user"));
    assert_eq!(c.get_password(), Some(PW.as_bytes()));
    assert_eq!(c.get_dbname(), Some("break/ers"));
    assert_eq!(c.get_options(), Some("-c lock_timeout=100"));
    assert_eq!(c.get_application_name(), Some("svc"));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
    assert_eq!(c.get_target_session_attrs(), PgAttrs::ReadWrite);
    let t = o.tls_settings();
    assert_eq!(t.mode, SslMode::VerifyFull);
    assert_eq!(t.rootcert.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(t.cert.as_deref(), Some(Path::new("/c.pem")));
    assert_eq!(t.key.as_deref(), Some(Path::new("/k.pem")));
    assert!(t.has_host_name);
    assert_eq!(o.target(), "db1.example:6432,db2.example:5432/break/ers");
}

/// The `postgres://` scheme, IPv6 hosts and an unencoded `@` in the password are understood.
#[test]
fn url_form_variants() {
    let o = PostgresOptions::from_dsn("postgres://u:p@ss@[::1]:6000/db").unwrap();
    assert_eq!(o.conn.password.as_ref().map(Secret::expose), Some("p@ss"));
    assert_eq!(o.conn.hosts, ["::1"]);
    assert_eq!(o.target(), "[::1]:6000/db");
    let o = PostgresOptions::from_dsn("postgresql://u:a%40b@h/db?password=").unwrap();
    assert_eq!(
        o.conn.password, None,
        "an empty later password wins, as in libpq"
    );
    let o = PostgresOptions::from_dsn("postgresql:///db?host=/var/run/postgresql&user=u").unwrap();
    assert_eq!(o.conn.hosts, ["/var/run/postgresql"]);
    let c = o.pg_config("x").unwrap();
    assert_eq!(
        c.get_ssl_mode(),
        PgSslMode::Disable,
        "no TLS on Unix sockets, as libpq"
    );
    assert_eq!(o.target(), "/var/run/postgresql/db");
}

/// Conninfo with quoting, escapes, spaces around `=` and libpq's key names lands in the right
/// fields.
#[test]
fn conninfo_form_parses_every_part() {
    let o = PostgresOptions::from_dsn(
        r"host=db.example hostaddr=10.0.0.5 port = 6543 dbname='my db' user=app password='s3cr3t-PW \'q\\' sslmode=verify-ca sslrootcert='/etc/pg ca.pem' keepalives_idle=30 keepalives_interval=4 keepalives_count=5 tcp_user_timeout=9000 fallback_application_name=fb client_encoding=UTF8 gssencmode=disable",
    )
    .unwrap();
    assert_eq!(
        o.conn.password.as_ref().map(Secret::expose),
        Some(r"s3cr3t-PW 'q\")
    );
    let c = o.pg_config("resilient-circuit").unwrap();
    assert_eq!(c.get_hosts(), [tcp("db.example")]);
    assert_eq!(c.get_hostaddrs(), [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))]);
    assert_eq!(c.get_ports(), [6543]);
    assert_eq!(c.get_dbname(), Some("my db"));
    assert_eq!(c.get_user(), Some("app"));
    assert_eq!(c.get_ssl_mode(), PgSslMode::Require);
    assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(4)));
    assert_eq!(c.get_keepalives_retries(), Some(5));
    assert_eq!(
        c.get_tcp_user_timeout(),
        Some(&Duration::from_millis(9000)),
        "libpq counts milliseconds"
    );
    assert_eq!(
        c.get_application_name(),
        Some("fb"),
        "fallback_application_name beats the crate's name"
    );
    assert_eq!(o.tls_settings().mode, SslMode::VerifyCa);
    assert_eq!(
        o.tls_settings().rootcert.as_deref(),
        Some(Path::new("/etc/pg ca.pem"))
    );
    assert_eq!(o.target(), "db.example:6543/my db");
}

/// verify-ca and verify-full, which tokio-postgres refuses, are read from both forms and sent as
/// `require`.
#[test]
fn verify_modes_parsed_from_both_forms() {
    for (dsn, mode) in [
        ("postgresql://u@h/d?sslmode=verify-ca", SslMode::VerifyCa),
        (
            "postgresql://u@h/d?sslmode=verify-full",
            SslMode::VerifyFull,
        ),
        ("host=h user=u sslmode=verify-ca", SslMode::VerifyCa),
        ("host=h user=u sslmode='verify-full'", SslMode::VerifyFull),
        ("host=h user=u sslmode=VERIFY-FULL", SslMode::VerifyFull),
    ] {
        let o = PostgresOptions::from_dsn(dsn).unwrap();
        assert_eq!(o.tls_settings().mode, mode, "{dsn}");
        assert_eq!(
            o.pg_config("x").unwrap().get_ssl_mode(),
            PgSslMode::Require,
            "{dsn}"
        );
    }
    for (dsn, pg) in [
        ("host=h user=u sslmode=disable", PgSslMode::Disable),
        ("host=h user=u sslmode=prefer", PgSslMode::Prefer),
        ("host=h user=u", PgSslMode::Prefer),
        ("host=h user=u sslmode=require", PgSslMode::Require),
    ] {
        assert_eq!(
            PostgresOptions::from_dsn(dsn)
                .unwrap()
                .pg_config("x")
                .unwrap()
                .get_ssl_mode(),
            pg,
            "{dsn}"
        );
    }
}

/// A URL with a bad port names the port and never shows the password.
#[test]
fn bad_port_is_refused_without_the_password() {
    for dsn in [
        "postgresql://app:s3cr3t-PW@db.example:54x2/app",
        "postgresql://app:s3cr3t-PW@db.example:99999/app",
        "postgresql://app:s3cr3t-PW@db.example:0/app",
        "host=db.example port=54x2 user=app password=s3cr3t-PW",
        "password=s3cr3t-PW host=db.example port=s3cr3t-PW user=app",
    ] {
        let e = PostgresOptions::from_dsn(dsn).unwrap_err();
        assert_eq!(setting_name(&e), "dsn");
        assert!(e.to_string().contains("port"), "{e}");
        assert_hidden(&e);
    }
    let e =
        PostgresOptions::from_dsn("postgresql://app:s3cr3t-PW@db.example:54x2/app").unwrap_err();
    assert!(
        e.to_string().contains("`54x2`"),
        "the bad value is shown: {e}"
    );
}

/// Unknown options are refused by name; libpq options this crate cannot honour are refused,
/// harmless ones ignored.
#[test]
fn unknown_and_unsupported_options() {
    let e = PostgresOptions::from_dsn("host=h user=u sslmdoe=require").unwrap_err();
    assert!(e.to_string().contains("unknown option `sslmdoe`"), "{e}");
    for key in [
        "sslcrl=/crl.pem",
        "sslpassword=x",
        "service=svc",
        "target_session_attrs=primary",
        "gssencmode=require",
        "sslnegotiation=direct",
        "client_encoding=LATIN1",
    ] {
        let e = PostgresOptions::from_dsn(&format!("host=h user=u {key}")).unwrap_err();
        assert_eq!(setting_name(&e), "dsn", "{key}");
    }
    assert!(PostgresOptions::from_dsn(
        "host=h user=u sslsni=1 sslcompression=0 gssencmode=prefer sslnegotiation=postgres"
    )
    .is_ok());
}

/// What tokio-postgres's own `Config::from_str` does differently, the reasons `parse.rs` exists
/// (see its module doc). If this fails after an upgrade, delegating to it may have become
/// possible.
#[test]
fn tokio_postgres_parser_differs_where_documented() {
    use std::str::FromStr;
    let tp = tokio_postgres::Config::from_str;
    let ours = PostgresOptions::from_dsn;

    // libpq's verify modes, any case: refused there, read here.
    for dsn in [
        "host=h user=u sslmode=verify-full",
        "postgresql://u@h/d?sslmode=verify-ca",
        "host=h user=u sslmode=REQUIRE",
    ] {
        assert!(tp(dsn).is_err(), "tokio-postgres accepts {dsn}");
        assert!(ours(dsn).is_ok(), "{dsn}");
    }
    // Keys libpq DSNs carry that tokio-postgres does not know.
    for key in [
        "sslrootcert=/ca.pem",
        "sslcert=/c.pem",
        "sslkey=/k.pem",
        "keepalives_count=3",
        "fallback_application_name=x",
        "client_encoding=UTF8",
        "gssencmode=disable",
        "sslsni=1",
        "sslcompression=0",
    ] {
        let dsn = format!("host=h user=u {key}");
        assert!(tp(&dsn).is_err(), "tokio-postgres accepts {dsn}");
        assert!(ours(&dsn).is_ok(), "{dsn}");
    }
    // tcp_user_timeout: seconds there, milliseconds (as libpq) here.
    let dsn = "host=h user=u tcp_user_timeout=9000";
    let theirs = tp(dsn).unwrap();
    assert_eq!(
        theirs.get_tcp_user_timeout(),
        Some(&Duration::from_secs(9000))
    );
    let mine = ours(dsn).unwrap().pg_config("x").unwrap();
    assert_eq!(
        mine.get_tcp_user_timeout(),
        Some(&Duration::from_millis(9000))
    );
    // Empty values: an error in conninfo, an empty password in a URL; "unset" here.
    assert!(tp("host=h user=u password=").is_err());
    assert_eq!(ours("host=h user=u password=").unwrap().conn.password, None);
    let theirs = tp("postgresql://u@h/d?password=").unwrap();
    assert_eq!(theirs.get_password(), Some(&b""[..]));
    assert_eq!(
        ours("postgresql://u@h/d?password=").unwrap().conn.password,
        None
    );
    // An unencoded `@` in the password: the first `@` ends the credentials there, the last here.
    let theirs = tp("postgresql://u:p@ss@h/d").unwrap();
    assert_eq!(theirs.get_hosts(), [tcp("ss@h")]);
    assert_eq!(ours("postgresql://u:p@ss@h/d").unwrap().conn.hosts, ["h"]);
    // A mode this crate's TLS connector cannot do.
    assert!(tp("host=h user=u sslnegotiation=direct").is_ok());
    assert!(ours("host=h user=u sslnegotiation=direct").is_err());
    // A stray password token as a key: echoed there, hidden here.
    let dsn = format!("user=app password={PW} {PW}=1");
    let e = tp(&dsn).unwrap_err();
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause.is_some_and(|c| c.contains(PW)),
        "no longer echoed: {e:?}"
    );
    assert!(format!("{e:?}").contains(PW), "no longer echoed: {e:?}");
    assert_hidden(&ours(&dsn).unwrap_err());
}

/// Every key the table accepts is named in `PostgresOptions::from_dsn`'s docs, so the one table
/// and the public list cannot drift.
#[test]
fn from_dsn_docs_name_every_accepted_key() {
    let src = include_str!("options.rs");
    let before = &src[..src.find("pub fn from_dsn").expect("from_dsn in options.rs")];
    let doc: Vec<&str> = before
        .trim_end()
        .lines()
        .rev()
        .take_while(|l| l.trim_start().starts_with("///"))
        .collect();
    let doc = doc.join("\n");
    for (key, handling) in KEYS {
        if !matches!(handling, Refuse) {
            let named = doc.contains(&format!("`{key}`")) || doc.contains(&format!("`{key}="));
            assert!(named, "from_dsn's docs do not name `{key}`");
        }
    }
}

/// Keys are listed once, and refused keys say so by name while unknown ones are "unknown".
#[test]
fn key_table_is_consistent() {
    let mut names: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    names.sort_unstable();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "a key is listed twice");
    for (key, handling) in KEYS {
        let e = PostgresOptions::from_dsn(&format!("host=h user=u {key}=x"));
        if matches!(handling, Refuse) {
            let e = e.unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}` is not supported")), "{e}");
        } else if let Err(e) = e {
            assert!(!e.to_string().contains("unknown option"), "{key}: {e}");
        }
    }
}

proptest! {
    /// from_dsn never panics, whatever the string.
    #[test]
    fn from_dsn_never_panics(s in any::<String>()) {
        let _ = PostgresOptions::from_dsn(&s);
    }

    /// from_dsn never panics on URL-shaped strings either.
    #[test]
    fn from_dsn_never_panics_on_urls(s in "postgres(ql)?://[a-z@:/?&=%,\\[\\]0-9.]{0,40}") {
        let _ = PostgresOptions::from_dsn(&s);
    }
}
