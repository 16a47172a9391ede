"""Logs, metrics and health: what an operator sees of a running worker.

- JSON lines on stderr, the worker's and its libraries' alike, each with the worker's
  id: one per batch at debug, a throughput summary every ``log_summary_interval_s`` at
  info, every state change (assigned, backing off, ready) at info/warning.
- One HTTP server: Prometheus ``/metrics``, ``/healthz`` (the loop is alive) and
  ``/readyz`` (assigned, Triton reachable, not backing off). Each worker owns its
  registry, so several workers can run in one process (the tests do).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from structlog.typing import EventDict, Processor

# A loop iteration blocks at most for one poll and one harvest; far longer means stuck.
DEFAULT_LIVENESS_TIMEOUT_S = 60.0

# The health server: probes and scrapes finish in milliseconds, so a connection that has
# not sent its request and read the answer within this is idle or slow on purpose.
CONNECTION_TIMEOUT_S = 5.0
# Open connections at once. Each costs a socket (no thread); this keeps a flood well
# inside the usual 1024 file descriptors, leaving room for Kafka and Triton's sockets.
MAX_CONNECTIONS = 256
# A request line and headers fit here (probes send ~100 bytes); more is refused.
MAX_REQUEST_HEAD_BYTES = 8192
LISTEN_BACKLOG = 128

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _AddWorkerId:
    """Puts the process's worker id on every line that does not name one already.

    kafka-python logs from its own I/O thread, where nothing the worker binds reaches, so
    the id is the process's: one worker per process (several in one process, as in the
    tests, still name their own on their own lines).
    """

    def __init__(self, worker_id: str | None) -> None:
        self._worker_id = worker_id

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> EventDict:
        if self._worker_id is not None:
            event_dict.setdefault("worker_id", self._worker_id)
        return event_dict


class _HandlerLoggers:
    """structlog's loggers: stdlib loggers outside logging's tree, each handing its records
    straight to the one handler.

    structlog has filtered by level already; inside the tree the root's level (the
    libraries' WARNING floor) would drop the worker's own info and debug lines. One
    handler for both keeps one lock around every write, so lines from different threads
    never interleave.
    """

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler
        self._loggers: dict[str, logging.Logger] = {}

    def __call__(self, *args: Any) -> logging.Logger:
        name = str(args[0]) if args else "worker"
        logger = self._loggers.get(name)
        if logger is None:
            logger = logging.Logger(name)
            logger.addHandler(self._handler)
            logger = self._loggers.setdefault(name, logger)
        return logger


def configure_logging(level: str = "info", *, worker_id: str | None = None) -> None:
    """JSON lines on stderr at ``level`` (process-wide: structlog's config is global).

    The worker's structlog events and the stdlib records of libraries (kafka-python,
    grpc) and of the transport go through one handler and one formatter (structlog's
    ``ProcessorFormatter``): every line has the same fields — ``event``, ``level``,
    ``logger``, ``timestamp`` and, when given, ``worker_id`` — and libraries only show
    their warnings and errors.
    """
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _AddWorkerId(worker_id),
        structlog.processors.format_exc_info,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_HandlerLoggers(handler),
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
    """``/metrics``, ``/healthz``, ``/readyz`` on one port, served from one daemon thread.

    One asyncio loop serves every connection, so an idle or slow client costs a socket,
    never a thread: a flood of them cannot exhaust the process's threads (which Kafka's
    exactly-once producer also needs for each transactional call). Each connection gets
    ``connection_timeout_s`` in all to send its request and read the answer, then is
    closed; at most ``max_connections`` are open, and when a new one arrives at the cap
    the oldest still waiting for its request is closed to make room, so a probe gets in
    even while the cap is full of idle clients. One request per connection
    (``Connection: close``), which every prober and Prometheus handle.

    The socket is bound in the constructor: a port already taken fails at start-up.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: WorkerMetrics,
        health: Health,
        *,
        connection_timeout_s: float = CONNECTION_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._timeout_s = connection_timeout_s
        self._max_connections = max_connections
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        self._loop = asyncio.new_event_loop()
        # Open connections, oldest first; True while still waiting for the request.
        self._connections: dict[asyncio.StreamWriter, bool] = {}
        self._thread = threading.Thread(target=self._serve, name="worker-health", daemon=True)
        self._serving = threading.Event()

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Connections held open now (for tests and debugging)."""
        return len(self._connections)

    def __enter__(self) -> HealthServer:
        self._thread.start()
        # Serving before the worker goes on (and before a quick exit could stop a loop
        # that has not started the server yet).
        self._serving.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        else:
            self._socket.close()
            self._loop.close()

    # --- the loop thread -------------------------------------------------------------

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                asyncio.start_server(
                    self._handle,
                    sock=self._socket,
                    limit=MAX_REQUEST_HEAD_BYTES,
                    backlog=LISTEN_BACKLOG,
                )
            )
        finally:
            self._serving.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for writer in list(self._connections):
                writer.transport.abort()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.close()

    def _admit(self, writer: asyncio.StreamWriter) -> bool:
        if len(self._connections) >= self._max_connections:
            oldest_idle = next((w for w, waiting in self._connections.items() if waiting), None)
            if oldest_idle is None:  # all busy answering (each for at most the timeout)
                writer.transport.abort()
                return False
            del self._connections[oldest_idle]
            oldest_idle.transport.abort()
        self._connections[writer] = True
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit(writer):
            return
        clean = False
        try:
            async with asyncio.timeout(self._timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
                if writer not in self._connections:
                    return  # evicted meanwhile
                self._connections[writer] = False
                writer.write(self._answer(head))
                await writer.drain()
                clean = True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # idle or slow (TimeoutError), gone, or oversized: nothing to answer
        finally:
            self._connections.pop(writer, None)
            if clean:
                writer.close()  # graceful: the answer is delivered
            else:
                writer.transport.abort()

    def _answer(self, head: bytes) -> bytes:
        """The whole HTTP response to a request whose line and headers are ``head``."""
        request_line = head.split(b"\r\n", 1)[0].split()
        if len(request_line) != 3 or not request_line[2].startswith(b"HTTP/"):
            return _response(400, b"bad request\n")
        method, target = request_line[0], request_line[1]
        if method not in {b"GET", b"HEAD"}:
            return _response(405, b"only GET\n")
        status, body, content_type = self._route(target.split(b"?", 1)[0])
        return _response(status, body, content_type, head_only=method == b"HEAD")

    def _route(self, path: bytes) -> tuple[int, bytes, str]:
        metrics, health = self._metrics, self._health
        if path == b"/metrics":
            metrics.ready.set(1 if health.ready else 0)
            return 200, metrics.render(), CONTENT_TYPE_LATEST
        if path == b"/healthz":
            ok = health.alive
            return (200 if ok else 503), (b"ok\n" if ok else b"loop stalled\n"), "text/plain"
        if path == b"/readyz":
            return (200 if health.ready else 503), f"{health.reason}\n".encode(), "text/plain"
        return 404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain"


def _response(
    status: int, body: bytes, content_type: str = "text/plain", *, head_only: bool = False
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + (b"" if head_only else body)


@dataclass
class LogRateLimit:
    """Full log lines for the first ``burst`` events of each kind per interval, then only
    a count, so a flood (a producer sending nothing but poison) cannot flood the logs.

    The owner calls :meth:`admit` per event and :meth:`take_suppressed` once per interval
    to log one summary line per kind that went over. Not thread-safe: one thread's events.
    """

    burst: int
    _logged: dict[str, int] = field(default_factory=dict)
    _suppressed: dict[str, int] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)

    def admit(self, kind: str) -> bool:
        """True if this event gets its own line; else it is counted for the summary."""
        logged = self._logged.get(kind, 0)
        if logged < self.burst:
            self._logged[kind] = logged + 1
            return True
        self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
        return False

    def take_suppressed(self) -> tuple[float, dict[str, int]]:
        """Seconds since the last call and the events per kind not logged meanwhile;
        starts a new interval."""
        now = time.monotonic()
        elapsed, suppressed = now - self._started, self._suppressed
        self._logged, self._suppressed, self._started = {}, {}, now
        return elapsed, suppressed


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
