#!/usr/bin/env bash
# Runs the whole test suite: scripts/test.sh [extra cargo test args...]
#
# The PostgreSQL integration tests (tests/support) pick their server in this
# order: $RC_TEST_DATABASE_URL, else 127.0.0.1:5432 (user postgres, db test),
# else a throwaway cluster they start themselves. Fault-injection tests always
# start their own clusters, so the PostgreSQL server binaries (initdb, pg_ctl,
# postgres) must be installed in every case; this script installs them when
# it can (root + apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg_binaries() {
  local dir dirs
  IFS=: read -ra dirs <<< "${RC_TEST_PG_BINDIR:-}:${PATH:-}"
  for dir in "${dirs[@]}" /usr/lib/postgresql/*/bin; do
    [[ -n $dir && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && return 0
  done
  return 1
}

local_server_answers() {
  if command -v pg_isready >/dev/null; then
    pg_isready -q -h 127.0.0.1 -p 5432 -t 1
  else
    timeout 1 bash -c '</dev/tcp/127.0.0.1/5432' 2>/dev/null
  fi
}

if ! have_pg_binaries; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing PostgreSQL (Debian package postgresql)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
  else
    echo "test.sh: the tests need the PostgreSQL server binaries (initdb, pg_ctl, postgres)." >&2
    echo "  Debian/Ubuntu: sudo apt-get install postgresql" >&2
    echo "  Fedora/RHEL:   sudo dnf install postgresql-server" >&2
    echo "  macOS:         brew install postgresql" >&2
    echo "  Elsewhere put their directory on PATH or in RC_TEST_PG_BINDIR." >&2
    exit 1
  fi
fi

# The pgbouncer tests (tests/it/pgbouncer.rs) start their own pgbouncer in front of a
# throwaway cluster.
have_pgbouncer() {
  [[ -n ${RC_TEST_PGBOUNCER:-} && -x ${RC_TEST_PGBOUNCER} ]] || command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]]
}
if ! have_pgbouncer; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing pgbouncer (Debian package pgbouncer)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbouncer
  else
    echo "test.sh: the tests need pgbouncer: sudo apt-get install pgbouncer (or set RC_TEST_PGBOUNCER)" >&2
    exit 1
  fi
fi

# The Python package's tests (tests/it/python.rs) make a virtual environment and install the
# package (psycopg, which needs libpq) with pip.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null || ! ldconfig -p 2>/dev/null | grep -q 'libpq\.so'; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing python3-venv and libpq5 (Debian packages)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv libpq5
  else
    echo "test.sh: the tests need python3 with venv and libpq: sudo apt-get install python3-venv libpq5" >&2
    exit 1
  fi
fi

# The `serve` tests (tests/it/serve.rs) drive a real browser: Debian's chromium through its
# chromedriver, at /usr/bin/chromium and /usr/bin/chromedriver.
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "test.sh: installing chromium and chromium-driver (Debian packages)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
  else
    echo "test.sh: the tests need chromium and its driver: sudo apt-get install chromium chromium-driver" >&2
    exit 1
  fi
fi

if [[ -n ${RC_TEST_DATABASE_URL:-} ]]; then
  echo "test.sh: test databases on \$RC_TEST_DATABASE_URL"
elif local_server_answers; then
  echo "test.sh: test databases on 127.0.0.1:5432 (if it accepts user postgres, db test)"
else
  echo "test.sh: no server on 127.0.0.1:5432: the tests start throwaway clusters"
fi

if [[ $# -eq 0 ]]; then
  # --all-targets also builds the benches and examples (so they cannot rot)
  # but skips doctests, hence the second command.
  cargo test --all-targets --all-features
  cargo test --doc --all-features
else
  # With arguments (a filter, --test NAME, -- --nocapture...) run one cargo
  # test with them; it covers doctests too unless they select targets.
  cargo test --all-features "$@"
fi
