#!/usr/bin/env bash
# Prints the path of a Helm 3 binary, building it from its Go module when missing.
#
#   HELM=$(bash charts/ci/helm.sh)
#
# No package registry this project uses ships Helm; the Go module proxy has its source,
# checksummed by Go's checksum database (as compose/ci/stage.sh builds Compose v2). The
# binary is cached under the git-ignored .cache/helm/<version>/, so only the first run on
# a machine pays for the build (~2-4 min on 2 busy cores). HELM_VERSION overrides the pin.
set -euo pipefail

cd "$(dirname "$0")/../.."
VERSION=${HELM_VERSION:-v3.22.1}
CACHE="$PWD/.cache/helm"
BIN="$CACHE/$VERSION/helm"

if [[ -x "$BIN" ]] && "$BIN" version --short > /dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

GO=$(command -v go || echo /usr/local/go/bin/go)
[[ -x "$GO" ]] || { echo "helm.sh: Helm is not cached and Go is not installed to build it" >&2; exit 1; }
mkdir -p "$CACHE/$VERSION"
started=$(date +%s)
echo "helm.sh: building Helm $VERSION from the Go module proxy (once; log: $CACHE/build.log)" >&2
export GOPATH="$CACHE/gopath" GOFLAGS=-modcacherw
# Helm's release builds (its Makefile) stamp the version and the Kubernetes version
# `helm template` and `helm lint` assume (client-go's, v0.X.Y -> 1.X); `go install` alone
# leaves v1.20 there, which a chart's kubeVersion constraint rejects.
gomod=$("$GO" mod download -json "helm.sh/helm/v3@$VERSION" 2> "$CACHE/build.log" \
        | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
k8s_minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" 2> /dev/null)
[[ -n "$k8s_minor" ]] || { cat "$CACHE/build.log" >&2; echo "helm.sh: cannot read Helm $VERSION's client-go version" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$VERSION"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
# CGO off: a static binary, like Helm's own releases.
if ! GOBIN="$CACHE/$VERSION" CGO_ENABLED=0 "$GO" install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$VERSION" >> "$CACHE/build.log" 2>&1; then
  tail -20 "$CACHE/build.log" >&2
  echo "helm.sh: building Helm $VERSION failed" >&2
  exit 1
fi
echo "helm.sh: built $("$BIN" version --short) in $(( $(date +%s) - started ))s" >&2
echo "$BIN"
