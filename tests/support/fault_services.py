"""Services a fault test runs for itself, beside the session's shared broker and Triton.

Some faults cannot be injected into the shared services without disturbing every other
test, or need a configuration the shared ones do not have:

- :class:`ControllableTriton` — the embedded ``tritonserver`` with explicit model control
  (``--model-control-mode=explicit``), so a test can unload and load the model through
  Triton's repository API, and SIGKILL the server (its whole process group, backend
  stubs included) rather than stop it politely;
- :func:`slow_model_repository` — a copy of an exported repository whose Python-backend
  twin waits before every execution (``twin_execute_delay_ms``,
  :mod:`compose.triton_twin.model`): a model slower than the consumer's
  ``max.poll.interval`` without a model that big;
- :class:`StrictKafka` — the embedded broker with ``auto.create.topics.enable=false``, as
  production clusters run, so a missing output topic stays missing.

Each runs on free loopback ports in the test's temporary folder and dies with pytest.
Only processes started here are signalled, by the pid their own start recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from compose.embedded import KafkaBroker, KafkaPorts, TritonPorts, TritonServer, fetch_kafka_jars
from compose.processes import wait_until
from compose.triton_twin.model import PARAM_EXECUTE_DELAY_MS
from emotion_stream.layout import CONFIG_FILE, ONNX_FILE
from tests.support.network import free_ports

MODEL_NAME = "emotion-classifier"
KILL_WAIT_S = 30.0
REPOSITORY_API_TIMEOUT_S = 60.0
SHM_REGION_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


class ControllableTriton(TritonServer):
    """Embedded Triton whose model can be unloaded/loaded and whose process can be killed."""

    def __init__(self, state_dir: Path, repository: Path) -> None:
        grpc, http, metrics = free_ports(3)
        super().__init__(
            state_dir,
            repository,
            TritonPorts(grpc=grpc, http=http, metrics=metrics),
            die_with_parent=True,
        )

    def argv(self, binary: Path) -> list[str]:
        # Explicit control: the repository API may load and unload; the model is loaded
        # at start-up so start() still waits for it to be ready.
        return [
            *super().argv(binary),
            "--model-control-mode=explicit",
            f"--load-model={self.model_name}",
        ]

    def _repository(self, action: str, body: dict[str, Any] | None = None) -> None:
        url = f"{self.http_url}/v2/repository/models/{self.model_name}/{action}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(url, data=data, method="POST")
        try:
            with opener.open(request, timeout=REPOSITORY_API_TIMEOUT_S) as answer:
                assert answer.status == 200, f"{action}: HTTP {answer.status}"
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{action} {self.model_name}: {error.read()!r}") from error

    def model_ready(self) -> bool:
        return self._http_ok(f"/v2/models/{self.model_name}/ready")

    def unload_model(self) -> None:
        """Unload through the repository API; the server stays up, the model is gone."""
        self._repository("unload")
        assert wait_until(lambda: not self.model_ready(), timeout_s=REPOSITORY_API_TIMEOUT_S)

    def load_model(self, config: dict[str, Any] | None = None) -> None:
        """Load (or reload) the model: from the repository's files, or with ``config`` in
        place of its configuration (Triton's load-time override: a model version whose
        inputs differ, without a second exported model)."""
        body = {"parameters": {"config": json.dumps(config)}} if config is not None else None
        self._repository("load", body)
        assert wait_until(self.model_ready, timeout_s=REPOSITORY_API_TIMEOUT_S)

    def model_config(self) -> dict[str, Any]:
        """The served model's configuration, as Triton's HTTP API gives it (JSON)."""
        url = f"{self.http_url}/v2/models/{self.model_name}/config"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=REPOSITORY_API_TIMEOUT_S) as answer:
            config: dict[str, Any] = json.loads(answer.read())
        return config

    def kill(self) -> bool:
        """SIGKILL the server's process group (the server and its backend stubs): a crash.

        ``True``, it was running (as the embedded services' ``kill`` answers); killing a
        server that is not running is a test's mistake and fails."""
        pid = self.process.recorded_pid()
        assert pid is not None, "Triton is not running"
        # The Python backend's shared-memory regions outlive a killed server: note this
        # server's own, to remove them after the crash (a clean stop removes them itself).
        regions = _shared_memory_regions(pid)
        os.killpg(pid, signal.SIGKILL)
        # Reap our own child so is_running() turns false at once.
        assert wait_until(lambda: not self.is_running(), timeout_s=KILL_WAIT_S)
        self.process.pid_file.unlink(missing_ok=True)
        for region in regions:
            region.unlink(missing_ok=True)
        return True


def _shared_memory_regions(pid: int) -> set[Path]:
    """The Python backend's /dev/shm regions that process ``pid`` has mapped."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")
    except OSError:
        return set()
    return {
        Path(line.split()[-1])
        for line in maps.splitlines()
        if line.split() and line.split()[-1].startswith(SHM_REGION_PREFIX)
    }


def slow_model_repository(source: Path, target: Path, delay_ms: int) -> Path:
    """A copy of ``source`` (model weights symlinked) whose twin waits ``delay_ms`` per call."""
    model_source = source / MODEL_NAME
    model_target = target / MODEL_NAME
    shutil.copytree(model_source, model_target, ignore=shutil.ignore_patterns(ONNX_FILE))
    for onnx in model_source.glob(f"*/{ONNX_FILE}"):
        (model_target / onnx.parent.name / ONNX_FILE).symlink_to(onnx.resolve())
    config = model_target / CONFIG_FILE
    config.write_text(
        config.read_text(encoding="utf-8") + f'\nparameters {{\n  key: "{PARAM_EXECUTE_DELAY_MS}"\n'
        f'  value {{ string_value: "{delay_ms}" }}\n}}\n',
        encoding="utf-8",
    )
    return target


class StrictKafka(KafkaBroker):
    """The embedded single-node broker, but topics are never created implicitly."""

    def __init__(self, state_dir: Path) -> None:
        port, controller = free_ports(2)
        super().__init__(state_dir, KafkaPorts(port, controller), die_with_parent=True)

    def server_properties(self) -> dict[str, str]:
        return {**super().server_properties(), "auto.create.topics.enable": "false"}

    def start_fetched(self) -> None:
        fetch_kafka_jars()
        self.start()
