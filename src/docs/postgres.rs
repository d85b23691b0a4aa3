//! # PostgreSQL: setting up, connecting, and the shapes of a deployment
//!
//! Everything about the database side of a fleet: what an instance holds, how the schema is set
//! up and who may do what, the `RC_DB_*` variables, TLS, pgbouncer, following a replica by
//! polling, failover, several regions, and sharing keys with Python services. How a change
//! travels is [`model`](super::model); the threat model is [`security`](super::security); what
//! a fleet costs the server is [`scale`](super::scale).
//!
//! ## An instance
//!
//! [`Storage::connect`](crate::Storage::connect),
//! [`Storage::connect_with`](crate::Storage::connect_with) or
//! [`Storage::from_env`](crate::Storage::from_env) make one *instance*:
//!
//! * a LISTEN connection of its own (`application_name` `resilient-circuit-listener`);
//! * a small pool (deadpool, 4 connections at most, `application_name` `resilient-circuit`) for
//!   transition calls, whose connections close after 60 s idle, so an instance at rest holds one
//!   server connection;
//! * the snapshot. Before `connect` returns it has loaded every row of its namespace, so a
//!   breaker built next is OPEN on its first call if the fleet's is.
//!
//! Transitions are published in the background and calls never wait for the database;
//! [`Storage::flush`](crate::Storage::flush) waits until the database has answered them, which a
//! short-lived process (a serverless function, a batch job) calls before it returns.
//!
//! ## Setting up the schema
//!
//! The schema lives in `sql/`: numbered migrations (`sql/migrations/`, tables and data, recorded
//! with checksums in `public.rc_schema_migrations`) and one file per function with the triggers
//! that call it (`sql/objects/`, always the current definition, re-applied when it changes). An
//! owner of the schema (usually an administrator) applies them and grants the roles:
//!
//! ```text
//! RC_DB_DSN=postgresql://admin@db.internal/breakers \
//!     resilient-circuit setup --grant-to app --grant-operator oncall
//! resilient-circuit check --role app      # exit 1 and the fix when a right is missing or excess
//! ```
//!
//! `setup` waits at most 0.5 s for any lock and tries again for `--wait` seconds (60), so it is
//! safe on a live fleet. `connect` only verifies the schema (read-only) and fails with
//! [`StorageError::SchemaNotReady`](crate::StorageError::SchemaNotReady) naming the fix, unless
//! `RC_DB_AUTO_CREATE=1` or
//! [`PostgresOptions::auto_create`](crate::storage::postgres::PostgresOptions::auto_create) lets
//! it apply the migrations itself (handy for a test database; production usually runs `setup`
//! once per release).
//!
//! The table is the Python package's `public.rc_circuit_breakers` plus columns with defaults
//! (`version`, `state_changed_at`, the probe round's), so Python services on 0.8.x keep working
//! on it and the distributed-systems guide's monitoring SQL runs on it unchanged
//! (`seed_sql::seed_monitoring_queries_return_the_right_rows`, as a role holding only what
//! `setup --grant-to` grants). A table an older Python package made with `open_until timestamp`
//! (no time zone) is converted to `timestamptz`, reading old values as UTC
//! (`sql_contract::old_timestamp_column_is_converted`).
//!
//! ## Roles and grants
//!
//! The table is shared by roles of different trust. `setup` grants each role the rights of its
//! kind ([`RoleKind`](crate::admin::RoleKind)) as `EXECUTE` on functions, which PostgreSQL
//! checks on `current_user` (so `SET ROLE` to a reader leaves a reader's rights), and records
//! them, so that a later `setup` grants what new definitions need:
//!
//! | Role | `setup` flag | May | May not |
//! |---|---|---|---|
//! | reader | `--grant-reader` | read rows, the change log and live configurations (`status`, `history`, dashboards, an instance that follows by polling) | change anything, hear notifications |
//! | instance (the application's role) | `--grant-to` | what a reader may; trip a CLOSED key, run half-open rounds, vote, report failure rates (bounded), hear and verify notifications | write the table, close an OPEN key outside its round, force, configure, delete |
//! | Python service | `--grant-python` | what an instance may; INSERT, UPDATE, DELETE rows as the Python package does, through the table's triggers | close, delete or shorten a key forced open |
//! | operator | `--grant-operator` | what an instance may; `open`, `close`, `delete`, `config` (and the library's `force_open` / `force_closed`) | write the table directly, undo a forced-open key except by its mode |
//!
//! Give the application a role that owns nothing and holds only `--grant-to`; the tests run every
//! instance so. [`security`](super::security) is the whole threat model, including what a login
//! with no grant can still do through PostgreSQL itself.
//!
//! ## Connection settings
//!
//! [`Storage::from_env`](crate::Storage::from_env) reads these variables, the Python package's
//! names with the same meanings (a test keeps this table equal to the one on
//! [`PostgresOptions::from_env`](crate::storage::postgres::PostgresOptions::from_env)):
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `RC_DB_DSN` | unset | Whole connection as a `postgresql://` URL or `key=value` conninfo; wins over the variables below. |
//! | `RC_DB_HOST` | unset | Host, IP, socket directory or comma-separated list. With `RC_DB_PASSWORD` it selects PostgreSQL. |
//! | `RC_DB_PASSWORD` | unset | Password; setting only one of it and `RC_DB_HOST` is an error naming the other. |
//! | `RC_DB_PORT` | `5432` | Port, or comma-separated ports, one per host of `RC_DB_HOST`. |
//! | `RC_DB_NAME` | `resilient_circuit_db` | Database. |
//! | `RC_DB_USER` | `postgres` | Role. |
//! | `RC_DB_SSLMODE` | `prefer` | `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (libpq meanings). |
//! | `RC_DB_SSLROOTCERT` | unset | PEM file of the CAs to trust; `system` for the system store (verify-full only). |
//! | `RC_DB_SSLCERT` / `RC_DB_SSLKEY` | unset | Client certificate and its key. |
//! | `RC_DB_STRICT` | `0` | `1`: fail at start when PostgreSQL is unreachable instead of running on local state. |
//! | `RC_DB_AUTO_CREATE` | `0` | `1`: `connect` may create or upgrade the schema. |
//! | `RC_NAMESPACE` | `default` | Namespace of this instance's breakers. |
//! | `RC_INSTANCE_NAME` | unset | This instance's stable name in quorums and fleet rates; unset: `$HOSTNAME` (a pod's name), else the host's. |
//! | `RC_DB_LISTENER_DSN` | unset | Separate address for the LISTEN connection (e.g. to bypass pgbouncer transaction pooling). |
//! | `RC_DB_TRANSACTION_POOLER` | `0` | `1`: the main address is a pooler in transaction mode; no session settings on pooled connections (see "pgbouncer"). |
//! | `RC_DB_FOLLOW` | `listen` | `poll`: follow the change log instead of LISTEN, through any pooler or on a replica (see "Following by polling"). |
//! | `RC_DB_POLL_INTERVAL_MS` | `250` | How often a polling instance (or a listener that hears nothing) reads the change log. |
//! | `RC_DB_RECONCILE_INTERVAL_MS` | `30000` | Period of the full resync behind notifications. |
//! | `RC_DB_STATEMENT_TIMEOUT_MS` | `2000` | Time limit of each transition call and of the listener's heartbeat. |
//! | `RC_DB_CONNECT_TIMEOUT_MS` | `5000` | Time limit of each connection attempt, per host of a list. |
//! | `RC_DB_POOL_IDLE_TIMEOUT_MS` | `60000` | Pooled connections idle this long are closed, so an instance at rest holds only its LISTEN connection; `0`: never. |
//!
//! Booleans accept `1/true/yes/on` and `0/false/no/off`. Without `RC_DB_DSN`, or `RC_DB_HOST`
//! with `RC_DB_PASSWORD`, `from_env` returns an in-memory storage. Passwords never appear in
//! `Debug`, `Display`, errors or logs. Every option also has a typed setter on
//! [`PostgresOptions`](crate::storage::postgres::PostgresOptions) (keepalives,
//! `tcp_user_timeout`, heartbeat interval, reconnect backoff ceiling, lease timeout, pool size, TLS
//! files); [`settings`](super::settings#instance-settings) says which are worth changing.
//!
//! The pool and the listener connect with `target_session_attrs=read-write` unless the DSN says
//! otherwise: LISTEN is refused on a standby, and every pooled statement writes. The pool's
//! sessions run with `statement_timeout` and `lock_timeout` set to the statement timeout, so a
//! call the client gave up on (it is also cancelled, and its connection leaves the pool) never
//! keeps a row lock (`outages::abandoned_call_releases_the_server`).
//!
//! ## TLS
//!
//! `sslmode` (`RC_DB_SSLMODE`, or `sslmode=` in the DSN) has libpq's meanings, for the pool and
//! the listener alike (a listener DSN may set its own):
//!
//! | `sslmode` | Encrypted | Certificate chain checked | Host name checked |
//! |---|---|---|---|
//! | `disable` | no | — | — |
//! | `prefer` (default) | when the server offers it | only with `sslrootcert` | no |
//! | `require` | yes | only with `sslrootcert` (as libpq) | no |
//! | `verify-ca` | yes | against `sslrootcert`, else the system's CAs | no |
//! | `verify-full` | yes | against `sslrootcert`, else the system's CAs | yes |
//!
//! `sslcert` / `sslkey` (`RC_DB_SSLCERT` / `RC_DB_SSLKEY`) present a client certificate for the
//! server's `cert` authentication; an encrypted key is refused (there is no `sslpassword`). The
//! files are read by `connect`, and a missing or unreadable one is a
//! [`StorageError::Tls`](crate::StorageError::Tls) naming the setting and the path. A connection
//! that fails for a TLS reason says so once, with OpenSSL's reason, then the mode and the files
//! it used:
//!
//! ```text
//! error performing TLS handshake: certificate verify failed: IP address mismatch (sslmode=verify-full, sslrootcert=/etc/rc/ca.crt)
//! ```
//!
//! `tests/it/tls_server.rs` runs each mode against a throwaway cluster with `ssl=on` and a
//! certificate for `localhost` only, signed by a CA the test makes; instances run as a role that
//! owns nothing, with `strict`, so a failure is an error:
//!
//! * `verify-full` connects to `localhost` and refuses the same server as `127.0.0.1`
//!   (`tls_server::verify_full_checks_the_host_name`); `verify-ca` connects by either name
//!   (`tls_server::verify_ca_accepts_either_name`).
//! * `require`, without a root file and by a name not in the certificate, connects, and
//!   `pg_stat_ssl` shows every session of two instances, pools and listeners, on TLS; a trip on
//!   one reaches the other (`tls_server::require_encrypts_the_pool_and_the_listener`).
//! * `disable` where `pg_hba.conf` has `hostnossl … reject` fails with the server's reason and
//!   the mode to change (`tls_server::disable_fails_clearly_where_tls_is_demanded`).
//! * Under `hostssl … cert`, a client certificate whose CN is the role logs in, on the pool and
//!   the listener; no certificate, or another role's, is refused
//!   (`tls_server::client_certificate_authenticates`).
//! * A root file that did not sign the server's certificate is refused under `verify-full`,
//!   `verify-ca` and `require`, with the file and the mode in the message
//!   (`tls_server::wrong_ca_is_refused_once_with_file_and_mode`).
//! * The same settings work from the `RC_DB_SSL*` variables and from `RC_DB_DSN` as conninfo and
//!   as URL (`tls_server::settings_from_the_environment_and_a_dsn`).
//!
//! No message shows the password, which every test puts in its DSN.
//!
//! ## pgbouncer
//!
//! On a session of its own (a direct address, or a pooler in session mode) an instance prepares
//! each transition call once per connection, once its listener on the same address has heard
//! another session; everywhere else (`RC_DB_TRANSACTION_POOLER=1`, `RC_DB_LISTENER_DSN` set,
//! polling, or a listener that hears nothing) calls are unnamed statements with typed parameters
//! (one round trip, nothing prepared), so they pass through a pooler in **transaction** mode,
//! which could route a prepared statement's execution to a session where the name is unknown or
//! another client's. LISTEN cannot pass: the listener needs a session of its own. Give it a
//! direct address:
//!
//! ```text
//! RC_DB_DSN=postgresql://app@pgbouncer:6432/breakers         # calls, through the pooler
//! RC_DB_LISTENER_DSN=postgresql://app@postgres:5432/breakers  # LISTEN, straight to PostgreSQL
//! RC_DB_TRANSACTION_POOLER=1   # no SET statement_timeout/lock_timeout on pooled sessions
//! ```
//!
//! `RC_DB_TRANSACTION_POOLER=1` keeps the instance from setting `statement_timeout` and
//! `lock_timeout` on its pooled sessions, which the pooler would hand on to its other clients;
//! calls stay bounded by the client's timeout, which cancels them on the server (pgbouncer
//! forwards the cancel). In **session** mode one address serves both.
//!
//! Every listener checks that it hears other sessions: it sends a NOTIFY on a channel all
//! listeners share (`rc_listener_check`) from a pooled session and waits (up to the statement
//! timeout) for it, or anyone's, to arrive. At start it checks before `connect` returns. After a
//! reconnect it checks only if nothing at all arrives within a heartbeat, at a random moment in
//! it: PostgreSQL before 19 wakes every listening backend for every NOTIFY, so a fleet
//! reconnecting at once after a failover would otherwise cost the server `n` × `n` wake-ups;
//! this way the first instance's check answers the others' (`outages::a_fleet_reconnecting_at_once_checks_itself_a_few_times_not_once_each`:
//! 24 instances cut at once send at most 6 checks). Behind a transaction pooler nothing comes
//! back: the instance logs at WARN `the listener does not hear notifications sent by other
//! sessions …`, naming `RC_DB_LISTENER_DSN` and `RC_DB_FOLLOW=poll`, and follows the table by
//! polling its change log every `RC_DB_POLL_INTERVAL_MS` until a reconnect finds a listener that
//! hears. A listener that reconnects to an address that has come to lead through such a
//! pooler finds out within a heartbeat and the statement timeout, and polls from then on
//! (`outages::a_listener_that_reconnects_deaf_finds_out_and_polls`). To go through the pooler
//! on purpose, with no direct address at all, set `RC_DB_FOLLOW=poll` (next section): nothing
//! then needs a session of its own.
//!
//! `tests/it/pgbouncer.rs` starts Debian's pgbouncer (1.18) in front of a throwaway cluster:
//!
//! * in transaction mode with 3 server connections, 20 instances racing make one transition, a
//!   fleet-wide round hands out exactly its 2 probes, the close reaches all, and no call fails on
//!   the way (`pgbouncer::transaction_pooling_races_to_one_transition_and_exact_probes`);
//! * a listener wrongly behind the pooler warns, and a trip still reaches it by polling, within
//!   1 s (`pgbouncer::a_listener_behind_a_transaction_pooler_warns_and_polls`);
//! * in session mode one address serves both: a trip arrives by NOTIFY through the pooler, and
//!   no warning is logged (`pgbouncer::session_pooling_works_with_one_address`);
//! * six instances that follow by polling through a transaction-mode pool of 2 server
//!   connections, with no direct address, each see a trip made by one of them, and none falls
//!   back to local state; between their statements they hold no server connection, and they
//!   leave no server session LISTENing
//!   (`follow::a_polling_fleet_works_through_pgbouncer_in_transaction_mode`).
//!
//! ## Following by polling
//!
//! With [`Follow::Poll`](crate::storage::postgres::Follow::Poll) (`RC_DB_FOLLOW=poll`), every
//! `RC_DB_POLL_INTERVAL_MS` (250 ms by default) the instance asks its follow address
//! (`RC_DB_LISTENER_DSN`, or the main one) for the changes it has not seen, in one unnamed
//! statement (`rc_changes_since`) that works through pgbouncer in transaction mode and on a hot
//! standby. Transitions still go to the main address. Choose it when only a transaction pooler
//! is reachable, when the fleet is past what the primary should hold as LISTEN connections, or
//! when instances are near a replica and far from the primary ([`scale`](super::scale) has the
//! figures to decide by).
//!
//! The deferred trigger that sends each NOTIFY also appends the change to `rc_changes`, with its
//! writer's transaction id, so the log holds every change of state or cooldown whoever made it
//! (this crate, a Python service, `psql`), deletions, and TRUNCATE as a reset. The cursor is not
//! a version: versions are taken when a row is written and commits come later, so "versions above
//! the last one seen" would skip a row written first and committed last. The cursor is the
//! database snapshot of the last poll: a change is new exactly when its transaction had not
//! finished in that snapshot (its id at or above the snapshot's `xmax`, or in its in-progress
//! list). `follow::a_change_committed_late_with_a_lower_version_is_not_missed` holds that race
//! open on purpose; in `follow::concurrent_writers_miss_nothing`, eight writers change keys in
//! overlapping transactions while followers poll, and each follower must stream every change of
//! state the table went through, with the version that made it, in order.
//!
//! A polling instance reloads everything at each (re)connect, after a gap of more than a minute
//! between polls, and on a reset, never on a timer (a reload from a lagging replica would only
//! step back). The log keeps changes for an hour (`UPDATE rc_change_log_settings SET retention =
//! ...`, at least 10 minutes), pruned at most once a minute by the trigger; the roles that may read
//! the breaker table may read it (row security), and only the trigger writes it. Live
//! configuration travels in the same log
//! (`follow::live_configuration_reaches_a_polling_instance_through_the_change_log`).
//!
//! A follower on a streaming replica sends its trips to the primary and sees the primary's
//! changes; when the replica stops replaying it falls behind and then catches up with everything;
//! when the replica goes away it runs on local state and resumes, missing nothing
//! (`follow::a_follower_on_a_replica_falls_behind_and_loses_it_and_misses_nothing`). The
//! replica's lag adds to the interval; with `synchronous_commit=off` on the primary that lag can
//! reach three times `wal_writer_delay`, because WAL reaches the standby only once it is flushed.
//!
//! ## Failover
//!
//! A DSN may list several hosts, as libpq's: `host=pg-a,pg-b port=5432,5433`, or
//! `postgresql://app@pg-a:5432,pg-b:5433/db`. Each connection, pooled or listening, tries one
//! host at a time, each within `connect_timeout`, starting with the host that took the
//! instance's last connection, and settles on the first that accepts writes. List the primary
//! and its standbys: after a promotion every instance's listener reconnects to the new primary
//! and reloads every row, its pool follows, and trips decided while no host was writable are
//! published there. `tests/it/failover.rs` promotes a real streaming standby; the bounds, and what
//! happens to a trip the old primary had not replicated, are in
//! [`guarantees`](super::guarantees#healing-by-fault). The knob that matters most is
//! `reconnect_backoff_max` (5 s): the wait before an attempt once no host was writable for a few
//! seconds.
//!
//! ## Several regions
//!
//! **LISTEN needs the primary**: a hot standby refuses `LISTEN`, and notifications are not
//! written to the WAL, so a replica never delivers the NOTIFY of a change made on the primary.
//! Every transition is a write through a row-locked function. So a region far from the primary
//! follows its local replica by polling and sends its transitions to the primary:
//!
//! ```text
//! # eu-west-1 pods
//! RC_DB_DSN=postgresql://app@pg-primary.us-east-1:5432/breakers          # transitions
//! RC_DB_LISTENER_DSN=postgresql://app@pg-replica.eu-west-1:5432/breakers  # follows this replica
//! RC_DB_FOLLOW=poll RC_DB_POLL_INTERVAL_MS=250
//! ```
//!
//! The example `multi_region` runs this against a real streaming standby. An instance given
//! *only* a replica's address, in the default listening mode, does not connect (the default
//! `target_session_attrs=read-write`): it runs on local state, warning that it cannot reach
//! PostgreSQL (or fails at start with `RC_DB_STRICT=1`).
//!
//! * **One fleet, one primary.** Every instance's transitions go to the primary, wherever it is.
//!   Instances near it LISTEN there; instances far from it may follow their local replica (a
//!   change then reaches them within the poll interval plus the replica's lag). A trip reaches a
//!   remote listening region one commit plus one cross-region round trip later. Calls never wait
//!   for it, since they read the local snapshot. Cooldowns end by the primary's clock, so regions
//!   agree on them without synchronized clocks.
//! * **A region cut off from the primary** runs on local state (its instances still trip, reject
//!   and probe on their own) and catches up when the link returns; trips made meanwhile are
//!   published with what is left of their cooldowns.
//! * **Independent regions** are often what is wanted when the dependency is regional (a
//!   regional endpoint of a payment processor): give each region its own namespace
//!   (`RC_NAMESPACE=eu-west-1`) on the one primary, or its own database; breakers then trip per
//!   region.
//! * **Replicas still serve reading.** Dashboard and alert queries are plain reads and run on a
//!   replica, as stale as its replication lag (the command line, like instances, asks for a
//!   writable server unless its DSN says `target_session_attrs=any`).
//!
//! ## Sharing keys with Python services
//!
//! Python services using the Python package `resilient-circuit` (0.8.x; `tests/it/python.rs`
//! runs 0.8.6, the real package) share the table with this crate: a key tripped, half-opened or
//! closed on either side is that key on the other. Give both sides the same settings
//! ([`settings`](super::settings#matching-a-python-service) maps the Python package's
//! parameters to the builder's).
//!
//! * *Set up with either tool, in either order.* The Python package's `resilient-circuit-cli
//!   pg-setup` then `resilient-circuit setup`, or the reverse, leaves a schema that
//!   `resilient-circuit check` and `resilient-circuit-cli pg-check` both pass and that both
//!   runtimes use (`python::python_package_setup_then_ours_leave_a_schema_both_accept`,
//!   `python::our_setup_then_the_python_packages_leave_a_schema_both_accept`).
//! * *One grant for both.* `resilient-circuit setup --grant-python ROLE` grants what both need;
//!   Python services and instances then run as `ROLE`, which owns nothing, and every Python write
//!   lands (`python::on_a_role_that_owns_nothing_python_and_rust_see_each_other`).
//! * *Same variables.* `RC_DB_DSN` (or `RC_DB_HOST`…) and `RC_NAMESPACE` mean the same on both
//!   sides. Give Python services `RC_DB_STRICT=1`: without it the package falls back to
//!   process-local state when the database is unusable, with only a warning.
//! * *Python → Rust: pushed.* The package writes a plain upsert; the table's trigger announces
//!   it, and listening instances reject within 50 ms of the package's write
//!   (`python::python_trip_is_rejected_by_a_listening_rust_instance_within_50_ms`).
//! * *Rust → Python: read.* The package has no listener: it reads the row again before admitting
//!   a call, at most once per `admission_refresh_interval` (1 s by default). A Rust trip or close
//!   is seen on its next read (`python::rust_trip_is_rejected_by_python_on_its_next_check`,
//!   `python::recovery_crosses_between_python_and_rust`). A key forced open by its live
//!   configuration holds a Python service too (`python::a_python_service_obeys_forced_open`).
//!
//! What differs on a Python service:
//!
//! * In HALF_OPEN it takes no probe lease, so "exactly `m` probes" holds among instances of this
//!   crate only. A Python service probes from a window of its own, and its verdict, a plain write
//!   of CLOSED or OPEN, ends the round for everyone.
//! * Its trips' cooldowns end by its host's wall clock (`open_until` = its `time.time()` +
//!   cooldown).
//! * It ignores a row that is gone: `resilient-circuit delete` leaves a Python service that saw
//!   the key OPEN rejecting until its own cooldown ends. Use `resilient-circuit close`, which
//!   writes a CLOSED row.
//! * Its trip of a [group](super::groups) member past the group's cap writes nothing: the row
//!   stays CLOSED, the statement reports no row changed, and the change log records the refusal
//!   (`groups::the_python_package_cannot_open_a_member_past_the_cap`). The Python service sees
//!   CLOSED on its next read of the row, at most `admission_refresh_interval` later; until then
//!   it holds what it decided itself.
//!
//! ## Supported PostgreSQL versions
//!
//! 13 to 18. `scripts/test.sh` runs the whole suite on the machine's PostgreSQL (Debian 12's 15 in
//! CI), and `scripts/pg-versions.sh` runs a subset on 13, 14, 16, 17 and 18: `postgres::`,
//! `sql_contract::`, `security::`, `convergence::`, `outages::`, `resources::`, `changes::`,
//! `quorum::`, `live_config::`, the two change-log tests of `follow::`
//! (`follow::a_change_committed_late_with_a_lower_version_is_not_missed`,
//! `follow::concurrent_writers_miss_nothing`), the three `fleet_rate::` tests whose names
//! begin with `the_`, `outliers::` and `groups::`. `RC_PG_VERSIONS_TESTS` replaces that list (e.g.
//! `RC_PG_VERSIONS_TESTS=faults:: scripts/pg-versions.sh`). `failover::`, the replica test of
//! `follow::` and the pgbouncer tests need `pg_basebackup` or Debian's packages and run on 15
//! only.
