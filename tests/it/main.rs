//! The integration tests, as one binary so that a 2-core machine links once. One module per
//! subject; every PostgreSQL test runs in a database of its own, so they run in parallel.
//! `tests/process_wide.rs` stays a binary of its own: it installs a process-wide metrics recorder.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod breaker;
mod changes;
mod cli;
mod concurrency;
mod convergence;
mod examples;
mod failover;
mod faults;
mod fleet_rate;
mod follow;
mod groups;
mod harness;
mod hostile;
mod live_config;
mod model;
mod outages;
mod outliers;
mod pgbouncer;
mod postgres;
mod prepared;
mod python;
mod quorum;
mod resources;
mod scale;
mod security;
mod seed_sql;
mod serve;
mod sql_contract;
mod tls_server;
