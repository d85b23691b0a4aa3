//! Seed scenario **"Multiple Services, Shared Resource"** (and the **"Microservices
//! Architecture"** use case): the payment, order and user services all call the external fraud
//! check API through a breaker on the same key, `external_fraud_check_api`. When the order
//! service sees it fail and trips, the payment and user services stop calling it too.
//!
//! Breakers share state when they have the same key **and the same namespace** (the table's
//! primary key is `(resource_key, namespace)`; `RC_NAMESPACE`, default `default`, or
//! `PostgresOptions::namespace`). So services meant to share a key run in one namespace — here
//! `shop` — and a namespace is how to keep breakers apart on purpose: a staging copy of the
//! payment service, in namespace `shop-staging`, uses the same key and is not affected.
//!
//! Each service is a `Storage` instance of its own, as separate processes would be; in a
//! deployment each sets `RC_DB_*` and `RC_NAMESPACE=shop` and calls `Storage::from_env()`.
//! Services sharing a key should build it with the same settings: each instance trips on its own
//! window, and the cooldown written is the tripping instance's.
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example services_sharing_a_key
//! ```
//!
//! `RC_DB_AUTO_CREATE=1` lets the first service create the schema (or run `resilient-circuit
//! setup` once). The namespaces are made unique to the run (`example-shop-<pid>`, …), their rows
//! are deleted at the end, and the exit status is 0 only when every check it prints held.

mod common;

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{check, millis, ms, reach, Outcome, PUSHED};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{CircuitBreaker, CircuitError, State, Storage};

const KEY: &str = "external_fraud_check_api";

/// One service (one process in a real deployment) and its breaker on the shared key.
struct Service {
    name: &'static str,
    fraud_check: CircuitBreaker,
}

/// What each service runs at start: an instance in `namespace`, the breaker with the agreed
/// settings (the seed's: a 2-minute cooldown).
async fn start(
    name: &'static str,
    namespace: &str,
    opts: &PostgresOptions,
) -> Result<Service, Box<dyn Error>> {
    // In a deployment: RC_NAMESPACE=shop and Storage::from_env().
    let storage = Storage::connect_with(opts.clone().namespace(namespace)).await?;
    let fraud_check = CircuitBreaker::builder(KEY)
        .storage(storage)
        .cooldown(Duration::from_secs(2 * 60))
        .on_status_change(move |c| {
            println!(
                "{}   {name} saw {} -> {} ({:?})",
                ms(),
                c.from,
                c.to,
                c.origin
            );
            common::changed();
        })
        .build()?;
    Ok(Service { name, fraud_check })
}

/// A call to the fraud check API, up or down; `ran` counts the calls that ran.
async fn fraud_check(
    svc: &Service,
    up: bool,
    ran: &AtomicUsize,
) -> Result<&'static str, CircuitError<String>> {
    svc.fraud_check
        .call(|| async move {
            ran.fetch_add(1, Ordering::SeqCst);
            if up {
                Ok("not fraud")
            } else {
                Err("fraud check: timeout".to_owned())
            }
        })
        .await
}

async fn scenario(opts: PostgresOptions) -> Outcome {
    let shop = common::namespace("shop");
    let staging = common::namespace("shop-staging");
    let payment = start("payment-service", &shop, &opts).await?;
    let order = start("order-service", &shop, &opts).await?;
    let user = start("user-service", &shop, &opts).await?;
    let staging_payment = start("staging payment-service", &staging, &opts).await?;
    println!(
        "{} payment, order and user services up in namespace {shop}; a staging payment-service in {staging}",
        ms()
    );
    check(
        [&payment, &order, &user, &staging_payment]
            .iter()
            .all(|s| s.fraud_check.state() == State::Closed),
        format!("{KEY} is CLOSED in all four"),
    )?;

    println!("\n{} the order service sees the fraud check API fail", ms());
    let ran = AtomicUsize::new(0);
    for _ in 0..10 {
        let _ = fraud_check(&order, false, &ran).await;
    }
    let tripped = Instant::now();
    check(
        order.fraud_check.state() == State::Open,
        "order-service opened its breaker after 10 failed calls",
    )?;

    println!(
        "\n{} every service of namespace {shop} stops calling it",
        ms()
    );
    for svc in [&payment, &user] {
        reach(&svc.fraud_check, State::Open).await?;
        let took = tripped.elapsed();
        let ran = AtomicUsize::new(0);
        let r = fraud_check(svc, true, &ran).await;
        check(
            took < PUSHED && r.is_err_and(|e| e.is_rejected()) && ran.load(Ordering::SeqCst) == 0,
            format!(
                "{} is OPEN {} after the trip, within {} (pushed by NOTIFY), and rejects its call without running it",
                svc.name,
                millis(took),
                millis(PUSHED)
            ),
        )?;
    }

    println!("\n{} namespace {staging} is another set of breakers", ms());
    let rows = common::rows_of(&opts, KEY).await?;
    println!("{}   rows of {KEY}: {rows:?}", ms());
    check(
        rows == [(shop.clone(), "OPEN".to_owned())],
        format!("the table holds one row for {KEY}, namespace {shop}, OPEN; none in {staging}"),
    )?;
    let ran = AtomicUsize::new(0);
    let r = fraud_check(&staging_payment, true, &ran).await;
    check(
        staging_payment.fraud_check.state() == State::Closed
            && r.is_ok()
            && ran.load(Ordering::SeqCst) == 1,
        "the staging payment-service is still CLOSED and its call ran",
    )?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    common::run("services_sharing_a_key", scenario).await
}
