#!/usr/bin/env bash
# The observability checks of ./dev test: the alert rules parse (`promtool check rules`), their unit
# tests pass (`promtool test rules`), and the dashboards' expressions parse and name only metrics
# the components export (ledgerctl's `observability` test).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  echo "observability-checks: promtool missing; run scripts/install-deps.sh (Debian package prometheus)" >&2
  exit 1
fi
promtool check rules observability/alerts.yml
(cd observability && promtool test rules alerts.test.yml)
cargo test -q -p ledgerctl --test observability
