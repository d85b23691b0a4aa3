//! Unit tests of `redact.rs`: the password stays out of `Debug`, `Display` and every error.

use proptest::prelude::*;

use super::super::tests::*;

/// Debug and Display of the options, and connection errors' target, never show the password.
#[test]
fn password_never_in_debug_or_display() {
    for o in [
        PostgresOptions::from_dsn("postgresql://app:s3cr3t-PW@db/app").unwrap(),
        PostgresOptions::from_dsn("host=db user=app password=s3cr3t-PW").unwrap(),
        PostgresOptions::new()
            .password(PW)
            .listener_dsn("postgresql://u:s3cr3t-PW@direct/app")
            .unwrap(),
        PostgresOptions::from_lookup(env(&[("RC_DB_HOST", "db"), ("RC_DB_PASSWORD", PW)]))
            .unwrap()
            .unwrap(),
    ] {
        let debug = format!("{o:?}");
        assert!(!debug.contains(PW), "{debug}");
        assert!(debug.contains(r#"password: Some("<redacted>")"#), "{debug}");
        assert!(!o.to_string().contains(PW), "{o}");
        assert!(!o.target().contains(PW));
        assert!(!o.listener_target().contains(PW));
        assert!(!format!("{:?}", o.pg_config("x").unwrap()).contains(PW));
    }
}

/// Malformed DSNs of every kind are InvalidSetting errors that never show the password.
#[test]
fn password_never_in_parse_errors() {
    for dsn in [
        "postgresql://app:s3cr3t-PW@[::1/app",
        "postgresql://app:s3cr3t-PW@host/app?sslmode",
        "postgresql://app:s3cr3t-PW@host/app?bogus=1",
        "postgresql://app:s3cr3t-PW@host/app?hostaddr=s3cr3t-PW",
        "postgresql://app:s3cr3t-PW%zz@host/app",
        "postgresql://app:s3cr3t-PW@h%FF/app",
        "postgresql://app:s3cr3t-PW@host/app?keepalives=s3cr3t-PW",
        "postgresql://app@host/app?password=s3cr3t-PW&sslmode=s3cr3t-PW",
        "mysql://app:s3cr3t-PW@host/app",
        "postgresql+psycopg://app:s3cr3t-PW@host/app",
        "user=app password='s3cr3t-PW",
        "user=app password=s3cr3t-PW bogus",
        "user=app password=s3cr3t-PW s3cr3t-PW=1",
        "user=app password=s3cr3t-PW sslmode=s3cr3t-PW",
        "user=app password=s3cr3t-PW connect_timeout=s3cr3t-PW",
        "user=app password=s3cr3t-PW target_session_attrs=s3cr3t-PW",
        "user=app password=s3cr3t-PW sslpassword=x",
        "user=app password=s3cr3t-PW =x",
        "user=app password=s3cr3t-PW host=a,,b",
    ] {
        let e = PostgresOptions::from_dsn(dsn).unwrap_err();
        assert_eq!(setting_name(&e), "dsn", "{dsn}");
        assert_hidden(&e);
    }
}

proptest! {
    /// Whatever surrounds a password in either form, no error (from parsing or pg_config) contains
    /// it.
    #[test]
    fn errors_never_contain_the_password(pre in ".{0,16}", post in ".{0,24}", sep in "[ =:@/?&,'%]{0,2}") {
        for dsn in [
            format!("postgresql://{pre}u:{PW}@{post}"),
            format!("postgresql://u:{PW}@{pre}{sep}{post}"),
            format!("postgres://h/d?{pre}&password={PW}&{post}"),
            format!("{pre} password={PW} {sep}{post}"),
            format!("{pre} password='{PW}'{sep}{post}"),
            format!("host=h user=u password={PW}{sep}{post}"),
        ] {
            match PostgresOptions::from_dsn(&dsn) {
                Err(e) => {
                    prop_assert!(!e.to_string().contains(PW), "{dsn:?} -> {e}");
                    prop_assert!(!format!("{e:?}").contains(PW), "{dsn:?} -> {e:?}");
                }
                Ok(o) => {
                    if let Err(e) = o.pg_config("x") {
                        prop_assert!(!e.to_string().contains(PW), "{dsn:?} -> {e}");
                    }
                    if let Err(e) = o.listener_pg_config() {
                        prop_assert!(!e.to_string().contains(PW), "{dsn:?} -> {e}");
                    }
                }
            }
        }
    }
}
