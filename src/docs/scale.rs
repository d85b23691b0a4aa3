//! # Scale: large fleets, listening or polling
//!
//! What a fleet costs the database as it grows, and when to stop listening and start polling:
//! connections held, how long a trip takes to reach the last of hundreds or thousands of
//! instances, the server's CPU, and how far one database goes. The figures come from phases 10
//! and 11 of `cargo bench --bench propagation`, in one dated table each; the per-call costs are
//! on [`performance`](super::performance).
//!
//! ## Connections
//!
//! A listening instance (the default) holds one server connection at rest, its LISTEN session on
//! the primary; its pooled connections exist only while transitions are in flight and close
//! after `RC_DB_POOL_IDLE_TIMEOUT_MS` (60 s) idle
//! (`scale::idle_pool_connections_close_and_reopen_on_demand`).
//! A polling instance (`RC_DB_FOLLOW=poll`) holds one connection to its follow address (a
//! replica, or pgbouncer in transaction mode, which shares a few server connections among all of
//! them) and none on the primary at rest. Budget `max_connections` for the listening instances,
//! plus the transitions in flight during an incident (at most `pool_size`, 4, per instance that
//! is publishing).
//!
//! The first trip after the pool was reaped opens a connection first, so it is accepted later
//! than one on a warm pool, and a new connection costs the server CPU. The default idle timeout,
//! 60 s, is twice the default cooldown, so a breaker that trips again soon finds its connection
//! ([`pool_idle_timeout`](crate::storage::postgres::PostgresOptions::pool_idle_timeout)).
//!
//! ## Fan-out with LISTEN
//!
//! PostgreSQL wakes every listening backend at each commit that notifies, so the time for a trip
//! to reach the *last* instance, and the server's CPU, grow with the fleet.
//!
//! Measured 2026-11-29 with `RC_BENCH_PHASES=10 cargo bench --bench propagation`, three runs, on a
//! 2-core x86_64 VM (24 GiB, Debian 12) with a private PostgreSQL 15 cluster over TLS; the
//! server, every instance and the bare listeners share the 2 cores (load average 3.8 and 7.2
//! before the first two runs, from other builds; not recorded for the third). Each instance is a
//! `Storage` with `pool_idle_timeout` 1 s and one breaker on one key, holding one server
//! connection at rest; instance 0 trips, 15 trips per size; times run from `failure()` to the
//! moment each instance's listener applied the change.
//!
//! | Instances | Trip → OPEN on the last instance, p50 / max | Bare UPDATE → the last of as many bare listeners, p50 (first two runs) | Server CPU per transition |
//! |---|---|---|---|
//! | 10 | 1.4–2.0 / 1.9–9.0 ms | 1.3 ms | 0.7–2.0 ms |
//! | 100 | 5.0–7.8 / 6.4–12.5 ms | 3.9–5.3 ms | 3.6–4.7 ms |
//! | 500 | 24–30 / 30–36 ms | 20 ms | 24–30 ms |
//! | 1,000 | 51–62 / 81–135 ms | 36–43 ms | 66–73 ms |
//!
//! * The server spends 60–70 µs of CPU per listener per notifying commit: at 1,000 listeners
//!   that alone is about the bare floor. On this machine it competes with the 1,000 instances
//!   themselves for the same 2 cores; in production each instance is a process of its own,
//!   elsewhere. At rest the 1,000 instances cost the server 63–70 ms of CPU a second
//!   (heartbeats every 2 s, reloads every 30 s).
//! * Transitions accepted per second, one per commit (phase 6's method), fall from 4,300–5,800
//!   with no other listener to 220–290 with 1,000 instances listening; 1,000 bare `LISTEN`
//!   sessions show the same drop, so the cost is the server's.
//! * The cost is per *commit*, not per transition: the outbox sends every trip and override
//!   pending on an instance in one call, so an incident that trips many keys at once pays it
//!   once per batch. In batches of 100 (`rc_force_many`, open loop) the server accepted 5,200
//!   transitions a second with no listener and 607 with 1,000 bare listeners. Each listener still
//!   reads every notification of the batch, so batching gains less than its size.
//!
//! ## Following by polling
//!
//! With `RC_DB_FOLLOW=poll` every instance reads the change log of its follow address every
//! `RC_DB_POLL_INTERVAL_MS` ([`postgres`](super::postgres#following-by-polling) says how),
//! and the primary holds no connection of theirs at rest.
//!
//! Measured 2026-11-29 with `RC_BENCH_PHASES=11 cargo bench --bench propagation`, on the same
//! 2-core VM: 2,000 followers, each its own `Storage` in one process, poll a streaming standby
//! through pgbouncer 1.18 in transaction mode with 8 server connections; a listening instance on
//! the primary trips and closes one key, 20 times. Everything (primary, standby, pgbouncer,
//! 2,000 followers) shares the 2 cores.
//!
//! | Poll interval | Change → last follower, p50 / p99 | → median follower, p50 | Replica CPU per poll (all followers) | pgbouncer CPU per poll | Connections on the primary at rest |
//! |---|---|---|---|---|---|
//! | 250 ms | 298–336 / 529–532 ms | 143–164 ms | 115–136 µs (0.9–1.1 cores) | 28–33 µs | 1 (the tripper's LISTEN): the followers hold none |
//! | 1 s | 1,001 / 1,082 ms | 523 ms | 204 µs (0.41 cores) | 41 µs | 1 |
//!
//! At 1 s every follower saw every change within the interval plus 100 ms. At 250 ms the median
//! follower did, but the tail did not: 8,000 polls a second took a core of the replica and, with
//! pgbouncer and the followers themselves, saturated the machine. The follow address's CPU is
//! followers ÷ interval × the cost of one poll, so size the interval to the replica: 250 ms (the
//! default) suits hundreds of polling instances, 1 s thousands. The replica's lag adds to the
//! interval.
//!
//! ## When to switch
//!
//! * **Listen** while the fleet fits the primary's connection budget and a change must arrive in
//!   milliseconds; the fan-out table above shows how the time to the last instance and the
//!   server's CPU per transition grow with the fleet.
//! * **Poll** when the fleet is past what the primary should hold as connections, when only
//!   pgbouncer in transaction mode is reachable, or when the instances are far from the primary
//!   and near a replica ([`postgres`](super::postgres#several-regions)). Raise the interval for
//!   very large polling fleets.
//! * The two mix in one fleet: every instance's transitions go to the same primary.
//!
//! ## Past one database
//!
//! Namespaces are independent sets of breakers: put groups of namespaces on separate databases
//! (and primaries), each instance making one `Storage` per database it uses
//! ([`PostgresOptions::namespace`](crate::storage::postgres::PostgresOptions::namespace)), and
//! each fleet's budget above applies per database. What cannot be split is one key's fleet:
//! every instance that shares a breaker shares its row.
