//! # Choosing settings
//!
//! How to choose what a breaker is built with. Four decisions per dependency: when to trip (the
//! failure limit), how long to rest (the cooldown), how to test recovery (the probes), and who
//! shares the breaker (the namespace). The whole fleet obeys one breaker, so settings are part
//! of the contract between everyone who builds it: keep them in one place, as the
//! distributed-systems guide's `shared_resources` does.
//!
//! ```
//! use std::time::Duration;
//! use resilient_circuit::{CircuitBreaker, ConfigError, Ratio, Storage};
//!
//! /// Every service builds its breakers here, so all agree (the distributed-systems guide's microservices table).
//! fn shared_resources(storage: &Storage) -> Result<[CircuitBreaker; 3], ConfigError> {
//!     let breaker = |key: &str, cooldown: Duration, limit: Ratio| {
//!         CircuitBreaker::builder(key)
//!             .storage(storage.clone())
//!             .cooldown(cooldown)
//!             .failure_limit(limit)
//!             .success_limit(Ratio::new(2, 3))
//!             .build()
//!     };
//!     Ok([
//!         breaker("payment_gateway", Duration::from_secs(5 * 60), Ratio::new(3, 10))?,
//!         breaker("inventory_service", Duration::from_secs(30), Ratio::new(2, 5))?,
//!         breaker("shipping_api", Duration::from_secs(2 * 60), Ratio::new(1, 3))?,
//!     ])
//! }
//! # let [payments, _, _] = shared_resources(&Storage::in_memory())?;
//! # assert_eq!(payments.key(), "payment_gateway");
//! # Ok::<(), ConfigError>(())
//! ```
//!
//! ## Failure limit: `failure_limit(k/n)`
//!
//! Trip when the last `n` outcomes **of one instance** hold at least `k` failures (and the window
//! is full). Windows are not added up across the fleet: with the default trip policy the first
//! instance whose window crosses trips everyone (see "Who opens it for the fleet" below for a
//! quorum or the fleet's rate). So size `n` for one instance's share of the traffic:
//!
//! * `n` is the history one instance judges by. At 20 calls/s per instance, `3/10` judges half a
//!   second — quick to catch an outage, quick to trip on a burst of bad luck; `30/100` judges five
//!   seconds at the same 30%. At one call a minute per instance, `n = 10` is ten minutes of
//!   history: keep it small.
//! * `k/n` is the error rate you tolerate. A total outage trips an instance after about `k` calls.
//! * `1/1` trips the fleet on any single error (the Python package's default). Right for a
//!   process that makes one call, such as a serverless invocation, whose window starts empty
//!   every time; rarely right for a busy service.
//! * Decide what a failure is with [`call_with`](crate::CircuitBreaker::call_with): a 503 returned
//!   as `Ok` can be one, a 404 or a validation error usually is not (the Python package's
//!   `should_handle`).
//!
//! Default `5/10`. The window is a bit ring of at most
//! [`Ratio::MAX_DENOMINATOR`](crate::Ratio::MAX_DENOMINATOR) (8192) outcomes.
//!
//! ## Minimum calls, time window, slow calls
//!
//! * [`minimum_calls(m)`](crate::Builder::minimum_calls): judge the window from its `m`th
//!   outcome, the failure limit read as a rate. A large `n` with a small `m` judges early without
//!   judging on two calls.
//! * [`time_window(period)`](crate::Builder::time_window): judge the last `period` rather than
//!   the last `n` calls, when traffic varies so much that `n` calls are sometimes a second and
//!   sometimes an hour. Pair it with `minimum_calls`, or a quiet minute of two calls decides.
//! * [`slow_call(threshold, SlowCalls)`](crate::Builder::slow_call): a dependency that answers,
//!   but too late, is down for your callers too. `AsFailure` is the simple choice; `Rate` trips
//!   on slowness separately from errors.
//!
//! ## Cooldown: `cooldown(d)`
//!
//! How long the whole fleet sends the dependency nothing. Start near its usual recovery time (a
//! restart, a failover) and watch `resilient_circuit_transitions_total{to="open"}`: a breaker
//! that reopens after every round rests too little. Because a half-open round is fleet-wide and
//! admits only `m` probes, a short cooldown costs the dependency `m` calls per cycle, whatever the
//! size of the fleet; the Python package's half-open admitted every call of every process, so cooldowns
//! chosen for it can usually be shorter here.
//!
//! The cooldown written to the row is the tripping instance's, and the one after a failed round
//! the last prober's: services sharing a key should agree on it. It ends by the database's
//! clock. Default 30 s; at most [`MAX_DURATION`](crate::MAX_DURATION) (ten years).
//!
//! ## Growing cooldowns: `max_cooldown(d)`
//!
//! A dependency that stays down through round after round is probed every cooldown for as long
//! as it is down. [`max_cooldown`](crate::Builder::max_cooldown) makes each failed round double
//! the rest, up to `d`: the `n`-th reopen since the breaker last closed rests
//! `min(d, cooldown × 2^n)`, shortened by a random fraction of at most 10% so that keys which
//! reopened together spread their probes (and `d` is never exceeded). A trip from CLOSED rests
//! the base cooldown; a round that closes, or a manual close, starts over. So a short base
//! cooldown recovers fast from a blip, and a long outage costs the dependency few probes.
//!
//! On PostgreSQL the row counts the reopens (`reopens`, migration `0011`) and the database
//! computes the grown cooldown by its clock, whichever instance reports the failed probe; the
//! maximum used is that instance's, so services sharing a key should agree on it as on the
//! cooldown. A Python service's failed rounds rest its own fixed cooldown; any write that closes
//! the row resets the count. Default: off. `d` must be at least the cooldown and at most
//! [`MAX_DURATION`](crate::MAX_DURATION).
//!
//! ```
//! # fn main() -> Result<(), resilient_circuit::ConfigError> {
//! use std::time::Duration;
//! use resilient_circuit::{CircuitBreaker, Ratio, Storage};
//! // 5 s after a trip, then about 10 s, 20 s, 40 s, ... at most 10 minutes.
//! let cb = CircuitBreaker::builder("inventory_service")
//!     .storage(Storage::in_memory())
//!     .failure_limit(Ratio::new(2, 5))
//!     .success_limit(Ratio::new(1, 1))
//!     .cooldown(Duration::from_secs(5))
//!     .max_cooldown(Duration::from_secs(600))
//!     .build()?;
//! # assert_eq!(cb.key(), "inventory_service");
//! # Ok(()) }
//! ```
//!
//! ## Probes: `success_limit(s/m)`, `lease_timeout`, `probe_wait`
//!
//! After the cooldown, the database hands out `m` probe leases across the fleet; the breaker
//! closes when at least `s` of the `m` probes succeed, else opens for another cooldown.
//!
//! * Small `m` recovers fast and sends the dependency little: `1/1` (one success closes), `2/3`
//!   (tolerates one failed probe).
//! * Without a success limit the round is the failure window: `m = n`, closing when fewer than
//!   `k` of them fail. With the default `5/10` that is 10 probe calls, which a quiet fleet takes a
//!   while to make; set a success limit.
//! * [`lease_timeout`](crate::storage::postgres::PostgresOptions::lease_timeout) (default 10 s)
//!   must exceed the longest probe call, time-outs included: a lease that expires before its probe
//!   reports lets another instance probe, and the late report does not count.
//! * [`probe_wait`](crate::Builder::probe_wait) (default 1 s): how long
//!   [`call`](crate::CircuitBreaker::call) waits for the database's answer when it may become a
//!   probe, rather than rejecting.
//!
//! ## Who opens it for the fleet: `trip_policy(...)`
//!
//! [`TripPolicy::AnyInstance`](crate::TripPolicy::AnyInstance) (the default): one instance's
//! window is enough. [`TripPolicy::Quorum`](crate::TripPolicy::Quorum): `K` distinct instances
//! must trip within a period, so one sick pod stops only its own calls; pick `K` well under the
//! smallest fleet. [`TripPolicy::FleetRate`](crate::TripPolicy::FleetRate): the database adds up
//! the windows of the instances seeing failures and opens the key on their rate, for
//! dependencies that fail partly, or instances with too little traffic each to fill a window.
//! [`operating`](super::operating#fleet-policies) compares them and says how each works.
//!
//! ## Changing them live: `resilient-circuit config`
//!
//! The cooldown, limits, trip policy and a mode (forced open, disabled, metrics-only) can be
//! changed for every instance without a deploy: a row of `rc_breaker_config` overrides the code's
//! values ([`CircuitBreaker::live_config`](crate::CircuitBreaker::live_config)). The code's
//! values stay the reference (`config KEY --reset`); keep them what the fleet should run with.
//! A changed cooldown applies from the next opening, and a window of another size starts empty.
//!
//! ## Namespaces and keys
//!
//! Breakers are shared by `(namespace, key)`. Everything that should trip together — the pods of
//! a service, and other services calling the same dependency — uses one namespace; separate
//! namespaces keep breakers apart on one database: environments (`prod`, `staging`), tenants,
//! regions that should trip independently, test runs. A [`Storage`](crate::Storage) serves one
//! namespace (`RC_NAMESPACE`, default `default`); a process that needs two makes two storages.
//!
//! Keys name dependencies (`stripe_payment_api`), not requests or users: each key costs memory
//! and metric series on every instance. Two breakers of one key on one storage must ask for the
//! same limits ([`ConfigError::ConflictingPolicy`](crate::ConfigError::ConflictingPolicy)
//! otherwise), since they share one window.
//!
//! ## Instance settings
//!
//! Rarely changed; each is a setter of
//! [`PostgresOptions`](crate::storage::postgres::PostgresOptions) and most have an `RC_DB_*`
//! variable: `statement_timeout` (2 s; how long a transition call may take, on the client and the
//! server), `pool_size` (4 connections for transitions), `pool_idle_timeout` (60 s; pooled
//! connections idle this long close, leaving the listener's alone), `reconcile_interval` (30 s, the
//! full reload behind notifications), `heartbeat_interval` and `tcp_user_timeout` (finding a dead
//! connection in about 10 s), `strict` (fail at start instead of running on local state),
//! `auto_create` (let `connect` apply the migrations; production usually runs
//! `resilient-circuit setup` once instead).
//!
//! ## Matching a Python service
//!
//! A Python service on the Python package `resilient-circuit` (0.8.x) and a Rust service on this crate
//! share a breaker when they use the same table, namespace and key; give them the same settings.
//!
//! | Python (`CircuitProtectorPolicy`) | Rust ([`Builder`](crate::Builder)) |
//! |---|---|
//! | `resource_key="payment_gateway"` | `CircuitBreaker::builder("payment_gateway")` |
//! | `failure_limit=Fraction(3, 10)` (default `Fraction(1, 1)`) | `.failure_limit(Ratio::new(3, 10))` (default `5/10`: **set it**) |
//! | `cooldown=timedelta(minutes=5)` (default 0) | `.cooldown(Duration::from_secs(300))` (default 30 s: **set it**) |
//! | `success_limit=Fraction(2, 3)` | `.success_limit(Ratio::new(2, 3))` |
//! | `should_handle=lambda e: ...` | [`call_with`](crate::CircuitBreaker::call_with) and a classifier |
//! | `on_status_change=fn(policy, old, new)` | `.on_status_change(\|c\| ...)`, with `c.key`, `c.from`, `c.to`, `c.origin` |
//! | `storage=InMemoryStorage()` | `.storage(Storage::in_memory())` |
//! | storage from the environment | `.storage(Storage::from_env().await?)`; without `.storage()` a breaker is in memory |
//!
//! ```
//! # fn main() -> Result<(), resilient_circuit::ConfigError> {
//! use std::time::Duration;
//! use resilient_circuit::{CircuitBreaker, Ratio, Storage};
//! # let storage = Storage::in_memory(); // a service: Storage::from_env().await?
//! // Python, failure_limit left at its default of 1/1:
//! //     CircuitProtectorPolicy(resource_key="external_kyc_api", cooldown=timedelta(minutes=10))
//! let kyc = CircuitBreaker::builder("external_kyc_api")
//!     .storage(storage)
//!     .cooldown(Duration::from_secs(10 * 60))
//!     .failure_limit(Ratio::new(1, 1)) // the Python package's default, spelled out
//!     .build()?;
//! # assert_eq!(kyc.key(), "external_kyc_api");
//! # Ok(()) }
//! ```
//!
//! The environment is the Python package's: `RC_DB_DSN`, or `RC_DB_HOST` and `RC_DB_PASSWORD` with
//! `RC_DB_PORT`, `RC_DB_NAME`, `RC_DB_USER`, `RC_DB_SSLMODE`, `RC_DB_SSLROOTCERT`,
//! `RC_DB_SSLCERT`, `RC_DB_SSLKEY`, `RC_DB_STRICT`, `RC_DB_AUTO_CREATE` and `RC_NAMESPACE` mean
//! the same and have the same defaults, so one deployment's variables configure both (see
//! [`PostgresOptions::from_env`](crate::storage::postgres::PostgresOptions::from_env)). Two
//! differences: setting only one of `RC_DB_HOST` and `RC_DB_PASSWORD` is an error here (the
//! Python package silently stays in memory), and `RC_DB_APP_USER` is not read — grant with
//! `resilient-circuit setup --grant-to ROLE`, which grants what both need.
//!
//! What still differs when they share a key:
//!
//! * The Python service does not listen: it sees a change made here at its next read of the row
//!   (at most once a second by default, `admission_refresh_interval`). Changes it makes reach the
//!   Rust instances at once, through the trigger.
//! * In HALF_OPEN, Python processes admit every call; Rust instances share the round's `m`
//!   leases. A round begun by a Python write is sized by the first Rust instance that asks.
//! * The Python package has no growing cooldowns: its failed rounds rest its fixed cooldown and are not
//!   counted; its closes reset the count all the same.
//! * The Python package ends cooldowns by the writer's wall clock (`time.time()`), so skew between its
//!   hosts and the database shifts the end of the cooldowns it writes.
//! * Windows: the Python package keeps its window in the row (`execution_log`); this crate keeps it in
//!   the instance, writes `execution_log` and `failure_count` when it trips (for the Python package and
//!   dashboards) and never reads them.
