#!/usr/bin/env bash
# Counts the instructions of one `try_acquire()` + `success()` on a closed, healthy breaker
# (in-memory storage, window full of successes: the documented fast path), with callgrind.
#
#   scripts/callgrind.sh            # prints the count; ~1 min (a release build, two valgrind runs)
#
# Needs valgrind (Debian/Ubuntu: `sudo apt-get install -y valgrind`; Fedora: `dnf install
# valgrind`; macOS: not supported). Honours CARGO_TARGET_DIR.
#
# How: a throwaway binary (built here in a temp dir, depending on this crate by path, with this
# crate's Cargo.lock) calls an `#[inline(never)]` function doing `try_acquire()` + `success()`
# N times after 20 warm-up calls that fill the window. Callgrind collects only inside that
# function (`--toggle-collect`), once with N = N1 and once with N = N2; the count per call is
# (Ir(N2) - Ir(N1)) / (N2 - N1), so the warm-up calls, the breaker's construction and the
# loop around the call are not counted. Counted: the function's own prologue/epilogue (a few
# instructions), `try_acquire`, `success` and the permit's drop.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v valgrind >/dev/null; then
  echo "valgrind not found; install it (Debian/Ubuntu: sudo apt-get install -y valgrind)" >&2
  exit 1
fi

N1=${N1:-10000}
N2=${N2:-110000}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src"
cat > "$work/Cargo.toml" <<EOF
[package]
name = "rc-callgrind"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
resilient-circuit = { path = "$root" }

[profile.release]
debug = 1

[workspace]
EOF
cp "$root/Cargo.lock" "$work/Cargo.lock"
cat > "$work/src/main.rs" <<'EOF'
use std::hint::black_box;
use std::time::Duration;

use resilient_circuit::{CircuitBreaker, Ratio, State, Storage};

#[inline(never)]
fn rc_try_acquire_success(cb: &CircuitBreaker) {
    let permit = cb.try_acquire().expect("a closed breaker admits");
    permit.success();
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("usage: rc-callgrind N");
    // As benches/hot_path.rs: a window of 10, tripping at 5 failures, 30 s cooldown.
    let cb = CircuitBreaker::builder("callgrind")
        .storage(Storage::in_memory())
        .failure_limit(Ratio::new(5, 10))
        .cooldown(Duration::from_secs(30))
        .build()
        .expect("a valid breaker");
    for _ in 0..20 {
        rc_try_acquire_success(&cb);
    }
    assert_eq!(cb.execution_log(), vec![true; 10], "the window is not clean");
    for _ in 0..n {
        rc_try_acquire_success(black_box(&cb));
    }
    assert_eq!(cb.state(), State::Closed);
}
EOF

echo "building (release) in $work ..." >&2
(cd "$work" && cargo build --release --quiet)
bin="${CARGO_TARGET_DIR:-$work/target}/release/rc-callgrind"

ir() {
  local out="$work/callgrind.$1"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    --toggle-collect='*rc_try_acquire_success*' "$bin" "$1" 2>/dev/null
  # The "summary:" / "totals:" line holds the collected Ir.
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

ir1=$(ir "$N1")
ir2=$(ir "$N2")
echo "Ir with N=$N1: $ir1, with N=$N2: $ir2" >&2
awk -v a="$ir1" -v b="$ir2" -v n1="$N1" -v n2="$N2" \
  'BEGIN { printf "try_acquire() + success(), closed and healthy: %.2f instructions per call\n", (b - a) / (n2 - n1) }'
valgrind --version >&2
rustc --version >&2
