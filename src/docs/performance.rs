//! # Performance: what a breaker costs, measured
//!
//! What a call costs on each path (admitted, rejected, recorded at an error rate, on a breaker of
//! a PostgreSQL storage) next to the peers `recloser` and `failsafe`, and how fast a change
//! travels between instances. Every measurement the crate's documentation quotes is on this
//! page or on [`scale`](super::scale), once, in a table that says when, on what machine, under
//! what load and with which command it was measured; other pages point here (the bounds that
//! tests assert are in [`guarantees`](super::guarantees)).
//!
//! ## Measuring
//!
//! ```text
//! cargo bench --bench hot_path          # criterion, in memory and on PostgreSQL
//! scripts/perf-table                    # prints the table below from criterion's results
//! cargo bench --bench propagation       # the fleet: needs PostgreSQL
//! scripts/callgrind.sh                  # instructions of one try_acquire() + success()
//! ```
//!
//! * `hot_path` (`benches/hot_path.rs`, whose module documentation says what each group
//!   measures) warms each case up for 1 s and measures it for 3 s; its hundred-odd cases take
//!   about 8 minutes. `cargo bench --bench hot_path -- postgres/` runs one group. Its `postgres`
//!   group uses a database of its own on the test server (`RC_TEST_DATABASE_URL`, else
//!   127.0.0.1:5432, else a throwaway cluster, as the tests do).
//! * `scripts/perf-table` reads `target/criterion/<group>/<case>/new/estimates.json` and prints
//!   one row per case with the median, under a line with the date of the results, the machine
//!   (`uname -m`, CPUs, memory), the load average, rustc's and PostgreSQL's versions, and the
//!   command. With `--run` it runs the bench itself and records the load average before and
//!   after it; without, the load is the one when the table was printed, and it says so.
//! * `propagation` (`benches/propagation/main.rs`) creates a database of its own on the server of
//!   `RC_BENCH_DATABASE_URL` (else `RC_TEST_DATABASE_URL`, else 127.0.0.1:5432) and takes about
//!   3 minutes on 2 cores; `RC_BENCH_PHASES=2` runs only phase 2. Each phase's module says what
//!   it measures and why.
//! * `scripts/callgrind.sh` builds a release binary and counts, with valgrind, the instructions
//!   of one `try_acquire()` + `success()` on a closed, healthy breaker: a figure that does not
//!   move with the machine's load.
//!
//! Two-thread figures are the wall time of one call *per thread* while another thread does the
//! same on the same breaker. On a machine with other work running they mostly measure
//! preemption, for every library alike: compare them only within one table.
//!
//! ## The hot path
//!
//! `scripts/perf-table --run` printed this table (one run; the two-thread rows also depend on
//! how the two threads were scheduled, so compare them within this table only):
//!
//! Measured 2026-12-07 on x86_64 (AMD EPYC), 2 CPUs, 24 GiB; load average 1.63 1.68 1.49 before, 1.40 1.52 1.47 after; rustc 1.95.0 (59807616e 2026-04-14); PostgreSQL 15.20 (Debian 15.20-0+deb12u1). Command: `cargo bench --bench hot_path`; criterion medians, printed by `scripts/perf-table`.
//!
//! | Group | Case | Median |
//! |---|---|---|
//! | `closed_single_thread` | `resilient_circuit/try_acquire_success` | 4.22 ns |
//! | `closed_single_thread` | `resilient_circuit/try_acquire_owned_success` | 5.55 ns |
//! | `closed_single_thread` | `resilient_circuit/handle_clone_drop` | 4.93 ns |
//! | `closed_single_thread` | `resilient_circuit/try_acquire_success_call_metrics` | 6.22 ns |
//! | `closed_single_thread` | `resilient_circuit/state` | 1.87 ns |
//! | `closed_single_thread` | `resilient_circuit/acquire_run_record` | 3.96 ns |
//! | `closed_single_thread` | `resilient_circuit/acquire_owned_run_record` | 8.19 ns |
//! | `closed_single_thread` | `resilient_circuit/call_async` | 25 ns |
//! | `closed_single_thread` | `resilient_circuit/try_acquire_success_time_window` | 9.33 ns |
//! | `closed_single_thread` | `resilient_circuit/acquire_run_record_time_window_1_in_100` | 31.2 ns |
//! | `closed_single_thread` | `resilient_circuit/try_acquire_record_timed_slow_calls` | 11.3 ns |
//! | `closed_single_thread` | `resilient_circuit/call_async_slow_calls` | 40.6 ns |
//! | `closed_single_thread` | `resilient_circuit/call_async_slow_calls_precise` | 120 ns |
//! | `closed_single_thread` | `recloser/call` | 13.7 ns |
//! | `closed_single_thread` | `failsafe/call` | 13 ns |
//! | `closed_single_thread` | `failsafe/call_default_policy` | 87 ns |
//! | `closed_two_threads` | `resilient_circuit/try_acquire_success` | 4.86 ns |
//! | `closed_two_threads` | `resilient_circuit/try_acquire_owned_success` | 50.3 ns |
//! | `closed_two_threads` | `resilient_circuit/acquire_run_record` | 5.64 ns |
//! | `closed_two_threads` | `resilient_circuit/acquire_owned_run_record` | 46.8 ns |
//! | `closed_two_threads` | `recloser/call` | 189 ns |
//! | `closed_two_threads` | `failsafe/call` | 44.3 ns |
//! | `open_reject` | `recloser/call` | 36.4 ns |
//! | `open_reject` | `failsafe/call` | 35.1 ns |
//! | `open_reject` | `resilient_circuit/try_acquire` | 25.4 ns |
//! | `open_reject` | `resilient_circuit/try_acquire_owned` | 26 ns |
//! | `open_reject` | `two_threads/resilient_circuit/try_acquire` | 47.3 ns |
//! | `open_reject` | `two_threads/resilient_circuit/try_acquire_owned` | 47.9 ns |
//! | `open_reject` | `two_threads/recloser/call` | 43.8 ns |
//! | `open_reject` | `two_threads/failsafe/call` | 85.5 ns |
//! | `error_rate` | `1_in_20/resilient_circuit/acquire_run_record` | 10.1 ns |
//! | `error_rate` | `1_in_100/resilient_circuit/acquire_run_record` | 5.26 ns |
//! | `error_rate` | `1_in_20/recloser/call` | 15.5 ns |
//! | `error_rate` | `1_in_100/recloser/call` | 15.9 ns |
//! | `error_rate` | `1_in_20/failsafe/call` | 13.4 ns |
//! | `error_rate` | `1_in_100/failsafe/call` | 13.2 ns |
//! | `error_rate` | `two_threads/1_in_20/resilient_circuit/acquire_run_record` | 48.2 ns |
//! | `error_rate` | `two_threads/1_in_100/resilient_circuit/acquire_run_record` | 17.5 ns |
//! | `error_rate` | `two_threads/1_in_20/recloser/call` | 197 ns |
//! | `error_rate` | `two_threads/1_in_100/recloser/call` | 197 ns |
//! | `error_rate` | `two_threads/1_in_20/failsafe/call` | 58.3 ns |
//! | `error_rate` | `two_threads/1_in_100/failsafe/call` | 57.4 ns |
//! | `error_rate` | `window_100/1_in_20/resilient_circuit/acquire_run_record` | 14.7 ns |
//! | `error_rate` | `window_100/1_in_100/resilient_circuit/acquire_run_record` | 18.8 ns |
//! | `error_rate` | `window_100/1_in_20/recloser/call` | 15.3 ns |
//! | `error_rate` | `window_100/1_in_100/recloser/call` | 14.4 ns |
//! | `error_rate` | `window_100/two_threads/1_in_20/resilient_circuit/acquire_run_record` | 70 ns |
//! | `error_rate` | `window_100/two_threads/1_in_100/resilient_circuit/acquire_run_record` | 53.8 ns |
//! | `error_rate` | `window_100/two_threads/1_in_20/recloser/call` | 73.6 ns |
//! | `error_rate` | `window_100/two_threads/1_in_100/recloser/call` | 114 ns |
//! | `half_open` | `resilient_circuit/try_acquire_full` | 35.9 ns |
//! | `half_open` | `two_threads/resilient_circuit/try_acquire_full` | 34.9 ns |
//! | `half_open` | `resilient_circuit/probe_cycle` | 503 ns |
//! | `postgres` | `resilient_circuit/try_acquire_success` | 2.53 ns |
//! | `postgres` | `1_in_20/resilient_circuit/acquire_run_record` | 8.77 ns |
//! | `postgres` | `1_in_100/resilient_circuit/acquire_run_record` | 5.1 ns |
//! | `postgres` | `two_threads/1_in_20/resilient_circuit/acquire_run_record` | 49.1 ns |
//! | `postgres` | `two_threads/1_in_100/resilient_circuit/acquire_run_record` | 17.1 ns |
//! | `postgres` | `two_threads/resilient_circuit/acquire_run_record` | 4.84 ns |
//! | `postgres` | `quorum/resilient_circuit/try_acquire_success` | 2.63 ns |
//! | `postgres` | `quorum/1_in_20/resilient_circuit/acquire_run_record` | 9.36 ns |
//! | `postgres` | `fleet_rate/resilient_circuit/try_acquire_success` | 3.42 ns |
//! | `postgres` | `fleet_rate/two_threads/resilient_circuit/try_acquire_success` | 5.12 ns |
//! | `postgres` | `fleet_rate/1_in_20/resilient_circuit/acquire_run_record` | 20.1 ns |
//! | `postgres` | `group_member/resilient_circuit/try_acquire_success` | 2.65 ns |
//! | `postgres` | `group_member/1_in_20/resilient_circuit/acquire_run_record` | 8.95 ns |
//! | `postgres` | `resilient_circuit/try_acquire_rejected` | 26 ns |
//! | `postgres` | `two_threads/resilient_circuit/try_acquire_rejected` | 34.4 ns |
//! | `windows` | `10/1_in_2/resilient_circuit` | 17.3 ns |
//! | `windows` | `10/1_in_20/resilient_circuit` | 9.52 ns |
//! | `windows` | `10/1_in_100/resilient_circuit` | 5.17 ns |
//! | `windows` | `10/1_in_1000/resilient_circuit` | 4.04 ns |
//! | `windows` | `100/1_in_2/resilient_circuit` | 12.7 ns |
//! | `windows` | `100/1_in_20/resilient_circuit` | 12.9 ns |
//! | `windows` | `100/1_in_100/resilient_circuit` | 13.2 ns |
//! | `windows` | `100/1_in_1000/resilient_circuit` | 5.08 ns |
//! | `windows` | `1000/1_in_2/resilient_circuit` | 19.9 ns |
//! | `windows` | `1000/1_in_20/resilient_circuit` | 20.6 ns |
//! | `windows` | `1000/1_in_100/resilient_circuit` | 19.5 ns |
//! | `windows` | `1000/1_in_1000/resilient_circuit` | 12.8 ns |
//! | `windows` | `two_threads/10/1_in_2/resilient_circuit` | 122 ns |
//! | `windows` | `two_threads/10/1_in_20/resilient_circuit` | 76.8 ns |
//! | `windows` | `two_threads/10/1_in_100/resilient_circuit` | 14.8 ns |
//! | `windows` | `two_threads/10/1_in_1000/resilient_circuit` | 7.11 ns |
//! | `windows` | `two_threads/100/1_in_2/resilient_circuit` | 89.3 ns |
//! | `windows` | `two_threads/100/1_in_20/resilient_circuit` | 89 ns |
//! | `windows` | `two_threads/100/1_in_100/resilient_circuit` | 50.7 ns |
//! | `windows` | `two_threads/100/1_in_1000/resilient_circuit` | 13.3 ns |
//! | `windows` | `two_threads/1000/1_in_2/resilient_circuit` | 254 ns |
//! | `windows` | `two_threads/1000/1_in_20/resilient_circuit` | 72.7 ns |
//! | `windows` | `two_threads/1000/1_in_100/resilient_circuit` | 59.2 ns |
//! | `windows` | `two_threads/1000/1_in_1000/resilient_circuit` | 42.5 ns |
//! | `windows` | `10/1_in_2/recloser` | 22.3 ns |
//! | `windows` | `10/1_in_20/recloser` | 22.8 ns |
//! | `windows` | `10/1_in_100/recloser` | 22.7 ns |
//! | `windows` | `10/1_in_1000/recloser` | 21.8 ns |
//! | `windows` | `100/1_in_2/recloser` | 21.1 ns |
//! | `windows` | `100/1_in_20/recloser` | 22.5 ns |
//! | `windows` | `100/1_in_100/recloser` | 21.8 ns |
//! | `windows` | `100/1_in_1000/recloser` | 22.8 ns |
//! | `windows` | `1000/1_in_2/recloser` | 28.2 ns |
//! | `windows` | `1000/1_in_20/recloser` | 26.7 ns |
//! | `windows` | `1000/1_in_100/recloser` | 26.2 ns |
//! | `windows` | `1000/1_in_1000/recloser` | 25.7 ns |
//! | `windows` | `two_threads/10/1_in_2/recloser` | 198 ns |
//! | `windows` | `two_threads/10/1_in_20/recloser` | 278 ns |
//! | `windows` | `two_threads/10/1_in_100/recloser` | 218 ns |
//! | `windows` | `two_threads/10/1_in_1000/recloser` | 230 ns |
//! | `windows` | `two_threads/100/1_in_2/recloser` | 140 ns |
//! | `windows` | `two_threads/100/1_in_20/recloser` | 213 ns |
//! | `windows` | `two_threads/100/1_in_100/recloser` | 90.6 ns |
//! | `windows` | `two_threads/100/1_in_1000/recloser` | 216 ns |
//! | `windows` | `two_threads/1000/1_in_2/recloser` | 211 ns |
//! | `windows` | `two_threads/1000/1_in_20/recloser` | 60.2 ns |
//! | `windows` | `two_threads/1000/1_in_100/recloser` | 225 ns |
//! | `windows` | `two_threads/1000/1_in_1000/recloser` | 158 ns |
//!
//! In the `windows` group the limit is 80% for both crates (`recloser` as `closed_len(window)`
//! with `error_rate(0.8)`). The bench checks that this crate's breaker stays closed and counts
//! `recloser`'s rejections (it has no public state); a row where `recloser` opened is marked
//! "opened" by `scripts/perf-table`. None did in this run. Two threads on these two virtual
//! CPUs measure bimodally, for both crates: the same case lands near 20–30 ns or near
//! 70–500 ns from one run to the next, depending on how the two threads share the cores. One
//! thread moves too on this VM: `try_acquire_success` measured 2.4 to 4.2 ns in runs of the
//! same hour (the `postgres` group's row is the same code), and
//! `try_acquire_success_time_window` near 9.2 ns in some runs and near 17.8 ns in others of one
//! binary (as did the binary before its last change, with the same instructions hot in `perf`
//! in both), so compare rows of one run.
//!
//! ### Reading it
//!
//! * **A closed, healthy breaker only reads shared memory**: one atomic load to admit, one load
//!   and a compare to record a success on a clean window (`src/cell/`). The state is one packed
//!   word rather than an `ArcSwap` snapshot for that reason. The same code serves in-memory and
//!   PostgreSQL breakers, since only transitions reach the database: the `postgres` group
//!   measures the same paths on a breaker of a PostgreSQL storage.
//! * **`acquire_run_record`** is not a function of the crate: it is what `call` does, written
//!   with the public synchronous API (`try_acquire`, run, `record(Outcome::from_result)`), the
//!   same shape as the peers' synchronous `call`, so the peers' `call` rows compare with it. The
//!   crate's own `call` is async: `call_async` is it, polled on a current-thread runtime.
//! * **Errors below the limit** (`error_rate`, `windows`): a count window records an outcome
//!   without the key's lock (one compare-and-swap claims the ring's head) and takes the lock only
//!   when the window may trip. A window that nearly always holds a failure (100 outcomes at 1 in
//!   20) never takes the clean fast path.
//! * **Rejections** read the clock to decide whether the cooldown is over: the kernel's coarse
//!   clock (`CLOCK_MONOTONIC_COARSE`, through the vDSO) while the deadline is more than four
//!   ticks ahead, the precise one nearer to it, so a cooldown never ends early
//!   ([`SystemClock`](crate::SystemClock)). Half-open rejections (`half_open`,
//!   `try_acquire_full`) need no clock. [`Rejected`](crate::Rejected) holds a copy of the key
//!   private to the thread that was refused, so threads refused at once by one breaker write
//!   no shared reference count.
//! * **Owned permits** (`try_acquire_owned_success`, `acquire_owned_run_record`) add one
//!   reference-count increment when admitted and one decrement when reported, what
//!   `handle_clone_drop` measures alone. Two threads on one handle both write that count, one
//!   cache line bouncing between cores. Use the borrowed form where the borrow suffices. On
//!   the VM of this table one locked read-modify-write costs about 3 ns (`handle_clone_drop`
//!   is two); on an Intel Xeon VM it cost 8 ns, and `handle_clone_drop` 17.4 ns.
//! * **Opt-in costs**: a time window (`try_acquire_success_time_window`, a 60 s period) counts
//!   every success with one load of a clock reading a background thread keeps (for periods of
//!   5 s and more; shorter ones read the coarse clock, 4–10 ns through the vDSO on a VM) and one
//!   compare-and-swap, without the lock, and takes the lock for failures
//!   (`acquire_run_record_time_window_1_in_100`); a slow-call threshold makes `call` read the clock
//!   twice (`call_async_slow_calls`: the coarse clock, for thresholds of 25 coarse ticks or more;
//!   `call_async_slow_calls_precise`: the precise clock, for shorter ones), while a permit's
//!   `record_timed` under the threshold is a plain success; per-call metrics
//!   (`try_acquire_success_call_metrics`) add an atomic increment on a shared cache line.
//! * **Fleet policies**: a quorum is read only when a window trips (`postgres/quorum/…` match
//!   the default policy's rows); a fleet rate counts every call with a load and a store
//!   on a counter only the calling thread writes (`postgres/fleet_rate/…`), behind the word's
//!   `COUNTED` bit that a plain breaker's success tests anyway: what it adds is a flag, the
//!   thread-local read that finds the thread's counter, and the count.
//!
//! ## The fleet
//!
//! `cargo bench --bench propagation` on 2-core VMs of 24 GiB (the first five rows on the AMD
//! EPYC VM of the table above, the others on earlier ones), with PostgreSQL 15 on loopback with
//! TLS (`sslmode=prefer`), the server and the instances sharing the two cores. On these VMs the
//! floors themselves move by half from one run to the next (a bare `UPDATE` → NOTIFY from idle
//! measured 0.76 to 1.43 ms p50 in six runs within an hour on one of them), so compare a row
//! with its own run's floor:
//!
//! | Measurement | Result | Command | Date, load average |
//! |---|---|---|---|
//! | A trips → B's first rejection (a thread spinning on B's `try_acquire`), p50 / p99 | 1.32 / 2.23 ms | `RC_BENCH_PHASES=1,2 cargo bench --bench propagation` | 2026-12-07 00:10, 1.3 before, 1.2 after |
//! | The floor under the same spinner, between those trips: a bare `UPDATE` (with the table's triggers) → its NOTIFY on a bare listener, `synchronous_commit` on, p50 / p99; the trips over it | 1.44 / 2.44 ms; ×0.92 / ×0.92 | the same | the same |
//! | The floors from idle, no spinner: the bare `UPDATE` → NOTIFY with `synchronous_commit` on / off; the crate's `rc_trip()` called bare (on), p50 / p99 | 1.16 / 1.86 ms; 0.82 / 1.30 ms; 1.33 / 2.36 ms | the same | the same |
//! | B's own share: the NOTIFY handed to B's socket → B's first rejection, p50 / p99 | 0.08 / 0.28 ms | the same | the same |
//! | A's own share: the failure → A's statement complete on the wire (A and B each behind a proxy of the bench's, plain TCP); the database's: that statement → the NOTIFY handed to B's socket (two proxy hops included), p50 / p99; the same without the spinner, tripped from a plain thread | 0.11 / 0.20 ms; 0.91 / 1.79 ms; without the spinner 0.13 / 0.21 ms; 1.00 / 1.56 ms | the same | the same |
//! | 100 keys flipped OPEN/CLOSED by one UPDATE every 10 ms for 10 s, applied by one instance and read through `Storage::changes()`: changes applied per second; commit → snapshot (database clock) p50 / p90 / p99 / max; changes missed by the stream | 10,003 /s; 1.48 / 1.96 / 2.70 / 9.8 ms; 0 | `RC_BENCH_PHASES=8 cargo bench --bench propagation` | 2026-11-29, about 1.5 |
//! | The same storm: a change written without a notification (`session_replication_role = replica`), applied by the periodic reload (reconcile interval 1 s) | 994 ms later | the same | the same |
//! | `rc_configure`'s commit acknowledged → the last of three listening instances holds the change, p50 / p99 (from sending the statement) | 1.4 / 2.3 ms (4.0 / 6.3 ms) | `RC_BENCH_PHASES=12 cargo bench --bench propagation` | 2026-12-06, 1.6 |
//! | The same change → a polling instance at the default 250 ms, p50 / max | 129 / 250 ms | the same | the same |
//!
//! Where the time goes: a change reaches another instance one commit, one notification and one
//! wake-up of its listener later. A trip's commit does not wait for the WAL flush (trips, probes,
//! votes and rate reports commit with `synchronous_commit` off; what that may lose is in
//! [`guarantees`](super::guarantees#can-be-lost)); what is left over the floor with it off is the
//! instance's share (about 0.1 ms from the failure to its statement on the wire: the cell, the
//! outbox, the hand-over to the I/O runtime's thread, a pooled connection), the trip function's own
//! statements (about 0.13 ms of server time under pgbench: the key's checks, its live
//! configuration, and an `UPDATE` answered from its `RETURNING`; the triggers the floor runs too)
//! and TLS. Of the triggers' work, every write of a row also updates the six indexes the Python
//! package's schema adds to the table (about 40 µs a write under pgbench). Functions called by functions are
//! PL/pgSQL, whose plans are kept for the session, and the instance prepares its calls on a session
//! of its own (`src/storage/postgres/pool.rs`): re-planned on every call they cost 0.3 ms more. The
//! receiving instance's own share is parsing, a MAC check and one store into the snapshot.
//! PostgreSQL serializes the commits of transactions that NOTIFY, so throughput comes from
//! batching: while a statement is in flight the next transitions gather and share one commit
//! (`rc_trip_many`, `rc_force_many`). The outbox, the listener and every connection of the
//! process's instances run on a small runtime of the library's (two `resilient-circuit-io`
//! threads), so a caller's task that computes without yielding does not delay a publication.
//!
//! Fleets of hundreds or thousands of instances, listening or polling, are on
//! [`scale`](super::scale).
