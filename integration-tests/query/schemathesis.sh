#!/usr/bin/env bash
# Checks the query API against its own OpenAPI document with schemathesis (property-based: it
# generates requests from /openapi.json and checks every response against the document).
#
# Usage: integration-tests/query/schemathesis.sh SAGACTL_BINARY PYTHON_VENV_DIR
#
# Installs schemathesis into PYTHON_VENV_DIR when its `st` is missing (creating the venv if need
# be), starts `sagactl dev` with the query API on a free port, waits until it has placed its
# sample orders, runs schemathesis for a bounded time, and exits non-zero on any failure.
#
# Environment:
#   SCHEMATHESIS_VERSION      version to install when missing (default 4.32.5; empty: the latest)
#   SCHEMATHESIS_MAX_TIME     time budget of the run, seconds (default 45; requests under way
#                             when it is spent still finish, so a run may take some seconds more)
#   SCHEMATHESIS_WORKERS      concurrent workers (default 4: long polls spend their time waiting)
#   SCHEMATHESIS_REPORT_DIR   when set, JUnit and HAR reports are written there
#   SCHEMATHESIS_SEED         when set, replays that seed (printed at the end of every run)
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 SAGACTL_BINARY PYTHON_VENV_DIR" >&2
  exit 2
fi
sagactl=$1
venv=$2
max_time=${SCHEMATHESIS_MAX_TIME:-45}
workers=${SCHEMATHESIS_WORKERS:-4}
version=${SCHEMATHESIS_VERSION-4.32.5}
say() { printf 'schemathesis.sh: %s\n' "$*"; }

[ -x "$sagactl" ] || { say "not an executable: $sagactl"; exit 2; }

# -- schemathesis ------------------------------------------------------------------------------
if [ ! -x "$venv/bin/st" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the venv $venv"
    python3 -m venv "$venv"
  fi
  say "installing schemathesis${version:+==$version} into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "schemathesis${version:+==$version}"
fi
venv=$(cd "$venv" && pwd)
py="$venv/bin/python"
say "$("$venv/bin/st" --version)"

# -- sagactl dev -------------------------------------------------------------------------------
work=$(mktemp -d)
log="$work/sagactl.log"
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  [ -z "$pid" ] || wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$sagactl" dev --orders 35 --web "" --query "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
say "sagactl dev (pid $pid), query API at $base, log $log"

answers_200() {
  "$py" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

ready=no
deadline=$((SECONDS + 120))
while [ $SECONDS -lt $deadline ]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    tail -n 40 "$log" >&2 || true
    say "sagactl dev exited before it was ready"
    exit 1
  fi
  if grep -q '^summary:' "$log" && answers_200 "$base/openapi.json"; then
    ready=yes
    break
  fi
  sleep 0.5
done
if [ "$ready" != yes ]; then
  tail -n 40 "$log" >&2 || true
  say "sagactl dev was not ready within 120 s (GET /openapi.json answering 200 and a 'summary:' line)"
  exit 1
fi
say "ready: $(grep -m1 '^summary:' "$log")"

# -- schemathesis run --------------------------------------------------------------------------
# A long poll that ends unanswered is a documented 504 (BehindDto) on GET /orders/{id}: it is not a
# server error there. Everywhere else a 5xx is.
# Most `wait_ms` and `min_position` values are drawn from short waits and positions the model has
# already reached: a long poll holds a worker for up to 30 s (and `min_position` alone waits 5 s),
# which would leave the time budget to a few dozen requests. The rest are generated as usual.
cat >"$work/schemathesis.toml" <<'EOF'
[dictionaries.short-waits]
values = [0, 1, 20, 100]

[dictionaries.reached-positions]
values = ["saga.order.commands:0:0", "saga.order.events:1:0", "saga.payment.events:2:0"]

[parameters]
"query.wait_ms" = { dictionary = "short-waits", probability = 0.9 }
"query.min_position" = { dictionary = "reached-positions", probability = 0.8 }

[[operations]]
include-path = "/orders/{id}"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "504"]
EOF

# Not positive_data_acceptance: the document cannot say that `cursor` is an opaque token the API
# handed out, nor that `as_of` excludes `wait_ms`/`until_not`/`min_position`, so schema-valid
# requests that the server rightly refuses with 400 are bound to be generated.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance

# Long polls are honoured up to 30 s (MAX_WAIT_MS), so a request may take that long.
args=(
  --config-file "$work/schemathesis.toml"
  run "$base/openapi.json"
  --checks "$checks"
  --max-time "$max_time"
  --request-timeout 35
  --workers "$workers"
  --generation-database none
  --no-color
)
[ -z "${SCHEMATHESIS_SEED:-}" ] || args+=(--seed "$SCHEMATHESIS_SEED")
# The JSON report tells below whether every phase ran.
if [ -n "${SCHEMATHESIS_REPORT_DIR:-}" ]; then
  args+=(--report junit,har,json --report-dir "$SCHEMATHESIS_REPORT_DIR")
else
  args+=(--report json)
fi
args+=(--report-json-path "$work/report.json")

out="$work/schemathesis.out"
started=$SECONDS
set +e
# The schemathesis caches (.schemathesis, .hypothesis) go to the temporary directory.
(cd "$work" && timeout --kill-after=10 $((max_time + 120)) "$venv/bin/st" "${args[@]}") 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
elapsed=$((SECONDS - started))

if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  say "FAILED: schemathesis did not finish within $((max_time + 120)) s"
  exit 1
fi
# Its closing line, e.g. "==== 3 failures in 61.12s ====" or "==== No issues found in 45.10s ====".
verdict=$(grep -E '^=+ .* in [0-9.]+s =+$' "$out" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true)
cases=$(grep -E '^ *[0-9]+ generated' "$out" | tail -n 1 | sed -E 's/^ *//' || true)
if [ "$rc" -ne 0 ]; then
  grep -E -A3 'panicked| ERROR ' "$log" | tail -n 40 | sed 's/^/sagactl: /' >&2 || true
  say "FAILED (exit $rc): ${verdict:-no summary}; ${cases:-no test cases}; against $base in ${elapsed}s"
  exit 1
fi
# A run whose time budget went before fuzzing started tested next to nothing: that is a failure.
# Stateful testing comes last and may be cut short by long polls: that is only noted.
skipped=$("$py" - "$work/report.json" <<'EOF' || echo "fuzzing (no readable report)"
import json, sys
phases = json.load(open(sys.argv[1])).get("phases", {})
print(" ".join(name for name in ("fuzzing", "stateful") if (phases.get(name) or {}).get("status", "skip") == "skip"))
EOF
)
case " $skipped " in
  *" fuzzing "*)
    say "FAILED: no failures, but the time budget ran out before fuzzing ($skipped did not run); raise SCHEMATHESIS_MAX_TIME (now $max_time)"
    exit 1
    ;;
  *" stateful "*) say "note: stateful testing did not run within the time budget" ;;
esac
say "passed: ${verdict:-no issues}; ${cases:-no test cases}; in ${elapsed}s"
