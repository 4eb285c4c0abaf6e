#!/usr/bin/env bash
# Where a transfer's CPU goes, on a running local stack (release build, `ledgerctl up`):
#  1. every process's CPU over a `ledgerctl bench` run at RATE/s for DURATION s into the first
#     region (utime+stime from /proc, PostgreSQL's backends split by application_name: the node's
#     committer, the rest of the node, everything else), as microseconds per transfer;
#  2. the node's own CPU by component, from `perf record` samples of the node during the same run,
#     each sample's symbol put in a bucket by its crate (HTTP, JSON, PostgreSQL client, Kafka
#     client, runtime, allocator, telemetry, ledger logic, kernel), with the committer's thread
#     apart.
# Release binaries carry no frame pointers, so these are self-time buckets (where the CPU is
# spent), not call trees. Usage: scripts/profile-transfer.sh [manifest]
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST=${1:-.devstack/env.json}
RATE=${RATE:-1000}
DURATION=${DURATION:-30}
FREQ=${FREQ:-499}
LEDGERCTL=${LEDGERCTL:-./target/release/ledgerctl}
OUT=${OUT:-bench-out/profile}
mkdir -p "$OUT"
# Everything printed is also kept beside the data.
exec > >(tee "$OUT/profile.txt")
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }

region=$(jq -r '.regions[0].name' "$MANIFEST")
pid_of() { jq -r --arg c "$1" '.regions[0].pids[$c] // empty' "$MANIFEST"; }
node=$(pid_of node)
postmaster=$(pid_of postgres)
kafka=$(pid_of kafka)
pg_url=$(jq -r '.regions[0].postgres_url' "$MANIFEST")
hz=$(getconf CLK_TCK)

# utime+stime (+ children that exited, for the postmaster's) of one pid, in clock ticks.
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# PostgreSQL's processes by role: the committer's backends, the node's other backends, and the
# rest (background writers, WAL, other clients); one "role pid ticks" line each.
pg_processes() {
  local names
  names=$(psql -qtAX "$pg_url" -c "SELECT pid || ' ' || CASE application_name
      WHEN 'region-node committer' THEN 'pg:committer' WHEN 'region-node' THEN 'pg:node-pool' ELSE 'pg:other' END
      FROM pg_stat_activity")
  for child in $(pgrep -P "$postmaster"); do
    role=$(awk -v p="$child" '$1 == p {print $2}' <<<"$names")
    echo "${role:-pg:other} $child $(ticks "$child")"
  done
  # The postmaster's children that ended (autovacuum workers, mostly) count in its cutime/cstime.
  echo "pg:autovacuum+postmaster $postmaster $(ticks "$postmaster")"
}

snapshot() {
  echo "node $node $(ticks "$node")"
  echo "kafka $kafka $(ticks "$kafka")"
  pg_processes
}

# The bench opens and funds its accounts first; CPU is counted from its "opened and funded" line,
# when the measured load starts, to its exit.
"$LEDGERCTL" bench --manifest "$MANIFEST" --region "$region" --rate "$RATE" --duration-s "$DURATION" --warmup-s 0 \
  --accounts 1000 --out "$OUT/bench.json" >"$OUT/bench.txt" 2>"$OUT/bench.log" &
bench=$!
until grep -q "opened and funded" "$OUT/bench.log"; do
  kill -0 "$bench" 2>/dev/null || { cat "$OUT/bench.log" >&2; exit 1; }
  sleep 0.05
done
before=$(snapshot)
generator_before=$(ticks "$bench")
perf record -q -F "$FREQ" -p "$node" -o "$OUT/node.perf.data" -- sleep "$DURATION" 2>/dev/null &
perf_pid=$!
# The generator's own CPU, sampled just before it exits (a waited-for child's /proc entry is gone).
generator=0
while kill -0 "$bench" 2>/dev/null; do
  t=$(ticks "$bench")
  [ "$t" = 0 ] || generator=$t
  sleep 0.2
done
wait "$bench"
wait "$perf_pid" || true
after=$(snapshot)
transfers=$(jq '.ok' "$OUT/bench.json")

echo "== CPU per transfer: $transfers transfers at ${RATE}/s for ${DURATION}s into $region"
# Processes present at both snapshots count their difference; a backend that ended in between
# shows up in the postmaster's children's time.
join -j 2 <(awk '{print $1, $1 "/" $2, $3}' <<<"$before" | sort -k2,2) \
          <(awk '{print $1, $1 "/" $2, $3}' <<<"$after" | sort -k2,2) |
  awk -v hz="$hz" -v n="$transfers" '{role = $2; d[role] += $5 - $3}
    END {for (r in d) {total += d[r]}
         for (r in d) printf "  %-22s %7.1f µs/transfer  %5.1f%%\n", r, d[r] / hz / n * 1e6, 100 * d[r] / total
         printf "  %-22s %7.1f µs/transfer\n", "total", total / hz / n * 1e6}' | sort -k2 -rn
echo "  (load generator, not in the total: about $(( (generator - generator_before) * 1000000 / hz / transfers )) µs/transfer)"

echo "== the node's CPU by component (perf samples, self time)"
perf report -q -i "$OUT/node.perf.data" --no-children --sort comm,sym --stdio -F overhead,comm,sym 2>/dev/null |
  awk '
    function bucket(s) {
      if (s ~ /\[k\]/) return "kernel (syscalls, network, scheduling)"
      if (s ~ /hyper|axum|http::|httparse|tower|h2::/) return "HTTP (hyper, axum)"
      if (s ~ /serde_json|serde::|ryu|itoa/) return "JSON (serde_json)"
      if (s ~ /sqlx/) return "PostgreSQL client (sqlx)"
      if (s ~ /rdkafka|rd_kafka|rd_|lz4|zstd|crc32c/) return "Kafka client (librdkafka)"
      if (s ~ /malloc|free|realloc|calloc|_int_|memcpy|memmove|memset|alloc::/) return "allocator and copies"
      if (s ~ /tracing|opentelemetry|metrics|prometheus/) return "telemetry (tracing, metrics)"
      if (s ~ /tokio|parking_lot|crossbeam|futures|pthread|__lll|syscall/) return "async runtime, locks"
      if (s ~ /sha2|hmac|ring::|blake|argon|Sha256|sha256/) return "hashing (idempotency, sessions)"
      if (s ~ /region_node|ledger_core|ledger_schema|crdts|uuid|chrono/) return "ledger logic (planning, vectors)"
      return "other"
    }
    {
      pct = $1; sub(/%/, "", pct); comm = $2
      sym = ""; for (i = 3; i <= NF; i++) sym = sym " " $i
      where = (comm == "committer") ? "committer thread: " : ""
      b[where bucket(sym)] += pct; total += pct
    }
    END {for (k in b) printf "  %5.1f%%  %s\n", b[k], k}' | sort -rn
echo "perf data: $OUT/node.perf.data (perf report -i $OUT/node.perf.data)"
