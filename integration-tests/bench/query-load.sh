#!/usr/bin/env bash
# The query API under load while sagas run: `sagactl bench --query` in an open loop serves the
# query API on 127.0.0.1:9200; once it has 500 orders, wrk sends GET /orders/{id} for 20 s.
#
# Usage: integration-tests/bench/query-load.sh SAGACTL RATE DURATION_S [CONNECTIONS] [PACE_MS]
#   e.g. query-load.sh target/release/sagactl 1000 40 12 4     (about 2,000 GET/s)
#        query-load.sh target/release/sagactl 1000 40 8 0      (as fast as 8 connections go)
# Needs wrk (Debian package) and curl.
set -euo pipefail
sagactl=$1; rate=$2; duration=$3; conns=${4:-12}; export PACE_MS=${5:-4}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
export IDS="$work/ids.txt"
"$sagactl" bench --query --query-api 127.0.0.1:9200 --rate "$rate" --duration "$duration" > "$work/bench.txt" &
bench=$!
for _ in $(seq 1 120); do
  if curl -fs "http://127.0.0.1:9200/orders?limit=1000" > "$work/page.json" 2>/dev/null \
    && python3 -c "import json,sys; sys.exit(len(json.load(open('$work/page.json'))['orders']) < 500)"; then break; fi
  sleep 0.5
done
python3 -c "import json; [print(o['order_id']) for o in json.load(open('$work/page.json'))['orders']]" > "$IDS"
wrk -t2 -c"$conns" -d20s --latency -s "$here/query-paced.lua" http://127.0.0.1:9200 > "$work/wrk.txt"
wait "$bench"
cat "$work/bench.txt" "$work/wrk.txt"
