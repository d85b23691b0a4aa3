//! # Outlier instances: is it the dependency, or is it me?
//!
//! A breaker shared by a fleet has one failure mode a local breaker does not: one sick instance
//! (a broken DNS cache, a full disk, a bad deploy of one pod) fails every call, trips the shared
//! breaker, and takes the dependency away from every healthy instance. Under
//! [`TripPolicy::FleetRate`](crate::TripPolicy::FleetRate) the database already judges the
//! whole fleet's rate, so it can tell that case apart: an instance failing far more than the
//! rest of the fleet is an **outlier**. Its reports stop counting towards opening the key for
//! everyone, it is named, and its own breaker protects its own callers.
//!
//! Nothing to turn on: every fleet-rate key has it. Choose a fleet rate (rather than
//! `AnyInstance` or `Quorum`) for a dependency where one instance's failures may be that
//! instance's fault; a [`Quorum`](crate::TripPolicy::Quorum) of instances also keeps one
//! instance from opening a key, but does not say which instance is sick.
//!
//! ## The rule
//!
//! While a key's fleet rate is judged ([`operating`](super::operating), "How a fleet rate
//! works"), at every report of the key the database weighs each live report against the sum of
//! all the others (`sql/objects/rc_report_rates.sql`). A reporter is an outlier when
//!
//! * its own failures / calls is at or above the key's limit, on at least a tenth of
//!   `min_calls` calls of its own, and
//! * the others' calls add up to at least `min_calls`, and
//! * the others' failures / calls is under **a quarter of the limit**.
//!
//! With a 5% limit, 100 calls needed and ten instances of equal traffic, one instance failing
//! every call while the nine others fail under 1.25% is an outlier; the fleet's rate counting
//! it would have been 10%, and opened the key for all ten. Counting only the nine, it is 0%.
//!
//! It is not a vote among outliers: the others' sum includes every other instance, so two sick
//! instances out of ten (the others' rate then 11%) are not outliers, and the fleet's rate
//! opens the key. Past a few sick instances the dependency, or what they share, is the likelier
//! cause.
//!
//! ## What happens to an outlier
//!
//! * **Its reports do not count** towards opening the key: the fleet's counts, and the change
//!   log's record of an opening, leave them out.
//! * **It is named**, when it becomes an outlier and when it stops being one:
//!   * the change log, kind `outlier`: `resilient-circuit history KEY` shows `outlier: instance
//!     pod-7:41:18c…, 100 failures of 100 calls, the others 0 of 900 (limit 1/20)` and later
//!     `outlier no more: …`;
//!   * the gauge `resilient_circuit_outlier{key, namespace, instance}`, on the outlier itself:
//!     1 while it is one, 0 after;
//!   * its own change stream ([`Storage::changes`](crate::Storage::changes)): a
//!     [`Change`](crate::Change) of kind [`ChangeKind::Outlier`](crate::ChangeKind::Outlier),
//!     so that the application can drain or restart itself (a process that is an outlier of
//!     several keys is probably the sick one); and a warning in its log.
//! * **Its own breaker judges its own window**, as when it is cut off from the database: it
//!   opens on its own for its cooldown and stops its own calls, without publishing that
//!   judgement, while the key stays CLOSED for the fleet. It keeps reporting meanwhile, so it
//!   stays an outlier until its rate over the period heals.
//! * **It stops being one** when a report of it no longer meets the rule (its rate fell under
//!   the limit, or the others' rose), or when it stops reporting (its rate under the limit and
//!   the key no longer judged; the change log records that at the key's next report).
//!
//! The cost: while an outlier fails, the key stays under judgement, so every instance holding
//! the key reports once per `fleet_rate_interval` (one statement each) until the outlier heals.
//!
//! ## What it cannot tell
//!
//! * **Traffic that differs by instance**: an instance that alone calls an endpoint the others
//!   never call, and finds it failing, looks like an outlier. Give such endpoints keys of their
//!   own.
//! * **Reports are believed** as every fleet-rate report is: a role that may report can make up
//!   healthy reporters, and so both dilute the fleet's rate (as it always could) and make real
//!   failing instances look like outliers. Grant reporting to the fleet's application role only
//!   ([`security`](super::security)).
//!
//! ## Tests
//!
//! `cargo test --all-features --test it outliers::`, on PostgreSQL, as the application role:
//!
//! * `one_sick_instance_of_ten_is_named_and_opens_alone`: one instance failing every call and
//!   nine healthy under a 5% limit: the key stays CLOSED for the nine past the judgement's
//!   first interval, the sick one is named in the change log with its counts and hears it on its
//!   change stream, and its own breaker opens on its next failure.
//! * `the_whole_fleet_failing_opens_the_key_for_everyone`: five instances failing every call:
//!   no outlier is named, and the key opens on every instance.
//! * `an_instance_that_recovers_stops_being_an_outlier`: the outlier opens alone, comes back
//!   through its probe, calls successfully until its rate is under the limit, and hears that it
//!   is no longer an outlier; the change log records both.
