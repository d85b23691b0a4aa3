//! # Security: who may do what to the shared table
//!
//! One PostgreSQL table, `public.rc_circuit_breakers`, is shared by every service of a fleet and
//! by roles of different trust. This page is the threat model: who the roles are, what each may
//! do and may not, what a login with no grant can still do through PostgreSQL itself, and how
//! each line is enforced. Every line names the test that tries to break it
//! (`tests/it/security.rs` unless said otherwise); the privilege tests run on PostgreSQL 13 to 18.
//!
//! ## Roles
//!
//! `resilient-circuit setup` (run by the owner of the schema, usually an administrator) grants
//! each role the rights of its kind ([`RoleKind`](crate::admin::RoleKind)),
//! and records them, so that a later `setup` grants them again what a new definition of a
//! function needs. Rights are `EXECUTE` on functions, which PostgreSQL checks on `current_user`:
//! a login that `SET ROLE`s to a reader has a reader's rights, and a `NOINHERIT` login that
//! `SET ROLE`s to a granted role has that role's.
//!
//! | Role | Made by | May | May not |
//! |---|---|---|---|
//! | **owner** | runs `setup` | everything | — |
//! | **operator** | `setup --grant-operator ROLE` | what an instance may; `open`, `close` and `delete` any key, change any key's live configuration (`config`) and any group's cap and threshold (`group`), and the library's `force_open` / `force_closed` | write the table directly; close or delete a key forced open by its live configuration (it changes the mode instead) |
//! | **Python service** | `setup --grant-python ROLE` | what an instance may; write rows with INSERT, UPDATE, DELETE, as the Python package `resilient-circuit` does | escape the table's triggers: its writes get versions, end rounds, spend votes, are notified and logged like any other; close, delete or shorten a key forced open |
//! | **instance** (app role) | `setup --grant-to ROLE` | read every row, the change log and the live configuration; hear and verify notifications; **trip** a CLOSED key; lease and report the probes of a half-open round (and so close or reopen it through the round); cast quorum votes and report failure rates, believed within bounds; put keys named `group/member` into group `group` and declare its cap and threshold ([`groups`](super::groups)) | write the table; close an OPEN key before its round; force any state; change a live configuration, or undo an operator's live cap; delete a row; make its votes or reports count beyond one instance's (below) |
//! | **reader** | `setup --grant-reader ROLE` | read every row, the change log, the live configuration and the groups' counts (`status`, `history`, `group`, dashboards, an instance that follows by polling) | change anything; hear notifications (it does not know the channel) |
//! | **stranger** | any other login the server accepts | only what PostgreSQL lets every login do (next section) | read a row, the log or a notification; move a breaker; block a transition or a migration |
//!
//! Tests: `each_kind_holds_exactly_its_rights` (every kind against the catalog),
//! `a_stranger_can_do_nothing_of_ours`, `a_reader_reads_and_changes_nothing`,
//! `an_instance_trips_but_does_not_decree`, `an_operator_decrees`,
//! `a_python_role_writes_through_the_triggers`, `rights_follow_set_role_not_the_login`.
//!
//! ## What any login can do through PostgreSQL itself
//!
//! These are PostgreSQL's, not ours to grant or revoke; here is what each means for the fleet.
//!
//! * **LISTEN and NOTIFY on any channel name.** Notifications go to a channel whose name is
//!   random and stored with the signing key (`rc_notify_key`, readable only through
//!   `rc_notify_secret()`, granted to instances), so a stranger cannot listen to the fleet's
//!   changes (which would tell it every key and state) without guessing 128 bits. A payload sent
//!   on it by anyone without the key fails its MAC and is ignored; one sent again later (a
//!   replay) is older than its window and is read from the table instead (next section).
//!   Test: `a_stranger_hears_nothing_and_its_notifications_change_nothing`.
//! * **Take advisory locks** on any id. The crate takes none: judgements of a key are serialized
//!   by a row lock in `rc_judgements`, which only its owner can read, a row arriving under a
//!   key waits for the key's other writers on its row in `rc_key_locks`, which no other role
//!   can read or lock, and migrations by a lock on `rc_schema_objects`, which only its owner can
//!   lock in a mode that blocks them. Test:
//!   `a_strangers_advisory_locks_block_nothing`.
//! * **Create objects in a schema it may create in** (`public` for every login up to
//!   PostgreSQL 14 and on clusters upgraded from it; for the database's owner, often the
//!   application role, on every version). An operator or function made there would run as
//!   whoever resolves a name through it. Nothing the crate runs does: every function pins
//!   `search_path = pg_catalog, pg_temp` and names every object of ours with its schema (the two
//!   that cannot pin it, for speed, qualify every operator too), and the instances' and the
//!   command's own statements call only schema-qualified functions with typed parameters.
//!   `check` warns of such schemas on the search path. Test:
//!   `operators_planted_in_public_run_nowhere` (as a role that owns its database, on every
//!   path: setup, instances, the command, the Python package's writes, plain UPDATEs).
//! * **Hold a LISTEN in an open transaction.** A listening session that does not end its
//!   transaction stops the server's notification queue from draining; once full (8 GB by
//!   default), every commit that notifies fails: every transition, and the Python package's
//!   writes. The queue's usage is the `resilient_circuit_notification_queue_usage` gauge, is in
//!   `status` and `check`, and instances warn past half. The remedy is the server's:
//!   `idle_in_transaction_session_timeout`, and `pg_terminate_backend` on the session. Test:
//!   `a_pinned_notification_queue_is_reported`.
//! * **Connect at all**, and read the catalog (table and function definitions, never rows or
//!   the key). To keep strangers out altogether: `REVOKE CONNECT ON DATABASE … FROM PUBLIC`.
//!
//! ## Notifications
//!
//! A notification carries a row's state, version, cooldown left and commit time (`at_us`,
//! the database's clock), signed with HMAC-SHA256 under a 256-bit random key. An instance takes
//! one on trust only if its MAC verifies, it committed after the instance's last full reload
//! began and within two seconds of the database's clock (measured at every heartbeat), and it
//! does not close an open breaker. Otherwise the instance reads the row, and a key without a row
//! is CLOSED at the newest version announced for it. So:
//!
//! * a forged payload (no key) is counted as bad and ignored;
//! * a captured payload sent again later (a replay of an OPEN after the row was deleted or
//!   closed) changes nothing the table does not say;
//! * a role that holds the key (an instance) but may not close a breaker cannot make others
//!   believe a close; it can make them believe an OPEN until the next reload, which is less
//!   than its own right to trip a key.
//!
//! Tests: `a_replayed_open_after_a_delete_changes_nothing`, `a_forged_close_is_read_from_the_table`,
//! and `payload::tests` (RFC 4231 vectors for the MAC; lengths counted in characters, so a key
//! outside ASCII verifies in a LATIN1 database: `macs_verify_in_a_latin1_database`).
//!
//! ## Decrees and holds
//!
//! * **forced-open** holds against every writer: the table's trigger refuses a write that would
//!   close, delete, rename or shorten the row of a key whose live configuration forces it open
//!   (whoever writes: `close`, `delete`, the Python package, psql); `TRUNCATE` brings it back
//!   OPEN; `rc_force` locks the row before it reads the mode, so a `close` racing `config --mode
//!   forced-open` ends OPEN; and instances refuse calls for such a key even if they last heard
//!   it CLOSED. Test: `forced_open_holds_against_every_writer`.
//! * **Votes and rate reports** are spent by the state change that ends their episode (the
//!   trigger), not compared with `updated_at`, which every write moves: the Python package's
//!   bookkeeping writes, or a writer setting `updated_at = 'infinity'`, spend nothing. Test:
//!   `bookkeeping_writes_spend_no_judgement`. Nor does a write that changes no state: an
//!   upsert that finds the row and does nothing, or a trip the database refuses, sent by any
//!   instance any number of times. Test: `quorum::a_refused_write_spends_no_vote`.
//!
//! ## Groups
//!
//! A group's cap keeps its members from opening past it, whoever writes ([`groups`](super::groups)):
//! a role that may join groups could use it to keep keys calling a failing dependency. So only
//! keys named as a group's members (`payments/host-a` for group `payments`) can join it
//! (`rc_group_join` refuses any other, tested in `groups::only_instances_join_groups_and_bad_input_is_refused`):
//! another service's key, named otherwise, is outside every cap. An operator's decree is never
//! refused by a cap. The group tables are the owner's; no role reads or locks them directly, and
//! the locks on a group's rows (the cap's, taken by a trip, and the count's, taken at commit)
//! are taken by the owner's triggers and functions only, so no stranger can hold a group's
//! members still. A group's counts are announced signed, like every notification; a replayed
//! one older than the last reload is left for the next reload, which reads the counts again.
//! An instance's declaration cannot undo an operator's live cap or threshold: live values win
//! until an operator resets them (`groups::an_operator_sets_the_cap_and_threshold_live`).
//!
//! ## Numbers a caller reports
//!
//! * A quorum counts **distinct instance names** ([`PostgresOptions::instance_name`], a pod's
//!   name by default, the same across its restarts), so a crash-looping pod is one voter. A role
//!   can still vote under several names, as it could trip the key outright.
//! * A fleet-rate report is believed up to `max_report_calls_per_second` (10,000 by default,
//!   in `rc_change_log_settings`) for each second since the same instance's previous report of
//!   the key, and never more failures than calls.
//! * The quorum, the rate limit, the minimum calls, the period, the round size and the cooldown
//!   are the key's live configuration's when it has one; a caller's are bounded as the builder
//!   bounds them (a round of 1 to 8192 probes, which ends as soon as closing is impossible).
//!
//! Tests: `self_reported_numbers_are_bounded`, `a_crash_looping_pod_is_one_voter`,
//! `the_live_policy_wins_over_the_callers`.
//!
//! ## Bounds
//!
//! Every text a caller sends is bounded (names 255 characters, notes 1000, a session's
//! explanation 64 kB, a window 8192 outcomes) and refused with its length, and every table is
//! pruned by time, at most once a minute, by whoever writes next: the change log past its
//! retention, expired votes, reports and leases (of keys never heard of again too). Test:
//! `texts_are_bounded_and_tables_pruned_by_time`.
//!
//! ## Migrations on a live fleet
//!
//! `setup` waits at most half a second for any lock, then rolls back and tries again (for
//! `--wait` seconds, 60 by default), so a migration behind a long transaction never makes the
//! fleet's statements queue behind its lock request. Run it at any time; if it gives up, find
//! the long transaction (`pg_stat_activity`) and run it again. Test:
//! `a_migration_behind_a_long_reader_does_not_stall_the_fleet`.
//!
//! ## What a person reads
//!
//! `status`, `history` and `watch` print keys, notes and names that clients chose with their
//! control characters (terminal escape sequences) and bidirectional overrides escaped. Test:
//! `hostile_text_is_shown_not_obeyed` (and the command's unit tests).
//!
//! [`PostgresOptions::instance_name`]: crate::storage::postgres::PostgresOptions::instance_name
