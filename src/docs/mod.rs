//! The reference: the explanations longer than any one item's docs. This module holds no code.
//!
//! The README gets you started; these pages tell everything, each checked against the code and
//! the tests that back it.
//!
//! * [`model`]: how the crate works, on one page: the words, the two flows (a call reads a
//!   snapshot; a transition travels through PostgreSQL and back), what is shared and what is
//!   not, who decides each transition, and what happens when the database is away.
//! * [`settings`]: choosing the failure limit, the cooldown, the probes and namespaces, and
//!   matching a Python service that shares the table.
//! * [`guarantees`]: what is promised (never lost, exactly once, who wins, healing after each
//!   fault) and what can be lost, each with the test that checks it.
//! * [`postgres`]: setting up the schema, roles and grants, the `RC_DB_*` variables, TLS,
//!   pgbouncer, following a replica by polling, failover, several regions, Python services.
//! * [`security`]: the threat model: who may do what to the shared table, what a login with no
//!   grant can still do, and how each line is enforced and tested.
//! * [`operating`]: the command line, live configuration, fleet policies (quorum, fleet rate),
//!   the change stream, every metric, and troubleshooting.
//! * [`groups`]: breakers judged together, one per host of a service, with a fleet-wide cap on
//!   how many may be open at once.
//! * [`outliers`]: one instance failing far more than the rest of the fleet, named and kept from
//!   opening a fleet-rate key for everyone.
//! * [`performance`]: what a call costs on each path, next to the peers, and how fast a change
//!   travels; how to measure it again.
//! * [`scale`]: large fleets: connections, fan-out with LISTEN, following by polling, and when to
//!   switch.
//!
//! # Examples
//!
//! Each scenario of the distributed-systems guide (`distributed-systems.rst`, the Python
//! package's guide to distributed breakers) is an example in `examples/` that runs against
//! PostgreSQL, prints what happens with timestamps, checks what it claims (`[ok] …` lines; exit
//! status 1 when a check fails) and ends by itself. They read the database from `RC_DB_*`, keep
//! to namespaces of their own and delete their rows at the end:
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example one_service_many_instances
//! ```
//!
//! | Scenario | Example | What it shows |
//! |---|---|---|
//! | Single service, multiple instances; Kubernetes deployments | `one_service_many_instances` | Five pods (five `Storage` instances); pod 1 trips on `stripe_payment_api`, pods 2–5 follow and reject without calling; a pod started later, and a restarted one, are OPEN from their first call with the fleet's cooldown left. |
//! | Multiple services, shared resource; microservices | `services_sharing_a_key` | Three services share `external_fraud_check_api` in one namespace: one trips it, the other two stop calling. A staging service in another namespace, same key, is untouched. |
//! | Per-instance vs shared keys | `local_and_shared_keys` | An in-memory key beside a PostgreSQL one on each pod: a local trip stays on its pod (no row), a shared trip reaches the other pod. |
//! | Serverless functions | `serverless` | Twelve invocations, each making its own storage: one's trip is in force for the next ones, a later one probes and closes it; prints the cold-start cost. |
//! | The state transition example, T0–T4 | `timeline` | Three instances replay T0–T4: instance 1 trips, instance 2 rejects, instance 3 probes after the cooldown while the row is HALF_OPEN, everyone ends CLOSED. |
//! | Multi-region deployments | `multi_region` | Pods of one region LISTEN on the primary; pods of the other follow a streaming replica by polling and send their transitions to the primary (needs `EXAMPLE_REPLICA_DSN`, a standby's address). |
//!
//! `tests/it/examples.rs` runs each of these against a fresh database and checks its `[ok]`
//! lines, as it runs `quickstart` (one breaker's life, in memory or on PostgreSQL). Two more are
//! only compiled by the tests: `tower_http` (the tower layer in front of a real HTTP client,
//! in memory; `--features http`) and `prometheus` (serves `/metrics` until stopped).
//!
//! Serverless functions should reach their trip within one invocation (windows are per
//! instance: `failure_limit(1/1)`, or a window no larger than the calls one invocation makes)
//! and call [`Storage::flush`](crate::Storage::flush) before returning, since transitions are
//! published in the background.

pub mod groups;
pub mod guarantees;
pub mod model;
pub mod operating;
pub mod outliers;
pub mod performance;
pub mod postgres;
pub mod scale;
pub mod security;
pub mod settings;
