"""Checks of the observability configuration: the Grafana dashboard and provisioning, the alert
rules, the compose Prometheus scrape configuration and the OpenTelemetry collector pipeline.
Every PromQL expression may use only the metrics and labels of deploy/config/metrics.txt.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse

import yaml

from common import ROOT, Metric, Report, promql_problems

DASHBOARD = ROOT / "deploy/grafana/dashboards/saga.json"
ALERTS = ROOT / "deploy/prometheus/saga-alerts.yml"
ALERT_TESTS = ROOT / "deploy/prometheus/saga-alerts.test.yml"
PROMETHEUS = ROOT / "deploy/compose/prometheus.yml"
COLLECTOR = ROOT / "deploy/compose/otel-collector.yaml"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/datasources.yaml"
PROVIDERS = ROOT / "deploy/grafana/provisioning/dashboards/saga.yaml"
# What the dashboard exists to show (the list), as metrics it must query.
REQUIRED_ON_DASHBOARD = {
    "saga_sagas_started_total", "saga_sagas_finished_total", "saga_duration_seconds", "saga_step_duration_seconds",
    "saga_consumer_lag", "saga_records_dead_lettered_total", "saga_sagas_in_state", "saga_outbox_backlog",
    "saga_outbox_oldest_age_seconds",
}


def check_dashboard(report: Report, metrics: dict[str, Metric]) -> None:
    where = "deploy/grafana/dashboards/saga.json"
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        report.fail(f"{where}: not JSON: {e}")
        return
    report.check(bool(dash.get("uid")) and bool(dash.get("title")), f"{where}: needs uid and title")
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = [v for v in variables.values() if v.get("type") == "datasource"]
    report.check(len(ds) == 1 and ds[0].get("query") == "prometheus",
                 f"{where}: needs one data source variable of type prometheus (the dashboard must not hard-code a data source)")
    ds_refs = {f"${{{v['name']}}}" for v in ds} | {f"${v['name']}" for v in ds}
    used: set[str] = set()
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    queries = 0

    def expr_check(ctx: str, expr: str) -> None:
        nonlocal queries
        queries += 1
        problems, in_expr = promql_problems(expr, metrics)
        used.update(in_expr)
        for p in problems:
            report.fail(f"{where}: {ctx}: {p}")
        report.check(bool(in_expr), f"{where}: {ctx}: queries no saga_* metric: {expr}")
        for var in re.findall(r"\$\{?([a-zA-Z_]\w*)", expr):
            report.check(var.startswith("__") or var in variables, f"{where}: {ctx}: uses ${var}, which is not a dashboard variable")

    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            expr_check(f"variable {name}", q)
            report.check(v.get("datasource", {}).get("uid") in ds_refs, f"{where}: variable {name} must use the data source variable")
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels += p.get("panels", [])
    for p in panels:
        ctx = f"panel {p.get('id')} {p.get('title')!r}"
        report.check(p.get("id") not in ids, f"{where}: {ctx}: duplicate panel id")
        ids.add(p.get("id"))
        g = p.get("gridPos", {})
        mine = {(x, y) for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0))
                for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0))}
        report.check(bool(mine) and not (mine & cells), f"{where}: {ctx} has no size or overlaps another panel")
        cells |= mine
        report.check(g.get("x", 0) + g.get("w", 0) <= 24, f"{where}: {ctx} is wider than the 24-column grid")
        if p.get("type") == "row":
            continue
        report.check(p.get("datasource", {}).get("uid") in ds_refs, f"{where}: {ctx}: data source must be the variable, not a fixed uid")
        targets = p.get("targets", [])
        report.check(bool(targets), f"{where}: {ctx}: no queries")
        for t in targets:
            report.check(t.get("datasource", {}).get("uid", next(iter(ds_refs))) in ds_refs, f"{where}: {ctx}: query data source must be the variable")
            expr_check(ctx, t.get("expr", ""))
    missing = REQUIRED_ON_DASHBOARD - used
    report.check(not missing, f"{where}: does not show {sorted(missing)}")
    report.check(any("histogram_quantile" in t.get("expr", "") and "saga_duration_seconds_bucket" in t.get("expr", "")
                     for p in panels for t in p.get("targets", [])), f"{where}: needs saga latency percentiles (histogram_quantile)")
    report.count("dashboard panels", len([p for p in panels if p.get("type") != "row"]))
    report.count("dashboard queries", queries)


def check_alerts(report: Report, metrics: dict[str, Metric]) -> None:
    where = "deploy/prometheus/saga-alerts.yml"
    doc = yaml.safe_load(ALERTS.read_text())
    names = set()
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            report.check(name not in names, f"{where}: rule {name} defined twice")
            names.add(name)
            problems, used = promql_problems(rule.get("expr", ""), metrics)
            for p in problems:
                report.fail(f"{where}: {name}: {p}")
            report.check(bool(used), f"{where}: {name}: queries no saga_* metric")
            if "alert" in rule:
                report.check(rule.get("labels", {}).get("severity") in ("critical", "warning", "info"),
                             f"{where}: {name}: labels.severity must be critical, warning or info")
                report.check("summary" in rule.get("annotations", {}), f"{where}: {name}: needs a summary annotation")
                for label in re.findall(r"\$labels\.(\w+)", json.dumps(rule.get("annotations", {}))):
                    grouped = re.findall(r"\b(?:by)\s*\(([^)]*)\)", rule["expr"])
                    kept = {x.strip() for g in grouped for x in g.split(",")}
                    report.check(label in kept, f"{where}: {name}: annotation uses $labels.{label}, which the expression aggregates away")
    report.count("alert rules", len(names))
    check_alert_tests(report, {r["alert"] for g in doc.get("groups", []) for r in g.get("rules", []) if "alert" in r})


def check_alert_tests(report: Report, alerts: set[str]) -> None:
    """promtool runs the unit tests (deploy/validate.sh); this checks that they cover every alert:
    a case where it fires and one where it stays silent."""
    where = "deploy/prometheus/saga-alerts.test.yml"
    if not report.check(ALERT_TESTS.exists(), f"{where}: missing (unit tests of the alert rules)"):
        return
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    report.check(doc.get("rule_files") == ["saga-alerts.yml"], f"{where}: rule_files must be [saga-alerts.yml]")
    fires: set[str] = set()
    silent: set[str] = set()
    for test in doc.get("tests", []):
        for case in test.get("alert_rule_test", []):
            name = case.get("alertname")
            report.check(name in alerts, f"{where}: test {test.get('name')!r} names alert {name!r}, which saga-alerts.yml does not define")
            (fires if case.get("exp_alerts") else silent).add(name)
    for name in sorted(alerts):
        report.check(name in fires, f"{where}: no test case in which {name} fires")
        report.check(name in silent, f"{where}: no test case in which {name} stays silent")


def check_prometheus(report: Report, compose: dict) -> None:
    where = "deploy/compose/prometheus.yml"
    doc = yaml.safe_load(PROMETHEUS.read_text())
    services = compose.get("services", {})
    targets = {t for job in doc.get("scrape_configs", []) for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
    for name, svc in services.items():
        bind = (svc.get("environment") or {}).get("SAGA_HTTP__BIND") if isinstance(svc.get("environment"), dict) else None
        if bind:
            port = bind.rsplit(":", 1)[-1]
            report.check(f"{name}:{port}" in targets, f"{where}: does not scrape compose service {name} at {name}:{port}")
    for t in targets:
        host = t.split(":", 1)[0]
        report.check(host in services or host == "localhost", f"{where}: target {t} is not a compose service")
    mounted = [v for v in services.get("prometheus", {}).get("volumes", []) if "saga-alerts.yml" in str(v)]
    report.check(bool(mounted) and any(rf.startswith("/etc/prometheus/rules/") for rf in doc.get("rule_files", [])),
                 f"{where}: the alert rules must be mounted and listed in rule_files")


def check_collector(report: Report, compose: dict) -> None:
    where = "deploy/compose/otel-collector.yaml"
    doc = yaml.safe_load(COLLECTOR.read_text())
    services = compose.get("services", {})
    for pname, p in doc.get("service", {}).get("pipelines", {}).items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in p.get(kind, []):
                report.check(comp in (doc.get(kind) or {}), f"{where}: pipeline {pname} uses {kind[:-1]} {comp}, which is not defined")
    for name, exp in (doc.get("exporters") or {}).items():
        host = exp.get("endpoint", "").split("://")[-1].split(":", 1)[0]
        report.check(host in services, f"{where}: exporter {name} sends to {host}, which is not a compose service")
    # The services export OTLP over HTTP (shared/runtime/src/telemetry.rs), so they need the
    # receiver's http protocol, on an address other containers reach.
    http = doc.get("receivers", {}).get("otlp", {}).get("protocols", {}).get("http", {}).get("endpoint", "")
    report.check(http.startswith("0.0.0.0:"), f"{where}: the OTLP HTTP receiver must listen on 0.0.0.0 (other containers send to it)")
    for name, svc in services.items():
        env = svc.get("environment") if isinstance(svc.get("environment"), dict) else {}
        ep = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if ep:
            report.check(bool(http) and urlparse(ep).port == int(http.rsplit(":", 1)[-1]),
                         f"docker-compose.yml: {name} sends OTLP/HTTP to {ep}; the collector's HTTP receiver is {http!r}")


def check_grafana(report: Report, compose: dict) -> None:
    services = compose.get("services", {})
    ds = yaml.safe_load(DATASOURCES.read_text())
    types = {d["type"] for d in ds.get("datasources", [])}
    report.check({"prometheus", "jaeger"} <= types, "deploy/grafana/provisioning: needs Prometheus and Jaeger data sources")
    for d in ds.get("datasources", []):
        report.check(urlparse(d["url"]).hostname in services, f"deploy/grafana/provisioning: data source {d['name']} points at a host that is not a compose service")
    prov = yaml.safe_load(PROVIDERS.read_text())
    paths = [p["options"]["path"] for p in prov.get("providers", [])]
    mounts = [str(v) for v in services.get("grafana", {}).get("volumes", [])]
    report.check(any(m.startswith("./deploy/grafana/dashboards:") and m.split(":")[1] in paths for m in mounts),
                 "docker-compose.yml: grafana must mount deploy/grafana/dashboards where the dashboard provider reads")
