"""Checks of docker-compose.yml: the Compose Specification's JSON schema (as vendored by
check-jsonschema), then the wiring the schema cannot see: images pinned, build targets that
exist, dependencies with health checks, variables the programs read, databases that the init
script creates, scrape targets and mounted files that exist.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from urllib.parse import urlparse

import jsonschema
import yaml

from common import ROOT, TARGETS, EnvVars, PROGRAM_SECTIONS, Report, checked_env_name, program_of_image
from dockerfile import parse as parse_dockerfile

COMPOSE = ROOT / "docker-compose.yml"


def compose_schema() -> dict:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(ref.read_text())


def env_map(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def init_sql_roles(sql: str) -> tuple[dict[str, str], dict[str, str]]:
    """Roles with their passwords, and databases with their owners, from an init script."""
    roles = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)'", sql))
    dbs = {name.strip('"'): owner for name, owner in re.findall(r'CREATE DATABASE ("?\w+"?) OWNER (\w+)', sql)}
    return roles, dbs


def check_database_url(report: Report, where: str, url: str, roles: dict, dbs: dict, script: str) -> None:
    u = urlparse(url)
    db = u.path.lstrip("/")
    report.check(db in dbs, f"{where}: database {db!r} of {url!r} is not created by {script}")
    report.check(roles.get(u.username) == u.password,
                 f"{where}: user {u.username!r} with that password is not created by {script}")
    report.check(dbs.get(db) == u.username, f"{where}: {u.username!r} does not own database {db!r} in {script}")


def check(report: Report, env_vars: EnvVars) -> dict:
    text = COMPOSE.read_text()
    doc = yaml.safe_load(text)
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    for e in errors:
        report.fail(f"docker-compose.yml: {'.'.join(str(p) for p in e.path) or '(root)'}: {e.message} (Compose Specification schema)")
    report.check(not errors, "docker-compose.yml: Compose Specification schema")
    services: dict = doc.get("services", {})
    report.count("compose services", len(services))
    stages = {s.name for s in parse_dockerfile()[0]}
    sql_path = ROOT / "deploy/compose/postgres-init/10-databases.sql"
    roles, dbs = init_sql_roles(sql_path.read_text())
    images_built = {}
    for name, svc in services.items():
        where = f"docker-compose.yml: service {name}"
        build = svc.get("build")
        image = svc.get("image", "")
        if build:
            report.check(isinstance(build, dict) and build.get("dockerfile") == "deploy/docker/Dockerfile" and build.get("context") == ".",
                         f"{where}: build from context . with deploy/docker/Dockerfile")
            target = build.get("target") if isinstance(build, dict) else None
            report.check(target in stages and target in TARGETS, f"{where}: build target {target!r} is not a Dockerfile target")
            images_built[image] = target
        else:
            tag = image.rsplit("/", 1)[-1]
            report.check(image in images_built or "@sha256:" in image or (":" in tag and not tag.endswith(":latest")),
                         f"{where}: image {image!r} must be pinned to a version")
        for dep, cond in (svc.get("depends_on") or {}).items():
            report.check(dep in services, f"{where}: depends on unknown service {dep}")
            condition = cond.get("condition") if isinstance(cond, dict) else "service_started"
            if condition == "service_healthy":
                report.check("healthcheck" in services.get(dep, {}), f"{where}: waits for {dep} to be healthy, but {dep} has no healthcheck")
            if condition == "service_completed_successfully":
                report.check(services.get(dep, {}).get("restart", "no") == "no", f"{where}: waits for one-shot {dep}, which must not restart")
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("./"):
                report.check((ROOT / src).exists(), f"{where}: mounts {src}, which does not exist")
        target = images_built.get(image) or (build or {}).get("target")
        program = TARGETS.get(target) if target else program_of_image(image)
        env = env_map(svc)
        if program:
            for var in env:
                if checked_env_name(var):
                    report.check(env_vars.accepts(PROGRAM_SECTIONS[program], var),
                                 f"{where}: sets {var}, which {program} does not read (deploy/config/env-vars.txt)")
            for arg in svc.get("command", []) or []:
                if "postgres://" in str(arg):
                    check_database_url(report, where, arg, roles, dbs, sql_path.name)
        if program in PROGRAM_SECTIONS and program.startswith("saga-") and program != "saga-registry":
            report.count("compose saga services")
            bind = env.get("SAGA_HTTP__BIND", "")
            port = bind.rsplit(":", 1)[-1]
            report.check(bind.startswith("0.0.0.0:"), f"{where}: SAGA_HTTP__BIND must listen on 0.0.0.0 in a container")
            hc = " ".join(svc.get("healthcheck", {}).get("test", []))
            report.check(f"/127.0.0.1/{port}" in hc and "/readyz" in hc, f"{where}: healthcheck must ask /readyz on port {port}")
            report.check(all(str(p).endswith(f":{port}") for p in svc.get("ports", [])), f"{where}: published ports must map to {port}")
            report.check(env.get("OTEL_SERVICE_NAME") == program, f"{where}: OTEL_SERVICE_NAME must be {program}")
            report.check(svc.get("stop_grace_period") == "30s", f"{where}: stop_grace_period 30s (batch, commit, outbox drain)")
            report.check(svc.get("read_only") is True and "ALL" in svc.get("cap_drop", []), f"{where}: read_only and cap_drop ALL")
            url = env.get("SAGA_DATABASE__URL", "")
            check_database_url(report, where, url, roles, dbs, sql_path.name)
            for var in ("SAGA_KAFKA__BOOTSTRAP_SERVERS", "SAGA_REGISTRY__URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
                value = env.get(var, "")
                host = urlparse(value).hostname if "://" in value else value.split(":", 1)[0]
                report.check(host in services, f"{where}: {var}={value!r} names no compose service")
    check_topics(report, services)
    return doc


def check_topics(report: Report, services: dict) -> None:
    topics = services.get("topics", {})
    cmd = topics.get("command", [])
    report.check(cmd[:1] == ["topics"] and "--partitions" in cmd, "docker-compose.yml: service topics must run `sagactl topics --partitions N`")
    if "--partitions" in cmd:
        report.count("compose topic partitions", int(cmd[cmd.index("--partitions") + 1]))
