"""The life cycle every embedded service shares: one folder, one process, ready or stopped.

A :class:`LocalService` keeps everything under ``<state_dir>/<name>/`` (its config, data,
log and pid file, and ``endpoint.json`` with the ports it was started on, so that a later
``down`` or ``status`` finds it), runs one :class:`~compose.processes.ManagedProcess` and is
ready only once the real thing answers. :meth:`LocalService.start` either adopts a process
already running there (and waits for it to answer) or launches one: check what it needs,
refuse ports someone else holds, prepare its folder, start it, record the endpoint, wait.
A start that does not become ready stops what it started and raises
:class:`~compose.processes.ServiceStartError` with the service's log tail.

Subclasses say only what differs: the command line, the folder's content, the ports, the
readiness probe (:mod:`compose.embedded.kafka_broker`, :mod:`compose.embedded.triton`).
"""

from __future__ import annotations

import json
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

from compose.processes import ManagedProcess, ServiceStartError
from compose.twin import read_json_object
from emotion_stream.layout import project_root

LOOPBACK = "127.0.0.1"
# Each readiness probe gives up quickly so the outer deadline stays the one that counts.
PROBE_TIMEOUT_S = 3.0
# Where a started service records its ports (and what else `recorded` needs).
ENDPOINT_FILE = "endpoint.json"


def default_state_dir() -> Path:
    """``<checkout>/.local`` (git-ignored): data, configs, logs and pid files."""
    return project_root() / ".local"


def ensure_ports_free(component: str, ports: Mapping[str, int]) -> None:
    """Raise unless each port can be bound on 127.0.0.1 right now.

    Readiness is probed over the network, so a port someone else's broker or server
    already holds would answer for ours; refuse to start instead.

    Raises
    ------
    ServiceStartError
        Naming the component, the busy port and what it was for.
    """
    for purpose, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the services themselves bind: connections of a previous run lingering
            # in TIME_WAIT (a restart) do not count, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError as error:
                raise ServiceStartError(
                    component,
                    f"{purpose} port {LOOPBACK}:{port} is already in use ({error.strerror}); "
                    "another stack running? see `emotion-stream local status`, or pick "
                    "other ports",
                ) from error


def write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Launch:
    """How to start a service's process: its command line, environment and folder.

    ``env`` and ``cwd`` of ``None`` inherit this process's.
    """

    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None


class LocalService(ABC):
    """One background service on 127.0.0.1 with its folder, pid file, log and endpoint.

    Parameters
    ----------
    component:
        The name in messages (``kafka``, ``kafka-2``, ``triton``).
    home:
        The service's folder (``<state_dir>/<component>``).
    marker:
        A path whose presence on the process's command line makes a recorded pid ours.
    die_with_parent:
        Stop the service when the process that started it dies (test fixtures).
    """

    # The stem of the pid and log files in ``home`` (``kafka.pid``, ``triton.log``).
    process_name: ClassVar[str]
    # How long :meth:`start` waits for readiness unless told.
    start_timeout_s: ClassVar[float]

    def __init__(self, component: str, home: Path, *, marker: Path, die_with_parent: bool) -> None:
        self.component = component
        self.home = home
        self.die_with_parent = die_with_parent
        self.endpoint_file = home / ENDPOINT_FILE
        self.process = ManagedProcess(
            component=component,
            pid_file=home / f"{self.process_name}.pid",
            log_file=home / f"{self.process_name}.log",
            marker=str(marker),
        )

    # What each service says for itself.

    @classmethod
    @abstractmethod
    def unconfigured(cls, state_dir: Path) -> Self:
        """The service in ``state_dir`` with default settings (before reading its endpoint)."""

    @abstractmethod
    def endpoint(self) -> Mapping[str, Any]:
        """What ``endpoint.json`` records once the process is started."""

    @abstractmethod
    def restore(self, endpoint: Mapping[str, Any]) -> None:
        """Take the ports (and whatever else) an ``endpoint.json`` recorded."""

    @abstractmethod
    def listeners(self) -> Mapping[str, int]:
        """The ports the process binds, by purpose (``client``, ``gRPC``...)."""

    @abstractmethod
    def command(self) -> Launch:
        """The process to start; raises :class:`ServiceStartError` when something is missing."""

    @abstractmethod
    def prepare(self) -> None:
        """Write what the process reads from ``home`` (config, storage, model files)."""

    @abstractmethod
    def is_ready(self) -> bool:
        """Whether the service answers as it should once started."""

    @abstractmethod
    def not_ready_message(self) -> str:
        """What is wrong when :meth:`is_ready` never holds (``broker ... not ready``)."""

    def on_ready(self, timeout_s: float) -> None:
        """Work a freshly started service needs once it answers (none by default)."""
        return None  # a hook, not an abstract method: most services need nothing here

    # The shared life cycle.

    @classmethod
    def recorded(cls, state_dir: Path) -> Self:
        """The service as last started in ``state_dir`` (its recorded ports), for down/status."""
        service = cls.unconfigured(state_dir)
        endpoint = read_json_object(service.endpoint_file)
        if endpoint:
            service.restore(endpoint)
        return service

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    def is_running(self) -> bool:
        return self.process.is_running()

    def start(self, timeout_s: float | None = None) -> bool:
        """Start the service unless it already runs here; wait until it answers.

        Returns ``True`` when this call started it, ``False`` when it was already running.
        ``timeout_s`` defaults to the service's :attr:`start_timeout_s`.

        Raises
        ------
        ServiceStartError
            Something it needs is missing, a port is taken, the process exited, or it did
            not answer within ``timeout_s`` (a process this call started is then stopped).
        """
        timeout = self.start_timeout_s if timeout_s is None else timeout_s
        if self.is_running():
            self.process.await_ready(
                self.is_ready, timeout, "running but not ready", stop_on_failure=False
            )
            return False
        self.launch()
        self.await_ready(timeout)
        self.on_ready(timeout)
        return True

    def launch(self) -> None:
        """Check, refuse taken ports, prepare ``home``, start the process, record the endpoint.

        No wait: :meth:`await_ready` follows (a cluster launches every node first).

        Raises
        ------
        ServiceStartError
            Something the service needs is missing, a port is taken, or preparing failed.
        """
        launch = self.command()
        ensure_ports_free(self.component, self.listeners())
        self.prepare()
        self.process.start(
            launch.argv, env=launch.env, cwd=launch.cwd, die_with_parent=self.die_with_parent
        )
        write_json(self.endpoint_file, self.endpoint())

    def await_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the service answers (stop it if it does not).

        Raises
        ------
        ServiceStartError
            The process exited, or the service was not ready within ``timeout_s``.
        """
        timeout = self.start_timeout_s if timeout_s is None else timeout_s
        self.process.await_ready(self.is_ready, timeout, self.not_ready_message())

    def stop(self) -> bool:
        """SIGTERM the service (SIGKILL if it lingers); its data stays. ``True`` if it ran."""
        return self.process.stop()

    def kill(self) -> bool:
        """SIGKILL the service: a crash without clean shutdown; data on disk stays.

        ``True`` if it was running. :meth:`start` brings it back on the same data.
        """
        return self.process.kill()

    def restart(self, timeout_s: float | None = None) -> None:
        """Stop, then start again on the same data and ports."""
        self.stop()
        self.start(timeout_s)
