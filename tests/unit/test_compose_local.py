"""``emotion-stream local`` without services: parsing, backend choice, messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from compose import local
from compose.embedded import DEFAULT_KAFKA_PORT, DEFAULT_TRITON_GRPC_PORT, pipeline_topics
from tests.support import service_fixtures


def test_defaults_are_the_compose_ports() -> None:
    args = local.build_parser().parse_args(["up"])
    assert (args.kafka_port, args.grpc_port) == (DEFAULT_KAFKA_PORT, DEFAULT_TRITON_GRPC_PORT)
    assert (DEFAULT_KAFKA_PORT, DEFAULT_TRITON_GRPC_PORT) == (9092, 8001)
    assert (args.http_port, args.metrics_port, args.partitions) == (8000, 8002, 3)


def test_pipeline_topics() -> None:
    assert pipeline_topics(5) == {"tweets": 5, "emotions": 5, "tweets.dlq": 1}


def test_unknown_service_is_a_usage_error() -> None:
    with pytest.raises(SystemExit, match="kafka and/or triton"):
        local._services("kafka,zookeeper")


def test_status_of_a_stack_never_started(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert local.main(["status", "--state-dir", str(tmp_path)]) == local.EXIT_FAILED
    assert capsys.readouterr().out.count("not running") == 2


def test_down_of_a_stack_never_started_is_harmless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert local.main(["down", "--state-dir", str(tmp_path)]) == local.EXIT_OK
    assert "not running" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("setting", "docker", "expected"),
    [
        ("local", True, "local"),
        ("testcontainers", False, "testcontainers"),
        ("auto", True, "testcontainers"),
        ("auto", False, "local"),
        ("", False, "local"),
    ],
)
def test_backend_choice(
    monkeypatch: pytest.MonkeyPatch, setting: str, docker: bool, expected: str
) -> None:
    monkeypatch.setenv(service_fixtures.BACKEND_ENV, setting)
    monkeypatch.setattr(service_fixtures, "docker_available", lambda: docker)
    assert service_fixtures.chosen_backend() == expected


def test_an_unknown_backend_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(service_fixtures.BACKEND_ENV, "kubernetes")
    with pytest.raises(pytest.UsageError):
        service_fixtures.chosen_backend()
