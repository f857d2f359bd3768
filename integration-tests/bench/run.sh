#!/usr/bin/env bash
# Runs `sagactl bench` at the points the plot and BENCHMARKS.md use, one JSON line per run.
# Usage: integration-tests/bench/run.sh SAGACTL OUT.jsonl
# Closed loop at 1, 4, 16, 64 and 256 in flight, then open loop at fixed rates. Run nothing else
# meanwhile, and run the peers (../shared/peers) right after, in the same session.
set -euo pipefail
sagactl=${1:?usage: run.sh SAGACTL OUT.jsonl}
out=${2:?usage: run.sh SAGACTL OUT.jsonl}
: >"$out"
for c in 1 4 16 64 256; do
  n=$(( c == 1 ? 1500 : c * 100 ))
  n=$(( n > 25000 ? 25000 : n ))
  "$sagactl" bench --sagas "$n" --concurrency "$c" --json | tee -a "$out"
done
for rate in 300 600 1200 1800; do
  "$sagactl" bench --rate "$rate" --duration 15 --json | tee -a "$out"
done
