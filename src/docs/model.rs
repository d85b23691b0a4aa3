//! # The model, on one page
//!
//! How the crate works, for anyone who will run it in a fleet or change its code: the words it
//! uses, the path of a call and the path of a transition, who decides what, and what happens
//! when the database is away. The promises, each with its test, are
//! [`guarantees`](super::guarantees).
//!
//! ## Words
//!
//! * **Key**: the name of a protected dependency, e.g. `stripe_payment_api` (at most 255 bytes).
//! * **Namespace**: a set of keys. State is shared by `(namespace, key)`: the same key in two
//!   namespaces is two breakers. `RC_NAMESPACE` or
//!   [`PostgresOptions::namespace`](crate::storage::postgres::PostgresOptions::namespace); default
//!   `default`.
//! * **Instance**: one [`Storage`](crate::Storage) connected to PostgreSQL — a LISTEN connection,
//!   a small pool for transitions, and the snapshot. Usually one per process: a pod, a function
//!   invocation. [`Storage::in_memory`](crate::Storage::in_memory) is a storage that is nobody
//!   else's.
//! * **Breaker**: a [`CircuitBreaker`](crate::CircuitBreaker) handle for a key on a storage.
//!   Handles of one key on one storage (and their clones) are one breaker.
//! * **Snapshot**: per key, one packed atomic word — state, cooldown end, probe slots — that
//!   every call reads. It is the instance's view of the table plus its own latest decisions.
//! * **Window**: the last `n` outcomes of a breaker's calls, **per instance**; never shared.
//! * **Row**: per `(namespace, key)` in `public.rc_circuit_breakers`, the table the Python
//!   package `resilient-circuit` uses too, plus a `version` that a trigger raises on every change. No row means
//!   CLOSED.
//!
//! ## Two flows
//!
//! ```text
//!  1. A CALL: one atomic load, no lock shared with other keys, no I/O, never an await
//!
//!     cb.call(f) / cb.try_acquire()
//!            |
//!            v
//!     +---------------------+     CLOSED     run f; its outcome goes to this instance's window
//!     | the local snapshot  |---> OPEN       reject at once, f does not run
//!     | (one word per key)  |     HALF_OPEN  run f as a probe if the database leased this
//!     +---------------------+                instance a slot of the round, else reject
//!            ^
//!            |  changed by this instance's own decisions, and by flow 2
//!            |
//!  2. A TRANSITION: in the background, calls never wait for it
//!
//!     instance A                 PostgreSQL                       every instance (A too)
//!     -------------------------  -------------------------------  ----------------------
//!     A's window fills with
//!     failures: A's snapshot is
//!     OPEN at once
//!       |
//!     outbox: rc_trip_many() --> the function locks the row of
//!     (a pooled connection)      (namespace, key); refuses a trip
//!                                older than the row, else writes
//!                                OPEN, open_until = now()+cooldown
//!                                  |
//!                                trigger: version + 1; at commit,
//!                                NOTIFY rc_circuit_breakers with
//!                                an HMAC-signed payload
//!                                  |
//!                                  +---- NOTIFY ---------------->  listener (LISTEN)
//!                                                                  verifies the MAC;
//!                                                                  newer version? apply:
//!                                                                  snapshot OPEN until
//!                                                                  now + remaining;
//!                                                                  on_status_change runs
//! ```
//!
//! **Flow 1** is all a call does. A closed breaker's call reads the word once to be admitted and
//! once more to record a success; a failure (or a success while the window still holds
//! failures) writes the window, a ring of bits whose slot one compare-and-swap claims, and takes
//! the key's own lock only when the window may trip. When the window is full and holds enough
//! failures (the failure limit), the instance trips at once, locally, and hands the trip to
//! flow 2. A healthy closed breaker sends nothing to the database.
//!
//! **Flow 2** carries every change of a row to every instance. The instance's *outbox* sends its
//! trips in batches (one statement, one commit, keys in order so instances cannot deadlock) and
//! retries them until the database answers. The SQL function takes the row lock, so ten
//! instances tripping one key together make one transition; it refuses a trip decided before a
//! later change of the row (an operator's close wins over a stale trip). The trigger raises the
//! row's version and sends a NOTIFY when the transaction commits. Each instance's *listener*
//! checks the payload's MAC (a forged NOTIFY is ignored) and applies the change if its version
//! is newer than what it holds: the snapshot changes, and the breaker's `on_status_change`
//! callbacks run on a thread of their own. The outbox, the listener and every connection of
//! every instance in the process run on a background runtime of the library's (two
//! `resilient-circuit-io` threads), so a caller's task that computes without yielding cannot delay a
//! trip's publication. Whoever writes the row — this crate, a Python service,
//! an operator's `UPDATE` in psql, `resilient-circuit open` — goes through the same trigger, so
//! every instance hears every change.
//!
//! Behind the notifications: [`Storage::connect`](crate::Storage::connect) loads every row of the
//! namespace before it returns (a new instance is OPEN on its first call if the fleet is); the
//! listener reloads every row after each reconnection (notifications sent while it was away are
//! lost) and every 30 s (`reconcile_interval`).
//!
//! ## Who decides each transition
//!
//! | Transition | Decided by | Through |
//! |---|---|---|
//! | CLOSED → OPEN | an instance's own window | `rc_trip_many`: row lock, refused if the row changed since the instance decided |
//! | OPEN → HALF_OPEN | the database's clock | an instance whose cooldown is over asks for a probe lease (`rc_acquire_probe`); the function starts the round if the cooldown is over by the database's clock |
//! | HALF_OPEN → CLOSED or OPEN | the round's results | each probe reports (`rc_report_probe`); when the round's `m` results are in, the function closes (at least `s` successes) or opens again for another cooldown (grown ×2 per reopen up to the maximum with `max_cooldown`, counted in the row's `reopens`) |
//! | anything → OPEN / CLOSED | an operator | [`force_open`](crate::CircuitBreaker::force_open), [`force_closed`](crate::CircuitBreaker::force_closed), `resilient-circuit open / close / delete`, or a plain write |
//!
//! A half-open round is fleet-wide: the database hands out exactly `m` probe leases across all
//! instances, and a lease that is neither reported nor given back (a crashed prober) expires
//! after `lease_timeout`. A call that cannot probe is rejected at once;
//! [`call`](crate::CircuitBreaker::call) first waits up to `probe_wait` when a lease is being
//! asked for.
//!
//! ## What is shared, what is not
//!
//! Shared through the row: the state, the end of the cooldown, the half-open round. Per instance:
//! the window, the callbacks, the metrics. Consequences:
//!
//! * The fleet trips when the **first** instance's window crosses the failure limit; the other
//!   instances' windows do not add up. Choose the window for one instance's share of the traffic
//!   ([`settings`](super::settings)).
//! * A new instance starts with an empty window, and with the fleet's state.
//! * A short-lived process (a serverless invocation) must reach its trip within its own calls,
//!   and should [`flush`](crate::Storage::flush) before it ends: transitions are sent in the
//!   background.
//!
//! ## Time
//!
//! Cooldowns end by the database's clock: the functions compute `open_until` with
//! `clock_timestamp()`, and every answer and notification carries the time left, which the
//! instance turns into a deadline on its own monotonic clock. Clock skew between hosts changes nothing (except for a trip
//! written by a Python service, whose `open_until` comes from its host's clock); a cooldown's end
//! seen by an instance can move by the latency of the answer to its own trip
//! ([`cooldown_remaining`](crate::CircuitBreaker::cooldown_remaining) then grows by a few
//! milliseconds).
//!
//! ## When the database is away
//!
//! Breakers keep working on local state ([`Storage::is_degraded`](crate::Storage::is_degraded)):
//! trips are kept in the outbox and published when it is back, with what is left of their
//! cooldowns; an OPEN key probes locally after its cooldown; the listener reconnects with backoff
//! and reloads every row. A trip whose cooldown ended before the database came back is never
//! written. A storage made while the database is down returns at once (unless `RC_DB_STRICT=1`)
//! and connects in the background.
//!
//! ## Where each piece lives
//!
//! The crate docs' "Layout" and `CONTRIBUTING.md` list the files; the flow 2 walk-through in
//! the code is at the top of `src/storage/postgres/mod.rs`, and the rules for which change wins
//! are the table in `src/fleet/precedence.rs`.
