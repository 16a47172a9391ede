"""Logs, metrics and health: what an operator sees of a running worker.

- structlog JSON lines on stderr: one per batch at debug, a throughput summary every
  ``log_summary_interval_s`` at info, every state change (assigned, backing off,
  ready) at info/warning.
- One HTTP server: Prometheus ``/metrics``, ``/healthz`` (the loop is alive) and
  ``/readyz`` (assigned, Triton reachable, not backing off). Each worker owns its
  registry, so several workers can run in one process (the tests do).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

# A loop iteration blocks at most for one poll and one harvest; far longer means stuck.
DEFAULT_LIVENESS_TIMEOUT_S = 60.0

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class JsonLineFormatter(logging.Formatter):
    """Stdlib records (kafka-python, grpc, the transport) as JSON lines like structlog's."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


def configure_logging(level: str = "info") -> None:
    """JSON logs on stderr at ``level`` (process-wide: structlog's config is global)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Libraries log through stdlib logging: only their warnings, as JSON too.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "emotion_worker_consumed", "Records consumed from the input topic", registry=r
        )
        self.published = Counter(
            "emotion_worker_published", "Results acknowledged on the output topic", registry=r
        )
        self.dead_lettered = Counter(
            "emotion_worker_dead_lettered",
            "Records acknowledged on the dead-letter topic",
            ["error_class"],
            registry=r,
        )
        self.unprocessable = Counter(
            "emotion_worker_unprocessable",
            "Records dead-lettered (class Unprocessable) or sent as a bare dead letter because "
            "an unexpected exception broke their own processing: a bug to report",
            ["stage", "exception"],
            registry=r,
        )
        self.retries = Counter(
            "emotion_worker_retries",
            "Transient failures retried after a backoff",
            ["reason"],
            registry=r,
        )
        self.commits = Counter(
            "emotion_worker_commits", "Offset commits that succeeded", registry=r
        )
        self.batch_size = Histogram(
            "emotion_worker_batch_size",
            "Tweets per inference request",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            "emotion_worker_inference_seconds",
            "Time to classify one batch (all its Triton requests)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "emotion_worker_end_to_end_seconds",
            "From poll to the result's acknowledgement by the broker",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "emotion_worker_consumer_lag",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=r,
        )
        self.in_flight_batches = Gauge(
            "emotion_worker_in_flight_batches", "Batches at Triton now", registry=r
        )
        self.ready = Gauge("emotion_worker_ready", "1 when /readyz answers 200", registry=r)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


@dataclass
class Health:
    """Liveness (the loop keeps turning) and readiness (able to do the work now)."""

    liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S
    _beat: float = field(default_factory=time.monotonic)
    _ready: bool = False
    _reason: str = "starting"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def beat(self) -> None:
        self._beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str = "") -> bool:
        """Set readiness; True if it changed."""
        with self._lock:
            changed = ready != self._ready
            self._ready, self._reason = ready, ("ok" if ready else reason or "not ready")
            return changed

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.liveness_timeout_s


class HealthServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on one port, served from a daemon thread."""

    def __init__(self, host: str, port: int, metrics: WorkerMetrics, health: Health) -> None:
        self._metrics = metrics
        self._health = health
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="worker-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> HealthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        metrics, health = self._metrics, self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    metrics.ready.set(1 if health.ready else 0)
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = health.alive
                    self._send(200 if ok else 503, b"ok\n" if ok else b"loop stalled\n")
                elif path == "/readyz":
                    ok = health.ready
                    self._send(200 if ok else 503, f"{health.reason}\n".encode())
                else:
                    self._send(404, b"not found: try /metrics, /healthz, /readyz\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                # Probes every few seconds would drown the worker's own log lines.
                return

        return Handler


@dataclass
class ThroughputSummary:
    """Counts since the last info-level summary line."""

    interval_s: float
    _started: float = field(default_factory=time.monotonic)
    consumed: int = 0
    published: int = 0
    dead_lettered: int = 0
    batches: int = 0

    def due(self) -> bool:
        return time.monotonic() - self._started >= self.interval_s

    def emit(self, log: Any, **extra: Any) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        log.info(
            "throughput",
            seconds=round(elapsed, 1),
            consumed=self.consumed,
            published=self.published,
            dead_lettered=self.dead_lettered,
            batches=self.batches,
            published_per_s=round(self.published / elapsed, 1),
            **extra,
        )
        self._started = time.monotonic()
        self.consumed = self.published = self.dead_lettered = self.batches = 0
