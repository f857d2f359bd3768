"""Every PromQL expression of the Grafana dashboard and the alert rules, asked of a real Prometheus.

    python3 promql_check.py --prometheus http://127.0.0.1:9090 [--timeout 60]

Run by promql.sh, which starts `sagactl dev`, a Prometheus scraping it and load that makes the
metrics exist. Standard library only.

Extracts
  * from deploy/grafana/dashboards/saga.json: every panel target's `expr`, with the dashboard's
    variables as Grafana sends them for "All" ($saga_type, $service: their allValue ".*") and its
    built-ins ($__rate_interval: 1m, Grafana's floor for the data source's 15 s scrape interval;
    $__range: the dashboard's default time range, 1h); and every query variable's
    `label_values(metric, label)`, asked as /api/v1/label/<label>/values?match[]=<metric>;
  * from deploy/prometheus/saga-alerts.yml: every rule's `expr`, with a top-level threshold
    comparison removed (`sum (...) > 0` is checked as `sum (...)`: a healthy system does not
    fire, but the left-hand side must return series, or the alert could never fire);
and queries each through /api/v1/query until it returns data or the time is up. Also checks that
Prometheus loaded every rule of the file and evaluates it without error.

Exits 1 listing every expression that returned no data, and prints one summary line:
    promql: N expressions return data, M without
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/saga.json"
ALERTS = ROOT / "deploy/prometheus/saga-alerts.yml"

# Grafana's built-in variables, as a Grafana in front of the compose Prometheus would fill them in.
# $__rate_interval is max($__interval + scrape interval, 4 x scrape interval): with the data
# source's timeInterval of 15 s (deploy/grafana/provisioning/datasources) it is never under 1m.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s"}

# Expressions that may return no data, each with the reason it cannot be made to (by expression
# identifier, as printed). Empty: every expression returns data under promql.sh's load.
ALLOWED_EMPTY: dict[str, str] = {}


@dataclass
class Expr:
    ident: str  # where it comes from, e.g. 'dashboard panel 2 "Started / s"' or 'alert SagaStuck'
    query: str  # the PromQL sent, or the metric for a label_values variable
    label: str | None = None  # for label_values(metric, label)
    result: str = ""  # what came back, for the report
    series: list[str] = field(default_factory=list)  # every series and value, for --verbose
    ok: bool = False
    only_zero: bool = False  # every value 0 or NaN (data, but nothing happened yet)
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

def grafana_range(dash: dict) -> str:
    """$__range for the dashboard's default time range (`now-1h` to `now`: 1h)."""
    t = dash.get("time", {})
    m = re.fullmatch(r"now-(\d+[smhdwy])", t.get("from", ""))
    if t.get("to", "now") != "now" or not m:
        raise SystemExit(f"promql: {DASHBOARD}: cannot derive $__range from the time range {t}")
    return m.group(1)


def substitute(expr: str, values: dict[str, str], ident: str) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise SystemExit(f"promql: {ident}: uses ${name}, for which this check has no value")
        return values[name]

    # $name, ${name} and ${name:format}
    return re.sub(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)", one, expr)


def dashboard_variables(dash: dict) -> tuple[dict[str, str], list[Expr]]:
    """The value of every variable the dashboard's expressions may use (builtins, and "All" for its
    query variables), and an Expr for each query variable's label_values(metric, label)."""
    values = dict(BUILTINS, __range=grafana_range(dash))
    out: list[Expr] = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "datasource":
            continue
        if v.get("type") != "query":
            raise SystemExit(f"promql: dashboard variable {v.get('name')}: type {v.get('type')} is not handled by this check")
        # "All" is what the dashboard opens with (includeAll); Grafana then sends allValue.
        values[v["name"]] = v.get("allValue") or ".*"
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_]\w*)\s*\)\s*", q or "")
        if not m:
            raise SystemExit(f"promql: dashboard variable {v['name']}: only label_values(metric, label) is handled, not {q!r}")
        out.append(Expr(f"dashboard variable ${v['name']}", m.group(1), label=m.group(2)))
    return values, out


def dashboard_panels(dash: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels += p.get("panels", [])
    return panels


def dashboard_exprs(path: Path = DASHBOARD) -> list[Expr]:
    dash = json.loads(path.read_text())
    values, out = dashboard_variables(dash)
    for p in dashboard_panels(dash):
        for t in p.get("targets", []):
            ident = f"dashboard panel {p.get('id')} {json.dumps(p.get('title'))} query {t.get('refId', '?')}"
            out.append(Expr(ident, substitute(t.get("expr", ""), values, ident)))
    return out


def alert_rules(path: Path = ALERTS) -> list[tuple[str, str]]:
    """(name, expr) of every rule, read line by line (the file is plain YAML: `- alert: X` and
    `expr:` as a plain, quoted or block scalar). promql.sh has Prometheus load the same file, and
    main() checks that it holds the same rule names."""
    lines = path.read_text().splitlines()
    rules: list[tuple[str, str]] = []
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-\s+(alert|record):\s*(\S+)\s*$", line)
        if m:
            name = m.group(2).strip("'\"")
        m = re.match(r"(\s*)(?:-\s+)?expr:\s*(.*)$", line)
        if m:
            if name is None:
                raise SystemExit(f"promql: {path}:{i + 1}: expr before any alert or record name")
            indent, value = len(m.group(1)), m.group(2)
            parts = [] if value in ("|", ">", "|-", ">-", "|+", ">+") else [value]
            # Continuation lines (block scalars, folded plain scalars) are indented further.
            while i + 1 < len(lines) and (not lines[i + 1].strip() or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent):
                i += 1
                if not lines[i].lstrip().startswith("#"):
                    parts.append(lines[i].strip())
            expr = " ".join(p for p in parts if p)
            if len(expr) >= 2 and expr[0] == expr[-1] and expr[0] in "'\"":
                expr = expr[1:-1].replace("''", "'") if expr[0] == "'" else json.loads(expr)
            rules.append((name, expr))
            name = None
        i += 1
    return rules


COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def without_threshold(expr: str) -> str:
    """`lhs > 5` -> `lhs`: the expression up to its first comparison outside brackets and strings
    (a comparison nested inside the expression stays)."""
    depth, i = 0, 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            end = i + 1
            while end < len(expr) and expr[end] != c:
                end += 2 if expr[end] == "\\" else 1
            i = end + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            for op in COMPARISONS:
                if expr.startswith(op, i) and not expr.startswith("=~", i) and not expr.startswith("!~", i):
                    return expr[:i].strip()
        i += 1
    return expr.strip()


def alert_exprs(path: Path = ALERTS) -> list[Expr]:
    out = []
    for name, expr in alert_rules(path):
        lhs = without_threshold(expr)
        ident = f"alert {name}" + (" (left of its threshold)" if lhs != expr.strip() else "")
        out.append(Expr(ident, lhs))
    return out


# ---------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------

class Prometheus:
    def __init__(self, base: str):
        self.base = base.rstrip("/")

    def get(self, path: str, params: list[tuple[str, str]]) -> dict:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            # 400/422: the query itself is wrong; the body says why.
            try:
                body = json.load(e)
            except Exception:
                body = {"status": "error", "error": f"HTTP {e.code}"}
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error')}")
        return body["data"]


class QueryError(Exception):
    pass


def fmt_value(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return "NaN" if math.isnan(f) else f"{f:.4g}"


def ask(prom: Prometheus, e: Expr) -> None:
    e.ok, e.only_zero, e.series, e.errors = False, False, [], []
    try:
        if e.label is not None:
            data = prom.get(f"/api/v1/label/{e.label}/values", [("match[]", e.query), ("start", str(time.time() - 3600))])
            e.ok, e.result = bool(data), ", ".join(data) if data else "no values"
            return
        data = prom.get("/api/v1/query", [("query", e.query)])
    except QueryError as err:
        e.ok, e.result = False, f"query error: {err}"
        e.errors = [str(err)]
        return
    except (urllib.error.URLError, OSError) as err:
        e.ok, e.result = False, f"Prometheus did not answer: {err}"
        return
    result = data.get("result", [])
    if data.get("resultType") == "scalar":
        e.ok, e.result = True, f"scalar {fmt_value(result[1])}"
    elif not result:
        e.ok, e.result = False, "empty result"
    else:
        # An instant vector: [{"metric": {...}, "value": [time, "1.5"]}, ...]
        values = [float(r["value"][1]) for r in result]
        nan = sum(1 for v in values if math.isnan(v))
        e.ok = True
        e.only_zero = all(v == 0 or math.isnan(v) for v in values)
        e.series = [f"{{{', '.join(f'{k}={v}' for k, v in sorted(r['metric'].items()))}}} {fmt_value(r['value'][1])}" for r in result]
        e.result = f"{len(result)} series, e.g. {fmt_value(result[0]['value'][1])}" + (f" ({nan} NaN)" if nan else "")


def rule_health(prom: Prometheus, names: list[str]) -> list[str]:
    """Problems with the rules Prometheus loaded: a rule of the file missing, or not evaluating."""
    groups = prom.get("/api/v1/rules", [])["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    problems = []
    for n in names:
        r = loaded.get(n)
        if r is None:
            problems.append(f"rule {n}: not loaded by Prometheus")
        elif r.get("health") != "ok":
            problems.append(f"rule {n}: health {r.get('health')} {r.get('lastError', '')}".rstrip())
    for n in sorted(set(loaded) - set(names)):
        problems.append(f"rule {n}: loaded by Prometheus, but not found in {ALERTS.relative_to(ROOT)} by this check")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for every expression to return data")
    parser.add_argument("--settle", type=float, default=25,
                        help="seconds of load to ask through at least, so that rates and increases see it (default 25)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every series each expression returns")
    args = parser.parse_args()
    prom = Prometheus(args.prometheus)

    exprs = dashboard_exprs() + alert_exprs()
    names = [n for n, _ in alert_rules()]
    unknown = set(ALLOWED_EMPTY) - {e.ident for e in exprs}
    if unknown:
        print(f"promql: ALLOWED_EMPTY names expressions that do not exist: {sorted(unknown)}")
        return 1
    print(f"promql: {len(exprs)} expressions ({sum(e.ident.startswith('dashboard') for e in exprs)} from the dashboard, "
          f"{sum(e.ident.startswith('alert') for e in exprs)} from the alert rules); asking for {args.settle:.0f} s of load at least, "
          f"up to {max(args.timeout, args.settle):.0f} s for data", flush=True)

    started = time.monotonic()
    deadline = started + max(args.timeout, args.settle)
    health: list[str] = ["not asked yet"]
    while True:
        # Every round asks every expression afresh: the report shows the last answers.
        for e in exprs:
            ask(prom, e)
        try:
            health = rule_health(prom, names)
        except (QueryError, urllib.error.URLError, OSError) as err:
            health = [f"/api/v1/rules: {err}"]
        pending = [e for e in exprs if not e.ok and e.ident not in ALLOWED_EMPTY]
        done = not pending and not health and time.monotonic() - started >= args.settle
        # A query error (the expression is wrong) will not mend itself by waiting.
        hopeless = bool(pending) and all(e.errors for e in pending)
        if done or hopeless or time.monotonic() >= deadline:
            break
        time.sleep(2)

    for e in exprs:
        status = "ok   " if e.ok else ("allow" if e.ident in ALLOWED_EMPTY else "EMPTY")
        print(f"{status} {e.ident}: {e.result}")
        print(f"        {e.query}" + (f"  (label {e.label})" if e.label else ""))
        if args.verbose:
            for line in e.series:
                print(f"          {line}")
        if not e.ok and e.ident in ALLOWED_EMPTY:
            print(f"        allowed empty: {ALLOWED_EMPTY[e.ident]}")

    # What the alerts make of it (information: a healthy run may well fire SagaDeadLetters).
    try:
        alerts = prom.get("/api/v1/alerts", [])["alerts"]
        for a in sorted(alerts, key=lambda a: (a["labels"].get("alertname", ""), sorted(a["labels"].items()))):
            labels = ", ".join(f"{k}={v}" for k, v in sorted(a["labels"].items()) if k not in ("alertname", "severity"))
            print(f"note: alert {a['labels'].get('alertname')} {a['state']} ({labels})")
    except (QueryError, urllib.error.URLError, OSError) as err:
        print(f"note: /api/v1/alerts: {err}")

    for e in exprs:
        if e.ok and e.only_zero:
            print(f"note: {e.ident} returns only 0 or NaN so far")
    failed = [e for e in exprs if not e.ok and e.ident not in ALLOWED_EMPTY]
    allowed = [e for e in exprs if not e.ok and e.ident in ALLOWED_EMPTY]
    for p in health:
        print(f"FAIL: {p}")
    for e in failed:
        print(f"FAIL: {e.ident} returns no data ({e.result}): {e.query}")
    with_data = sum(e.ok for e in exprs)
    print(f"promql: {with_data} expressions return data, {len(failed)} without"
          + (f", {len(allowed)} allowed empty (see above)" if allowed else "")
          + f"; {len(names) - len([p for p in health if p.startswith('rule ')])} of {len(names)} alert rules loaded and evaluating")
    return 1 if failed or health else 0


if __name__ == "__main__":
    sys.exit(main())
