//! Guides: the explanations that are longer than any one item's docs. This module holds no code.
//!
//! * [`model`]: how the crate works, on one page: the words, the two flows (a call reads a
//!   snapshot; a transition travels through PostgreSQL and back), what is shared and what is
//!   not, who decides each transition, and what happens when the database is away.
//! * [`settings`]: choosing the failure limit, the cooldown, the probes and namespaces, and
//!   matching a Python service that shares the table.
//! * [`security`]: the threat model: who may do what to the shared table, what a login with no
//!   grant can still do, and how each line is enforced and tested.
//!
//! # Examples
//!
//! Each scenario of the distributed-systems guide (`distributed-systems.rst`, the Python package's guide to
//! distributed breakers) is an example in `examples/` that runs against PostgreSQL, checks what it
//! claims and ends by itself; CI runs them all:
//!
//! | Scenario | Example |
//! |---|---|
//! | Single service, multiple instances; Kubernetes deployments | `one_service_many_instances` |
//! | Multiple services, shared resource; microservices | `services_sharing_a_key` |
//! | Per-instance vs shared keys | `local_and_shared_keys` |
//! | Serverless functions (with the start-up cost measured) | `serverless` |
//! | The state transition example, T0–T4 | `timeline` |
//!
//! ```text
//! RC_DB_DSN='host=127.0.0.1 user=postgres dbname=test' RC_DB_AUTO_CREATE=1 \
//!     cargo run --example one_service_many_instances
//! ```
//!
//! `quickstart` shows one breaker's life in memory, `prometheus` serves its metrics. The seed's
//! multi-region sketch has no example: instances need the primary (the README's "Multi-region").

pub mod model;
pub mod security;
pub mod settings;
