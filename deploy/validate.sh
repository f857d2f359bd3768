#!/usr/bin/env bash
# Static checks of the deployment artifacts: the Dockerfile and .dockerignore, docker-compose.yml,
# the Kustomize overlays (rendered, every object validated), the Grafana dashboard, the alert rules
# (and their unit tests, with promtool) and the variables every container sets. Needs kubectl and
# promtool (Debian: the prometheus package), no cluster, Docker engine or network beyond PyPI for
# the first install of the pinned tools below.
#
#   bash deploy/validate.sh PYTHON [CARGO_PROFILE_DIR]
#
# PYTHON is a virtualenv's python (the tools are installed into it when missing).
# CARGO_PROFILE_DIR (optional, e.g. "$CARGO_TARGET_DIR/debug") holds built binaries: their shared
# libraries are then checked against the runtime image's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

py="${1:?usage: deploy/validate.sh PYTHON [CARGO_PROFILE_DIR]}"
binaries="${2:-}"

# Pinned, so that a run checks the same schemas every time.
requirements=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 jsonschema==4.26.0 PyYAML==6.0.3 dockerfile-parse==2.0.1)
if ! "$py" - "${requirements[@]}" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
sys.exit(0 if all(version(r.split("==")[0]) == r.split("==")[1] for r in sys.argv[1:]) else 1)
PY
then
  echo "validate: installing ${requirements[*]}"
  "$py" -m pip install -q --disable-pip-version-check "${requirements[@]}"
fi

command -v kubectl >/dev/null || { echo "FAIL: kubectl is needed to render the Kustomize overlays (kubectl kustomize)"; exit 1; }
command -v promtool >/dev/null || { echo "FAIL: promtool is needed to check the alert rules and run their unit tests (Debian: apt-get install prometheus)"; exit 1; }

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in base overlays/dev overlays/production; do
  name=$(basename "$overlay")
  if ! kubectl kustomize "deploy/k8s/$overlay" >"$rendered/$name.yaml" 2>"$rendered/$name.err"; then
    echo "FAIL: kubectl kustomize deploy/k8s/$overlay:"
    cat "$rendered/$name.err"
    exit 1
  fi
done

# The alert rules as Prometheus parses them, and their unit tests (deploy/prometheus/saga-alerts.test.yml:
# every alert fires on its condition once its `for:` has elapsed, and stays silent otherwise).
promtool_ok() {
  if ! promtool "$@" >"$rendered/promtool.out" 2>&1; then
    echo "FAIL: promtool $*:"
    cat "$rendered/promtool.out"
    exit 1
  fi
}
promtool_ok check rules deploy/prometheus/saga-alerts.yml
rules=$(sed -n 's/.*SUCCESS: \([0-9]*\) rules found.*/\1/p' "$rendered/promtool.out")
promtool_ok test rules deploy/prometheus/saga-alerts.test.yml
echo "validate: promtool: ${rules:-?} alert rules parsed, $(grep -c '^  - name:' deploy/prometheus/saga-alerts.test.yml) unit tests passed"

exec "$py" deploy/validate/run.py "$rendered" "$binaries"
