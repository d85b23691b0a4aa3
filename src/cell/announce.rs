//! What a transition tells the world: its log line and metrics (`announce`), the change stream
//! and the status-change callbacks, run outside every lock with the same
//! [`Change`](crate::Change) the stream carries; and the reason label of a rejection.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{Callback, KeyCell, Transition};
use crate::live_config::Mode;
use crate::{ChangeOrigin, RejectReason, State};

impl KeyCell {
    pub(crate) fn add_callback(&self, cb: &Arc<Callback>) {
        let mut cbs = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        cbs.retain(|w| w.strong_count() > 0);
        cbs.push(Arc::downgrade(cb));
    }

    /// The log line and the metrics of a transition, without the callbacks.
    pub(crate) fn announce(&self, t: Transition, origin: ChangeOrigin) {
        tracing::info!(key = %self.key, from = %t.from, to = %t.to, ?origin, "circuit breaker changed state");
        self.metrics.transition(t.from, t.to, origin);
        self.publish_state();
    }

    /// Sets the state gauges from the state the cell is in *now*, not from a transition's `to`:
    /// transitions announced out of order (two threads, or the callbacks thread) still leave the
    /// gauges right once the last one is announced.
    pub(crate) fn publish_state(&self) {
        let state = self.state();
        let open_for = (state == State::Open).then(|| self.cooldown_remaining());
        self.metrics.state(state, open_for);
    }

    /// Why a call is rejected in `state`.
    pub(crate) fn rejection_reason(&self, state: State) -> RejectReason {
        match state {
            State::HalfOpen => RejectReason::HalfOpenFull,
            _ if self.forced_open.load(Ordering::Relaxed) || self.mode() == Mode::ForcedOpen => {
                RejectReason::Forced
            }
            _ => RejectReason::Open,
        }
    }

    /// True when some live breaker handle registered a status-change callback on this key.
    pub(crate) fn has_callbacks(&self) -> bool {
        let cbs = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
        cbs.iter().any(|w| w.strong_count() > 0)
    }

    /// Announces a transition this process decided, streams it, and runs the status-change
    /// callbacks outside every lock.
    pub(crate) fn notify(&self, t: Transition) {
        if t.from == t.to {
            return;
        }
        self.announce(t, ChangeOrigin::Local);
        self.feed
            .send(&self.key, t.from, t.to, ChangeOrigin::Local, None, None);
        self.run_callbacks(t, ChangeOrigin::Local, None, None);
    }

    /// Announces a transition that came from the shared table (already streamed) and runs the
    /// callbacks: on the callbacks thread (`storage::postgres::callbacks`).
    pub(crate) fn notify_remote(
        &self,
        t: Transition,
        version: Option<i64>,
        committed_at_us: Option<i64>,
    ) {
        if t.from == t.to {
            return;
        }
        self.announce(t, ChangeOrigin::Remote);
        self.run_callbacks(t, ChangeOrigin::Remote, version, committed_at_us);
    }

    /// Runs the status-change callbacks with the transition's [`Change`](crate::Change), the one
    /// the stream carries; a panicking one is logged and the others still run.
    fn run_callbacks(
        &self,
        t: Transition,
        origin: ChangeOrigin,
        version: Option<i64>,
        committed_at_us: Option<i64>,
    ) {
        let live: Vec<Arc<Callback>> = {
            let cbs = self.callbacks.lock().unwrap_or_else(|e| e.into_inner());
            cbs.iter().filter_map(Weak::upgrade).collect()
        };
        if live.is_empty() {
            return;
        }
        let change = self
            .feed
            .change(&self.key, t.from, t.to, origin, version, committed_at_us);
        for cb in live {
            let run = std::panic::AssertUnwindSafe(|| cb(&change));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(key = %self.key, "an on_status_change callback panicked; the breaker carries on");
            }
        }
    }
}
