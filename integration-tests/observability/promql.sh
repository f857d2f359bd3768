#!/usr/bin/env bash
# Proves that every PromQL expression of the Grafana dashboard (deploy/grafana/dashboards/saga.json)
# and of the alert rules (deploy/prometheus/saga-alerts.yml) returns data from a real Prometheus.
#
# Usage: integration-tests/observability/promql.sh PATH_TO_SAGACTL [PYTHON]
#
# Starts `sagactl dev` (in-process broker, embedded registry, SQLite) with its saga view and the
# /metrics of every service on a free port, a Prometheus scraping that every second with the
# alert rules loaded, and load through the broker with confluent-kafka-python: orders that complete,
# orders that compensate (declined by payment, out of stock), duplicate deliveries and records that
# are not Avro (dead-lettered). Then promql_check.py (standard library only) asks Prometheus every
# expression and fails on any that returns no data. Needs `prometheus` on the PATH (Debian: the
# prometheus package) and a PYTHON with confluent-kafka[avro,schemaregistry] (default: the CI
# cache's venv, which .ci/run's interop step provides).
#
# The README's picture of the dashboard: with PROMQL_PICTURE=/path/to/out.png, the load runs for
# PROMQL_PICTURE_SECONDS (default 180) before the check's answers count, and once the check has
# passed, dashboard_picture.py draws the dashboard's main panels from Prometheus' data of the whole
# run into that PNG. It needs matplotlib, which only this step uses: from PROMQL_PLOT_PYTHON, by
# default a venv of its own (the CI cache's venv-plot), created with matplotlib if missing.
# PROMQL_PICTURE_DATA=/path/to/data.json keeps the query_range answers, to draw them again with
# `dashboard_picture.py --data data.json --out out.png` without another run. From the repository:
#   PROMQL_PICTURE=$PWD/integration-tests/observability/dashboard.png \
#     integration-tests/observability/promql.sh ~/.cache/saga-ci/target/debug/sagactl
set -euo pipefail
sagactl=$1
python=${2:-${SAGA_CI_CACHE:-$HOME/.cache/saga-ci}/venv/bin/python}
prometheus=${PROMETHEUS:-prometheus}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
say() { printf 'promql: %s\n' "$*"; }

[ -x "$sagactl" ] || { say "not an executable: $sagactl"; exit 2; }
command -v "$prometheus" >/dev/null || { say "FAIL: prometheus is needed (Debian/Ubuntu: apt-get install prometheus; or set PROMETHEUS)"; exit 1; }
"$python" -c "import confluent_kafka, fastavro" 2>/dev/null \
  || { say "FAIL: $python cannot import confluent_kafka and fastavro (pip install 'confluent-kafka[avro,schemaregistry]')"; exit 1; }

picture=${PROMQL_PICTURE:-}
if [ -n "$picture" ]; then
  case $picture in /*) ;; *) picture=$PWD/$picture ;; esac
  plot_python=${PROMQL_PLOT_PYTHON:-${SAGA_CI_CACHE:-$HOME/.cache/saga-ci}/venv-plot/bin/python}
  if ! "$plot_python" -c "import matplotlib" 2>/dev/null; then
    [ -z "${PROMQL_PLOT_PYTHON:-}" ] || { say "FAIL: $plot_python cannot import matplotlib"; exit 1; }
    venv=$(dirname "$(dirname "$plot_python")")
    say "picture: installing matplotlib into $venv"
    python3 -m venv "$venv" && "$venv/bin/pip" install --quiet matplotlib \
      || { say "FAIL: could not install matplotlib into $venv"; exit 1; }
  fi
fi

work=$(mktemp -d)
dev_pid= prom_pid= load_pid=
stop() { # pid, signal: the signal, then up to 10 s for the process to end, then KILL
  [ -n "$1" ] || return 0
  if kill -0 "$1" 2>/dev/null; then
    kill "-$2" "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$1" 2>/dev/null || true
  fi
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop "$load_pid" TERM
  stop "$prom_pid" TERM
  stop "$dev_pid" INT
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r web_port query_port prom_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

# -- sagactl dev -------------------------------------------------------------------------------
"$sagactl" dev --orders 0 --web "127.0.0.1:$web_port" --query "127.0.0.1:$query_port" --data-dir "$work/data" >"$work/sagactl.log" 2>&1 &
dev_pid=$!
for _ in $(seq 1 120); do
  grep -q "Publish your own orders" "$work/sagactl.log" && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$work/sagactl.log"; say "sagactl dev exited early"; exit 1; }
  sleep 0.5
done
bootstrap=$(sed -n 's/^  bootstrap servers: *//p' "$work/sagactl.log" | head -1)
registry=$(sed -n 's/^  schema registry: *\([^ ]*\).*/\1/p' "$work/sagactl.log" | head -1)
[ -n "$bootstrap" ] && [ -n "$registry" ] || { cat "$work/sagactl.log"; say "could not read broker and registry from sagactl dev"; exit 1; }
say "sagactl dev at $bootstrap, registry $registry, metrics at http://127.0.0.1:$web_port/metrics"

# -- Prometheus --------------------------------------------------------------------------------
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $root/deploy/prometheus/saga-alerts.yml
scrape_configs:
  - job_name: saga
    static_configs:
      - targets: ["127.0.0.1:$web_port"]
EOF
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
prom_pid=$!
ready=no
for _ in $(seq 1 60); do
  kill -0 "$prom_pid" 2>/dev/null || break
  python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "http://127.0.0.1:$prom_port/-/ready" 2>/dev/null && { ready=yes; break; }
  sleep 0.5
done
if [ "$ready" != yes ]; then
  # A rule file Prometheus cannot load stops it: its error lines say why.
  grep 'level=error' "$work/prometheus.log" || tail -n 40 "$work/prometheus.log"
  say "FAIL: prometheus did not become ready on 127.0.0.1:$prom_port (log above)"
  exit 1
fi
say "$("$prometheus" --version 2>&1 | head -1) at http://127.0.0.1:$prom_port, scraping every 1 s"
# The first scrape before the first load: a counter whose first sample is already past 0 shows no
# increase (the one record that is not Avro on the inventory commands topic, sent first, would not).
for _ in $(seq 1 20); do
  python3 -c '
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": "up{job=\"saga\"} == 1"})
sys.exit(0 if json.load(urllib.request.urlopen(url, timeout=1))["data"]["result"] else 1)' "http://127.0.0.1:$prom_port" 2>/dev/null && break
  sleep 0.5
done

# -- load --------------------------------------------------------------------------------------
# Four orders a second in sample.rs' mix (5 in 7 complete; 1 runs out of stock; 1 is declined by
# payment, which compensates the stock reservation); every 10 s a duplicate delivery of an order
# (the order service's inbox skips it) and a record that is not Avro on the order commands topic
# (dead-lettered). One more such record on the inventory commands topic, once only.
load_started=$(date +%s)
"$python" - "$bootstrap" "$registry" "$root" >"$work/load.log" 2>&1 <<'PY' &
import itertools, pathlib, sys, time, uuid

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, registry, root = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
commands = "saga.order.commands"
schema = (root / "schemas/released/saga.order.PlaceOrder/v1.avsc").read_text()
serialize = AvroSerializer(SchemaRegistryClient({"url": registry}), schema,
                           conf={"auto.register.schemas": True, "subject.name.strategy": record_subject_name_strategy})
producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
run = uuid.uuid4().hex[:8]


def place_order(i):
    kind = {5: "out-of-stock", 6: "declined"}.get(i % 7, "ok")
    customer, lines = {
        "ok": ("alice", [("WIDGET-1", 1 + i % 3, 1250), ("GADGET-2", 1, 4999)]),
        "out-of-stock": ("carol", [("WIDGET-1", 1, 1250), ("RARE-GEM", 1000, 100000)]),
        "declined": ("bob", [("GADGET-2", 2, 4999)]),
    }[kind]
    order_id = f"promql-{run}-{i:06}"
    value = {
        "envelope": {"message_id": f"place-{order_id}", "message_type": "saga.order.PlaceOrder", "saga_id": None,
                     "correlation_id": order_id, "causation_id": None, "occurred_at_ms": int(time.time() * 1000)},
        "order_id": order_id, "customer_id": customer, "currency": "EUR",
        "lines": [{"sku": s, "quantity": q, "unit_price_minor": p, "currency": "EUR"} for s, q, p in lines],
    }
    return order_id.encode(), serialize(value, SerializationContext(commands, MessageField.VALUE))


def send(topic, key, value):
    producer.produce(topic, key=key, value=value)
    if producer.flush(30) != 0:
        sys.exit(f"load: a record to {topic} was not delivered")


send("saga.inventory.commands", b"promql-poison", b"this is not Avro")
print("load: a record that is not Avro on saga.inventory.commands", flush=True)
last = time.monotonic() - 10
for i in itertools.count():
    key, value = place_order(i)
    send(commands, key, value)
    if time.monotonic() - last >= 10:
        last = time.monotonic()
        send(commands, key, value)
        send(commands, f"promql-poison-{i}".encode(), b"this is not Avro either")
        print(f"load: {i + 1} orders; a duplicate of {key.decode()} and a record that is not Avro on {commands}", flush=True)
    time.sleep(0.25)
PY
load_pid=$!
say "load: orders, duplicates and poison records through $bootstrap (pid $load_pid)"
sleep 2
kill -0 "$load_pid" 2>/dev/null || { cat "$work/load.log"; say "the load generator exited early"; exit 1; }

# -- the check ---------------------------------------------------------------------------------
set +e
python3 "$here/promql_check.py" --prometheus "http://127.0.0.1:$prom_port" --timeout "${PROMQL_TIMEOUT:-60}" ${PROMQL_VERBOSE:+--verbose} \
  ${picture:+--settle "${PROMQL_PICTURE_SECONDS:-180}"}
rc=$?
set -e
cat "$work/load.log"
if [ "$rc" -ne 0 ]; then
  kill -0 "$load_pid" 2>/dev/null || say "the load generator had exited (log above)"
  grep -E 'panicked| ERROR ' "$work/sagactl.log" | tail -n 20 | sed 's/^/sagactl: /' || true
  grep -E 'level=(error|warn)' "$work/prometheus.log" | tail -n 20 | sed 's/^/prometheus: /' || true
  exit "$rc"
fi

# -- the picture -------------------------------------------------------------------------------
if [ -n "$picture" ]; then
  "$plot_python" "$here/dashboard_picture.py" --prometheus "http://127.0.0.1:$prom_port" \
    --start "$load_started" --out "$picture" ${PROMQL_PICTURE_DATA:+--data "$PROMQL_PICTURE_DATA"} \
    --note "Load: 4 orders a second into the order service (5 in 7 complete; 1 in 7 runs out of stock, 1 in 7 is declined by payment: both compensate); every 10 s a duplicate delivery and a record that is not Avro (dead-lettered)."
fi
