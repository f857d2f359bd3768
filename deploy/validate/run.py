"""Entry point of deploy/validate.sh: runs every check, prints what failed, one summary line.

    python deploy/validate/run.py RENDERED_DIR [BINARY_DIR]

RENDERED_DIR holds base.yaml, dev.yaml and production.yaml (the output of `kubectl kustomize`).
BINARY_DIR, when given, is a cargo profile directory (target/debug) whose binaries' shared
libraries are checked against the runtime image's packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))

import compose  # noqa: E402
import dockerfile  # noqa: E402
import k8s  # noqa: E402
import observability  # noqa: E402
from common import EnvVars, Report, load_metrics, load_topics  # noqa: E402


def main() -> int:
    rendered = Path(sys.argv[1])
    binaries = Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
    report = Report()
    env_vars = EnvVars()
    metrics = load_metrics()
    report.check(len(load_topics()) == 12, "deploy/config/topics.txt: expected 12 topics (6 and their .dlt)")

    dockerfile.check(report, env_vars, binaries)
    compose_doc = compose.check(report, env_vars)
    k8s.check(report, {o: rendered / f"{o}.yaml" for o in ("base", "dev", "production")}, env_vars)
    observability.check_dashboard(report, metrics)
    observability.check_alerts(report, metrics)
    observability.check_prometheus(report, compose_doc)
    observability.check_collector(report, compose_doc)
    observability.check_grafana(report, compose_doc)

    # One partition count everywhere: compose, the dev Job and production's KafkaTopics and KEDA.
    counts = report.counts
    compose_partitions = counts.get("compose topic partitions")
    dev_job = rendered.joinpath("dev.yaml").read_text()
    report.check(f'"--partitions", "{compose_partitions}"' in dev_job or f"- --partitions\n        - \"{compose_partitions}\"" in dev_job
                 or f"--partitions\n          - \"{compose_partitions}\"" in dev_job,
                 f"the dev overlay's topics Job must create {compose_partitions} partitions, as compose does")

    for note in report.notes:
        print(f"note: {note}")
    for failure in report.failures:
        print(f"FAIL: {failure}")
    c = counts
    print(
        f"deploy: {c.get('objects in base', 0)} + {c.get('objects in dev', 0)} + {c.get('objects in production', 0)} objects "
        f"(base + dev + production) validated ({c.get('kubernetes objects', 0)} against Kubernetes "
        f"{'/'.join(v.rsplit('.', 1)[0] for v in k8s.K8S_VERSIONS)} schemas, {c.get('custom resources', 0)} against deploy/schemas); "
        f"compose: {c.get('compose services', 0)} services; Dockerfile: {c.get('dockerfile targets', 0)} targets, "
        f"{c.get('build-context files checked', 0)} context files; dashboard: {c.get('dashboard panels', 0)} panels, "
        f"{c.get('dashboard queries', 0)} queries; {c.get('alert rules', 0)} alert rules"
        + (f"; {c['shared libraries checked']} shared libraries" if "shared libraries checked" in c else "")
    )
    print(f"deploy: {report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
