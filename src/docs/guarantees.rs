//! # Guarantees, each with the test that checks it
//!
//! What the crate promises about a breaker shared by a fleet, and what it does not: when a
//! transition reaches every instance, what can be lost, who wins when decisions race, and how the
//! fleet heals after each kind of fault. Every promise names the test that would fail if it
//! were broken.
//!
//! Tests are named `<file>::<test>`, in `tests/it/<file>.rs` unless said otherwise. The
//! integration tests are one binary; `cargo test --all-features --test it <file>::<test>` runs
//! one. They run against real PostgreSQL servers (see `CONTRIBUTING.md`), with the instances
//! logged in as a role that owns nothing and holds only what `setup --grant-to` grants.
//!
//! A *tested bound* is what a test asserts: wide enough to hold on a loaded 2-core machine, so
//! it catches a lost change or a call that waits on the database, not a slow one. Where no bound
//! is given, the test checks the outcome, not the time. Many tests also print what they measured
//! in a `MEASURED` line (`-- --nocapture`); those figures are not promises, and the measured
//! costs are in [`performance`](super::performance) and [`scale`](super::scale).
//!
//! ## Never lost
//!
//! A transition the database accepted (after a failover: that the new primary holds, see
//! [Can be lost](#can-be-lost)) reaches every live instance:
//!
//! * by NOTIFY: `postgres::trip_on_a_is_seen_on_b`; a burst of 20 trips reaches all of 50
//!   instances (`faults::fifty_instances_converge`, tested bound 10 s);
//! * by the full reload after a reconnect, when the listener was away: the tests commit the
//!   change while the listener is verifiably disconnected, so only the reload can deliver it
//!   (`faults::listener_backend_killed_reconnects_within_a_second`,
//!   `faults::restart_under_traffic_converges`);
//! * and in any case by the periodic reconciliation (`reconcile_interval`, 30 s).
//!
//! A burst of 10,000 keys changing at once converges exactly, row by row
//! (`faults::burst_of_ten_thousand_keys_converges`, tested bound 10 s). A trip made while the
//! database is unreachable is published when it is back, with what is left of its cooldown: the
//! row's `open_until` is the local deadline, not a fresh cooldown (within 1 s:
//! `faults::database_down_at_start_then_up`). A new instance rejects its very first call if the
//! fleet's breaker is open (`postgres::new_instance_sees_open_at_once`). A trip is published
//! while the task that tripped keeps its thread busy, on a current-thread runtime and on a
//! multi-thread one (`postgres::a_trip_is_published_while_the_tripping_task_computes`,
//! `postgres::a_trip_is_published_while_a_worker_computes`, tested bound 500 ms): instances do
//! their I/O on a runtime of their own.
//!
//! A healthy closed breaker sends nothing to the database: during 10,000 healthy calls not one
//! byte goes from the instance to the server (`postgres::healthy_calls_cause_no_statements`).
//!
//! ## Can be lost
//!
//! * The outcomes an instance recorded but had not turned into a trip when it crashed: windows
//!   are per instance.
//! * A trip made during an outage whose cooldown ended before the database came back: it is
//!   never written, and the instance then follows the table
//!   (`faults::trip_expiring_during_outage_does_not_wedge`).
//! * A trip the primary accepted but had not replicated when a standby was promoted in its place
//!   (asynchronous replication loses that tail). The new primary has no row for it, and every
//!   instance, the one that made it included, holds it OPEN only until its listener reloads from
//!   the new primary, then follows the table (CLOSED). Nothing remembers an accepted trip to
//!   replay it, so the breaker trips again only on new failures
//!   (`failover::promoted_standby_takes_over_and_the_fleet_follows`, which stops the standby's
//!   WAL receiver before the trip and checks that the standby never received it). Pausing the
//!   standby's replay (`pg_wal_replay_pause()`) does not lose it: promotion replays all received
//!   WAL first. Synchronous replication (`synchronous_standby_names`) keeps the manual overrides
//!   and live configuration through a failover, but not the transitions instances decide (see
//!   the next point); no test covers it.
//! * A transition an instance decided (a trip, a probe's result, a vote, a rate report) that the
//!   server acknowledged but had not flushed to disk when it crashed: these commit with
//!   `synchronous_commit` off for their transaction alone, so that they reach the fleet one disk
//!   flush sooner (measured in [`performance`](super::performance)). PostgreSQL's WAL writer flushes them within
//!   3 × `wal_writer_delay` (600 ms by default). After the crash every instance reloads the row
//!   as the database kept it, and the breaker trips again on new failures. Manual overrides
//!   (`open`, `close`, `force_open`) and live configuration wait for the flush as usual.
//! * A local trip not yet published when the table moved on (a newer version, e.g. an operator's
//!   close): the newer decision wins and the trip is never replayed over it. Each trip carries
//!   the newest version its instance had seen when it decided, and the database refuses it over
//!   a row changed after that (`convergence::stale_trip_is_not_replayed_over_a_later_close`: A
//!   trips while cut off, B trips and closes, A's path heals, the key stays CLOSED everywhere;
//!   `faults::timed_out_publication_is_not_replayed_over_a_later_close`).
//!
//! ## Who wins
//!
//! Every rule that decides between an instance's own trips and overrides and what arrives from
//! the table is in `src/fleet/precedence.rs`, whose documentation is the table of cases, rules
//! and tests (`convergence::every_test_the_rule_table_cites_exists` keeps it honest). In short:
//!
//! * a notification applies only if it is newer than what the instance holds, even when fresh
//!   and validly signed (`postgres::stale_notifications_are_ignored`), and an answer never
//!   lowers a newer version;
//! * a notification that arrives while one of the instance's overrides is in flight is kept and
//!   applied after the override's answer if it is newer
//!   (`convergence::notification_during_override_is_not_lost`);
//! * a reload is authoritative, except over the instance's own trip not yet accepted and not
//!   older than the row;
//! * overrides are retried, ordered with trips, until the database takes them, and
//!   [`force_open_confirmed`](crate::CircuitBreaker::force_open_confirmed) /
//!   [`force_closed_confirmed`](crate::CircuitBreaker::force_closed_confirmed) say when it did,
//!   or why it refused (`convergence::overrides_are_retried_and_confirmed`,
//!   `sql_contract::read_only_role_cannot_change_breakers`);
//! * a trip decided right after a manual close wins over the close's late answer
//!   (`postgres::trip_after_force_closed_wins`), and a manual close made right after a trip is
//!   not undone by the trip's late notification or answer
//!   (`faults::force_closed_is_not_undone_by_a_late_trip`);
//! * everything at once converges: four instances and thirty keys under every trip policy, with
//!   random failures, an operator changing configurations and forcing states, and plain SQL
//!   writers; once the traffic stops, every instance agrees with the table on every key within
//!   5 s (`convergence::everything_at_once_converges`).
//!
//! ## Versions follow commit order
//!
//! A DELETE racing a trip cannot hide the OPEN: the trip's INSERT waits for the deletion and
//! takes a newer version (`sql_contract::delete_racing_a_trip_does_not_hide_the_open`,
//! `sql_contract::cleanup_delete_during_trips_hides_nothing`). A follower that polls the change
//! log misses no change, even one committed after a change with a higher version: the cursor is
//! the database snapshot of the last poll, not a version
//! (`follow::a_change_committed_late_with_a_lower_version_is_not_missed`;
//! `follow::concurrent_writers_miss_nothing` runs eight writers in overlapping transactions of
//! random length, and each follower must stream every change of state the table went through,
//! with the version that made it, in order: a change missed and overwritten later would leave
//! the final state right and this sequence wrong).
//!
//! ## Exactly once
//!
//! * Ten instances racing to trip one key make one transition
//!   (`postgres::ten_racing_instances_make_one_transition`); through pgbouncer in transaction
//!   mode, twenty do (`pgbouncer::transaction_pooling_races_to_one_transition_and_exact_probes`).
//! * A fleet-wide half-open round admits exactly `m` probes
//!   (`postgres::fleet_wide_probe_count_is_exact`), among instances of this crate (a Python
//!   service takes no lease: [`postgres`](super::postgres#sharing-keys-with-python-services)).
//! * A prober that dies gives its slot back when its lease expires, not before (`lease_timeout`,
//!   10 s by default; the test uses 600 ms: `postgres::lease_of_a_crashed_prober_expires`).
//! * A round's size is fixed when it starts, so instances asking for different probe counts (a
//!   rolling deploy, two services) cannot wedge it, and a round begun by a plain write (the
//!   Python package, an operator) starts clean (`sql_contract::round_size_is_fixed_when_it_starts`,
//!   `sql_contract::rounds_have_an_identity`).
//! * While every slot is leased elsewhere, other callers are rejected at once and the instance
//!   does not ask the database again until the first lease can have expired
//!   (`outages::full_half_open_round_fails_fast_and_stops_polling`: nothing sent for 1 s, no call
//!   waited 200 ms).
//! * Concurrent quorum votes open a key once (`quorum::concurrent_votes_open_exactly_once`).
//! * A group's cap holds under a race: nine instances tripping nine members of a group capped at
//!   a third at the same moment open exactly three, and the six others are refused and recorded
//!   (`groups::a_race_of_trips_on_different_members_opens_at_most_the_cap`); the Python
//!   package's writes are held to it too
//!   (`groups::the_python_package_cannot_open_a_member_past_the_cap`) ([`groups`](super::groups)).
//! * A group's counts are the table's: after writers racing on its members, a `TRUNCATE`, or a
//!   member moving to another group, the database's count and every instance's are the true
//!   one (`groups::the_counts_stay_true_through_races_truncates_and_moves`), and every instance
//!   that joined or follows the group hears each change
//!   (`groups::every_instance_sees_the_groups_counts_and_its_opening`).
//! * An instance far above the rest of the fleet's failure rate does not open a fleet-rate key
//!   for the others, and is named; the whole fleet failing still opens it
//!   (`outliers::one_sick_instance_of_ten_is_named_and_opens_alone`,
//!   `outliers::the_whole_fleet_failing_opens_the_key_for_everyone`) ([`outliers`](super::outliers)).
//!
//! ## One breaker, in memory
//!
//! The state, the admit and reject decisions, the window and the cooldown match a small
//! independent model of the rules after every step of random operation sequences
//! (`model::breaker_matches_reference_model`), and `on_status_change` reports exactly the
//! model's transitions, once each, in order (`model::callbacks_match_reference_model`). Eight
//! threads on one breaker never have more than a round's probes in flight, and every admitted
//! permit is reported or dropped (`concurrency::eight_threads_one_breaker`); racing outcomes
//! trip exactly at the limit (`concurrency::racing_outcomes_trip_exactly_at_the_limit`,
//! `concurrency::racing_outcomes_on_a_time_window_trip_exactly_at_the_minimum`, and the time
//! window's own model, `breaker::time_model`). A count window recorded by `t` threads at once
//! is judged as its slots hold it: a slot claimed and not yet written still holds the outcome
//! it replaces, so the count may differ by up to `t` from the last `n` outcomes (the
//! `cell/ring.rs` module doc); recording from one thread is exact.
//!
//! ## Healing, by fault
//!
//! Defaults unless a knob is named.
//!
//! | Fault | What happens | Tested bound | Knob | Test |
//! |---|---|---|---|---|
//! | Database down when instances start | `connect` returns at once, degraded, with a warning; the instances sync when it is up | `connect` < 2 s; synced within 8 s of the server being up | `strict` (fail instead), `connect_timeout` | `faults::database_down_at_start_then_up` |
//! | Database restarted under traffic | instances held off by a proxy reconnect when let back, and converge on an operator's change committed meanwhile; no caller sees a database error | reconnected within 8 s of being let back, converged within 10 s more; no call over 1 s | reconnect backoff: 50 ms doubling to 5 s, jittered | `faults::restart_under_traffic_converges` |
//! | Primary stopped, standby promoted (both in the DSN, primary first) | every instance follows the new primary and reloads; a trip after it reaches every instance | 8 s from the promotion (2 s with `reconnect_backoff_max` 500 ms) | `reconnect_backoff_max`, `connect_timeout` | `failover::promoted_standby_takes_over_and_the_fleet_follows` |
//! | Primary gone silent (connections open, nothing answers; listed first), standby promoted | the heartbeat notices, each connection attempt spends one `connect_timeout` on the silent host, then the fleet is on the new primary | 15 s from the silence | `heartbeat_interval` and `statement_timeout` (detection), `connect_timeout` (per silent host), `reconnect_backoff_max` | `failover::fleet_leaves_a_primary_that_went_silent` |
//! | Listener backend killed | the listener reconnects and reloads; a trip committed while it was down is seen | 1 s from the kill | — | `faults::listener_backend_killed_reconnects_within_a_second` |
//! | Black-holed connection | detected by the heartbeat (every 2 s, answer due in 2 s); calls stay local and fast | detected within 10 s; each call < 20 ms | `heartbeat_interval`, `statement_timeout`, `tcp_user_timeout`, keepalives | `faults::blackholed_connection_detected_and_recovers` |
//! | Slow database (+500 ms each way) | admission does not wait for the database; a tripping `failure()` returns without waiting for the publication | admission: mean < 5 µs and median ≤ 3 × the median without the delay + 1 µs; `failure()`: median < 2 ms, max < 20 ms | `statement_timeout` | `faults::slow_database_does_not_slow_calls` |
//! | Breaker tripped during an outage | recovers by itself: a local half-open round after the cooldown | — | `cooldown` | `faults::breaker_recovers_locally_during_an_outage`, `outages::open_key_probes_locally_after_its_cooldown_during_an_outage` |
//! | Database lost while a key is HALF_OPEN (a fleet probe in flight) | the key starts a local round at once; the fleet probe's outcome counts as neither | — | — | `outages::half_open_key_recovers_locally_when_the_database_goes_away` |
//! | Instance started while the database is down, without a schema | warns at each failed reconnect (then every 60 s), creates the schema (`auto_create`) on the first successful connect and syncs | 15 s after the start | `auto_create` | `outages::instance_started_degraded_creates_the_schema_when_the_database_comes` |
//! | A call the client abandoned (statement timeout) waiting for a row lock | cancelled on the server; retried, and lands once the lock is gone | server wait gone within 3 s | `statement_timeout` | `outages::abandoned_call_releases_the_server` |
//! | A publication that fails while the listener is up | retried with backoff (50 ms doubling to 5 s; at once after a reconnect), not at the next reconciliation | 8 s | — | `outages::failed_publication_is_retried_while_the_listener_is_up` |
//! | Forged NOTIFY (old format, no MAC, wrong MAC, a real payload replayed with another version) | ignored: never applied | — | — | `hostile::forged_notifications_are_ignored` |
//!
//! The slow-database bounds are coarse on purpose: a call that waited for the database would
//! take 500 ms, so they tell a call that waits from one that does not, on a debug build; they do
//! not measure the hot path, which [`performance`](super::performance) does.
//!
//! ## Hostile input
//!
//! Hand-written rows never panic an instance and leave other keys unaffected
//! (`hostile::hostile_rows_are_tolerated`): an unknown state is treated as CLOSED with a warning
//! naming the key; a NULL, past or `-infinity` cooldown is over, `infinity` is a cooldown of
//! centuries, and `failure_count` and `execution_log` are not read at all. Malformed, truncated,
//! oversized, unknown-version or impossible-key payloads are ignored
//! (`hostile::hostile_payloads_are_ignored`, `hostile::payloads_with_impossible_keys_are_ignored`).
//! Keys with quotes, backslashes, Unicode, SQL and exactly 255 bytes round-trip exactly, and 256
//! bytes is a [`ConfigError`](crate::ConfigError) (`hostile::hostile_keys_round_trip_exactly`).
//! Bad settings give typed errors naming the variable or cause, never the password
//! (`hostile::bad_settings_give_typed_errors`, `hostile::bad_variables_name_the_variable`,
//! `hostile::wrong_password_and_missing_database`). A wrong password or a missing database is a
//! [`StorageError::Connect`](crate::StorageError::Connect); without `strict` the instance warns
//! and runs on local state, as in an outage. Who may do what to the table is
//! [`security`](super::security), each line with its test.
//!
//! ## Callbacks never stall the fleet
//!
//! Status-change callbacks of transitions made elsewhere run on a thread of their own, never on
//! the listener and never under a lock of the key map: a callback that builds breakers or blocks
//! for seconds neither deadlocks nor delays other keys
//! (`resources::callbacks_cannot_stall_or_deadlock_the_listener`). A receiver of the change
//! stream that falls behind is told how many changes it missed and never blocks anyone
//! (`changes::a_slow_receiver_is_told_how_many_it_missed`).
//!
//! ## Bounded memory
//!
//! * A PostgreSQL instance keeps no cell for keys whose row is CLOSED and that no breaker uses,
//!   and drops unused CLOSED cells past 8,192 keys; a breaker built later for any key starts with
//!   the fleet's state (`resources::key_map_stays_bounded_and_late_breakers_see_the_fleet`:
//!   20,000 CLOSED rows make fewer than 100 cells).
//! * Its outbox holds at most one entry per key, however often the key trips during an outage
//!   (`outages::outbox_is_bounded_per_key_during_an_outage`).
//! * The in-memory store keeps about 8,192 keys: [`Storage::in_memory`](crate::Storage::in_memory)
//!   never holds more, and stays above 7/8 of it, with 24,576 idle keys
//!   (`breaker::store::default_store_is_bounded_at_8192_keys`); it never drops an open breaker
//!   or one with a live handle (`breaker::store::eviction_respects_capacity`,
//!   `breaker::store::eviction_spares_open_and_live_keys`, `concurrency::many_keys_many_threads`).
