#!/usr/bin/env bash
# `make run` / `make stop`: the README's first command, step by step.
#
#   run:  export the model (unless the repository already holds one) → start the local
#         Kafka + Triton → start a worker in the background → feed sample tweets →
#         print classified tweets live until Ctrl-C.
#   stop: stop the worker this script started, then the local stack.
#
# Environment: MODEL (hub id or local model folder), EXPORT_ARGS (more options for
# `emotion-stream export`, e.g. "--min-agreement 0 --max-drift 1" for an untrained test model),
# SAMPLE_LIMIT (tweets to feed, default 200), SAMPLE_RATE (tweets/s, default 10),
# IDLE_TIMEOUT (stop printing after this many idle seconds; default: until Ctrl-C).
# EMOTION_STREAM_* settings reach the worker and the tools as usual.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
STATE=.local
WORKER_PID="$STATE/worker.pid"
WORKER_LOG="$STATE/worker.log"
MODEL="${MODEL:-cardiffnlp/twitter-roberta-base-emotion}"
REPOSITORY="${EMOTION_STREAM_MODEL_REPOSITORY:-$PWD/triton_models}"
MODEL_NAME="${EMOTION_STREAM_MODEL_NAME:-emotion-classifier}"
SAMPLE_LIMIT="${SAMPLE_LIMIT:-200}"
SAMPLE_RATE="${SAMPLE_RATE:-10}"
# The demo's reading group: a second `make run` prints only what is new.
DEMO_GROUP=emotion-stream-demo
WORKER_READY_TIMEOUT_S=120

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

worker_running() {
    [[ -f "$WORKER_PID" ]] && kill -0 "$(cat "$WORKER_PID")" 2>/dev/null \
        && grep -q "emotion-stream" "/proc/$(cat "$WORKER_PID")/cmdline" 2>/dev/null
}

export_model() {
    local onnx="$REPOSITORY/$MODEL_NAME/1/model.onnx"
    if [[ -f "$onnx" && ! -d "$MODEL" ]]; then
        # A hub id would need the network even to check; what is there is used as is.
        local from
        from=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["id"])' \
            "$REPOSITORY/$MODEL_NAME/export-report.json" 2>/dev/null || echo "an earlier export")
        say "Model: $REPOSITORY/$MODEL_NAME already holds a model (from $from); not exporting again"
        return
    fi
    say "Exporting $MODEL → $REPOSITORY (ONNX → fused INT8; a no-op when already up to date)"
    # shellcheck disable=SC2086 # EXPORT_ARGS is a list of options
    if ! "$BIN/emotion-stream" export --model "$MODEL" ${EXPORT_ARGS:-}; then
        if [[ ! -d "$MODEL" ]]; then
            cat >&2 <<EOF

Could not export '$MODEL': a hub id is downloaded from the Hugging Face Hub,
which needs internet access. Without it, pass a local model folder instead (a
transformers sequence classifier saved together with its tokenizer):

    make run MODEL=/path/to/model-folder
EOF
        fi
        exit 1
    fi
}

start_stack() {
    say "Starting the local Kafka + Triton (emotion-stream local up)"
    "$BIN/emotion-stream" local up
}

start_worker() {
    mkdir -p "$STATE"
    if worker_running; then
        say "Worker already running (pid $(cat "$WORKER_PID"), log $WORKER_LOG)"
        return
    fi
    say "Starting a worker in the background (log $WORKER_LOG)"
    # Its own session: Ctrl-C on this terminal stops the printing, not the worker.
    # exec keeps the pid written to the pid file the worker's own.
    setsid bash -c "echo \$\$ > '$WORKER_PID'; exec '$BIN/emotion-stream' worker" \
        >"$WORKER_LOG" 2>&1 </dev/null &
    local deadline=$((SECONDS + WORKER_READY_TIMEOUT_S))
    # The worker logs a "readiness" event each time /readyz changes; the first
    # "ready": true means it is assigned partitions and Triton answers.
    until [[ -s "$WORKER_PID" ]] && grep -q '"ready": true' "$WORKER_LOG"; do
        if [[ -s "$WORKER_PID" ]] && ! worker_running; then
            tail -n 30 "$WORKER_LOG" >&2
            die "the worker exited during start-up (log above, full log in $WORKER_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$WORKER_LOG" >&2
            die "the worker was not ready within ${WORKER_READY_TIMEOUT_S}s (log in $WORKER_LOG)"
        fi
        sleep 0.5
    done
}

feed_and_show() {
    say "Feeding $SAMPLE_LIMIT sample tweets at $SAMPLE_RATE/s; results appear below (Ctrl-C stops printing)"
    "$BIN/emotion-stream" produce --sample --limit "$SAMPLE_LIMIT" --rate "$SAMPLE_RATE" \
        > "$STATE/produce.log" 2>&1 &
    local producer=$!
    local consume_args=(--group "$DEMO_GROUP" --from-beginning)
    [[ -n "${IDLE_TIMEOUT:-}" ]] && consume_args+=(--timeout "$IDLE_TIMEOUT")
    # consume exits 0 on Ctrl-C; the hint below is printed either way.
    trap 'true' INT
    printf '\033[2m%-9s %-5s %-12s %s\033[0m\n' label score id "text  (expected: a human's label, sample tweets only)"
    "$BIN/emotion-stream" consume "${consume_args[@]}" || true
    trap - INT
    if kill -0 "$producer" 2>/dev/null; then
        kill "$producer" 2>/dev/null || true
    fi
    wait "$producer" 2>/dev/null || true
    cat <<EOF

The worker (pid $(cat "$WORKER_PID" 2>/dev/null || echo '?')) and the local Kafka + Triton are still running.
  more tweets:    echo "what a great day" | $BIN/emotion-stream produce
  watch results:  $BIN/emotion-stream consume
  worker log:     $WORKER_LOG
  stop it all:    make stop
EOF
}

stop() {
    if worker_running; then
        local pid
        pid=$(cat "$WORKER_PID")
        say "Stopping the worker (pid $pid): SIGTERM, it commits and exits"
        kill -TERM "$pid"
        local deadline=$((SECONDS + 60))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "worker still running after 60s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        say "No worker running"
    fi
    rm -f "$WORKER_PID"
    say "Stopping the local Kafka + Triton (emotion-stream local down)"
    "$BIN/emotion-stream" local down
}

case "${1:-run}" in
    run)
        export_model
        start_stack
        start_worker
        feed_and_show
        ;;
    stop) stop ;;
    *) die "usage: $0 [run|stop]" ;;
esac
