#!/usr/bin/env bash
# Replication benchmark on a running local stack (`ledgerctl up`, three regions, release build):
#  1. `ledgerctl bench` at RATE transfers/s for DURATION s into the first region; then how long the
#     other regions take, after the load ends, to hold the same balances and vectors, and the
#     cross-region lag (stored here minus accepted at the origin) p50/p99 of the events made while
#     loaded.
#  2. Remote apply's sustained rate: replication into the second region is stopped during a load at
#     BACKLOG_RATE, then restarted; the backlog's events divided by the time it takes to catch up.
#  3. The write path's ceiling in the same run: `ledgerctl bench` offered CEILING_RATE.
#  4. The same RATE spread over every region at once (RATE / regions into each, DURATION s): how
#     long after the last bench returned every region holds the same balances and vectors.
# SECTIONS picks which run (default "1 2 3 4"). The cross-region lag of section 1 is reported
# overall and as the worst p99 of any 10 s window ("throughout" the run).
# Usage: scripts/bench-replication.sh [manifest]   (figures go to stdout and bench-*.json)
set -euo pipefail
cd "$(dirname "$0")/.."
MANIFEST=${1:-.devstack/env.json}
RATE=${RATE:-500}
DURATION=${DURATION:-20}
BACKLOG_RATE=${BACKLOG_RATE:-1500}
CEILING_RATE=${CEILING_RATE:-5000}
LEDGERCTL=${LEDGERCTL:-./target/release/ledgerctl}
OUT=${OUT:-bench-out}
SECTIONS=${SECTIONS:-1 2 3 4}
mkdir -p "$OUT"
runs() { [[ " $SECTIONS " == *" $1 "* ]]; }

regions=($(jq -r '.regions[].name' "$MANIFEST"))
pg() { jq -r --arg r "$1" '.regions[] | select(.name == $r) | .postgres_url' "$MANIFEST"; }
first=${regions[0]}
fingerprint() {
  psql -qtAX "$(pg "$1")" -c "SELECT md5(coalesce(string_agg(id || ':' || balance || ':' || version_vector::text, ',' ORDER BY id), '')) FROM accounts"
}
now() { date +%s.%N; }
# Waits until every region's accounts match the first region's; prints the seconds it took.
converge() {
  local start=$1 deadline=$(( $(date +%s) + ${2:-600} ))
  while :; do
    local want same=1
    want=$(fingerprint "$first")
    for r in "${regions[@]:1}"; do [ "$(fingerprint "$r")" = "$want" ] || same=0; done
    if [ $same = 1 ]; then echo "$(now) - $start" | bc; return; fi
    [ "$(date +%s)" -lt $deadline ] || { echo "did not converge"; return 1; }
    sleep 0.2
  done
}
events_from() { psql -qtAX "$(pg "$1")" -c "SELECT count(*) FROM ledger_events WHERE origin_region = '$first'"; }

if runs 1; then
echo "== 1. ${RATE}/s for ${DURATION}s into $first"
t0=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
"$LEDGERCTL" bench --manifest "$MANIFEST" --region "$first" --rate "$RATE" --duration-s "$DURATION" --warmup-s 0 \
  --accounts 1000 --out "$OUT/bench-$RATE.json" >/dev/null
end=$(now)
t1=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
jq -c '{throughput_per_s, errors, latency_ms, outbox_lag_ms}' "$OUT/bench-$RATE.json"
echo "other regions equal to $first after the bench returned: $(converge "$end") s"
for r in "${regions[@]:1}"; do
  psql -qtAX "$(pg "$r")" -c "WITH l AS (SELECT extract(epoch FROM stored_at - occurred_at) AS lag,
             floor(extract(epoch FROM occurred_at - '$t0'::timestamptz) / 10) AS w
           FROM ledger_events WHERE origin_region = '$first' AND occurred_at BETWEEN '$t0' AND '$t1'),
         windows AS (SELECT w, percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99 FROM l GROUP BY w)
    SELECT '$r lag ms p50/p99/max: ' || round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY lag))
      || ' / ' || round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)) || ' / ' || round(1000 * max(lag))
      || '; worst 10 s window p99: ' || (SELECT round(1000 * max(p99)) FROM windows)
      || ' (' || (SELECT count(*) FROM windows) || ' windows)'
    FROM l"
done
fi

if runs 2; then
echo "== 2. remote apply catching up a backlog in ${regions[1]}"
"$LEDGERCTL" stop replicator --region "${regions[1]}" >/dev/null
before=$(events_from "${regions[1]}")
"$LEDGERCTL" bench --manifest "$MANIFEST" --region "$first" --rate "$BACKLOG_RATE" --duration-s "$DURATION" \
  --warmup-s 0 --accounts 1000 --out "$OUT/bench-backlog.json" >/dev/null
# Anti-entropy repairs from the origin meanwhile (events older than its settle time): the backlog
# is what the region lacks when replication restarts.
backlog=$(( $(events_from "$first") - $(events_from "${regions[1]}") ))
start=$(now)
"$LEDGERCTL" start replicator --region "${regions[1]}" >/dev/null
took=$(converge "$start")
echo "backlog of $backlog events (of $(( $(events_from "$first") - before )) made while stopped) applied in $took s: $(echo "$backlog / $took" | bc) events/s"

fi

if runs 3; then
echo "== 3. write path ceiling: offered ${CEILING_RATE}/s"
"$LEDGERCTL" bench --manifest "$MANIFEST" --region "$first" --rate "$CEILING_RATE" --duration-s "$DURATION" \
  --warmup-s 0 --accounts 1000 --out "$OUT/bench-ceiling.json" >/dev/null
jq -c '{throughput_per_s, errors, latency_ms}' "$OUT/bench-ceiling.json"
echo "all regions equal after the ceiling run: $(converge "$(now)") s"
fi

if runs 4; then
share=$(( RATE / ${#regions[@]} ))
echo "== 4. ${share}/s into each of ${regions[*]} at once for ${DURATION}s"
pids=()
for r in "${regions[@]}"; do
  "$LEDGERCTL" bench --manifest "$MANIFEST" --region "$r" --rate "$share" --duration-s "$DURATION" --warmup-s 0 \
    --accounts 1000 --out "$OUT/bench-spread-$r.json" >/dev/null 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
end=$(now)
for r in "${regions[@]}"; do
  echo "$r: $(jq -c '{throughput_per_s, errors, p99_ms: .latency_ms.p99}' "$OUT/bench-spread-$r.json")"
done
echo "every region equal after the last bench returned: $(converge "$end") s"
fi