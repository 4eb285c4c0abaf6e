#!/usr/bin/env bash
# Called by terraform/environments/local's provisioners: `up` builds the binaries (debug, shared
# with the tests) and starts the stack described by the flags, with Toxiproxy on every
# cross-region link; `down` stops exactly the processes that stack's env.json names and deletes its
# state folder. Everything after the verb goes to ledgerctl as global flags.
set -euo pipefail
cd "$(dirname "$0")/.."
verb="${1:?usage: scripts/local-env.sh up|down [ledgerctl flags]}"
shift
case "$verb" in
  up)
    if [ "${LEDGER_ENV_BUILD:-1}" = 1 ]; then
      . scripts/install-deps.sh
      cargo build -q --workspace --bins
    fi
    exec ./target/debug/ledgerctl "$@" up --toxiproxy
    ;;
  down)
    if [ -x ./target/debug/ledgerctl ]; then
      exec ./target/debug/ledgerctl "$@" down --purge
    fi
    echo "local-env: no ledgerctl binary, nothing of ours can be running" >&2
    ;;
  *) echo "usage: scripts/local-env.sh up|down [ledgerctl flags]" >&2; exit 2 ;;
esac
