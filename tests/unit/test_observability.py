"""The health server: /metrics, /healthz, /readyz on one port; port 0 picks a free one.
And the logs: the worker's lines and its libraries' in one JSON shape, with its id."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import structlog

from worker.observability import (
    MAX_CONNECTIONS,
    MAX_REQUEST_HEAD_BYTES,
    Health,
    HealthServer,
    WorkerMetrics,
    configure_logging,
)


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_endpoints_follow_health_and_metrics() -> None:
    metrics, health = WorkerMetrics(), Health()
    with HealthServer("127.0.0.1", 0, metrics, health) as server:
        assert server.port > 0
        status, body = get(server.port, "/readyz")
        assert status == 503 and "starting" in body
        assert get(server.port, "/healthz")[0] == 200

        health.set_ready(True)
        metrics.consumed.inc(3)
        metrics.dead_lettered.labels(error_class="EmptyText").inc()
        metrics.batch_size.observe(8)
        assert get(server.port, "/readyz")[0] == 200
        status, body = get(server.port, "/metrics")
        assert status == 200
        assert "emotion_worker_consumed_total 3.0" in body
        assert 'emotion_worker_dead_lettered_total{error_class="EmptyText"} 1.0' in body
        assert "emotion_worker_batch_size_bucket" in body
        assert "emotion_worker_ready 1.0" in body
        assert get(server.port, "/nope")[0] == 404

        health.set_ready(False, "backing off: Triton down")
        status, body = get(server.port, "/readyz")
        assert status == 503 and "Triton down" in body


def test_liveness_fails_when_the_loop_stalls() -> None:
    health = Health(liveness_timeout_s=0.0)
    assert not health.alive
    health = Health(liveness_timeout_s=60.0)
    health.beat()
    assert health.alive


def test_two_workers_have_separate_registries() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    first.published.inc()
    assert b"emotion_worker_published_total 1.0" in first.render()
    assert b"emotion_worker_published_total 0.0" in second.render()


# --- idle and slow clients -----------------------------------------------------------
# The guarantee: a probe is answered within PROBE_BOUND_S whatever idle clients hold, no
# thread is spent on them, and each is closed once its connection timeout has passed.
PROBE_BOUND_S = 1.0
IDLE_CLIENTS = 300
# Closing is done by the server's own loop a moment after the timeout; a busy 2-core box
# may add a second or two before the test thread sees it.
CLOSE_MARGIN_S = 3.0


def timed_get(port: int, path: str) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = get(port, path)
    return status, time.monotonic() - started


def closed_by_server(client: socket.socket, within_s: float) -> bool:
    client.settimeout(within_s)
    try:
        return client.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def open_idle_clients(port: int, count: int) -> list[socket.socket]:
    clients = []
    for i in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:  # half send part of a request, half nothing at all
            client.sendall(b"GET /heal")
        clients.append(client)
    return clients


def test_idle_clients_cost_no_threads_and_cannot_delay_probes() -> None:
    metrics, health = WorkerMetrics(), Health()
    threads_before = threading.active_count()
    timeout_s = 2.0
    with (
        HealthServer("127.0.0.1", 0, metrics, health, connection_timeout_s=timeout_s) as server,
        contextlib.ExitStack() as stack,
    ):
        opened = time.monotonic()
        clients = open_idle_clients(server.port, IDLE_CLIENTS)
        for client in clients:
            stack.callback(client.close)

        for path in ("/healthz", "/metrics", "/healthz"):
            status, seconds = timed_get(server.port, path)
            assert status == 200
            assert seconds < PROBE_BOUND_S, f"{path} took {seconds:.2f} s"
        # The server's one thread, whatever the number of clients.
        assert threading.active_count() <= threads_before + 1
        assert server.open_connections <= MAX_CONNECTIONS

        deadline = opened + timeout_s + CLOSE_MARGIN_S
        still_open = [
            c for c in clients if not closed_by_server(c, max(deadline - time.monotonic(), 0.01))
        ]
        assert not still_open, f"{len(still_open)} idle connections outlived the timeout"
        assert server.open_connections == 0


def test_a_client_trickling_its_request_is_cut_off_at_the_timeout() -> None:
    timeout_s = 1.0
    with HealthServer(
        "127.0.0.1", 0, WorkerMetrics(), Health(), connection_timeout_s=timeout_s
    ) as server:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with client:
            started = time.monotonic()
            closed = False
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    client.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if closed_by_server(client, 0.1):
                    closed = True
                    break
            assert closed, "a trickling client kept its connection past 10 s"
            assert time.monotonic() - started < timeout_s + CLOSE_MARGIN_S


def test_at_the_cap_the_oldest_idle_client_makes_room_for_a_probe() -> None:
    cap = 20
    with HealthServer(
        "127.0.0.1", 0, WorkerMetrics(), Health(), max_connections=cap, connection_timeout_s=30
    ) as server:
        clients = open_idle_clients(server.port, 2 * cap)
        try:
            status, seconds = timed_get(server.port, "/healthz")
            assert status == 200 and seconds < PROBE_BOUND_S
            assert server.open_connections <= cap
            # The first ones were closed to make room; the newest are still held.
            assert closed_by_server(clients[0], 2.0)
            assert not closed_by_server(clients[-1], 0.2)
        finally:
            for client in clients:
                client.close()


def test_oversized_or_malformed_requests_get_no_thread_and_a_short_answer() -> None:
    with HealthServer("127.0.0.1", 0, WorkerMetrics(), Health()) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"GET /" + b"a" * (MAX_REQUEST_HEAD_BYTES + 10))
            assert closed_by_server(client, 5.0)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"hello\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 400")
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as client:
            client.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 405")
        assert get(server.port, "/healthz")[0] == 200


def test_a_taken_port_fails_at_construction() -> None:
    with (
        HealthServer("127.0.0.1", 0, WorkerMetrics(), Health()) as server,
        pytest.raises(OSError),
    ):
        HealthServer("127.0.0.1", server.port, WorkerMetrics(), Health())


# --- logs: one JSON shape for the worker's lines and its libraries' -----------------


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Logging configured as the worker does it (on the captured stderr), undone after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def lines() -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines()]  # every line is JSON

    try:
        yield lines
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level


def test_library_and_worker_lines_are_json_with_the_worker_id(
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    configure_logging("info", worker_id="worker-7")
    logging.getLogger("kafka.conn").warning("Connection to %s failed", "127.0.0.1:9092")
    logging.getLogger("kafka.conn").info("below the libraries' WARNING floor: not shown")
    structlog.get_logger("worker").info("partitions assigned", partitions=[["tweets", 0]])
    try:
        raise ConnectionResetError("peer gone")
    except ConnectionResetError:
        logging.getLogger("worker.transport").exception("commit on revocation failed")
    library, worker, transport = json_logs()
    assert library == {
        "event": "Connection to 127.0.0.1:9092 failed",
        "level": "warning",
        "logger": "kafka.conn",
        "timestamp": library["timestamp"],
        "worker_id": "worker-7",
    }
    assert worker == {
        "event": "partitions assigned",
        "partitions": [["tweets", 0]],
        "level": "info",
        "logger": "worker",
        "timestamp": worker["timestamp"],
        "worker_id": "worker-7",
    }
    assert transport["level"] == "error" and transport["worker_id"] == "worker-7"
    assert "ConnectionResetError: peer gone" in transport["exception"]
    for line in (library, worker):
        assert datetime.fromisoformat(line["timestamp"]).utcoffset() == timedelta(0)


def test_a_worker_bound_id_wins_and_debug_lines_follow_the_level(
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    configure_logging("debug", worker_id="process-id")
    log = structlog.get_logger("worker").bind(worker_id="bound-id")
    log.debug("batch", size=3)
    logging.getLogger("kafka.client").info("library info stays hidden at debug too")
    (batch,) = json_logs()
    assert batch["event"] == "batch" and batch["level"] == "debug"
    assert batch["worker_id"] == "bound-id"
    configure_logging("warning", worker_id="process-id")
    structlog.get_logger("worker").info("hidden at warning")
    assert json_logs() == []


def test_the_login_watch_still_sees_warnings_when_the_level_is_error(
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    """The transport's watch on ``kafka.net.manager`` (a refused login, logged at WARNING)
    must not go blind when the worker logs only errors; the line itself stays unlogged."""
    import worker.transport  # noqa: F401, PLC0415 - pins the watched logger's level

    seen: list[logging.LogRecord] = []

    class Watch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record)
            return True

    configure_logging("error", worker_id="worker-7")
    watched, watch = logging.getLogger("kafka.net.manager"), Watch()
    watched.filters.insert(0, watch)  # before the transport's, which drops the line
    try:
        watched.warning("Connection failed: %s", "SASL authentication failed")
    finally:
        watched.removeFilter(watch)
    assert [record.levelname for record in seen] == ["WARNING"]
    assert json_logs() == []
