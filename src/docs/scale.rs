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
//! Measured 2026-12-06 with `RC_BENCH_PHASES=10 cargo bench --bench propagation` (one run,
//! 273 s; load average 1.7 before, 4.9 after: the bench's own fleet) on a 2-core x86_64 VM (AMD
//! EPYC, 24 GiB, Debian 12) with a private PostgreSQL 15 cluster over TLS; the server, every
//! instance and the bare listeners share the 2 cores. Each instance is a `Storage` with
//! `pool_idle_timeout` 1 s and one breaker on one key, holding one server connection at rest;
//! instance 0 trips, 15 trips per size, each followed by an operator's close; times run from
//! `failure()` to the moment each instance's listener applied the change.
//!
//! | Instances | Trip → OPEN on the last instance, p50 / max | Bare UPDATE → the last of as many bare listeners, p50 | Server CPU per transition (net of rest) |
//! |---|---|---|---|
//! | 10 | 2.4 / 3.9 ms | 1.4 ms | 3.0 ms |
//! | 100 | 6.9 / 9.3 ms | 3.6 ms | 17 ms |
//! | 500 | 26 / 38 ms | 17 ms | 82 ms |
//! | 1,000 | 63 / 79 ms | 38 ms | 202 ms |
//!
//! * Each notifying commit costs the server CPU for every listener: waking its backend, and for
//!   a close, the row read that instance makes before it takes a close on trust (a close is
//!   confirmed from the table, [`security`](super::security)), about 0.2 ms per instance and
//!   transition at 1,000. On this machine it competes with the 1,000 instances themselves for
//!   the same 2 cores; in production each instance is a process of its own, elsewhere. At rest
//!   the 1,000 instances cost the server 152 ms of CPU a second (heartbeats every 2 s, reloads
//!   every 30 s).
//! * Transitions accepted per second, one per commit (phase 6's method), fall from 3,291 with no
//!   other listener to 354 with 1,000 instances listening; 1,000 bare `LISTEN` sessions show
//!   the same drop (316), so the cost is the server's.
//! * The cost is per *commit*, not per transition: the outbox sends every trip and override
//!   pending on an instance in one call, so an incident that trips many keys at once pays it
//!   once per batch. In batches of 100 (`rc_force_many`, open loop) the server accepted 2,841
//!   transitions a second with no listener and 799 with 1,000 bare listeners.
//!
//! ## Reconnecting at once
//!
//! After a failover or a pooler's restart every listener of the fleet reconnects at once: a new
//! session (TLS, authentication), LISTEN, a reload of the namespace and a read of the server's
//! clock each. A listener that heard other sessions before checks that it still does only if
//! nothing arrives within a heartbeat, and on one channel all listeners share, so the first
//! check answers the others' ([`postgres`](super::postgres#pgbouncer)): a check each would cost
//! `n` NOTIFYs waking `n` backends each.
//!
//! The same run cut all 1,000 listeners at once (`pg_terminate_backend`): every instance was
//! listening again on a new session, none degraded, 8.5 s after the cut, and the server spent
//! 15.6 s of CPU from the cut to 6 s after that (15.6 ms an instance). For comparison,
//! listeners that check on every reconnect took 10.7 s and 19.3 s in the same conditions. What
//! is left is the sessions and reloads themselves.

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
