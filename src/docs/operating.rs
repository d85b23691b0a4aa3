//! # Operating a fleet: the command line, live changes, fleet policies, metrics, troubleshooting
//!
//! What an operator needs once breakers are shared: the `resilient-circuit` command, changing a
//! key's configuration for every instance without a deploy, choosing who opens a breaker for the
//! fleet, the change stream, every metric, and where to look when something is wrong. Setting up
//! the database is [`postgres`](super::postgres); choosing limits and cooldowns is
//! [`settings`](super::settings).
//!
//! ## The command line
//!
//! The `resilient-circuit` binary (cargo feature `cli`, on by default; `default-features =
//! false` leaves it and its dependencies, clap and humantime, out) reads the same `RC_DB_*`
//! variables and `RC_NAMESPACE` as the library; `--dsn` overrides them (it shows in the process
//! list, so prefer `RC_DB_DSN` for a DSN with a password). Passwords are never printed.
//!
//! ```text
//! resilient-circuit setup --grant-to app --grant-operator oncall   # migrations, grants, verified
//! resilient-circuit check --role app          # exit 1 and the fix when a right is missing or excess
//! resilient-circuit status --namespace checkout
//! resilient-circuit watch                     # one line per transition, until Ctrl-C
//! resilient-circuit open payments --for 5m    # every instance obeys; without --for: until close
//! resilient-circuit close payments --note "vendor fixed it, ticket 42"
//! resilient-circuit delete payments           # removes the row: CLOSED everywhere
//! resilient-circuit history payments --since 2h   # who changed it, when, why
//! resilient-circuit config payments --failure-limit 3/10 --cooldown 5m   # live, every instance
//! resilient-circuit serve                     # the fleet page on http://127.0.0.1:9100/
//! ```
//!
//! | Command | What it does |
//! |---|---|
//! | `setup [--grant-to ROLE]... [--grant-reader ROLE]... [--grant-python ROLE]... [--grant-operator ROLE]... [--wait SECONDS] [--dry-run] [--yes]` (alias `pg-setup`) | Applies the migrations and the changed objects (waiting at most 0.5 s for any lock, retrying for `--wait`, so it is safe on a live fleet), takes back any grant of the crate's functions to PUBLIC, then grants each role the rights of its kind ([`postgres`](super::postgres#roles-and-grants)) and records them, so that a later `setup` grants what new definitions need; checks each grant before reporting success. `--dry-run` prints the SQL and changes nothing. Asks for confirmation on a terminal; off a terminal it needs `--yes` (else exit 2). |
//! | `check [--role ROLE [--as KIND]]` (alias `pg-check`) | Every migration and object applied with this build's checksum, the triggers, every function this build calls present, no function of the crate executable by PUBLIC, the notification queue's usage, schemas on the search path others may create in (a warning), and, with `--role`, the role's rights against its kinds (as recorded by `setup`, or `--as`): what it lacks and what it holds beyond them. Prints the fix and exits 1 on any problem. |
//! | `status [--namespace NS] [--json]` | Every row of the namespace: state, failure count, time until half-open (database clock), version, since when, live mode; then the notification queue's usage. Colour only on a terminal; keys and notes with terminal controls escaped. JSON: `{"namespace", "notification_queue_usage", "breakers": [{"key", "state", "failure_count", "half_open_in_seconds" (OPEN rows, else null), "version", "updated_at", "since" (UTC, RFC 3339), "mode"}], "groups": [...]}` (as `group --json`); fields are only ever added. |
//! | `watch [--namespace NS]` | One line per transition of the namespace's breakers until Ctrl-C: `TIME NAMESPACE KEY STATE vVERSION from=STATE origin=remote delay=MSms` (`delay`: from the database's commit to this process's snapshot), and one per change of a group's counts: `TIME NAMESPACE group NAME STATE open=K/N from=STATE` (the groups that exist when it starts). It is one more instance built on [`Storage::changes`](crate::Storage::changes): it lists the keys that are not CLOSED when it starts (stderr), follows through reconnects (saying so on stderr) and shows changes made while it was cut off when it is back. |
//! | `open KEY [--for DURATION] [--namespace NS] [--note TEXT]`, `close KEY`, `delete KEY` | Overrides through `rc_force` (OPEN for the duration, e.g. `30s`, `5m`; without `--for` until `close`) and `rc_delete` (an operator's rights); every running instance follows at once. Refused for a key forced open by its live configuration. `--note` is recorded with the change in the change log. |
//! | `config KEY [--cooldown D] [--failure-limit K/N] [--success-limit K/N] [--trip-policy any-instance\|quorum\|fleet-rate [--quorum K --within D] [--rate K/N --min-calls N --period D]] [--mode MODE] [--reset] [--note TEXT] [--namespace NS]` | Without options prints the key's live configuration; with them changes it through `rc_configure` (see [Live configuration](#live-configuration)), and every running instance applies it. Values are checked by the command (exit 2) and by the table's constraints. |
//! | `group [NAME] [--max-open K/N] [--open-at K/N\|none] [--reset] [--note TEXT] [--namespace NS] [--json]` | Without a change lists the groups (or one): `payments: 2 of 6 members open, at most 1/3, opens at 1/2: CLOSED`; with one changes the group's cap and threshold live through `rc_group_configure` (an operator's rights; [`groups`](super::groups#live-configuration)). JSON: `{"namespace", "groups": [{"name", "members", "open", "state", "max_open", "open_at", "version"}]}`. `status` ends with the same lines (`group …`) and has them in its JSON as `groups`. |
//! | `history KEY [--namespace NS] [--since DURATION] [--json]` | The key's changes from the change log (kept for `rc_change_log_settings.retention`, 1 hour by default), oldest first: `TIME FROM -> TO vVERSION by WHO; N failures of the last M; note: …`. WHO is the instance (`host:pid:start`, set by each instance on its pooled sessions, except through a transaction pooler; self-reported, like `application_name`) or the writer's `application_name`, with its role and client address (the server's own record): a Python service or `psql` shows as itself. A quorum's opening also lists its votes and voters, a fleet rate's opening the fleet's counts, a group's refusal its counts and cap, an outlier its instance and counts ([`outliers`](super::outliers)). JSON: `{"namespace", "key", "changes": [{"at", "from", "to", "version", "actor", "why"}]}`; fields are only ever added. |
//! | `serve [--listen ADDR] [--namespace NS] [--allow-host NAME]... [--allow-writes [--token-file PATH]]` | The fleet page and a fleet-wide `/metrics` over HTTP (below, [The fleet page](#the-fleet-page-serve)), on `127.0.0.1:9100` unless `--listen` says otherwise; read-only unless `--allow-writes`, which needs a token (`RC_SERVE_TOKEN` or the first line of `--token-file`, at least 16 characters; never an argument). Runs until Ctrl-C. |
//!
//! Exit codes: 0 ok, 1 a problem was found (or the database failed), 2 usage. Errors are one
//! line on stderr. Each command is a typed call of the library's administration API,
//! [`AdminSession`](crate::admin::AdminSession), for tools of your own.
//!
//! ## The fleet page: `serve`
//!
//! `resilient-circuit serve` is one page with every breaker of a namespace, live, for operators
//! who look rather than read when something is on fire: each key with its state, since when,
//! the cooldown left, its live mode and configuration and its last recorded change (who, why);
//! filters by state and by part of a key; a key's history on a click; and a timeline of the last
//! hour or day with the OPEN (red) and HALF_OPEN (yellow) stretches of every key that changed,
//! the busiest first, so a flapping breaker shows at a glance; above them, each
//! [group](super::groups) with its members open of how many, its cap and threshold and its own
//! state (`serve::groups_show_live_with_their_counts_as_text`). It updates without a reload: the
//! server is one more instance of the fleet, and what [`Storage::changes`](crate::Storage::changes)
//! tells it goes to every open page as a server-sent event, followed by the key's row and last
//! change read once for all viewers. The page, its script and its style are in the binary: it
//! works without a network.
//!
#![doc = concat!("![The fleet page: the timeline above, a key's history, the table of keys](data:image/png;base64,", include_str!("fleet-page.png.b64"), ")")]
//!
//! ```text
//! resilient-circuit serve --namespace checkout                 # read-only, on 127.0.0.1:9100
//! RC_SERVE_TOKEN="$(cat /run/secrets/rc-serve-token)" \
//!   resilient-circuit serve --allow-writes --listen 127.0.0.1:9100
//! ```
//!
//! | Path | What it answers |
//! |---|---|
//! | `/` (`app.js`, `app.css`) | The page. |
//! | `/api/state` | Every row of the namespace: `{"namespace", "writes", "degraded", "now_ms", "rows": [{"key", "state", "since_ms", "half_open_in_ms", "held" (forced open until closed), "version", "failure_count", "mode", "config" (the live configuration in words, or null)}], "groups": [{"name", "members", "open", "state", "max_open", "open_at"}]}`. |
//! | `/api/history?key=K` | The key's recorded changes, oldest first: `{"key", "changes": [{"at_ms", "from", "to", "version", "who", "why"}]}`. |
//! | `/api/timeline?hours=1` (or `24`) | The changes of every key whose state changed in the window, the 500 most recent such keys at most. The change log keeps an hour by default (`rc_change_log_settings.retention`): raise it for a day's timeline. |
//! | `/events` | Server-sent events: `hello`, `change` (`{"key", "from", "to", "version", "at_ms"}`, as it is seen), `row` (the key's row with its last change, read after, at most every 250 ms for all the keys changed meanwhile), `groups` (every group's counts, as in `/api/state`, with each `row` round), `health` (`{"degraded"}`: the server lost or found the database), `reload` (this viewer fell more than 4096 events behind: read `/api/state` again). |
//! | `/metrics` | The Prometheus text format: the state of every key of the table (below). |
//! | `POST /api/open`, `/api/close`, `/api/config` | Writes, only with `--allow-writes` and the token: `{"key", "note", "hold_s"}`, `{"key", "note"}`, `{"key", "note", "mode", "cooldown_s", "failure_limit", "success_limit", "reset"}`. |
//!
//! `/metrics` reads the table at each scrape, so that one scrape shows the fleet without
//! instrumenting every service (the instances' own metrics, below, say what each instance saw;
//! these say what the table holds):
//!
//! * `resilient_circuit_fleet_state{namespace, key, state}`: 1 for the state of the key's row,
//!   0 for the two others (a key without a row is CLOSED and has no series);
//! * `resilient_circuit_fleet_state_since_timestamp_seconds{namespace, key}`: when the row last
//!   changed state;
//! * `resilient_circuit_fleet_half_open_in_seconds{namespace, key}`: for an OPEN row, the
//!   cooldown left by the database's clock;
//! * `resilient_circuit_fleet_mode{namespace, key, mode}`: 1 for a key whose live mode is not
//!   `normal`;
//! * `resilient_circuit_fleet_rows{namespace, state}`: the rows in each state;
//! * `resilient_circuit_fleet_group_open_members{namespace, group}`,
//!   `resilient_circuit_fleet_group_members{namespace, group}` and
//!   `resilient_circuit_fleet_group_open{namespace, group}`: each group's members open, its
//!   members, and 1 while it is OPEN as a whole.
//!
//! Label values are escaped as the format requires (backslash, double quote, line feed), so a
//! key cannot forge a series (`serve::metrics_show_every_key_with_labels_escaped`).
//!
//! **What it exposes.** Anyone who reaches the server sees every key of the namespace, its
//! configuration, and the change log's who and why: instance names (host and pid), role names,
//! client addresses, and the notes operators typed. Hence loopback by default; to show the page
//! to others, put it behind a proxy that authenticates (below), and do not `--listen` on a public
//! address (the server warns when it is not loopback). The server has no TLS of its own. It
//! answers only requests whose `Host` is an IP address, `localhost` or a name given with
//! `--allow-host` (421 otherwise), so that a site whose name is made to resolve to the server's
//! address (DNS rebinding) cannot read the page from a browser on the same machine.
//!
//! **Its rights are the role's.** Every read and write runs as the role it connects with
//! (`RC_DB_*`), so give it the least that works: a reader (`setup --grant-reader`) sees
//! everything and follows the table by polling (`RC_DB_POLL_INTERVAL_MS`, 250 ms); an instance's
//! rights (`--grant-to`) let it hear notifications, so changes show within milliseconds; writes
//! need an operator (`--grant-operator`). A write the role may not make is refused with a 403
//! that says so (`permission denied for function rc_force`), not an error page
//! (`serve::a_readers_writes_fail_cleanly_and_bad_requests_are_refused`).
//!
//! **Writes only when asked for.** Without `--allow-writes` every write is refused (403). With
//! it the server refuses to start without a token, and each write must carry it in an
//! `Authorization: Bearer` header: never a cookie, so a page of another site cannot make the
//! browser send it, and no answer allows other origins. The token is compared in constant time
//! (digests of the two); the page keeps it only in its form field. Each write needs a note, goes
//! into the change log with it (the actor is the server's role, with the server's address), and
//! is logged on the server's stderr with the peer's address; keys are checked as
//! [`validate_key`](crate::validate_key) checks them, notes are one line of at most 1000
//! characters, bodies at most 16 KiB (413 beyond), unknown fields refused
//! (`serve::writes_need_the_token_and_reach_every_instance`).
//!
//! **Keys are text.** A key or a note is whatever a client wrote, so the page puts every value
//! from the database in with `textContent` or as an attribute's value, never as HTML; every
//! answer carries `Content-Security-Policy: default-src 'self'; frame-ancestors 'none'` (the
//! page has no inline script or style, so nothing smuggled in could run anyway) and
//! `X-Content-Type-Options: nosniff` (`serve::the_page_shows_the_fleet_live_and_keys_as_text`
//! checks it with a key made of markup and script, in chromium).
//!
//! **Behind a proxy that authenticates.** The page uses relative paths, so it can live under a
//! prefix. For nginx, with single sign-on through `auth_request` (oauth2-proxy, for example):
//!
//! ```text
//! location /breakers/ {
//!     auth_request /oauth2/auth;            # or: satisfy, allow/deny, client certificates
//!     proxy_pass http://127.0.0.1:9100/;
//!     proxy_http_version 1.1;
//!     proxy_set_header Connection "";
//!     proxy_buffering off;                  # server-sent events must not wait in a buffer
//!     proxy_read_timeout 1h;                # nor be cut: the page reconnects, then reloads
//! }
//! ```
//!
//! Authenticate at the proxy with a session cookie, client certificates or a network rule, not
//! with HTTP Basic: the browser sends Basic credentials in the `Authorization` header, which the
//! page's writes fill with their token instead (a read-only page behind Basic works). nginx
//! sends `Host: 127.0.0.1:9100` upstream by default; a proxy that passes the name the browser
//! used needs `--allow-host` with that name. Keep
//! `--listen` on loopback, or on an address only the proxy reaches.
//!
//! **Figures** (2026-12-06, `scripts/serve-figures.sh`: a release build of the command, driven
//! by the ignored test `serve::figures` from a debug build; PostgreSQL 15, chromium 156 and the
//! driver on the same 2-core VM, load average 1.4 to 1.7):
//!
//! | Measure | Figure |
//! |---|---|
//! | Time to first render, 10,000 keys (chromium, navigation start to the table filled; 3 loads) | 325, 357, 371 ms |
//! | 100 viewers of `/events` while 100 transitions a second stream through (10 s, 1,000 transitions) | every viewer received all 1,001 changes (a warm-up included); no `reload` |
//! | The server's CPU meanwhile (user and system, `/proc`) | 4 % of one core |
//! | The server's resident memory: started with 10,000 rows; after 3 page loads; after the stream | 20 MiB; 23 MiB; 27 MiB (peak 27 MiB) |
//!
//! ## Live configuration
//!
//! A key's cooldown, limits, trip policy and mode can be changed for the whole fleet while it
//! runs, without a deploy: a row of `rc_breaker_config` overrides the values the code gave its
//! breakers, and every instance applies it (a signed notification on the breakers' channel, then
//! one read of the row; polling instances find it in the change log they already follow). How
//! long that takes is in [`performance`](super::performance#the-fleet). Tests:
//! `live_config::a_live_change_reaches_every_instance_and_takes_effect`,
//! `live_config::a_new_instance_starts_with_the_live_configuration`,
//! `follow::live_configuration_reaches_a_polling_instance_through_the_change_log`.
//!
//! ```text
//! resilient-circuit config payments --failure-limit 3/10 --cooldown 5m   # every instance, now
//! resilient-circuit config payments                                       # what is in force
//! resilient-circuit config payments --mode forced-open --note "vendor maintenance"
//! resilient-circuit config payments --mode metrics-only   # try limits on live traffic
//! resilient-circuit config payments --trip-policy quorum --quorum 3 --within 1m
//! resilient-circuit config payments --trip-policy fleet-rate --rate 1/2 --min-calls 50 --period 1m
//! resilient-circuit config payments --reset                # back to the code's values
//! ```
//!
//! | Mode | Calls | Window | Trips |
//! |---|---|---|---|
//! | `normal` | as the state says | counted | yes |
//! | `forced-open` | rejected everywhere: the database holds the row OPEN (services on the Python package obey too), no probe round starts, and `open` / `close` are refused until the mode changes | — | — |
//! | `disabled` | all admitted, whatever the state | not counted | no |
//! | `metrics-only` | all admitted, whatever the state | counted (and `execution_log`, metrics); reaching the limit counts `resilient_circuit_would_trip_total` and starts the window over | no |
//!
//! * **Checked twice.** The command refuses values no breaker could use (exit 2: `11/10`, `0/3`,
//!   a cooldown over ten years, an unknown mode), and the table's CHECK constraints refuse them
//!   whoever writes (`live_config::bad_values_are_refused_by_the_command_and_the_database`). An
//!   instance checks each row as the builder checks its arguments and never applies one it cannot
//!   use: it logs a warning and keeps the configuration in force
//!   (`live_config::an_instance_never_applies_a_configuration_it_cannot_use`).
//! * **Read without a lock.** Each key holds its configuration in an `ArcSwap`
//!   ([`CircuitBreaker::live_config`](crate::CircuitBreaker::live_config),
//!   [`CircuitBreaker::mode`](crate::CircuitBreaker::mode)); the policy in force changes under
//!   the key's lock, and a window of another size starts empty. Admission on a closed breaker
//!   still reads one word: the mode is read only on the slow paths.
//! * **Who may change it:** operators, through `rc_configure`; applications read it under the
//!   same row security as the change log. A new instance starts with the configuration in force.
//!
//! ## Fleet policies
//!
//! Each instance judges its own window; [`Builder::trip_policy`](crate::Builder::trip_policy)
//! decides who opens the breaker for the whole fleet. With `AnyInstance` and `Quorum`, an
//! instance whose window trips stops its own calls at once, for the cooldown, and the policy
//! decides whether the others follow; with `FleetRate`, only the fleet's failure rate opens it.
//!
//! | Policy | The fleet opens when | Choose it when |
//! |---|---|---|
//! | [`TripPolicy::AnyInstance`](crate::TripPolicy::AnyInstance) (default) | any one instance's window trips | the instances see the dependency alike (one network path, one client), so one instance's failures are everyone's; a Python service sharing the key behaves so too |
//! | [`TripPolicy::Quorum`](crate::TripPolicy::Quorum) `{ instances: K, within }` | `K` distinct instances tripped within `within` | one sick pod must not poison the others: its own network, its own bad deploy, a noisy neighbour. Pick `K` well under the smallest fleet you run (a quorum larger than the fleet never opens it for everyone) and `within` about the time a real outage takes to reach `K` instances (a minute is a good start) |
//! | [`TripPolicy::FleetRate`](crate::TripPolicy::FleetRate) `{ limit, min_calls, period }` | the windows the instances reported within `period` add up to at least `min_calls` calls, failing at `limit` or more | the dependency fails partly (one shard, one zone): no single window says much, the fleet's rate does. Also for instances with little traffic each, whose windows would take long to fill |
//!
//! ```
//! # fn main() -> Result<(), resilient_circuit::ConfigError> {
//! use resilient_circuit::{CircuitBreaker, Storage, TripPolicy};
//! use std::time::Duration;
//!
//! # let storage = Storage::in_memory(); // a service: Storage::from_env().await?
//! let cb = CircuitBreaker::builder("payments")
//!     .storage(storage.clone())
//!     .trip_policy(TripPolicy::Quorum { instances: 3, within: Duration::from_secs(60) })
//!     .build()?;
//! # assert_eq!(cb.key(), "payments");
//! # Ok(()) }
//! ```
//!
//! Every instance sharing a key should use the same policy; two breakers of one key on one
//! `Storage` with different policies are refused
//! ([`ConfigError::ConflictingPolicy`](crate::ConfigError::ConflictingPolicy),
//! `quorum::a_second_breaker_with_another_trip_policy_is_refused`). Services on the Python
//! package know no policy: their own window still opens a shared key for everyone. The policy
//! is read only when a window trips, so a quorum costs the calls nothing; a fleet rate counts
//! every call (the `postgres/quorum/…` and `postgres/fleet_rate/…` rows of
//! [`performance`](super::performance#the-hot-path)).
//!
//! ### How a quorum works
//!
//! `sql/objects/rc_vote.sql` and `src/storage/postgres/votes.rs`; tests in `cargo test
//! --all-features --test it quorum::`.
//!
//! * **A vote per trip, nothing on healthy calls.** The instance whose window trips sends one
//!   statement, `rc_vote`, with its name
//!   ([`PostgresOptions::instance_name`](crate::storage::postgres::PostgresOptions::instance_name),
//!   `RC_INSTANCE_NAME`, by default the host name: a pod's) and its window. The database counts
//!   the live votes of distinct names under a lock on the key, and on the quorum's last vote
//!   opens it for the cooldown, in the same transaction; every instance follows by NOTIFY as for
//!   any trip (`quorum::a_quorum_of_three_among_five_opens_only_with_the_third_vote`).
//!   Concurrent votes open the key exactly once (`quorum::concurrent_votes_open_exactly_once`).
//!   An instance that votes again replaces its vote.
//! * **Votes expire** after `within` (`quorum::votes_expire`), and are **spent** by the opening
//!   they caused, by a `TRUNCATE`
//!   (`quorum::votes_are_spent_by_a_truncate_and_by_the_opening_they_caused`), by a close (an
//!   operator's `close`, a probe round that closed: `quorum::an_operator_close_ends_a_vote_hold`)
//!   and by deleting the row (`quorum::a_deleted_row_spends_the_votes`): the next opening needs a
//!   new quorum.
//! * **The voter's own calls** stay stopped until its cooldown ends, whatever the table says
//!   meanwhile, unless a later change arrives: the quorum opening the key, or an operator's
//!   `open` or `close`, which wins as always. When its cooldown ends the voter reads the row
//!   again and follows it (`quorum::a_voter_stops_its_own_calls_until_its_cooldown_ends`).
//! * **A vote is sent once, never replayed** (`quorum::a_vote_is_never_replayed_after_an_outage`).
//!   An instance that cannot reach the database keeps its own calls stopped for the cooldown and
//!   sends nothing; its vote would be stale by the time the database is back.
//! * **The change log says who voted:** `resilient-circuit history KEY` prints `quorum: 3 votes
//!   of 3 needed within 60000 ms (pod-a, pod-b, pod-c)`, and `--json` has the voters' windows.
//! * The name a vote carries is self-reported: a role that may vote could cast votes under
//!   several names, as it could open the key outright with a trip
//!   ([`security`](super::security)).
//!
//! ### How a fleet rate works
//!
//! `sql/objects/rc_report_rates.sql`, `src/storage/postgres/rates.rs`, `src/cell/rate.rs`; tests
//! in `cargo test --all-features --test it fleet_rate::`.
//!
//! * **Every call is counted**, the healthy ones too: a load and a store on a counter only the
//!   calling thread writes (no locked add), on the fast path. Failures are counted on the slow path, where the window already
//!   records them.
//! * **Quiet while every instance is under the limit.** Every
//!   [`fleet_rate_interval`](crate::storage::postgres::PostgresOptions::fleet_rate_interval)
//!   (1 s by default) each instance computes its calls and failures over the last `period`, and
//!   reports a key only when its own rate reaches the limit. The fleet's rate is an average of
//!   the instances' rates weighted by their calls, so it cannot reach the limit if none does: a
//!   fleet under the limit sends no statement at all
//!   (`fleet_rate::a_fleet_under_the_limit_sends_no_statement` counts every statement in the
//!   server's own log).
//! * **Then the whole fleet is judged.** The first report at the limit puts the key under
//!   judgement for a period, and the database tells every instance. Every instance holding the
//!   key then reports at once and each interval, its healthy calls included, until a period
//!   passes with no instance at the limit. Each report replaces the instance's previous one and
//!   counts until three of its intervals pass without a new one (at most the period), so the
//!   rate the database judges is the fleet's over the period, give or take one reporting
//!   interval at each end (`fleet_rate::the_judged_rate_is_the_fleets_rate`: random fleets of
//!   two to six instances, seeded; the key opens if and only if the true rate reaches the limit
//!   over `min_calls`).
//! * **It opens when** the live reports add up to at least `min_calls` calls and `failures /
//!   calls >= limit`, no sooner than one interval after the judgement began, and the change log
//!   records the fleet's counts (`history`: `fleet rate: 30 failures of 40 calls from 4
//!   instances, limit 1/2 over 60000 ms`). Fleets users meet: nine healthy instances and one
//!   failing half its calls stay CLOSED under a 10% limit
//!   (`fleet_rate::nine_healthy_instances_keep_one_failing_half_under_a_tenth`); three at 2% stay
//!   CLOSED under 5% and three at 8% open everywhere
//!   (`fleet_rate::three_at_two_percent_stay_closed_and_three_at_eight_open_everywhere`); one
//!   instance with all the traffic is the fleet
//!   (`fleet_rate::one_instance_with_all_the_traffic_is_the_fleet`); instances joining
//!   mid-period, with other windows and intervals, add up
//!   (`fleet_rate::instances_joining_late_or_configured_apart_add_up`); one instance's calls count
//!   beyond its window (`fleet_rate::one_instance_reaches_the_minimum_over_the_period`).
//! * **Outliers**: an instance failing far more than the rest of the fleet is named, and its
//!   reports stop counting towards opening the key ([`outliers`](super::outliers)).
//! * **Reports are spent** by the opening, a close, a deleted row or a `TRUNCATE`, and expire
//!   (`fleet_rate::reports_expire_and_are_spent_by_a_close_or_a_delete`). A report is believed up
//!   to `max_report_calls_per_second` (10,000, in `rc_change_log_settings`) for each second of
//!   the period.
//! * [`Storage::flush`](crate::Storage::flush) sends a round of reports first, so that an
//!   instance about to stop tells the fleet what it counted.
//! * **Alone** (in memory, or cut off from the database) the instance judges its own window by
//!   the same rule, with `min_calls` capped at the window's size, and stops its own calls; back
//!   online it does not publish that judgement: only the fleet's rate opens the key for everyone
//!   (`fleet_rate::an_instance_alone_does_not_open_the_key_when_it_is_back`,
//!   `fleet_rate::alone_the_window_is_the_fleet`).
//!
//! ## The change stream
//!
//! [`Storage::changes`](crate::Storage::changes) is a `Stream` of every transition the instance
//! sees: its own (`origin: Local`) and those applied from the table (`Remote`, with the row
//! version and, when a notification announced it, the database's commit time). Status-change
//! callbacks see the same transitions per key; the stream sees a whole storage, so an audit log
//! or a `watch` is one loop. A receiver that falls more than
//! [`CHANGE_BUFFER`](crate::changes::CHANGE_BUFFER) changes behind loses the oldest and gets
//! `Err(Lagged { missed })`; the listener and the callers never wait for it
//! (`changes::a_slow_receiver_is_told_how_many_it_missed`).
//!
//! ## Metrics
//!
//! Every metric goes through the [`metrics`] facade: the crate depends on the facade only, and
//! the application installs a recorder. `examples/prometheus.rs` serves `/metrics` with
//! `metrics-exporter-prometheus`; `dashboards/resilient-circuit.json` is a Grafana dashboard for
//! it (state per key over time, rejections, transitions, calls, degraded instances, reconnects,
//! pending publications, notifications, database latency, notification lag).
//! `tests/metrics_scrape.rs` sets up an exporter the way the example does, scrapes it over HTTP,
//! parses the text with `prometheus-parse`, and checks the values and that every series the
//! dashboard's PromQL names exists; the example itself is only compiled by the tests.
//!
//! **Install the recorder before making storages and breakers.** Handles are made once (with a
//! key's cell, a breaker handle, a PostgreSQL instance) and kept, so counting never looks
//! anything up; handles made while no recorder is installed stay no-ops.
//!
//! Names follow Prometheus conventions (base units, `_total` counters), so
//! `with_recommended_naming(true)` leaves them unchanged. Labels:
//!
//! * `key`: the breaker's key. Its values are bounded by the code that builds breakers: keys are
//!   usually fixed names of dependencies; do not build breakers keyed by user input, or every
//!   metric's cardinality grows with it. Cells the listener makes for rows of other keys of the
//!   namespace (non-CLOSED rows only) get series too.
//! * `namespace`: the PostgreSQL namespace of the storage, or `in-memory` for in-memory
//!   storages. Two storages with the same namespace in one process share the series of a key;
//!   the last write wins for gauges.
//!
//! Per key:
//!
//! | Name | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `resilient_circuit_state` | gauge | `key`, `namespace`, `state` = `closed`\|`open`\|`half_open` | 1 for the state the breaker is in, 0 for the other two. All three are set when the key's cell is made, at every `build()`, and on every transition (local or remote), from the state the cell is in when the transition is announced, so out-of-order announcements still end right. |
//! | `resilient_circuit_rejected_calls_total` | counter | `key`, `namespace`, `reason` = `open`\|`half_open_full`\|`forced` | Calls refused without running, once per call (`try_acquire`, `acquire`, `call` alike). `open`: cooling down; `half_open_full`: every probe slot is taken (or, fleet-wide, leased elsewhere); `forced`: opened by `force_open` on this instance, or held by the live mode `forced-open` (an override made by another instance counts as `open`). The same word is [`Rejected::reason`](crate::Rejected::reason). |
//! | `resilient_circuit_transitions_total` | counter | `key`, `namespace`, `from`, `to`, `origin` = `local`\|`remote` | Transitions applied here; `remote`: decided by another instance and applied from the table. |
//! | `resilient_circuit_would_trip_total` | counter | `key`, `namespace` | A breaker in mode `metrics-only` whose window reached its limit: a normal one would have opened here. The window then starts over. |
//! | `resilient_circuit_open_until_timestamp_seconds` | gauge | `key`, `namespace` | Unix time at which the current cooldown ends; 0 when not open. |
//! | `resilient_circuit_half_open_probes_in_flight` | gauge | `key`, `namespace` | Probe calls admitted here and not reported or dropped yet. |
//! | `resilient_circuit_calls_total` | counter | `key`, `namespace`, `outcome` = `success`\|`failure`\|`cancelled` | **Opt-in** ([`Builder::call_metrics`](crate::Builder::call_metrics)): calls that ran, by outcome; `cancelled` is a permit dropped without an outcome. |
//! | `resilient_circuit_call_duration_seconds` | histogram | `key`, `namespace` | **Opt-in**, with the above: duration of calls run through `call` / `call_with` or the tower layer (a `try_acquire` permit is not timed). |
//!
//! Per PostgreSQL instance (none for in-memory storages):
//!
//! | Name | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `resilient_circuit_listener_connected` | gauge | `namespace` | 1 while the LISTEN connection is up. |
//! | `resilient_circuit_degraded` | gauge | `namespace` | 1 while breakers run on local state only ([`Storage::is_degraded`](crate::Storage::is_degraded)); sum it for the number of degraded instances. |
//! | `resilient_circuit_listener_reconnects_total` | counter | `namespace` | LISTEN connections lost (each is followed by a reload of every row). |
//! | `resilient_circuit_resyncs_total` | counter | `namespace` | Reloads of every row: after each (re)connect, on overflow, and the periodic reconciliation. |
//! | `resilient_circuit_notifications_total` | counter | `namespace` | Notifications received on the channel. |
//! | `resilient_circuit_bad_notifications_total` | counter | `namespace` | Notifications ignored as malformed or forged. |
//! | `resilient_circuit_store_operation_duration_seconds` | histogram | `namespace`, `op` (below) | Duration of each database operation, timeouts included. |
//! | `resilient_circuit_store_errors_total` | counter | `namespace`, `op` | Failed database operations (errors and timeouts); absent until the first one. |
//! | `resilient_circuit_pending_publications` | gauge | `namespace` | Keys with a trip or override the database has not accepted yet ([`Storage::pending_publications`](crate::Storage::pending_publications)). |
//! | `resilient_circuit_notification_lag_seconds` | histogram | `namespace` | From a change's commit to this instance's snapshot, **by the database's clock**: the trigger stamps each notification with `clock_timestamp()` at commit, and the instance reads the database's clock at every (re)connect and heartbeat to correct for the two clocks' difference (to within half a round trip). One sample per notification with a version this instance had not seen; changes learned by a reload are not sampled. |
//! | `resilient_circuit_notification_queue_usage` | gauge | `namespace` | How full the server's notification queue is, 0 to 1, read at every heartbeat. At 1 every commit that notifies fails; a LISTENing session stuck in a transaction fills it ([`security`](super::security)). Instances warn past 0.5. |
//! | `resilient_circuit_refused_trips_total` | counter | `key`, `namespace` | Trips of this instance that the database left CLOSED: a member of a group at its cap ([`groups`](super::groups); the change log records each refusal). The key's window then does not trip again for a second. |
//! | `resilient_circuit_group_open_members` | gauge | `namespace`, `group` | A group's members OPEN or HALF_OPEN, fleet-wide, as the database last counted them ([`groups`](super::groups)); set by every instance that joined or follows the group, on each change of the counts and at every reload. |
//! | `resilient_circuit_group_members` | gauge | `namespace`, `group` | A group's members, likewise. |
//! | `resilient_circuit_group_open` | gauge | `namespace`, `group` | 1 while the group as a whole is OPEN (its open members reach its threshold), else 0. |
//! | `resilient_circuit_outlier` | gauge | `key`, `namespace`, `instance` | 1 while the fleet holds this instance (its id, `name:pid:start`) an outlier of the key, 0 after ([`outliers`](super::outliers)). Set by the outlier itself, on its reports' answers. |
//! | `resilient_circuit_confirmed_notifications_total` | counter | `namespace` | Notifications read again from the table before they counted: stale (older than the last reload or the 2 s window: a replay, or a long delay), or closing an open breaker. |
//!
//! The `op` label names the database operation:
//!
//! | `op` | Operation |
//! |---|---|
//! | `publish_trips` | the outbox sending this instance's trips, in batches (`rc_trip_many`) |
//! | `force_states` | the outbox sending manual overrides, `force_open` and `force_closed` (`rc_force_many`) |
//! | `acquire_probe` | asking for a half-open probe lease (`rc_acquire_probe`) |
//! | `report_probe` | reporting a probe's outcome (`rc_report_probe`) |
//! | `vote` | casting a quorum vote (`rc_vote`) |
//! | `report_rate` | reporting calls and failures for a fleet rate (`rc_report_rates`) |
//! | `join_group` | making keys members of a group (`rc_group_join`), when `Group::join` is awaited |
//! | `group_states` | reading a group's state (`rc_group_states`), when `GroupBuilder::follow` is awaited |
//! | `snapshot` | loading every row of the namespace (at connect, after a reconnect, the periodic reconciliation) |
//! | `poll` | reading the change log (`rc_changes_since`), when following by polling or when the listener hears nothing |
//!
//! What is opt-in, and why: a call on a closed, healthy breaker is one atomic load to admit and
//! one load and a compare to report success (`src/cell/`). Counting every success adds an atomic
//! read-modify-write on a shared cache line to that path (compare the
//! `try_acquire_success_call_metrics` row with `try_acquire_success` in
//! [`performance`](super::performance#the-hot-path)), so per-call counts and durations are off
//! unless a breaker is built with `.call_metrics(true)`; off, they cost one predictable branch.
//! Everything else (states, rejections, transitions, probes, the instance metrics) happens on
//! paths that already take a lock or do I/O, and is always on.
//!
//! ## Troubleshooting
//!
//! The distributed-systems guide's troubleshooting entries, and where to look here:
//!
//! | Symptom | Where to look |
//! |---|---|
//! | *Instances not syncing*: same database? | Each instance logs its target (`host:port/db`, never the password) in the `resilient_circuit.connect` span and on every connection change; `resilient-circuit status` run with each instance's `RC_DB_*` shows what that database holds. |
//! | … same key? | `resilient-circuit status` lists the keys of a namespace; `resilient-circuit watch` prints each change with its namespace and key as it happens. Namespaces isolate: check `RC_NAMESPACE`. |
//! | … network between instances and database? | [`Storage::is_degraded`](crate::Storage::is_degraded); the WARN lines `lost PostgreSQL: breakers run on local state until it is back` and, while it lasts, `cannot reach PostgreSQL; breakers run on local state and the listener keeps trying` (the first failure, then every 60 s, with the cause); `listener reconnected` at INFO. |
//! | … slow to sync? | `resilient_circuit_notification_lag_seconds` (the dashboard's lag panel): commit to snapshot by the database's clock, per instance; `watch` prints the same delay per change. A p99 far above the round trip means a busy listener or a slow network; `resilient_circuit_resyncs_total` rising means overflow reloads. |
//! | … clock skew? | Not a cause here: cooldowns end by the database's clock (notifications carry the time left, computed at commit), turned into a local monotonic deadline. A trip written by a Python service is the exception: its cooldown ends by that host's clock. |
//! | *Deadlocks, contention* | Transitions take one row lock each, batches in key order, so instances cannot deadlock each other; a call waiting for a lock gives up at the statement timeout (client and server side) and is retried. `SELECT * FROM pg_stat_activity WHERE application_name = 'resilient-circuit' AND wait_event_type = 'Lock'` shows waiters. |
//! | *High database load*: pooling, connection limits | Each instance holds one LISTEN connection and at most `pool_size` (4) pooled ones, closed after `RC_DB_POOL_IDLE_TIMEOUT_MS` (60 s) idle, so one connection per instance at rest; a healthy breaker sends nothing, only transitions do. Behind pgbouncer, give the listener a direct address (`RC_DB_LISTENER_DSN`) and set `RC_DB_TRANSACTION_POOLER=1` ([`postgres`](super::postgres#pgbouncer)); for large fleets see [`scale`](super::scale). |
//! | … indexes | Created by the migrations, under the Python package's names (`resilient-circuit check` verifies the schema). |
//! | *State not persisting*: storage configured? | [`Storage::from_env`](crate::Storage::from_env) uses PostgreSQL only when `RC_DB_DSN`, or `RC_DB_HOST` with `RC_DB_PASSWORD`, is set; [`Storage::backend_name`](crate::Storage::backend_name) says which; a breaker built without `.storage()` uses the process-wide in-memory store and says so at INFO once. |
//! | … permissions allow writes? | `resilient-circuit check --role ROLE` (exit 1 with the fix). A role without the right gets PostgreSQL's `permission denied for function …` (SQLSTATE 42501), which [`force_open_confirmed`](crate::CircuitBreaker::force_open_confirmed) returns and the outbox logs at WARN. A role that may not read the notification secret logs `this role may not read the notification secret (grant it an instance's rights with resilient-circuit setup --grant-to ROLE)` and follows the table by polling. |
//! | … storage errors in the logs? | WARN: `could not publish a trip; it stays local and is sent again`, `the database refused …`, `ignoring a notification` (malformed or forged), `notifications arrived faster than they could be applied; reloading every row`. |
//!
//! The guide's monitoring SQL (the dashboard query, the alert and the row lock) runs unchanged
//! on the schema, as a role holding only what `setup --grant-to` grants
//! (`seed_sql::seed_monitoring_queries_return_the_right_rows`).
