#!/usr/bin/env bash
# Runs `sagactl dev` (in-process broker, embedded registry, SQLite) and the Python interop check
# against it. Usage: integration-tests/interop/run.sh PATH_TO_SAGACTL PYTHON
set -euo pipefail
sagactl=$1
python=${2:-python3}
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp)
"$sagactl" dev --orders 0 >"$log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 120); do
  grep -q "Publish your own orders" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; echo "interop: sagactl dev exited early"; exit 1; }
  sleep 0.5
done
bootstrap=$(sed -n 's/^  bootstrap servers: *//p' "$log" | head -1)
registry=$(sed -n 's/^  schema registry: *\([^ ]*\).*/\1/p' "$log" | head -1)
[ -n "$bootstrap" ] && [ -n "$registry" ] || { cat "$log"; echo "interop: could not read broker and registry from sagactl dev"; exit 1; }
echo "interop: sagactl dev at $bootstrap, registry $registry"
"$python" "$here/interop.py" --bootstrap "$bootstrap" --registry "$registry"
