"""``emotion-stream local up/status/down`` as a user runs it, in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from compose.embedded import (
    KafkaBroker,
    KafkaPorts,
    TritonPorts,
    TritonServer,
    fetch_kafka_jars,
)
from compose.processes import ServiceStartError
from tests.support.network import free_ports

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 300  # generous: a cold first start on a busy 2-core machine


def _local(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emotion_stream.cli", "local", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _processes_mentioning(marker: str) -> list[str]:
    """Command lines of live processes naming ``marker`` (our state folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and "pytest" not in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def test_up_twice_status_down_leaves_no_process(
    tmp_path: Path, tiny_model_repository: Path
) -> None:
    state = tmp_path / "stack"
    kafka, controller, grpc, http, metrics = free_ports(5)
    up_args = [
        "up", "--state-dir", str(state), "--model-repository", str(tiny_model_repository),
        "--kafka-port", str(kafka), "--kafka-controller-port", str(controller),
        "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
        "--partitions", "2",
    ]  # fmt: skip
    try:
        first = _local(*up_args)
        assert first.returncode == 0, first.stderr + first.stdout
        assert f"127.0.0.1:{kafka}" in first.stdout
        assert f"grpc 127.0.0.1:{grpc}" in first.stdout
        assert "emotion-stream local down" in first.stdout
        assert f"EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka}" in first.stdout
        assert f"EMOTION_STREAM_TRITON_URL=127.0.0.1:{grpc}" in first.stdout
        pids = {path.read_text().strip() for path in state.glob("*/*.pid")}
        assert len(pids) == 2

        second = _local(*up_args)
        assert second.returncode == 0, second.stderr + second.stdout
        assert second.stdout.count("already running") == 2
        assert {path.read_text().strip() for path in state.glob("*/*.pid")} == pids

        status = _local("status", "--state-dir", str(state))
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("ready") == 2
    finally:
        down = _local("down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert "triton: stopped" in down.stdout and "kafka: stopped" in down.stdout
    assert _processes_mentioning(str(state)) == []
    assert not list(state.glob("*/*.pid"))

    after = _local("status", "--state-dir", str(state))
    assert after.returncode == 1
    assert after.stdout.count("not running") == 2


def test_up_without_a_model_says_to_export_first(tmp_path: Path) -> None:
    result = _local(
        "up", "--state-dir", str(tmp_path / "stack"),
        "--model-repository", str(tmp_path / "empty-repository"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "emotion-stream export" in result.stderr
    assert not (tmp_path / "stack").exists()  # nothing was started


def test_readiness_timeout_names_the_component_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch_kafka_jars()
    broker = KafkaBroker(tmp_path / "stack", KafkaPorts(*free_ports(2)))
    # A real JVM that never answers in time (a probe that always says "not yet"):
    # the deadline passes, the error says who and why, the process must go.
    monkeypatch.setattr(broker, "is_ready", lambda: False)
    with pytest.raises(ServiceStartError) as raised:
        broker.start(timeout_s=2)
    message = str(raised.value)
    assert message.startswith("kafka: ")
    assert "not ready after" in message
    assert str(broker.log_file) in message
    assert not broker.is_running()
    assert _processes_mentioning(str(tmp_path / "stack")) == []


def test_triton_start_failure_names_triton_with_its_log(
    tmp_path: Path, tiny_model_repository: Path
) -> None:
    # A model.onnx onnxruntime cannot parse: the twin's initialize fails, Triton exits
    # (--exit-on-error) and the error must say so with Triton's own log lines.
    source = tiny_model_repository / "emotion-classifier"
    model = tmp_path / "broken" / "emotion-classifier"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"not an onnx model")
    for name in ("config.pbtxt", "labels.txt"):
        (model / name).write_text((source / name).read_text())
    server = TritonServer(tmp_path / "stack", model.parent, TritonPorts(*free_ports(3)))

    with pytest.raises(ServiceStartError) as raised:
        server.start(timeout_s=120)

    message = str(raised.value)
    assert message.startswith("triton: ")
    assert "emotion-classifier" in raised.value.log_tail
    assert not server.is_running()
    assert _processes_mentioning(str(tmp_path / "stack")) == []


def test_a_busy_port_is_refused_instead_of_probing_someone_else(tmp_path: Path) -> None:
    fetch_kafka_jars()
    port, controller = free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        broker = KafkaBroker(tmp_path / "stack", KafkaPorts(port, controller))
        with pytest.raises(ServiceStartError, match=rf"^kafka: client port 127.0.0.1:{port}"):
            broker.start(timeout_s=30)
    assert not broker.is_running()
