"""The health server: /metrics, /healthz, /readyz on one port; port 0 picks a free one."""

from __future__ import annotations

import urllib.error
import urllib.request

from worker.observability import Health, HealthServer, WorkerMetrics


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
