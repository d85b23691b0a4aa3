//! # Groups: one breaker per host, with a fleet-wide cap on open members
//!
//! A service behind several hosts gets one breaker per host, so that a bad host is shed while
//! the others keep serving. Alone, that has a failure mode: when most hosts fail at once (a bad
//! deploy of the service, a network partition), every host's breaker opens and nothing is left
//! to send to. Envoy caps this per proxy (`max_ejection_percent`); a [`Group`](crate::Group)
//! caps it for the whole fleet, in the database, under one lock.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use resilient_circuit::{Ratio, Storage};
//! let storage = Storage::from_env().await?;
//! let payments = storage
//!     .group("payments")
//!     .max_open(Ratio::new(1, 3))
//!     .join(["host-a", "host-b", "host-c", "host-d", "host-e", "host-f"])
//!     .await?;
//! // An ordinary breaker on key "payments/host-a", configured as any other.
//! let host_a = payments.member("host-a").build()?;
//! # let _ = host_a;
//! # Ok(()) }
//! ```
//!
//! ## What the cap does
//!
//! * **At most `max_open` of the members are OPEN or HALF_OPEN at once**: a share of the
//!   group's members, rounded down, but at least one (with six members and a third, two). The
//!   trigger that versions every breaker row (`sql/objects/rc_bump_version.sql`) asks
//!   `rc_group_full` before a member enters OPEN from CLOSED; that function locks the group's
//!   row until the transaction ends, so members tripped at the same moment by different
//!   instances are counted one after another, and counts the others.
//! * **A trip past the cap is refused**: the member's row stays CLOSED, every instance keeps
//!   calling it, and the change log records the refusal (kind `group`, with the group's name,
//!   its open and member counts and the cap), shown by `resilient-circuit history KEY`. The
//!   instance that tripped follows the row it gets back and trips that key again a second
//!   later at the soonest (below).
//! * **Whoever writes**: the cap holds for this crate's trips, the Python package's updates and
//!   an operator's `UPDATE` in psql alike. An operator's `resilient-circuit open` (a decree) and
//!   a member forced open by its live configuration (`config KEY --mode forced-open`, also when
//!   a `TRUNCATE` brings it back) are not refused: the cap protects against the fleet's
//!   judgement, not against an operator's.
//! * **Members that close free room**: the next trip of another member is counted against the
//!   members open then.
//! * **Membership** is a row per key, written by [`GroupBuilder::join`](crate::GroupBuilder::join)
//!   or [`Group::join`](crate::Group::join), which wait for the database; a key belongs to one
//!   group, and joining another moves it. The cap is the group's row, set by the latest join
//!   (instances of one service declare the same) unless an operator set one live (below). Keys
//!   that never joined are outside every cap.
//!
//! ## When to choose it
//!
//! Choose a group when the members are interchangeable (hosts, replicas, shards of one
//! service) and calling a failing one is better than calling none. Keep plain breakers when
//! each key is a different dependency, or when a failing member must be shed however many
//! fail. A group needs PostgreSQL: on an in-memory storage its members are ordinary breakers
//! with no cap.
//!
//! ## Costs
//!
//! **A member held CLOSED by the cap while it keeps failing trips again a second later** (or a
//! cooldown, if shorter), not at every failure: an instance whose trip the database left CLOSED
//! does not trip that key again before then, and keeps calling it meanwhile. So each instance
//! sends at most one refused trip a second per member (a statement and a change-log row), and
//! a member trips within a second of its group having room again
//! (`groups::a_refused_member_trips_again_only_after_a_cooldown`).
//!
//! A member's calls cost what any breaker's cost: the group is consulted only when a member
//! trips, in the database (its row locked `FOR NO KEY UPDATE`, so members joining meanwhile do
//! not wait for it). Measured side by side (`cargo bench --bench hot_path --
//! 'postgres/(group_member/)?(1_in_20/)?resilient_circuit'`, 2026-12-06, the 2-core Intel Xeon
//! VM of [`performance`](super::performance)): `try_acquire` + `success` 1.38 ns for a member
//! and 1.38 ns for a plain breaker; with 1 call in 20 failing, 7.61 and 7.72 ns. A trip of a member takes the group's row lock, so trips of one group
//! commit one after another; trips of different groups do not wait for each other.
//!
//! ## In a tower stack
//!
//! `tower::GroupLayer` (feature `tower`) picks the member from each
//! request (`|r: &Request| r.host.clone()`) and admits or rejects the call with that member's
//! breaker, built on its first request (and joined to the group then, in the background) and
//! configured by its `configure`. Its `poll_ready` readies
//! only the inner service, since the member is known only in `call`.
//!
//! ## The group's own state
//!
//! Nobody sees that "payments" as a whole is down when each host is its own key. The database
//! counts each group's members OPEN or HALF_OPEN whenever a member enters or leaves that set,
//! whoever wrote the member's row (this crate, the Python package, an operator), and tells
//! every instance that joined or follows the group:
//!
//! * [`Group::state`](crate::Group::state): open members, members, and the group's own state,
//!   read from a local copy (no statement); [`Group::is_open`](crate::Group::is_open);
//! * the change stream: a [`Change`](crate::Change) of kind
//!   [`ChangeKind::Group`](crate::ChangeKind::Group) on the group's name, each time the counts
//!   change (`watch` prints `group payments OPEN open=3/6`);
//! * the gauges `resilient_circuit_group_open_members`, `resilient_circuit_group_members` and
//!   `resilient_circuit_group_open` (label `group`);
//! * the change log, kind `group` on the group's name (`history payments`), and `status` /
//!   `group` on the command line.
//!
//! **The group opens as a whole** past a threshold, for callers that check only the group (to
//! fail over to another region, say, while most hosts are down):
//! [`GroupBuilder::open_at`](crate::GroupBuilder::open_at), e.g. half the members. Its state
//! is then OPEN while at least that share of the members is open, and CLOSED again as soon as
//! fewer are; it never half-opens (its members probe). A process that calls no member follows
//! the group with [`GroupBuilder::follow`](crate::GroupBuilder::follow).
//!
//! **Exact under concurrency.** The count is made at commit (`rc_group_tally`, called by the
//! trigger that announces every change) under the lock of the group's row of `rc_group_state`,
//! and read after the lock is granted: of two transactions changing members at once, the
//! second counts what the first committed, so the last count is always the true one
//! (`groups::the_counts_stay_true_through_races_truncates_and_moves`: eight writers on the Python
//! package's role flip members in bursts; without the lock the test fails; it also checks that a
//! `TRUNCATE` counts every group again and that a member moving to a nested group is counted
//! out of its old one). That lock is taken
//! only at commit, when a transaction waits for nothing else, and by `rc_group_join` and
//! `rc_group_configure` after the group's row of `rc_groups`: no order of these can wait in a
//! circle with the cap's lock, which trips take mid-statement. No role but the owner's
//! functions can take either.
//!
//! **What counting costs**: a transition of a key that is no member costs one index lookup
//! at commit (is it a member?). A member's entry into or exit from the open set counts its
//! group, a join over its members, and holds the group's count lock until its commit: member
//! transitions of one group commit one after another, which a group of thousands of members
//! would feel in a storm; keep groups to the hosts of one service.
//!
//! **The Python package's writes count too**: its trip of a member is counted and can open the
//! group, its trip past the cap is refused and recorded
//! (`python::a_python_service_on_a_groups_members_is_capped_and_counted`, the package itself,
//! on a role that owns nothing).
//!
//! **Seen by every instance**: `groups::every_instance_sees_the_groups_counts_and_its_opening`
//! (three instances and a follower hear each trip's counts, the opening at half the members
//! and an operator's close). An instance reads its groups' states again at every reload, so
//! news missed while it was cut off are made up when it is back; an instance following by
//! polling gets the counts at its reloads only.
//!
//! ## Live configuration
//!
//! An operator changes a group's cap and threshold for every instance, without a deploy:
//!
//! ```text
//! resilient-circuit group                                    # every group: counts, cap, state
//! resilient-circuit group payments --max-open 1/2 --open-at 2/3 --note "zone b drained"
//! resilient-circuit group payments --open-at none            # never opens as a whole
//! resilient-circuit group payments --reset                   # back to the declarations
//! ```
//!
//! Live values (`rc_group_configure`, an operator's right) win over what the instances declare
//! until reset, as a key's live configuration does. A lower cap refuses the next entries into
//! OPEN and closes nothing; a new threshold is applied at once (the group is counted again).
//! The admin API has it as [`AdminSession::configure_group`](crate::admin::AdminSession::configure_group)
//! (`groups::an_operator_sets_the_cap_and_threshold_live`, which also checks that a reader and
//! an instance's role may not, and a stranger may not even list).
