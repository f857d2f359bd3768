#!/usr/bin/env bash
# Memory soak: the services as processes under an open-loop load for a while, with each
# process's resident set sampled every 30 s. Prints one line per sample and the bench's JSON.
# Usage: integration-tests/bench/soak.sh SAGACTL RATE SECONDS [more sagactl bench flags]
# e.g.   integration-tests/bench/soak.sh target/release/sagactl 300 600
set -euo pipefail
sagactl=${1:?usage: soak.sh SAGACTL RATE SECONDS [flags]}
rate=${2:?rate}
seconds=${3:?seconds}
shift 3
out=$(mktemp)
"$sagactl" bench --mode processes --rate "$rate" --duration "$seconds" --json "$@" >"$out" &
bench=$!
printf 'elapsed_s'
names="saga-registry saga-order saga-inventory saga-payment saga-orchestrator"
for n in $names; do printf ' %s_rss_mib' "${n#saga-}"; done
printf '\n'
start=$(date +%s)
while kill -0 "$bench" 2>/dev/null; do
  line="$(( $(date +%s) - start ))"
  for n in $names; do
    # The children of this bench only (a second run elsewhere does not count), by the binary
    # they run (process names are cut at 15 characters).
    rss=-
    for pid in $(pgrep -P "$bench" || true); do
      if [ "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" = "$n" ]; then
        rss=$(awk '/^VmRSS:/ {printf "%.1f", $2/1024}' "/proc/$pid/status" 2>/dev/null || echo -)
      fi
    done
    line="$line $rss"
  done
  echo "$line"
  for _ in $(seq 1 30); do kill -0 "$bench" 2>/dev/null || break; sleep 1; done
done
wait "$bench"
cat "$out"
rm -f "$out"
