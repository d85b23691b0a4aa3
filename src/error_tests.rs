//! Unit tests of `error.rs`.

use super::*;

/// An error with a fixed text and an optional source.
#[derive(Debug)]
struct Link(&'static str, Option<Box<Link>>);

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Link {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.1.as_deref().map(|l| l as _)
    }
}

fn chain(texts: &[&'static str]) -> Link {
    texts
        .iter()
        .rev()
        .fold(None, |source, t| Some(Link(t, source.map(Box::new))))
        .expect("at least one text")
}

/// Each source is said once: one whose text the line already holds (a wrapper that shows its
/// source, as postgres-openssl's and OpenSSL's errors do) is left out; distinct ones are kept.
#[test]
fn chains_say_each_cause_once() {
    let openssl = "error:0A000086:SSL routines::certificate verify failed";
    let wrapper = "error:0A000086:SSL routines::certificate verify failed: IP address mismatch";
    assert_eq!(
        describe_chain(&chain(&[
            "error performing TLS handshake",
            wrapper,
            openssl,
            openssl
        ])),
        format!("error performing TLS handshake: {wrapper}")
    );
    assert_eq!(
        describe_chain(&chain(&[
            "error connecting to server",
            "",
            "Connection refused"
        ])),
        "error connecting to server: Connection refused"
    );
    assert_eq!(describe_chain(&chain(&["a", "b", "c"])), "a: b: c");
}

/// Failures that are not the database's do not say they are: no "PostgreSQL error", and no
/// SQLSTATE to match.
#[test]
fn failures_of_our_own_are_not_database_errors() {
    let unexpected = StorageError::Unexpected {
        during: "casting a vote",
        what: "rc_vote returned no row".into(),
    };
    let internal = StorageError::Internal {
        during: "forcing a state",
        what: "the storage shut down before the database answered".into(),
    };
    for e in [&unexpected, &internal] {
        assert!(!e.to_string().contains("PostgreSQL error"), "{e}");
        assert_eq!(e.sqlstate(), None);
        assert!(!e.is_permanent());
    }
    assert_eq!(
        unexpected.to_string(),
        "unexpected answer from PostgreSQL during casting a vote: rc_vote returned no row"
    );
}

/// A rejection stays two words: `Result<Permit, Rejected>` is on every call's path, and a
/// larger error made the healthy closed path several times slower.
#[test]
fn a_rejection_is_two_words() {
    assert_eq!(
        std::mem::size_of::<Rejected>(),
        2 * std::mem::size_of::<usize>()
    );
}
