//! Unit tests of `modes.rs`: sslmode parsing and its errors.

use super::super::tests::*;
use super::*;

/// An unknown sslmode is a typed error from FromStr and an InvalidSetting from a DSN or
/// RC_DB_SSLMODE.
#[test]
fn unknown_sslmode_is_refused() {
    let e = "verify_full".parse::<SslMode>().unwrap_err();
    assert!(e.to_string().contains("`verify_full`"), "{e}");
    assert!("allow"
        .parse::<SslMode>()
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    assert_eq!("Require".parse::<SslMode>(), Ok(SslMode::Require));
    for dsn in [
        "host=h user=u sslmode=strict",
        "postgresql://u@h/d?sslmode=strict",
    ] {
        let e = PostgresOptions::from_dsn(dsn).unwrap_err();
        assert_eq!(setting_name(&e), "dsn");
        assert!(e.to_string().contains("unknown sslmode `strict`"), "{e}");
    }
    let e = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "h"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_SSLMODE", "on"),
    ]))
    .unwrap_err();
    assert_eq!(setting_name(&e), "RC_DB_SSLMODE");
    // A value equal to the password is not echoed.
    let e = PostgresOptions::from_lookup(env(&[
        ("RC_DB_HOST", "h"),
        ("RC_DB_PASSWORD", PW),
        ("RC_DB_SSLMODE", PW),
    ]))
    .unwrap_err();
    assert_hidden(&e);
}
