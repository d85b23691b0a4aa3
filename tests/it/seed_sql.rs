//! The distributed-systems guide's SQL (`distributed-systems.rst`: "Real-Time Monitoring", "Alerting" and the
//! row lock under "Atomic Operations"), run verbatim against the schema and states this crate
//! writes, on a role holding only what `setup --grant-to` grants.

use std::time::Duration;

use crate::support::breakers::{fail, trip_fast};
use crate::support::test_db;
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, Storage};

/// "Dashboard query: Current state of all circuit breakers", verbatim.
const DASHBOARD: &str = "
    -- Dashboard query: Current state of all circuit breakers
    SELECT
        resource_key,
        state,
        failure_count,
        CASE
            WHEN state = 'OPEN' THEN
                EXTRACT(EPOCH FROM (open_until - NOW()))
            ELSE 0
        END as seconds_until_halfopen,
        updated_at
    FROM rc_circuit_breakers
    ORDER BY updated_at DESC;";

/// "Alert: Payment service circuit breaker opened", verbatim.
const ALERT: &str = "
    -- Alert: Payment service circuit breaker opened
    SELECT resource_key, state, updated_at
    FROM rc_circuit_breakers
    WHERE resource_key = 'payment_service'
      AND state = 'OPEN'
      AND updated_at > NOW() - INTERVAL '5 minutes';";

/// "Internal query used by Resilient Circuit" (the Python package's row lock), verbatim.
const ROW_LOCK: &str = "
    -- Internal query used by Resilient Circuit
    SELECT state, failure_count, open_until
    FROM rc_circuit_breakers
    WHERE resource_key = 'payment_api'
    FOR UPDATE;  -- Locks the row";

async fn app_instance(conninfo: &str) -> Storage {
    Storage::connect_with(PostgresOptions::from_dsn(conninfo).expect("dsn"))
        .await
        .expect("connects as the application role")
}

#[tokio::test]
async fn seed_monitoring_queries_return_the_right_rows() {
    let db = test_db().await;
    // The schema, by its owner; then everything else as a role that owns nothing, holding what
    // `setup --grant-to` grants.
    let conninfo = db.app_conninfo().await;
    let storage = app_instance(&conninfo).await;
    let payment = trip_fast(CircuitBreaker::builder("payment_service").storage(storage.clone()))
        .build()
        .expect("valid");
    let api = CircuitBreaker::builder("payment_api")
        .storage(storage.clone())
        .build()
        .expect("valid");
    api.force_closed_confirmed().await.expect("a CLOSED row");
    fail(&payment).await;
    assert!(
        crate::support::eventually(Duration::from_secs(10), || async {
            storage.pending_publications() == 0
        })
        .await
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .expect("connects");
    tokio::spawn(connection);

    let rows = client
        .query(DASHBOARD, &[])
        .await
        .expect("the dashboard query runs");
    let seen: Vec<(String, String, f64)> = rows
        .iter()
        .map(|r| {
            let secs: epoch::Secs = r.get(3);
            (r.get(0), r.get(1), secs.0)
        })
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (seen[0].0.as_str(), seen[0].1.as_str()),
        ("payment_service", "OPEN"),
        "newest first"
    );
    assert!(
        seen[0].2 > 50.0 && seen[0].2 <= 60.0,
        "seconds until half-open of a 60 s cooldown: {}",
        seen[0].2
    );
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.as_str(), seen[1].2),
        ("payment_api", "CLOSED", 0.0)
    );

    let alert = client
        .query(ALERT, &[])
        .await
        .expect("the alert query runs");
    assert_eq!(alert.len(), 1);
    assert_eq!(alert[0].get::<_, String>(1), "OPEN");
    payment.force_closed_confirmed().await.expect("closed");
    assert!(
        client.query(ALERT, &[]).await.expect("runs").is_empty(),
        "no alert once closed"
    );

    let mut client = client;
    let tx = client.transaction().await.expect("tx");
    let locked = tx
        .query(ROW_LOCK, &[])
        .await
        .expect("the row lock works on this role");
    assert_eq!(locked.len(), 1);
    assert_eq!(locked[0].get::<_, String>(0), "CLOSED");
    tx.rollback().await.expect("rollback");
}

/// `EXTRACT(EPOCH ...)` is `numeric` (PostgreSQL 14+) or `double precision` (13): read either.
mod epoch {
    use tokio_postgres::types::{FromSql, Type};

    pub struct Secs(pub f64);

    impl<'a> FromSql<'a> for Secs {
        fn from_sql(
            ty: &Type,
            raw: &'a [u8],
        ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
            if *ty == Type::FLOAT8 {
                return f64::from_sql(ty, raw).map(Secs);
            }
            if *ty == Type::INT4 {
                return i32::from_sql(ty, raw).map(|v| Secs(f64::from(v)));
            }
            numeric_to_f64(raw).map(Secs)
        }

        fn accepts(ty: &Type) -> bool {
            *ty == Type::FLOAT8 || *ty == Type::NUMERIC || *ty == Type::INT4
        }
    }

    /// PostgreSQL's binary `numeric`: ndigits, weight, sign, dscale, then base-10000 digits.
    fn numeric_to_f64(raw: &[u8]) -> Result<f64, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i16, Box<dyn std::error::Error + Sync + Send>> {
            let b = raw.get(i..i + 2).ok_or("truncated numeric")?;
            Ok(i16::from_be_bytes([b[0], b[1]]))
        };
        let (ndigits, weight, sign) = (word(0)?, word(2)?, word(4)? as u16);
        let mut v = 0f64;
        for d in 0..usize::try_from(ndigits)? {
            let digit = f64::from(word(8 + 2 * d)?);
            let exp = i32::from(weight) - i32::try_from(d)?;
            v += digit * 10_000f64.powi(exp);
        }
        Ok(if sign == 0x4000 { -v } else { v })
    }
}
