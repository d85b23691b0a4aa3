//! Unit tests of `cell/word.rs`: the state word's encoding.

use super::*;
use proptest::prelude::*;

#[test]
fn state_word_transitions() {
    let w = StateWord::INITIAL;
    assert!(w.is_closed() && !w.is_closed_and_clean());
    let clean = w.with_clean(true);
    assert!(clean.is_closed_and_clean() && clean.same_epoch(w));
    let open = clean.next(State::Open);
    assert_eq!(open.state(), State::Open);
    assert!(!open.is_closed() && !open.same_epoch(clean));
    assert!(
        !open.with_clean(true).is_closed_and_clean(),
        "only a closed word is clean"
    );
    let counted = clean.with_counted(true);
    assert!(counted.is_counted() && counted.is_closed_and_clean() && counted.same_epoch(clean));
    assert!(
        counted.next(State::Open).next(State::Closed).is_counted(),
        "counting survives transitions"
    );
    assert!(!counted.with_counted(false).is_counted());
    let half = open.next(State::HalfOpen);
    assert_eq!(
        (half.state(), half.next(State::Closed).state()),
        (State::HalfOpen, State::Closed)
    );
}

proptest! {
    /// A rejection's state and retry time survive packing (times past 2^62 ns saturate).
    #[test]
    fn rejection_round_trips(s in 0u8..3, nanos in proptest::option::of(any::<u64>())) {
        let state = [State::Closed, State::Open, State::HalfOpen][usize::from(s)];
        let retry = nanos.map(Duration::from_nanos);
        let packed = pack_rejection(state, retry);
        let (st, back, forced) = unpack_rejection(packed);
        prop_assert_eq!(st, state);
        prop_assert!(!forced);
        let limit = (1u64 << 62) - 2;
        prop_assert_eq!(back, nanos.map(|n| Duration::from_nanos(n.min(limit))));
        // Marked as forced: only an OPEN rejection is, and keeps its state and time.
        let (st, back2, forced) = unpack_rejection(mark_forced(packed));
        prop_assert_eq!((st, back2, forced), (state, back, state == State::Open));
    }

    /// The epoch grows with every transition and the state is what was asked.
    #[test]
    fn next_changes_epoch_and_state(steps in proptest::collection::vec(0u8..3, 1..50)) {
        let mut w = StateWord::INITIAL;
        for s in steps {
            let to = [State::Closed, State::Open, State::HalfOpen][usize::from(s)];
            let n = w.next(to);
            prop_assert!(!n.same_epoch(w));
            prop_assert_eq!(n.state(), to);
            w = n;
        }
    }
}
