//! [`KeyCell`]: one key's state inside one [`Storage`](crate::Storage): the lock-free hot path.
//!
//! Every [`CircuitBreaker`](crate::CircuitBreaker) handle holds an `Arc<KeyCell>`, so a call never
//! hashes its key or touches the storage's map. Admission reads one `AtomicU64`, the *state word*:
//!
//! ```text
//!  63                                    4     3     2   1 0
//! +---------------------------------------+-------+-----+-----+
//! | epoch: transitions applied to the cell|COUNTED|CLEAN|state|
//! +---------------------------------------+-------+-----+-----+
//! ```
//!
//! * `state` is Closed / Open / HalfOpen.
//! * `CLEAN` is set while the breaker is closed and its window is full of successes: recording a
//!   success then changes nothing, so [`Permit::success`](crate::Permit::success) is one load and
//!   a compare, with no lock and no write. A slow call is never such a success.
//! * `COUNTED` is set while the policy is a fleet rate (`TripPolicy::FleetRate`) or has a time
//!   window: a clean success then also adds one to the key's call counter (`rate.rs`, a load
//!   and a store on a counter only this thread writes, so the database judges the rate of every call the
//!   fleet made) or to the period's calls (`tally.rs`, a clock reading and a compare-and-swap).
//! * `epoch` grows with every transition. A permit remembers the word it was admitted under, and
//!   an outcome from an older epoch is dropped: a call admitted before a trip cannot count as a
//!   half-open probe.
//!
//! Why not an `ArcSwap<Snapshot>`: a full `ArcSwap::load` costs about 20 ns on the machines we
//! measure on, the atomic word under 1 ns. The closed state's count window is recorded without
//! a lock too (`ring.rs`: a compare-and-swap claims a slot, and a bit changes only when the
//! outcome does), and so are a time window's successes (`tally.rs`). Everything else (the
//! half-open round, failures of a time window, slow-call windows, probe
//! leases, the database version) sits behind a mutex private to this key, taken only when
//! something changes, or when the count window may trip.
//!
//! This file is the hot path (admission, recording, the private lock); `word.rs` holds the
//! word's encoding, `ring.rs` the count window, `tally.rs` a time window's calls, `counted.rs`
//! the counting of a `COUNTED` word's successes, `record.rs` recording off the fast path,
//! `admit.rs` admission when not closed, `fleet.rs`
//! what a shared store adds (lease requests, the row's state as the fleet reports it, our own
//! decisions on their way), `live.rs` the live configuration (the policy in force, the mode),
//! none of it on a closed breaker's path.
//!
//! Memory ordering, once: every transition happens under the key's mutex and ends with a
//! `Release` store of the word; readers load the word with `Acquire`, so the deadline and probe
//! count written before that store are visible to whoever sees the new word. Outside the mutex
//! only two things change: the ring (see its module doc) and the word's `CLEAN` bit, set by a
//! compare-and-swap and cleared by a `fetch_and` (see `mark_clean`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use arc_swap::ArcSwapOption;

use crate::clock::{duration_nanos, Clock};
use crate::fleet::precedence::FleetView;
use crate::fleet::Link;
use crate::live_config::{LiveConfig, Mode};
use crate::policy::Policy;
use crate::telemetry::KeyMetrics;
use crate::window::OutcomeWindow;

mod admit;
mod announce;
mod counted;
mod fleet;
mod live;
mod locked;
mod record;
mod ring;
mod tally;
mod thread_slot;

use locked::Locked;
use ring::{Ring, Rule};
use tally::Tally;
mod rate;
mod word;

use crate::changes::Feed;
use crate::{Change, State};
pub(crate) use rate::RateCounter;
pub(crate) use word::{mark_forced, pack_rejection, unpack_rejection, StateWord};

/// A status-change callback as stored by a breaker handle.
pub(crate) type Callback = dyn Fn(&Change) + Send + Sync;

/// A probe permit leased from the shared store for a fleet-wide half-open round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) id: i64,
    /// Clock nanoseconds after which the database may hand the slot to someone else.
    pub(crate) expires_at: u64,
}

/// The result of asking to run a call.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Run; the word the call was admitted under.
    Closed(StateWord),
    /// Run as a half-open probe.
    Probe(StateWord, Option<Lease>),
    /// Do not run.
    Rejected {
        state: State,
        retry_after: Option<Duration>,
        /// Fleet mode: the cooldown is over (or a round is on) and no local lease is free, so
        /// the storage should ask the database for one.
        wants_lease: bool,
    },
}

/// A transition the cell made, for callbacks and for publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: State,
    pub(crate) to: State,
}

/// What a recorded outcome caused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Nothing beyond the window.
    Nothing,
    /// A local transition.
    Changed(Transition),
    /// A fleet probe result: the shared store decides.
    Report(Lease, bool),
}

/// One key's state in one storage.
///
/// `repr(C)` with a cache-line marker: the first line holds only what every call reads (the
/// word, the deadline, and fields that never change), so writes to the lock, the lease flag or
/// the wake-up list by rejected callers never invalidate the line that admission loads.
#[repr(C)]
pub(crate) struct KeyCell {
    word: AtomicU64,
    /// Clock nanoseconds at which the current cooldown ends (meaningful while Open).
    open_deadline: AtomicU64,
    /// The live configuration's [`Mode`] as a `u8`, read on the slow paths only (a closed breaker
    /// admits on the word alone; a disabled one also admits while not closed).
    mode: AtomicU8,
    /// Lock-free hint of free probe permits, so rejected half-open callers skip the lock.
    probes_hint: AtomicU32,
    pub(crate) key: Arc<str>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Shared stores only: whether the instance is connected (half-open probes are then leased
    /// from the database; while it is unreachable the cell runs its own rounds, so a breaker
    /// that tripped during an outage can still recover), and the basis of its decisions.
    link: Option<Arc<Link>>,
    _written_below: CacheLine,
    /// The closed state's count window, recorded without the lock (`ring.rs`).
    ring: Ring,
    /// [`Rule`] of the policy in force: whether, and by what, the ring is judged without the lock.
    rule: AtomicU64,
    locked: Mutex<Locked>,
    /// Set while a lease request to the shared store is in flight, so callers do not flood it.
    lease_requested: AtomicBool,
    /// `TripPolicy::FleetRate`: every call and failure, for the fleet's rate (`rate.rs`); made
    /// when the policy first becomes a fleet rate, and counted while the word says `COUNTED`.
    rate: OnceLock<Box<RateCounter>>,
    /// True while a closed success of a `COUNTED` word needs only the fleet rate's count (a
    /// fleet rate without a time window): the one flag its fast path reads before counting.
    rate_alone: AtomicBool,
    /// [`Builder::time_window`](crate::Builder::time_window): the period's calls, counted
    /// without the lock (`tally.rs`); made when the policy first has a time window.
    tally: OnceLock<Box<Tally>>,
    /// The key's live configuration (`live_config.rs`), whole: read without a lock by
    /// `CircuitBreaker::live_config`, replaced when the table changes.
    live: ArcSwapOption<LiveConfig>,
    /// Clock nanoseconds before which asking the database for a probe lease is pointless (every
    /// slot of the round is leased until then); 0 when it may be asked. Reset by every
    /// transition, since a NOTIFY of a new state is the other reason to ask again.
    lease_retry_at: AtomicU64,
    /// Shared stores: how many transitions this instance decided for the key (trips and
    /// overrides), so the answer to an override can tell whether a newer decision followed it.
    local_decisions: AtomicU64,
    /// True while the breaker is open because of `force_open` on this instance (the `forced`
    /// reason of rejections).
    forced_open: AtomicBool,
    /// This key's metric handles (`telemetry.rs`), touched only off the hot path.
    pub(crate) metrics: KeyMetrics,
    /// Woken when a lease arrives or the state changes, for `call` waiting on a probe.
    pub(crate) changed: Notify,
    /// The storage's change stream (`changes.rs`): local transitions are streamed from
    /// [`notify`](Self::notify), remote ones where the table's state is applied.
    pub(crate) feed: Feed,
    callbacks: Mutex<Vec<Weak<Callback>>>,
}

/// A zero-sized field that starts a new cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct CacheLine;

impl std::fmt::Debug for KeyCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCell")
            .field("key", &self.key)
            .field("state", &self.state())
            .field("fleet", &self.is_fleet())
            .finish_non_exhaustive()
    }
}

impl KeyCell {
    pub(crate) fn new(
        key: Arc<str>,
        policy: Policy,
        clock: Arc<dyn Clock>,
        link: Option<Arc<Link>>,
        namespace: &str,
        feed: Feed,
    ) -> Self {
        let metrics = KeyMetrics::new(&key, namespace);
        metrics.state(State::Closed, None);
        let (slow_calls, timed) = Locked::extra_windows(&policy);
        let tally = OnceLock::new();
        if policy.time_window.is_some() {
            let t = Box::<Tally>::default();
            t.configure(&policy, &*clock);
            let _ = tally.set(t);
        }
        KeyCell {
            tally,
            forced_open: AtomicBool::new(false),
            metrics,
            _written_below: CacheLine,
            key,
            word: AtomicU64::new(
                StateWord::INITIAL
                    .with_counted(policy.counts_every_call())
                    .0,
            ),
            open_deadline: AtomicU64::new(0),
            probes_hint: AtomicU32::new(0),
            mode: AtomicU8::new(Mode::Normal.to_u8()),
            ring: Ring::new(
                policy.failure_limit.denominator(),
                StateWord::INITIAL.generation(),
            ),
            rule: AtomicU64::new(Rule::of(&policy).bits()),
            locked: Mutex::new(Locked {
                policy,
                code_policy: policy,
                half_open: OutcomeWindow::new(policy.probe_count()),
                probes_free: 0,
                leases: VecDeque::new(),
                view: FleetView::default(),
                handles: 0,
                reopens: 0,
                slow_calls,
                timed,
                refused_until: 0,
                tripped_at: (0, 0),
            }),
            lease_requested: AtomicBool::new(false),
            rate: match policy.trip.fleet_rate() {
                Some(_) => OnceLock::from(Box::new(RateCounter::new(clock.now_nanos()))),
                None => OnceLock::new(),
            },
            rate_alone: AtomicBool::new(counted::rate_alone(&policy)),
            live: ArcSwapOption::empty(),
            lease_retry_at: AtomicU64::new(0),
            local_decisions: AtomicU64::new(0),
            changed: Notify::new(),
            feed,
            clock,
            link,
            callbacks: Mutex::new(Vec::new()),
        }
    }

    /// True when half-open probes come from the shared store right now.
    #[inline]
    pub(crate) fn is_fleet(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_online())
    }

    #[inline]
    fn load(&self, order: Ordering) -> StateWord {
        StateWord(self.word.load(order))
    }

    #[inline]
    fn store(&self, w: StateWord, order: Ordering) {
        self.word.store(w.0, order);
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        // Nothing user-supplied runs under this lock, so poisoning could only come from a bug of
        // ours; the data is still consistent word by word, so carry on with it.
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a breaker handle with `policy`. A cell with live handles keeps its policy and
    /// refuses a different one (returned as the error); an unclaimed cell (made by the listener
    /// from a row, or whose handles are gone) takes the new one.
    pub(crate) fn claim(&self, policy: Policy) -> Result<(), Box<Policy>> {
        let mut locked = self.lock();
        if locked.code_policy != policy {
            if locked.handles > 0 {
                return Err(Box::new(locked.code_policy));
            }
            locked.code_policy = policy;
            let effective = self
                .live
                .load()
                .as_deref()
                .map_or(policy, |l| l.over(policy));
            self.set_policy(&mut locked, effective);
        }
        locked.handles += 1;
        Ok(())
    }

    /// A breaker handle is gone.
    pub(crate) fn unclaim(&self) {
        let mut locked = self.lock();
        locked.handles = locked.handles.saturating_sub(1);
    }

    pub(crate) fn policy(&self) -> Policy {
        self.lock().policy
    }

    /// The current state: one atomic load.
    #[inline]
    pub(crate) fn state(&self) -> State {
        // Relaxed: the caller gets a state, no data published with it.
        self.load(Ordering::Relaxed).state()
    }

    /// Time left in the current cooldown (zero when not open or already over).
    pub(crate) fn cooldown_remaining(&self) -> Duration {
        let w = self.load(Ordering::Acquire);
        if w.state() != State::Open {
            return Duration::ZERO;
        }
        let deadline = self.open_deadline.load(Ordering::Relaxed);
        Duration::from_nanos(deadline.saturating_sub(self.clock.now_nanos()))
    }

    /// Decides whether a call may run. Never blocks on anything but this key's private lock, and
    /// not even that on a closed breaker.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        // Acquire pairs with the Release store of every transition: if we see Open we also see
        // its deadline.
        let w = self.load(Ordering::Acquire);
        if w.is_closed() {
            return Admission::Closed(w);
        }
        self.admit_slow(w)
    }
}

impl KeyCell {
    /// Records a call's outcome. `admitted` is the word the call was admitted under.
    #[inline]
    pub(crate) fn record(
        &self,
        admitted: StateWord,
        probe: Option<Lease>,
        success: bool,
    ) -> Recorded {
        if success && probe.is_none() {
            // Fast path: same epoch, still closed and clean. Relaxed is enough: a success on a
            // window full of successes changes nothing, whatever happened in between.
            let cur = self.load(Ordering::Relaxed);
            if cur.same_epoch(admitted) && cur.is_closed_and_clean() {
                if cur.is_counted() {
                    if self.count_success_on_own_stripe() {
                        return Recorded::Nothing;
                    }
                    return self.count_success(admitted);
                }
                return Recorded::Nothing;
            }
        }
        self.record_in_window(admitted, probe, success)
    }

    /// [`record`](Self::record) for a call that took at least the policy's slow-call threshold
    /// (with [`SlowCalls::AsFailure`](crate::SlowCalls::AsFailure) the caller already made it a
    /// failure). Never the fast path: a slow call always changes the window.
    #[inline]
    pub(crate) fn record_slow_call(
        &self,
        admitted: StateWord,
        probe: Option<Lease>,
        success: bool,
    ) -> Recorded {
        self.record_slow(admitted, probe, success, true)
    }

    /// The time window's counts at `now` (its reading; `None`: read it), when the policy has
    /// one: failures and slow calls from the lock, calls from the tally. Under the lock; the
    /// tally's hint is set from them before the calls are counted (see `Tally::success`).
    fn timed_counts(
        &self,
        locked: &mut Locked,
        cur: StateWord,
        now: Option<u64>,
    ) -> Option<crate::time_window::Counts> {
        let tally = self.time_window()?;
        let now = now.unwrap_or_else(|| tally.now(&*self.clock));
        let mut counts = locked.timed.as_mut()?.counts_at(now);
        tally.set_hint(counts);
        counts.calls = tally.period_calls(cur.generation(), now);
        Some(counts)
    }

    /// The fleet-rate counts, when the policy is (or was) a fleet rate.
    pub(crate) fn rate(&self) -> Option<&RateCounter> {
        self.rate.get().map(|r| &**r)
    }

    /// A permit dropped without an outcome: a probe gives its slot back.
    pub(crate) fn cancel(&self, admitted: StateWord, probe: Option<Lease>) {
        self.metrics.probe_ended(); // only probes are cancelled (see `Permit`'s drop)
        let mut locked = self.lock();
        let cur = self.load(Ordering::Relaxed);
        if let Some(lease) = probe {
            // The lease is still ours until it expires; keep it for the next caller.
            if cur.state() == State::HalfOpen {
                locked.leases.push_back(lease);
                self.probes_hint
                    .store(locked.leases.len() as u32, Ordering::Relaxed);
            }
        } else if cur == admitted && cur.state() == State::HalfOpen {
            locked.probes_free += 1;
            self.probes_hint
                .store(locked.probes_free, Ordering::Relaxed);
        } else {
            return;
        }
        drop(locked);
        self.changed.notify_waiters();
    }

    /// Clock nanoseconds `cooldown` from now.
    fn deadline_after(&self, cooldown: Duration) -> u64 {
        self.clock
            .now_nanos()
            .saturating_add(duration_nanos(cooldown))
    }

    /// Changes state under the lock; returns the transition. Windows of the state entered start
    /// empty.
    fn set_state(&self, locked: &mut Locked, to: State, deadline: Option<u64>) -> Transition {
        let cur = self.load(Ordering::Relaxed);
        let from = cur.state();
        if let Some(d) = deadline {
            self.open_deadline.store(d, Ordering::Relaxed);
        }
        let next = cur.next(to);
        match to {
            State::Closed => {
                // Before the word: an outcome admitted under an earlier epoch finds the window
                // of another generation and counts as neither.
                self.ring.clear(next.generation());
                locked.clear_extra();
                if let Some(t) = self.tally.get() {
                    t.clear();
                }
                locked.reopens = 0; // a closed breaker's next trip rests the base cooldown
            }
            State::HalfOpen => {
                locked.half_open.clear();
                locked.refused_until = 0;
            }
            // Opened after all (by the fleet, or by an override): no refusal holds any more.
            State::Open => locked.refused_until = 0,
        }
        if from == State::Closed && to != State::Closed {
            self.ring.seal(next.generation());
        }
        if to != State::HalfOpen {
            locked.leases.clear();
            locked.probes_free = 0;
        }
        let hint = if self.is_fleet() {
            locked.leases.len() as u32
        } else {
            locked.probes_free
        };
        self.probes_hint.store(hint, Ordering::Relaxed);
        self.lease_retry_at.store(0, Ordering::Relaxed);
        self.forced_open.store(false, Ordering::Relaxed);
        // Release: publishes the deadline, the probe hint and the cleared windows with the word.
        self.store(next, Ordering::Release);
        self.changed.notify_waiters();
        Transition { from, to }
    }

    /// A manual override, applied locally (the shared store publishes it separately). Refused
    /// here (`None`, nothing changes) when it would end a hold of the live configuration's
    /// `ForcedOpen`, as the database refuses it.
    pub(crate) fn force(&self, to: State, cooldown: Duration) -> Option<Transition> {
        let mut locked = self.lock();
        if self.link.is_some() {
            // Until its answer arrives, changes from elsewhere (an older trip's late answer or
            // NOTIFY) must not undo it; a trip of ours still pending is superseded by it. (A
            // refused one is answered too, and counted until then.)
            locked.view.overrides_in_flight += 1;
            locked.view.pending_trip = None;
        }
        if to != State::Open && self.mode() == Mode::ForcedOpen {
            return None;
        }
        if to == State::HalfOpen {
            locked.probes_free = locked.policy.probe_count();
        }
        let deadline = (to == State::Open).then(|| self.deadline_after(cooldown));
        let t = self.set_state(&mut locked, to, deadline);
        // Relaxed: read only to label a rejection.
        self.forced_open.store(to == State::Open, Ordering::Relaxed);
        (t.from != t.to).then_some(t)
    }

    /// The closed window's outcomes, oldest first (true = success), as the Python package's
    /// `execution_log`.
    pub(crate) fn execution_log(&self) -> Vec<bool> {
        self.ring.outcomes()
    }

    /// True when nothing but the store holds this cell (no handle, no outbox entry, no request
    /// in flight) and it is CLOSED, so a bounded store may drop it: a key absent from the store
    /// is CLOSED, so nothing is lost. An open or half-open key is never dropped.
    pub(crate) fn evictable(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1 && self.state() == State::Closed
    }
}
