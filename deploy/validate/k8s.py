"""Checks of the rendered Kustomize overlays (deploy/k8s): every object against its schema, then
what schemas cannot say: that the objects agree with each other, with the services' configuration
and with the rest of the repository.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlparse
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from common import (ROOT, SERVICES, EnvVars, PROGRAM_SECTIONS, Report, checked_env_name, load_topics,
                    program_of_image)

# Oldest and newest Kubernetes minor the manifests must be valid for.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
CRD_SCHEMAS = ROOT / "deploy/schemas"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|DATABASE__URL|DATABASE_URL$")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def crd_schema(doc: dict) -> dict | None:
    group_version = doc["apiVersion"]
    group, version = group_version.split("/", 1) if "/" in group_version else ("", group_version)
    path = CRD_SCHEMAS / f"{doc['kind'].lower()}.{group}.{version}.json"
    return json.loads(path.read_text()) if path.exists() else None


def validate_schema(report: Report, overlay: str, doc: dict) -> None:
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    ident = f"{overlay}: {kind}/{name}"
    try:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        report.check(True, ident)
        report.count("kubernetes objects")
        return
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        report.fail(f"{ident}: invalid for Kubernetes {e.version}: {path}: {e.message}")
        return
    except kubernetes_validate.SchemaNotFoundError:
        pass
    schema = crd_schema(doc)
    if schema is None:
        report.fail(f"{ident}: {doc['apiVersion']} is neither a Kubernetes kind nor one with a schema under deploy/schemas/")
        return
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        report.fail(f"{ident}: {'.'.join(str(p) for p in e.path) or '(root)'}: {e.message} (deploy/schemas)")
    if not errors:
        report.check(True, ident)
        report.count("custom resources")


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in WORKLOADS:
        return doc["spec"]["template"]["spec"]
    return None


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_overlay(report: Report, overlay: str, docs: list[dict], env_vars: EnvVars) -> None:
    for doc in docs:
        validate_schema(report, overlay, doc)
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"] for d in by_kind.get("Secret", [])}
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    scaled = {d["spec"]["scaleTargetRef"]["name"] for d in by_kind.get("ScaledObject", [])}
    referenced_secrets: set[str] = set()

    for cm_name, data in configmaps.items():
        for key, value in data.items():
            report.check(not SECRET_NAME.search(key) and not URL_WITH_PASSWORD.search(str(value)),
                         f"{overlay}: ConfigMap {cm_name} holds {key}, a credential: use a Secret")

    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        ident = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        psc = spec.get("securityContext", {})
        report.check(spec.get("automountServiceAccountToken") is False, f"{ident}: automountServiceAccountToken must be false (no API access needed)")
        report.check(spec.get("enableServiceLinks") is False,
                     f"{ident}: enableServiceLinks must be false (Kubernetes would inject SAGA_*_SERVICE_* variables)")
        report.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{ident}: pod seccompProfile must be RuntimeDefault")
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            cid = f"{ident} container {c['name']}"
            csc = c.get("securityContext", {})
            report.check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cid}: runAsNonRoot must be true")
            uid = csc.get("runAsUser", psc.get("runAsUser"))
            report.check(isinstance(uid, int) and uid > 0, f"{cid}: runAsUser must be a non-root uid (is {uid})")
            report.check(csc.get("allowPrivilegeEscalation") is False, f"{cid}: allowPrivilegeEscalation must be false")
            report.check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{cid}: capabilities must drop ALL")
            image = c["image"]
            tag = image.rsplit("/", 1)[-1]
            report.check(overlay == "base" or ("@sha256:" in image) or (":" in tag and not tag.endswith(":latest")),
                         f"{cid}: image {image!r} must carry a tag (not latest) or digest: set it with `images:` in the overlay")
            program = program_of_image(image)
            env = {e["name"]: e for e in c.get("env", [])}
            names = dict.fromkeys(env)
            for src in c.get("envFrom", []):
                ref = src.get("configMapRef", {}).get("name")
                if ref is not None:
                    if report.check(ref in configmaps, f"{cid}: envFrom ConfigMap {ref} is not in the overlay"):
                        names.update(dict.fromkeys(configmaps[ref]))
                sref = src.get("secretRef", {}).get("name")
                if sref:
                    referenced_secrets.add(sref)
            for name, e in env.items():
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced_secrets.add(ref["name"])
                    if overlay == "dev" and not ref.get("optional"):
                        report.check(ref["name"] in secrets, f"{cid}: {name} reads Secret {ref['name']}, which the overlay does not define")
                if SECRET_NAME.search(name):
                    report.check(ref is not None, f"{cid}: {name} is a credential and must come from a secretKeyRef, not a literal")
            if program:
                report.count("containers checked for variables")
                for name in names:
                    if checked_env_name(name):
                        report.check(env_vars.accepts(PROGRAM_SECTIONS[program], name),
                                     f"{cid}: sets {name}, which {program} does not read (deploy/config/env-vars.txt)")
            for v in spec.get("volumes", []):
                if "secret" in v:
                    referenced_secrets.add(v["secret"]["secretName"])
            if program in SERVICES and doc["kind"] == "Deployment":
                check_service_container(report, cid, doc, c, env, names, configmaps, scaled, overlay)

    # Services, PDBs, ServiceMonitors, NetworkPolicies and ScaledObjects point at real things.
    templates = [(d, d["spec"]["template"]["metadata"].get("labels", {})) for d in docs if pod_spec(d) is not None]
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        pods = [d for d, labels in templates if selects(sel, labels)]
        report.check(bool(pods), f"{overlay}: Service {svc['metadata']['name']} selects no workload")
        ports = {p.get("name") for d in pods for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort")
            report.check(not isinstance(target, str) or target in ports,
                         f"{overlay}: Service {svc['metadata']['name']} targets port {target!r}, which its pods do not name")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        report.check(any(selects(sel, labels) for _, labels in templates), f"{overlay}: PodDisruptionBudget {pdb['metadata']['name']} selects no workload")
    service_names = {d["metadata"]["name"] for d in by_kind.get("Service", [])}
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in by_kind.get("Service", []) if selects(sel, s["metadata"].get("labels", {}))]
        matched_names = {s["metadata"]["name"] for s in matched}
        report.check(matched_names >= {n for n in SERVICES if n in service_names} and bool(matched),
                     f"{overlay}: ServiceMonitor {sm['metadata']['name']} must select the five services' Services (selects {sorted(matched_names)})")
        for ep in sm["spec"]["endpoints"]:
            report.check(all(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in matched),
                         f"{overlay}: ServiceMonitor endpoint port {ep.get('port')!r} is not a port name of every selected Service")
    for np in by_kind.get("NetworkPolicy", []):
        sel = np["spec"]["podSelector"].get("matchLabels", {})
        covered = {d["metadata"]["name"] for d, labels in templates if selects(sel, labels)}
        report.check(covered >= {n for n in SERVICES if n in deployments},
                     f"{overlay}: NetworkPolicy {np['metadata']['name']} must cover the five services (covers {sorted(covered)})")
        check_egress(report, overlay, np, configmaps, [d for d, labels in templates if selects(sel, labels)])
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in by_kind.get("KafkaTopic", [])}
    for so in by_kind.get("ScaledObject", []):
        name = so["metadata"]["name"]
        target = so["spec"]["scaleTargetRef"]["name"]
        report.check(target in deployments, f"{overlay}: ScaledObject {name} scales {target}, which is not a Deployment here")
        report.check(target not in deployments or "replicas" not in deployments[target]["spec"],
                     f"{overlay}: Deployment {target} sets spec.replicas although ScaledObject {name} owns it (every apply would reset it)")
        auths = {a["metadata"]["name"] for a in by_kind.get("TriggerAuthentication", [])}
        for trig in so["spec"]["triggers"]:
            ref = trig.get("authenticationRef", {}).get("name")
            report.check(ref is None or ref in auths, f"{overlay}: ScaledObject {name} uses TriggerAuthentication {ref}, which is not here")
            if trig["type"] == "kafka":
                group = trig["metadata"]["consumerGroup"]
                report.check(group == target, f"{overlay}: ScaledObject {name} watches group {group}; {target}'s group is {target} (saga-<service>)")
                parts = [t["spec"].get("partitions") for t in topics.values()]
                limit = min(parts) if parts else None
                report.check(limit is None or so["spec"].get("maxReplicaCount", 100) <= limit,
                             f"{overlay}: ScaledObject {name} allows {so['spec'].get('maxReplicaCount')} replicas; topics have {limit} partitions")
    for ta in by_kind.get("TriggerAuthentication", []):
        for ref in ta["spec"].get("secretTargetRef", []):
            referenced_secrets.add(ref["name"])
    if topics:
        expected = set(load_topics())
        report.check(set(topics) == expected,
                     f"{overlay}: KafkaTopics {sorted(set(topics) ^ expected)} differ from deploy/config/topics.txt")
        for name, t in topics.items():
            report.check(t["metadata"]["name"] == name,
                         f"{overlay}: KafkaTopic {t['metadata']['name']} has topicName {name}: keep the two equal")
            isr = t["spec"].get("config", {}).get("min.insync.replicas", 1)
            report.check(t["spec"].get("replicas", 1) > isr,
                         f"{overlay}: KafkaTopic {name}: replicas must exceed min.insync.replicas, or one broker down stops producing")
        report.check(len({t["spec"].get("partitions") for t in topics.values()}) == 1,
                     f"{overlay}: KafkaTopics must share one partition count (records of an order stay co-partitioned)")
    check_rules(report, overlay, by_kind.get("PrometheusRule", []))
    if overlay == "production":
        check_production(report, by_kind, configmaps, referenced_secrets)


def check_service_container(report, cid, doc, c, env, names, configmaps, scaled, overlay) -> None:
    spec = doc["spec"]["template"]["spec"]
    name = doc["metadata"]["name"]
    report.count("service deployments")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    bind = None
    for src in c.get("envFrom", []):
        bind = configmaps.get(src.get("configMapRef", {}).get("name"), {}).get("SAGA_HTTP__BIND", bind)
    bind = env.get("SAGA_HTTP__BIND", {}).get("value", bind)
    report.check(bool(bind) and bind.startswith("0.0.0.0:") and int(bind.rsplit(":", 1)[1]) == ports.get("http"),
                 f"{cid}: SAGA_HTTP__BIND {bind!r} must be 0.0.0.0:<containerPort of port 'http' = {ports.get('http')}>")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        p = c.get(probe, {}).get("httpGet", {})
        report.check(p.get("path") == path and p.get("port") in ports, f"{cid}: {probe} must GET {path} on a named container port")
    res = c.get("resources", {})
    for kind in ("requests", "limits"):
        report.check({"cpu", "memory"} <= set(res.get(kind, {})), f"{cid}: resources.{kind} must set cpu and memory")
    report.check(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, f"{cid}: readOnlyRootFilesystem must be true")
    report.check(spec.get("terminationGracePeriodSeconds", 30) >= 30,
                 f"{cid}: terminationGracePeriodSeconds must allow the batch, offset commit and 5 s outbox drain (>= 30)")
    report.check("preStop" in c.get("lifecycle", {}), f"{cid}: a preStop hook is expected")
    report.check(env.get("OTEL_SERVICE_NAME", {}).get("value") == name, f"{cid}: OTEL_SERVICE_NAME must be {name}")
    report.check("SAGA_DATABASE__URL" in env and "secretKeyRef" in env["SAGA_DATABASE__URL"].get("valueFrom", {}),
                 f"{cid}: SAGA_DATABASE__URL must come from a Secret (the URL carries the password)")
    if overlay == "production":
        report.check(name in scaled, f"{cid}: production Deployments are scaled by a KEDA ScaledObject")


def check_egress(report: Report, overlay: str, np: dict, configmaps: dict, pods: list[dict]) -> None:
    """The ports of the broker, registry and collector the pods are configured with are open for
    egress (a rule without ports opens every port)."""
    if "Egress" not in np["spec"].get("policyTypes", []):
        return
    rules = np["spec"].get("egress", [])
    open_ports = {p.get("port") for r in rules for p in r.get("ports", [])}
    if any(not r.get("ports") for r in rules):
        return
    for d in pods:
        for c in pod_spec(d)["containers"]:
            values = {}
            for src in c.get("envFrom", []):
                values.update(configmaps.get(src.get("configMapRef", {}).get("name"), {}))
            values.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
            wanted = {}
            for server in values.get("SAGA_KAFKA__BOOTSTRAP_SERVERS", "").split(","):
                if ":" in server:
                    wanted[int(server.rsplit(":", 1)[1])] = "SAGA_KAFKA__BOOTSTRAP_SERVERS"
            for key, default in (("SAGA_REGISTRY__URL", None), ("OTEL_EXPORTER_OTLP_ENDPOINT", None)):
                if values.get(key):
                    u = urlparse(values[key])
                    wanted[u.port or (443 if u.scheme == "https" else 80)] = key
            for port, key in wanted.items():
                report.check(port in open_ports, f"{overlay}: NetworkPolicy {np['metadata']['name']} does not let {d['metadata']['name']} reach port {port} ({key})")


def check_rules(report: Report, overlay: str, rules: list[dict]) -> None:
    if not rules:
        return
    source = yaml.safe_load((ROOT / "deploy/prometheus/saga-alerts.yml").read_text())
    for r in rules:
        report.check(r["spec"] == source,
                     f"{overlay}: PrometheusRule {r['metadata']['name']} differs from deploy/prometheus/saga-alerts.yml (copy the groups)")


def check_production(report: Report, by_kind, configmaps, referenced_secrets) -> None:
    report.check(not by_kind.get("Secret"),
                 "production: the overlay renders Secret objects; production secrets must come from outside the repository")
    data = {k: v for cm in configmaps.values() for k, v in cm.items()}
    report.check(str(data.get("SAGA_KAFKA__SECURITY_PROTOCOL", "")).lower() in ("ssl", "sasl_ssl"),
                 "production: SAGA_KAFKA__SECURITY_PROTOCOL must be ssl or sasl_ssl")
    report.check(str(data.get("SAGA_REGISTRY__URL", "")).startswith("https://"), "production: SAGA_REGISTRY__URL must be https://")
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying", 1)[1] if "## Deploying" in readme else ""
    section = section.split("\n## ", 1)[0]
    for name in sorted(referenced_secrets):
        generic = re.sub(r"^saga-(order|inventory|payment|orchestrator|query)-", "saga-<service>-", name)
        report.check(name in section or generic in section,
                     f"production: Secret {name} is referenced but not listed in README.md, section Deploying")
    report.count("production secrets documented", len(referenced_secrets))


def check(report: Report, rendered: dict[str, Path], env_vars: EnvVars) -> None:
    for overlay, path in rendered.items():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        report.check(bool(docs), f"{overlay}: kustomize rendered nothing")
        check_overlay(report, overlay, docs, env_vars)
        report.count(f"objects in {overlay}", len(docs))
