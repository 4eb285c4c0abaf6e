#!/usr/bin/env bash
# The tests that run on the containers backend (LEDGER_TEST_BACKEND=containers): testkit's own,
# region-node's replication tests and its PostgreSQL crash test; then `ledgerctl up --containers`
# (ledgerctl/tests/containers_stack.rs: three regions from our services' images, built here from
# the debug binaries by `scripts/containers.sh images --debug`: the tests' own build, as the
# local backend's tests run them). Starts the private Docker engine
# and builds the engine images with scripts/containers.sh (the first time: debootstrap, a few
# minutes), builds the test binaries, runs them, and stops the engine however the run ends (the
# images stay in its data root, so the next run starts in seconds).
# Extra arguments go to every `cargo test` (e.g. `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || . scripts/install-deps.sh

# The last line `up` prints is `export DOCKER_HOST=unix://...`.
eval "$(scripts/containers.sh up | tail -n 1)"
trap 'scripts/containers.sh down' EXIT
echo "containers-tests: DOCKER_HOST=$DOCKER_HOST" >&2
export LEDGER_TEST_BACKEND=containers

# Built before any engine is needed, so the timings below are the tests'.
cargo test -p testkit --no-run
cargo test -p region-node --test replication --test postgres_crash --no-run
cargo test -p ledgerctl --features containers --test containers_stack --no-run
# Our services' images, tagged with the commit (what `ledgerctl up --containers` runs by default).
started=$SECONDS
cargo build -p region-node -p replicator -p router -p reconcile --bins
scripts/containers.sh images --debug
echo "containers-tests: debug binaries and service images in $((SECONDS - started)) s" >&2

run() {
  local started=$SECONDS
  cargo test "$@"
  echo "containers-tests: cargo test $* passed in $((SECONDS - started)) s" >&2
}
run -p testkit "$@"
run -p region-node --test replication "$@"
# A test binary of its own: it kills the region's PostgreSQL container.
run -p region-node --test postgres_crash "$@"
# The whole stack from images: the node's contract and convergence across three regions.
run -p ledgerctl --features containers --test containers_stack "$@"
