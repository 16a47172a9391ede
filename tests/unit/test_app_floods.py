"""What a flood costs the operator: a stream of poison cannot flood the log, a failing
poll backs off instead of retrying every 0.2 s. The worker runs on the fakes of
test_app.py."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Any

import structlog

from tests.support.fakes import FakeSource, record, settings, tweets, wait_for
from worker.app import Worker
from worker.errors import BrokerUnavailable
from worker.messages import SourceRecord
from worker.observability import LogRateLimit
from worker.offsets import Partition
from worker.polling import POLL_RETRY_MAX_S
from worker.publishing import DEAD_LETTER_LOG_BURST

POISON = 600


def poison_flood() -> dict[Partition, list[SourceRecord]]:
    """Two error classes, interleaved with a few good tweets."""
    values: list[bytes | None] = []
    for i in range(POISON):
        values.append(None if i % 2 else b"\xff\xfe not utf-8")
        if i % 100 == 0:
            values.append(b'{"text": "a real tweet"}')
    return {("tweets", 0): [record(0, offset, v) for offset, v in enumerate(values)]}


def test_a_poison_flood_logs_a_few_lines_per_class_and_a_summary(run_worker: Any) -> None:
    records = poison_flood()
    total = len(records[("tweets", 0)])
    with structlog.testing.capture_logs() as logs:
        # One summary interval for the whole flood: its lines are counted exactly.
        h = run_worker(records, log_summary_interval_s=3600)
        wait_for(lambda: len(h.dead_letters()) == POISON, f"{POISON} dead letters")
        wait_for(lambda: h.source.committed() == {("tweets", 0): total}, "commit")
        h.stop()
    full = [e for e in logs if e["event"] == "dead-lettered"]
    summaries = [e for e in logs if e["event"] == "dead-lettered, not logged one by one"]
    by_class = {e["error_class"] for e in full}
    assert by_class == {"NullValue", "InvalidUtf8"}
    for error_class in by_class:
        assert sum(e["error_class"] == error_class for e in full) == DEAD_LETTER_LOG_BURST
    # Nothing lost from view: the full lines plus the summaries count every dead letter.
    assert {e["error_class"]: e["count"] for e in summaries} == {
        "NullValue": POISON // 2 - DEAD_LETTER_LOG_BURST,
        "InvalidUtf8": POISON // 2 - DEAD_LETTER_LOG_BURST,
    }
    assert len(logs) < 100, f"{len(logs)} log lines for {POISON} poison records"


def test_each_interval_logs_its_own_burst_and_summary() -> None:
    limit = LogRateLimit(burst=2)
    admitted = [limit.admit("A") for _ in range(5)] + [limit.admit("B")]
    assert admitted == [True, True, False, False, False, True]
    _, suppressed = limit.take_suppressed()
    assert suppressed == {"A": 3}
    # A new interval: the burst is available again, nothing carried over.
    assert limit.admit("A")
    assert limit.take_suppressed()[1] == {}


class FailingSource(FakeSource):
    """Polls fail ``failures`` times (a broker unreachable), then work; each call timed."""

    def __init__(self, records: dict[Partition, list[SourceRecord]], failures: int) -> None:
        super().__init__(records)
        self.failures = failures
        self.failed_at: list[float] = []

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        if self.failures > 0:
            self.failures -= 1
            self.failed_at.append(time.monotonic())
            raise BrokerUnavailable("poll", "no broker")
        return super().poll(timeout_s)


def test_a_failing_poll_backs_off_exponentially_up_to_a_cap(run_worker: Any) -> None:
    initial, cap, failures = 0.05, 0.4, 7
    source = FailingSource({("tweets", 0): tweets(0, 10)}, failures)
    with structlog.testing.capture_logs() as logs:
        h = run_worker({}, source=source, retry_backoff_initial_s=initial, retry_backoff_max_s=cap)
        wait_for(lambda: len(h.outputs()) == 10, "10 results after the outage")
        h.stop()
    delays = [e["retry_in_s"] for e in logs if e["event"] == "poll failed, will retry"]
    assert len(delays) == failures
    for attempt, delay in enumerate(delays):
        ceiling = min(cap, initial * 2**attempt)
        # Half fixed, half jitter (Backoff), rounded to 0.01 in the log.
        assert ceiling / 2 - 0.01 <= delay <= ceiling + 0.01, (attempt, delays)
    assert max(delays) > 4 * initial  # it grew, not a fixed wait
    gaps = [b - a for a, b in zip(source.failed_at, source.failed_at[1:], strict=False)]
    for gap, delay in zip(gaps, delays, strict=False):
        assert gap >= delay - 0.01  # the loop really waited, it did not spin


def test_the_poll_backoff_stays_inside_the_liveness_bound() -> None:
    worker = Worker(settings(retry_backoff_initial_s=1, retry_backoff_max_s=600))
    assert worker._poller.backoff.max_s == POLL_RETRY_MAX_S
    worker = Worker(settings(retry_backoff_initial_s=0.01, retry_backoff_max_s=0.05))
    assert worker._poller.backoff.max_s == 0.05


def test_idle_clients_on_the_metrics_port_do_not_add_worker_threads(run_worker: Any) -> None:
    """The whole worker, not just its server: 300 idle connections cost no thread, and
    its probes still answer within 1 s while it consumes."""
    h = run_worker({("tweets", 0): tweets(0, 20)}, metrics_port=0, metrics_host="127.0.0.1")
    wait_for(lambda: len(h.outputs()) == 20, "20 results")
    wait_for(lambda: h.worker.metrics_port is not None, "the metrics port")
    port = h.worker.metrics_port
    assert port is not None
    threads = threading.active_count()
    clients = []
    try:
        for _ in range(300):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        for path in ("/healthz", "/readyz", "/metrics"):
            started = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                assert answer.status == 200
            assert time.monotonic() - started < 1.0, path
        assert threading.active_count() <= threads
    finally:
        for client in clients:
            client.close()
    h.stop()
