#!/usr/bin/env bash
# The figures of `resilient-circuit serve` in the operating reference: time to first render
# with 10,000 keys in chromium, 100 viewers of the event stream while 100 transitions a second
# stream through, and the server's memory. The server is a release build; the driver is the
# ignored test serve::figures (tests/it/serve.rs). Needs what scripts/test.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin resilient-circuit
target="${CARGO_TARGET_DIR:-target}"
RC_SERVE_BIN="$(realpath "$target/release/resilient-circuit")" \
  cargo test --all-features --test it serve::figures -- --ignored --nocapture
