"""``emotion-stream local fetch | up | down | status``: the Docker-free Kafka + Triton stack.

``up`` starts a Kafka 4.x broker (KRaft) and pytriton's ``tritonserver`` as background
processes on 127.0.0.1, creates the pipeline's topics and returns once both answer;
``down`` stops what ``up`` recorded in the state folder and nothing else; ``status``
reports what runs where. ``fetch`` copies the Kafka jars (``make setup`` runs it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from compose.embedded import (
    DEFAULT_KAFKA_CONTROLLER_PORT,
    DEFAULT_KAFKA_PORT,
    DEFAULT_TRITON_GRPC_PORT,
    DEFAULT_TRITON_HTTP_PORT,
    DEFAULT_TRITON_METRICS_PORT,
    DEFAULT_TWEETS_PARTITIONS,
    KAFKA_START_TIMEOUT_S,
    TRITON_START_TIMEOUT_S,
    KafkaBroker,
    KafkaPorts,
    TritonPorts,
    TritonServer,
    default_kafka_libs_dir,
    default_state_dir,
    fetch_kafka_jars,
    pipeline_topics,
)
from compose.processes import EmbeddedStackError
from emotion_stream.layout import DEFAULT_MODEL_NAME, ModelLayout, default_repository

SERVICES = ("kafka", "triton")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
# The worker's settings for non-default ports (EMOTION_STREAM_ prefix, worker/settings.py).
WORKER_KAFKA_ENV = "EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS"
WORKER_TRITON_ENV = "EMOTION_STREAM_TRITON_URL"


def build_parser() -> argparse.ArgumentParser:
    """The ``local`` command line (sub-commands fetch, up, down, status)."""
    parser = argparse.ArgumentParser(
        prog="emotion-stream local",
        description="Start, stop and inspect the Docker-free Kafka + Triton stack.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_state_dir(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--state-dir",
            type=Path,
            default=default_state_dir(),
            help="data, configs, logs and pid files (default: %(default)s)",
        )
        return sub

    fetch = commands.add_parser("fetch", help="copy the Kafka jars with Maven (idempotent)")
    fetch.add_argument(
        "--libs-dir",
        type=Path,
        default=default_kafka_libs_dir(),
        help="where the jars go (default: %(default)s)",
    )

    up = with_state_dir(commands.add_parser("up", help="start Kafka and Triton; wait until ready"))
    up.add_argument(
        "--model-repository",
        type=Path,
        default=default_repository(),
        help="the exporter's Triton model repository (default: %(default)s)",
    )
    up.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="model to wait for")
    up.add_argument("--kafka-port", type=int, default=DEFAULT_KAFKA_PORT)
    up.add_argument("--kafka-controller-port", type=int, default=DEFAULT_KAFKA_CONTROLLER_PORT)
    up.add_argument("--grpc-port", type=int, default=DEFAULT_TRITON_GRPC_PORT)
    up.add_argument("--http-port", type=int, default=DEFAULT_TRITON_HTTP_PORT)
    up.add_argument("--metrics-port", type=int, default=DEFAULT_TRITON_METRICS_PORT)
    up.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_TWEETS_PARTITIONS,
        help="partitions of `tweets` and `emotions` (default: %(default)s)",
    )
    up.add_argument(
        "--services",
        default=",".join(SERVICES),
        help="comma-separated subset of kafka,triton (default: both)",
    )
    up.add_argument(
        "--onnx-threads",
        type=int,
        default=0,
        help="onnxruntime intra-op threads in Triton when the config sets none (0: all cores)",
    )
    up.add_argument("--kafka-timeout", type=float, default=KAFKA_START_TIMEOUT_S)
    up.add_argument("--triton-timeout", type=float, default=TRITON_START_TIMEOUT_S)

    with_state_dir(commands.add_parser("down", help="stop what `up` started"))
    with_state_dir(commands.add_parser("status", help="what runs where"))
    return parser


def _services(value: str) -> list[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SERVICES))
    if unknown or not chosen:
        raise SystemExit(
            f"emotion-stream local: --services takes kafka and/or triton, got {value!r}"
        )
    return chosen


def _describe_kafka(broker: KafkaBroker) -> str:
    controller = f"127.0.0.1:{broker.ports.controller}"
    return (
        f"kafka   {broker.bootstrap_servers}  (KRaft controller {controller})"
        f"\n        log {broker.log_file}"
    )


def _describe_triton(server: TritonServer) -> str:
    return (
        f"triton  grpc {server.grpc_url}  http {server.http_url}  metrics {server.metrics_url}"
        f"\n        model {server.model_name!r} from {server.model_repository}"
        f"\n        log {server.log_file}"
    )


def up(args: argparse.Namespace) -> int:
    """Start what is not running yet, wait for both, create topics, say where they listen."""
    services = _services(args.services)
    state_dir: Path = args.state_dir.resolve()
    repository: Path = args.model_repository.resolve()
    layout = ModelLayout(repository, args.model_name)
    triton_running = TritonServer.recorded(state_dir).is_running()
    if "triton" in services and not triton_running and not layout.onnx.is_file():
        print(
            f"emotion-stream local up: no model at {layout.onnx}.\n"
            "Run `emotion-stream export` first (or pass --model-repository, "
            "or --services kafka to start the broker alone).",
            file=sys.stderr,
        )
        return EXIT_FAILED

    started: list[KafkaBroker | TritonServer] = []
    lines: list[str] = []
    worker_env: dict[str, str] = {}
    try:
        if "kafka" in services:
            broker = KafkaBroker.recorded(state_dir)
            if not broker.is_running():
                fetch_kafka_jars()
                broker = KafkaBroker(
                    state_dir, KafkaPorts(args.kafka_port, args.kafka_controller_port)
                )
            print("kafka: starting…" if not broker.is_running() else "kafka: already running")
            if broker.start(args.kafka_timeout):
                started.append(broker)
            wanted = pipeline_topics(args.partitions)
            created = broker.create_topics(wanted)
            topics = ", ".join(f"{name} ({count} partitions)" for name, count in wanted.items())
            lines.append(_describe_kafka(broker))
            if broker.ports.port != DEFAULT_KAFKA_PORT:
                worker_env[WORKER_KAFKA_ENV] = broker.bootstrap_servers
            lines.append(
                f"        topics {topics}"
                + (f"; created now: {', '.join(created)}" if created else "")
            )
        if "triton" in services:
            server = TritonServer.recorded(state_dir)
            if not server.is_running():
                server = TritonServer(
                    state_dir,
                    repository,
                    TritonPorts(args.grpc_port, args.http_port, args.metrics_port),
                    model_name=args.model_name,
                    intra_op_threads=args.onnx_threads,
                )
            print("triton: starting…" if not server.is_running() else "triton: already running")
            if server.start(args.triton_timeout):
                started.append(server)
            lines.append(_describe_triton(server))
            if server.ports.grpc != DEFAULT_TRITON_GRPC_PORT:
                worker_env[WORKER_TRITON_ENV] = server.grpc_url
    except EmbeddedStackError as error:
        # Leave nothing half-up: stop what this call started, keep what ran before.
        for service in reversed(started):
            service.stop()
        print(f"emotion-stream local up failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(["", *lines, ""]))
    if worker_env:
        # The worker's settings (worker/settings.py) default to the Compose ports.
        print("for the worker: " + " ".join(f"{key}={value}" for key, value in worker_env.items()))
    print(f"state, data and logs in {state_dir}")
    print(f"stop with: emotion-stream local down --state-dir {state_dir}")
    return EXIT_OK


def down(args: argparse.Namespace) -> int:
    """Stop Triton, then Kafka, as recorded in the state folder; nothing else."""
    state_dir: Path = args.state_dir.resolve()
    for service in (TritonServer.recorded(state_dir), KafkaBroker.recorded(state_dir)):
        stopped = service.stop()
        print(f"{service.component}: {'stopped' if stopped else 'not running'}")
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    """Say what runs where; exit 0 only when both services run and answer."""
    state_dir: Path = args.state_dir.resolve()
    broker = KafkaBroker.recorded(state_dir)
    server = TritonServer.recorded(state_dir)
    healthy = True
    for service, description in (
        (broker, _describe_kafka(broker)),
        (server, _describe_triton(server)),
    ):
        if not service.is_running():
            print(f"{service.component:<7} not running")
            healthy = False
            continue
        ready = service.is_ready()
        healthy = healthy and ready
        pid = service.process.recorded_pid()
        state = "ready" if ready else "running, NOT ready"
        print(f"{description}\n        pid {pid}, {state}")
    return EXIT_OK if healthy else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``emotion-stream local``."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "fetch":
            libs = fetch_kafka_jars(args.libs_dir)
            print(f"kafka jars in {libs}")
            return EXIT_OK
        if args.command == "up":
            return up(args)
        if args.command == "down":
            return down(args)
        if args.command == "status":
            return status(args)
    except EmbeddedStackError as error:
        print(f"emotion-stream local {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE
