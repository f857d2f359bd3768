"""Shared pieces of the deployment checks: the report, the repository's reference lists
(deploy/config/*.txt), .dockerignore matching and PromQL scanning.

Nothing here talks to a network or a cluster; every check reads files and rendered manifests.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Report:
    """Counts checks and collects failures; a check is one named assertion over one artifact."""

    passed: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def fail(self, what: str) -> None:
        self.failures.append(what)

    def note(self, what: str) -> None:
        self.notes.append(what)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _lines(path: Path) -> list[str]:
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


# ---------------------------------------------------------------------------------------------
# Reference lists
# ---------------------------------------------------------------------------------------------

class EnvVars:
    """deploy/config/env-vars.txt: accepted variables per program section."""

    def __init__(self, path: Path = ROOT / "deploy/config/env-vars.txt"):
        self.path = path
        self.sections: dict[str, list[str]] = {}
        current = None
        for line in _lines(path):
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1]
                self.sections.setdefault(current, [])
            elif current is None:
                raise ValueError(f"{rel(path)}: variable {line!r} before any [section]")
            else:
                self.sections[current].append(line)

    def accepts(self, sections: list[str], name: str) -> bool:
        for s in sections:
            for pattern in self.sections.get(s, []):
                if pattern.endswith("*") and name.startswith(pattern[:-1]) and len(name) > len(pattern) - 1:
                    return True
                if pattern == name:
                    return True
        return False


# Which env-vars.txt sections apply to a program, by the binary its image runs.
PROGRAM_SECTIONS = {
    "saga-order": ["services", "opentelemetry"],
    "saga-inventory": ["services", "opentelemetry"],
    "saga-payment": ["services", "opentelemetry"],
    "saga-orchestrator": ["services", "saga-orchestrator", "opentelemetry"],
    "saga-query": ["services", "saga-query", "opentelemetry"],
    "saga-registry": ["saga-registry"],
    "sagactl": ["sagactl", "opentelemetry"],
}
SERVICES = ["saga-order", "saga-inventory", "saga-payment", "saga-orchestrator", "saga-query"]
# Dockerfile target -> program.
TARGETS = {
    "order": "saga-order",
    "inventory": "saga-inventory",
    "payment": "saga-payment",
    "orchestrator": "saga-orchestrator",
    "query": "saga-query",
    "registry": "saga-registry",
    "sagactl": "sagactl",
}


def program_of_image(image: str) -> str | None:
    """The program an image reference runs: saga-order:dev, registry.example.com/x/saga-order:1."""
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return name if name in PROGRAM_SECTIONS else None


def checked_env_name(name: str) -> bool:
    """The variables whose names are checked against env-vars.txt."""
    return name.startswith("SAGA_") or name.startswith("OTEL_")


@dataclass
class Metric:
    name: str
    kind: str
    labels: set[str]


def load_metrics(path: Path = ROOT / "deploy/config/metrics.txt") -> dict[str, Metric]:
    metrics = {}
    for line in _lines(path):
        parts = line.split()
        if len(parts) != 3 or parts[1] not in ("counter", "gauge", "histogram"):
            raise ValueError(f"{rel(path)}: expected 'name type labels', got {line!r}")
        metrics[parts[0]] = Metric(parts[0], parts[1], set(parts[2].split(",")))
    return metrics


def load_topics(path: Path = ROOT / "deploy/config/topics.txt") -> list[str]:
    return _lines(path)


# ---------------------------------------------------------------------------------------------
# PromQL: metric names and label names, by scanning (no full parser; the expressions here are
# plain selectors, aggregations and histogram_quantile).
# ---------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"\b(saga_[a-zA-Z0-9_]*)\s*(\{[^}]*\})?")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every scraped series (scrape config, Prometheus Operator).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "app"}


def promql_problems(expr: str, metrics: dict[str, Metric]) -> tuple[list[str], set[str]]:
    """Unknown metric names and label names in `expr`; also returns the metrics it uses.

    Grafana's `label_values(metric, label)` is accepted as well."""
    problems: list[str] = []
    used: set[str] = set()
    labels_in_scope: set[str] = set()
    # Quoted values hold no names to check (and may hold $variables); grouping clauses and
    # label_values' second argument hold label names, checked after the metrics are known.
    bare = _STRING.sub('""', expr)
    grouping: list[str] = []
    for m in _GROUPING.finditer(bare):
        grouping += [g.strip() for g in m.group(2).split(",") if g.strip()]
    bare = _GROUPING.sub(" ", bare)
    lv = re.match(r"\s*label_values\(\s*([^,]+?)\s*,\s*([a-zA-Z_]\w*)\s*\)\s*$", bare)
    if lv:
        grouping.append(lv.group(2))
        bare = lv.group(1)
    for m in _SELECTOR.finditer(bare):
        name, matchers = m.group(1), m.group(2)
        base, suffix = name, ""
        for s in HISTOGRAM_SUFFIXES:
            if name.endswith(s) and name[: -len(s)] in metrics:
                base, suffix = name[: -len(s)], s
        metric = metrics.get(base)
        if metric is None:
            problems.append(f"unknown metric {name}")
            continue
        if suffix and metric.kind != "histogram":
            problems.append(f"{name}: {base} is a {metric.kind}, not a histogram")
            continue
        if metric.kind == "histogram" and not suffix and not lv:
            problems.append(f"{name} is a histogram: query {name}_bucket, _sum or _count")
            continue
        used.add(base)
        allowed = set(metric.labels) | ({"le"} if suffix == "_bucket" else set())
        labels_in_scope |= allowed
        for label, _ in _MATCHER_LABEL.findall(matchers or ""):
            if label not in allowed | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r} (labels: {', '.join(sorted(allowed))})")
    for label in grouping:
        if label not in labels_in_scope | TARGET_LABELS:
            problems.append(f"label {label!r} is not a label of {', '.join(sorted(used)) or 'any metric used'}")
    return problems, used


# ---------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------

class DockerIgnore:
    """The Docker builder's .dockerignore semantics: patterns are matched against slash-separated
    paths relative to the context (after cleaning); `**` matches any number of directories; the
    last matching pattern wins; `!` re-includes; a path is excluded when it or a parent directory
    matches an exclusion."""

    def __init__(self, path: Path):
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line[1:].strip() if negate else line).lstrip("/")
            self.rules.append((negate, re.compile(self._regex(pattern))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "^", 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**", i):
                # `**/` matches zero or more directories; a trailing `**` anything.
                if pattern.startswith("**/", i):
                    out += "(?:.*/)?"
                    i += 3
                else:
                    out += ".*"
                    i += 2
                continue
            if c == "*":
                out += "[^/]*"
            elif c == "?":
                out += "[^/]"
            else:
                out += re.escape(c)
            i += 1
        return out + "$"

    def _matches(self, rule: re.Pattern[str], path: str) -> bool:
        parts = path.split("/")
        return any(rule.match("/".join(parts[:i])) for i in range(1, len(parts) + 1))

    def excluded(self, path: str) -> bool:
        excluded = False
        for negate, rule in self.rules:
            if self._matches(rule, path):
                excluded = not negate
        return excluded
