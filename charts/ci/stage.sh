#!/usr/bin/env bash
# The Helm chart stage of .ci/run (issue 14; docs/kubernetes.md "What is validated here").
#
#   bash charts/ci/stage.sh
#
# No cluster can run here, so the chart is checked as far as that allows:
#  1. Helm from its Go module (charts/ci/helm.sh; built once, cached under .cache/helm/);
#  2. helm lint --strict, and helm template of every values file in charts/emotion-stream/ci/
#     into .cache/chart/rendered/ (to read when something fails);
#  3. the chart tests (pytest -m chart tests/chart): lint and render per values file, every
#     object validated against the Kubernetes 1.37 and 1.31 schemas and the custom
#     resources' documented fields, two rendered workers against the real embedded Kafka
#     and Triton (over PLAINTEXT, and over SASL_SSL with SCRAM and ACLs), the alert and
#     dashboard metric names against real /metrics.
# `make test` leaves the chart tests out, so nothing runs twice.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT="$PWD"
START=$(date +%s)
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
CHART="$ROOT/charts/emotion-stream"
OUT="$ROOT/.cache/chart/rendered"

log() { echo "[chart-stage +$(( $(date +%s) - START ))s] $*"; }
die() {
  log "FAILED: $*" >&2
  exit 1
}
trap 'status=$?; log "stage $( (( status == 0 )) && echo passed || echo "FAILED (exit $status)") in $(( $(date +%s) - START ))s"' EXIT

[[ -x "$VENV_BIN/pytest" ]] || die "no $VENV_BIN/pytest: run 'make setup' first"
HELM=$(bash "$ROOT/charts/ci/helm.sh") || die "no Helm (charts/ci/helm.sh)"
export HELM
log "$("$HELM" version --short) ($HELM)"

"$HELM" lint --strict "$CHART" || die "helm lint --strict"
rm -rf "$OUT" && mkdir -p "$OUT"
for values in "$CHART"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  "$HELM" template es "$CHART" --namespace emotion --values "$values" > "$OUT/$name.yaml" \
    || die "helm template with $values"
done
log "rendered $(ls "$OUT" | wc -l) values files into ${OUT#"$ROOT"/}"

log "chart tests (pytest -m chart tests/chart)"
"$VENV_BIN/pytest" -q -p no:cacheprovider -m chart tests/chart || die "chart tests"
