#!/usr/bin/env bash
# The Docker Compose stage of .ci/run (issue 5): the Compose stack on a real Docker engine.
#
#   bash compose/ci/stage.sh
#
# No registry can be pulled from here and the engine runs without a bridge network, so:
#  1. install Debian's docker.io (and debootstrap) if missing; build the Compose v2 CLI
#     plugin from the Go module proxy if `docker compose` is missing; start dockerd
#     (--bridge=none --iptables=false) unless an engine already answers;
#  2. build the stand-in images: a Debian bookworm base (debootstrap, cached by tag), a
#     Python base, Kafka (Debian's JRE + the Maven jars), Triton (pytriton's tritonserver +
#     the Python-backend twin); worker and exporter from their own Dockerfiles, pip reading
#     a host-side wheelhouse served on 127.0.0.1 (pip inside containers fails TLS here);
#  3. `docker compose up` with compose/compose.standin.yaml (host network, free loopback
#     ports, a tiny local model for the exporter) and 2 workers; N tweets in, N results
#     out; scale to 3 and back to 1 while producing; no id may be lost;
#  4. the integration tests through the testcontainers backend on the same images;
#  5. always: compose down -v, stop what this script started.
#
# Settings (environment): STAGE_TWEETS (default 300), STAGE_SCALE_TWEETS (default 600),
# STAGE_WHEELHOUSE_PORT (default 38111, loopback).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT="$PWD"
START=$(date +%s)
STATE="$ROOT/.cache/docker"          # git-ignored: wheelhouse, stamps, work files, logs
WORK="$STATE/stage"
VENV_BIN="$ROOT/.venv/bin"
PROJECT=emotion-stream-ci
COMPOSE_VERSION=v2.40.3              # the Compose v2 CLI plugin, built from source
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
DEBIAN_SUITE=bookworm
BASE_IMAGE=emotion-stream/standin-debian:$DEBIAN_SUITE
export STANDIN_PYTHON_IMAGE=emotion-stream/standin-python:3.11-$DEBIAN_SUITE
export STANDIN_KAFKA_IMAGE=emotion-stream/standin-kafka:4.4.0
export STANDIN_TRITON_IMAGE=emotion-stream/standin-tritonserver:2.51
# The exporter's input: a tiny local model (no hub here), built from tests/support.
export STANDIN_HF_MODEL="$WORK/tiny-hf-model"
TWEETS=${STAGE_TWEETS:-300}
SCALE_TWEETS=${STAGE_SCALE_TWEETS:-600}
SCALE_RATE=40                        # tweets/s while scaling: ~15 s of traffic
UP_TIMEOUT_S=900                     # first up: exporter run + Triton + workers
RESULTS_DEADLINE_S=300
TESTS_TIMEOUT_S=1500
BUILD_CACHE_KEEP=25gb                # BuildKit cache kept between runs (exporter deps ~8 GB)

STARTED_DOCKERD=""
WHEEL_SERVER_PID=""
PRODUCER_PID=""

log() { echo "[compose-stage +$(( $(date +%s) - START ))s] $*"; }
die() {
  log "FAILED: $*" >&2
  exit 1
}

compose() {
  docker compose -p "$PROJECT" -f "$ROOT/compose.yaml" -f "$ROOT/compose/compose.standin.yaml" "$@"
}

cleanup() {
  local status=$?
  set +e
  if [[ -n "$PRODUCER_PID" ]]; then kill "$PRODUCER_PID" 2>/dev/null; fi
  if docker info > /dev/null 2>&1; then
    if (( status != 0 )); then
      log "stack state and log tails at failure:"
      compose ps -a 2>&1 | sed 's/^/  /'
      compose logs --no-color --tail 40 2>&1 | sed 's/^/  /' | tail -200
    fi
    log "tearing down (compose down -v)"
    compose down -v --remove-orphans --timeout 30 > "$WORK/down.log" 2>&1 \
      || log "warning: compose down failed (see $WORK/down.log)"
    # Containers testcontainers left behind if pytest died (Ryuk is off: no registry).
    docker ps -aq --filter label=org.testcontainers=true | xargs -r docker rm -f > /dev/null
    # Superseded layers (a changed requirement list leaves a 7 GB exporter layer behind).
    docker image prune -f > /dev/null
    docker builder prune -f --keep-storage "$BUILD_CACHE_KEEP" > /dev/null
  fi
  if [[ -n "$WHEEL_SERVER_PID" ]]; then kill "$WHEEL_SERVER_PID" 2>/dev/null; fi
  if [[ -n "$STARTED_DOCKERD" ]]; then
    log "stopping the dockerd this stage started (pid $STARTED_DOCKERD)"
    kill "$STARTED_DOCKERD" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
  fi
  log "stage $( (( status == 0 )) && echo passed || echo "FAILED (exit $status)") in $(( $(date +%s) - START ))s"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$VENV_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------------------- 1. engine

ensure_docker_packages() {
  local missing=()
  command -v dockerd > /dev/null || missing+=(docker.io)
  command -v debootstrap > /dev/null || missing+=(debootstrap)
  if (( ${#missing[@]} )); then
    log "installing ${missing[*]} (apt)"
    apt-get update -qq > "$WORK/apt.log" 2>&1 || die "apt-get update failed (see $WORK/apt.log)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >> "$WORK/apt.log" 2>&1 \
      || die "apt-get install ${missing[*]} failed (see $WORK/apt.log)"
  fi
}

ensure_compose_plugin() {
  if docker compose version > /dev/null 2>&1; then
    log "$(docker compose version)"
    return
  fi
  # No registry package ships Compose v2 for Debian bookworm; the Go module proxy has
  # its source (checksummed by the Go checksum database). ~6 min on 2 busy cores, once.
  local gobin
  gobin=$(command -v go || echo /usr/local/go/bin/go)
  [[ -x "$gobin" ]] || die "docker compose is missing and Go is not installed to build it"
  log "building the Compose $COMPOSE_VERSION CLI plugin from the Go module proxy (once)"
  local gopath="$STATE/gopath" src="$STATE/compose-src" dir
  dir=$(GOPATH="$gopath" GOFLAGS=-modcacherw "$gobin" mod download -json \
        "github.com/docker/compose/v2@$COMPOSE_VERSION" \
        | "$VENV_BIN/python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') \
    || die "go mod download of docker/compose $COMPOSE_VERSION failed"
  rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src"
  (cd "$src" && GOPATH="$gopath" GOFLAGS=-modcacherw "$gobin" build -trimpath \
      -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
      -o "$STATE/docker-compose" ./cmd) > "$WORK/compose-build.log" 2>&1 \
    || die "building Compose failed (see $WORK/compose-build.log)"
  install -D -m 0755 "$STATE/docker-compose" "$COMPOSE_PLUGIN"
  rm -rf "$src"
  docker compose version > /dev/null 2>&1 || die "docker compose still missing after install"
  log "$(docker compose version)"
}

ensure_dockerd() {
  if docker info > /dev/null 2>&1; then
    log "using the Docker engine already running ($(docker info --format '{{.ServerVersion}}'))"
    return
  fi
  log "starting dockerd (--bridge=none --iptables=false; log: $STATE/dockerd.log)"
  setsid dockerd --bridge=none --iptables=false --ip6tables=false \
    > "$STATE/dockerd.log" 2>&1 < /dev/null &
  STARTED_DOCKERD=$!
  for _ in $(seq 1 60); do
    docker info > /dev/null 2>&1 && return
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || break
    sleep 1
  done
  tail -20 "$STATE/dockerd.log" >&2
  die "dockerd did not answer within 60 s"
}

# -------------------------------------------------------------------------- 2. images

build_base_image() {
  if docker image inspect "$BASE_IMAGE" > /dev/null 2>&1; then
    log "base image $BASE_IMAGE cached"
    return
  fi
  log "building $BASE_IMAGE (debootstrap --variant=minbase $DEBIAN_SUITE)"
  local rootfs="$STATE/rootfs"
  rm -rf "$rootfs"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" http://deb.debian.org/debian \
    > "$WORK/debootstrap.log" 2>&1 || die "debootstrap failed (see $WORK/debootstrap.log)"
  cat > "$rootfs/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $DEBIAN_SUITE main
deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main
deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    > "$rootfs/etc/apt/apt.conf.d/90-standin"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" \
    > /dev/null || die "docker import of the base image failed"
  rm -rf "$rootfs"
}

fetch_kafka_jars() {
  local dir="$ROOT/compose/docker/standin/kafka" stamp
  stamp="$dir/libs/.fetched-from-pom"
  if [[ -f "$stamp" ]] && cmp -s "$stamp" "$dir/pom.xml"; then
    return
  fi
  log "fetching the stand-in Kafka image's jars (mvn)"
  rm -rf "$dir/libs"
  mvn -q -B -f "$dir/pom.xml" dependency:copy-dependencies > "$WORK/mvn.log" 2>&1 \
    || die "mvn failed (see $WORK/mvn.log)"
  cp "$dir/pom.xml" "$stamp"
}

serve_wheelhouse() {
  local wheels="$STATE/wheelhouse" wanted="$WORK/requirements.txt"
  {
    "$VENV_BIN/python" compose/docker/requirements.py pyproject.toml local export
    echo "onnx==1.23.2"   # the Triton stand-in reads model limits with it
    echo "setuptools>=68"  # the project's build backend (pip builds it in isolation)
    echo "wheel"
  } > "$wanted"
  if [[ ! -f "$wheels/.requirements" ]] || ! cmp -s "$wanted" "$wheels/.requirements"; then
    log "downloading the wheelhouse (pip download on the host)"
    mkdir -p "$wheels"
    "$VENV_BIN/pip" download -q -d "$wheels" -r "$wanted" > "$WORK/pip-download.log" 2>&1 \
      || die "pip download failed (see $WORK/pip-download.log)"
    cp "$wanted" "$wheels/.requirements"
  fi
  # A fixed port keeps PIP_OPTIONS, a build argument, and so the build cache, stable.
  local port="${STAGE_WHEELHOUSE_PORT:-38111}"
  if ! "$VENV_BIN/python" -c 'import socket, sys; socket.create_server(("127.0.0.1", int(sys.argv[1]))).close()' "$port" 2> /dev/null; then
    log "warning: wheelhouse port $port is busy; using a free one (image layers rebuild)"
    port=$(free_port)
  fi
  "$VENV_BIN/python" -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" \
    > "$WORK/wheelhouse-server.log" 2>&1 &
  WHEEL_SERVER_PID=$!
  export PIP_OPTIONS="--no-index --find-links http://127.0.0.1:$port/"
  for _ in $(seq 1 20); do
    "$VENV_BIN/python" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/', timeout=1)" \
      2> /dev/null && return
    sleep 0.5
  done
  die "the wheelhouse server did not answer on 127.0.0.1:$port"
}

build_images() {
  local standin="$ROOT/compose/docker/standin"
  log "building $STANDIN_PYTHON_IMAGE, $STANDIN_KAFKA_IMAGE, $STANDIN_TRITON_IMAGE"
  docker build --network host --build-arg BASE="$BASE_IMAGE" -t "$STANDIN_PYTHON_IMAGE" \
    -f "$standin/python.Dockerfile" "$standin" > "$WORK/build-python.log" 2>&1 \
    || die "building $STANDIN_PYTHON_IMAGE failed (see $WORK/build-python.log)"
  docker build --network host --build-arg BASE="$BASE_IMAGE" -t "$STANDIN_KAFKA_IMAGE" \
    "$standin/kafka" > "$WORK/build-kafka.log" 2>&1 \
    || die "building $STANDIN_KAFKA_IMAGE failed (see $WORK/build-kafka.log)"
  docker build --network host --build-arg PYTHON_BASE="$STANDIN_PYTHON_IMAGE" \
    --build-arg PIP_OPTIONS="$PIP_OPTIONS" -t "$STANDIN_TRITON_IMAGE" \
    -f "$standin/triton.Dockerfile" "$ROOT" > "$WORK/build-triton.log" 2>&1 \
    || die "building $STANDIN_TRITON_IMAGE failed (see $WORK/build-triton.log)"
  log "building worker and exporter (docker compose build)"
  compose build worker exporter > "$WORK/build-compose.log" 2>&1 \
    || die "docker compose build failed (see $WORK/build-compose.log)"
  docker run --rm --entrypoint python emotion-stream/worker:0.1.0 -c 'import torch' \
    > /dev/null 2>&1 && die "the worker image must not contain torch"
  [[ "$(docker run --rm --entrypoint id emotion-stream/worker:0.1.0 -u)" != 0 ]] \
    || die "the worker image runs as root"
  log "images: $(docker images --format '{{.Repository}}:{{.Tag}}={{.Size}}' \
    | grep -E '^emotion-stream/' | tr '\n' ' ')"
}

# ------------------------------------------------------------------------- 3. the stack

start_stack() {
  if [[ ! -f "$STANDIN_HF_MODEL/config.json" ]]; then
    "$VENV_BIN/python" -c 'import sys; from pathlib import Path
from tests.support.tiny_model import build_tiny_model
build_tiny_model(Path(sys.argv[1]))' "$STANDIN_HF_MODEL" > "$WORK/tiny-model.log" 2>&1 \
      || die "building the tiny model failed (see $WORK/tiny-model.log)"
  fi
  # The exporter runs as a non-root user; the builders write some files owner-only.
  chmod -R a+rX "$STANDIN_HF_MODEL"
  # A random tiny model: the exporter's FP32-vs-INT8 gate (agreement, drift) is off for it.
  export EXPORT_ARGS="--min-agreement 0 --max-drift 1 --parity-sample 64"
  export KAFKA_PORT KAFKA_INTERNAL_PORT KAFKA_CONTROLLER_PORT
  export TRITON_HTTP_PORT TRITON_GRPC_PORT TRITON_METRICS_PORT
  KAFKA_PORT=$(free_port); KAFKA_INTERNAL_PORT=$(free_port); KAFKA_CONTROLLER_PORT=$(free_port)
  TRITON_HTTP_PORT=$(free_port); TRITON_GRPC_PORT=$(free_port); TRITON_METRICS_PORT=$(free_port)
  log "ports: kafka $KAFKA_PORT (internal $KAFKA_INTERNAL_PORT, controller $KAFKA_CONTROLLER_PORT)," \
    "triton gRPC $TRITON_GRPC_PORT HTTP $TRITON_HTTP_PORT metrics $TRITON_METRICS_PORT"
  compose down -v --remove-orphans > /dev/null 2>&1 || true  # leftovers of a killed run
  log "docker compose up -d --scale worker=2"
  timeout "$UP_TIMEOUT_S" docker compose -p "$PROJECT" -f compose.yaml \
    -f compose/compose.standin.yaml up -d --no-build --scale worker=2 > "$WORK/up.log" 2>&1 \
    || { cat "$WORK/up.log" >&2; die "docker compose up failed or took over ${UP_TIMEOUT_S}s"; }
  compose ps --format '{{.Service}} {{.State}} {{.Status}}' | sed 's/^/  /'
  [[ "$(compose ps -q worker | wc -l)" == 2 ]] || die "expected 2 running workers"
}

workers() { compose ps -q --status running worker | wc -l; }

check_stream() {
  local bootstrap="127.0.0.1:$KAFKA_PORT" check="$VENV_BIN/python -m compose.ci.stream_check"
  log "producing $TWEETS tweets to 2 workers"
  $check tweets "$WORK/tweets-1.jsonl" "$TWEETS" "two-workers"
  "$VENV_BIN/emotion-stream" produce --bootstrap-servers "$bootstrap" "$WORK/tweets-1.jsonl" \
    > "$WORK/produce-1.log" 2>&1 || die "produce failed (see $WORK/produce-1.log)"
  $check await "$WORK/tweets-1.jsonl" --bootstrap-servers "$bootstrap" \
    --deadline "$RESULTS_DEADLINE_S" || die "results missing with 2 workers"

  log "producing $SCALE_TWEETS tweets at ${SCALE_RATE}/s while scaling 2 -> 3 -> 1 workers"
  $check tweets "$WORK/tweets-2.jsonl" "$SCALE_TWEETS" "scaling"
  "$VENV_BIN/emotion-stream" produce --bootstrap-servers "$bootstrap" --rate "$SCALE_RATE" \
    "$WORK/tweets-2.jsonl" > "$WORK/produce-2.log" 2>&1 &
  PRODUCER_PID=$!
  compose up -d --no-build --no-deps --no-recreate --scale worker=3 worker \
    > "$WORK/scale-up.log" 2>&1 || die "scaling to 3 workers failed (see $WORK/scale-up.log)"
  log "running workers: $(workers)"
  [[ "$(workers)" == 3 ]] || die "expected 3 running workers"
  sleep 5  # let the third worker join the group while tweets flow
  compose up -d --no-build --no-deps --no-recreate --scale worker=1 worker \
    > "$WORK/scale-down.log" 2>&1 || die "scaling to 1 worker failed (see $WORK/scale-down.log)"
  log "running workers: $(workers)"
  [[ "$(workers)" == 1 ]] || die "expected 1 running worker"
  wait "$PRODUCER_PID" || die "produce while scaling failed (see $WORK/produce-2.log)"
  PRODUCER_PID=""
  $check await "$WORK/tweets-1.jsonl" "$WORK/tweets-2.jsonl" --bootstrap-servers "$bootstrap" \
    --deadline "$RESULTS_DEADLINE_S" || die "an id was lost while scaling"
}

# ------------------------------------------------------------- 4. testcontainers tests

run_container_tests() {
  log "integration tests through the testcontainers backend (stand-in images, host network)"
  EMOTION_STREAM_TEST_BACKEND=testcontainers \
  EMOTION_STREAM_TEST_DOCKER_NETWORK=host \
  EMOTION_STREAM_KAFKA_IMAGE="$STANDIN_KAFKA_IMAGE" \
  EMOTION_STREAM_TRITON_IMAGE="$STANDIN_TRITON_IMAGE" \
  TESTCONTAINERS_RYUK_DISABLED=true \
    timeout "$TESTS_TIMEOUT_S" "$VENV_BIN/pytest" -q -p no:cacheprovider \
      tests/integration/test_embedded_kafka.py tests/integration/test_embedded_triton.py \
      tests/integration/test_worker_pipeline.py \
    || die "integration tests on the testcontainers backend failed"
}

mkdir -p "$STATE" "$WORK"
export PATH="$PATH:/usr/local/go/bin"
[[ -x "$VENV_BIN/python" ]] || die "no .venv: run 'make setup' first"
ensure_docker_packages
ensure_compose_plugin
ensure_dockerd
build_base_image
fetch_kafka_jars
serve_wheelhouse
build_images
start_stack
check_stream
log "stack checks passed; stopping the stack before the container tests"
compose down -v --remove-orphans --timeout 30 > "$WORK/down.log" 2>&1 \
  || die "compose down failed (see $WORK/down.log)"
run_container_tests
