"""``emotion-stream worker`` as a real subprocess: its environment, its log, its signals.

Fault tests and benchmarks need what an in-process worker cannot give: a process that can
be SIGKILLed, SIGSTOPped, SIGTERMed and restarted, with the exit code, the log and the
memory of each run. Only processes started here are ever signalled, by their own ``Popen``
handle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.network import HTTP_TIMEOUT_S, http_status

# Worker start-up imports the tokenizer stack and loads the tokenizer: seconds on an
# idle machine, more on a shared 2-core one. Measured with a CPU hog on both cores and
# other test runs beside it (load 8-15): 52-79 s to "model ready", and once more than
# 90 s without a first log line (still importing).
WORKER_START_TIMEOUT_S = 180.0
LOG_TAIL_LINES = 40
# After SIGTERM a worker flushes and commits; past this it is SIGKILLed (stop()).
WORKER_STOP_TIMEOUT_S = 30.0
KILL_WAIT_S = 30.0


@dataclass(frozen=True)
class WorkerTopics:
    """Where one set of workers reads, writes and commits."""

    input_topic: str
    output_topic: str
    dlq_topic: str
    group: str


def worker_environment(
    topics: WorkerTopics,
    *,
    bootstrap_servers: str,
    triton_url: str,
    model_repository: Path,
    worker_id: str,
    **settings: str,
) -> dict[str, str]:
    """This process's environment without its ``EMOTION_STREAM_*`` variables, plus the
    worker's: the topics, group, services and id given, then ``settings``
    (``EMOTION_STREAM_*`` names or any other variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_STREAM_")}
    env.update(
        {
            "EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
            "EMOTION_STREAM_INPUT_TOPIC": topics.input_topic,
            "EMOTION_STREAM_OUTPUT_TOPIC": topics.output_topic,
            "EMOTION_STREAM_DLQ_TOPIC": topics.dlq_topic,
            "EMOTION_STREAM_CONSUMER_GROUP": topics.group,
            "EMOTION_STREAM_TRITON_URL": triton_url,
            "EMOTION_STREAM_MODEL_REPOSITORY": str(model_repository),
            "EMOTION_STREAM_WORKER_ID": worker_id,
            "PYTHONUNBUFFERED": "1",
            # Several workers share few cores: keep tokenizer threads from multiplying.
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update(settings)
    return env


@dataclass
class WorkerRun:
    """One ``emotion-stream worker`` process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls, name: str, env: dict[str, str], log_path: Path, argv: list[str] | None = None
    ) -> WorkerRun:
        """Start ``emotion-stream worker`` (or ``argv``, another way to start it) with
        ``env``; stdout and stderr to ``log_path``."""
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv or [sys.executable, "-m", "emotion_stream.cli", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log that say something (throughput summaries left out)."""
        telling = [line for line in self.log().splitlines() if '"event": "throughput"' not in line]
        tail = telling[-lines:]
        return f"--- {self.name} (pid {self.pid}, exit {self.process.poll()}) log tail:\n" + (
            "\n".join(tail)
        )

    def metrics_port(self) -> int | None:
        """The HTTP port the worker logged it listens on (METRICS_PORT=0 picks one)."""
        for line in self.log().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict):
                    for key in ("metrics_port", "port"):
                        if isinstance(event.get(key), int) and event[key] > 0:
                            return int(event[key])
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            if match and "metrics" in line.lower():
                return int(match.group(1))
        return None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (``event`` == ``name`` if given), in order."""
        found = []
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                found.append(event)
        return found

    def assigned_partitions(self) -> set[int]:
        """Input partitions the worker holds now, according to its rebalance log events."""
        held: set[int] = set()
        for event in self.events():
            partitions = {int(p[1]) for p in event.get("partitions") or ()}
            if event.get("event") == "partitions assigned":
                held |= partitions
            elif event.get("event") in {"partitions revoked", "partitions lost"}:
                held -= partitions
        return held

    def ready_with_partitions(self) -> bool:
        """Whether it has said it is ready and holds a partition; raises if it exited."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited {self.process.returncode}\n{self.log_tail()}")
        events = self.events()
        ready = any(e.get("event") == "readiness" and e.get("ready") is True for e in events)
        return ready and bool(self.assigned_partitions())

    def http_status(self, path: str) -> int | None:
        """Status of ``GET http://127.0.0.1:<metrics port><path>``; None if unreachable."""
        port = self.metrics_port()
        return None if port is None else http_status(port, path)

    def metrics_text(self) -> str:
        port = self.metrics_port()
        if port is None:
            return ""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/metrics", timeout=HTTP_TIMEOUT_S
            ) as answer:
                return str(answer.read().decode("utf-8"))
        except OSError:
            return ""

    def metric(self, name: str) -> float:
        """Sum of every sample of Prometheus counter/gauge ``name`` (0 when absent)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith((f"{name} ", f"{name}{{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rebalances(self) -> int:
        """How many times partitions were assigned to this worker (1 = joined once).

        Assignments of nothing do not count: a worker that subscribes before its topic's
        metadata is known joins with no partitions first, then at once with them.
        """
        return sum(1 for event in self.events("partitions assigned") if event.get("partitions"))

    def partitions_taken_away(self) -> list[dict[str, Any]]:
        """Revocations and losses of partitions it held (a rebalance or an eviction)."""
        return [
            event
            for event in self.events()
            if event.get("event") in {"partitions revoked", "partitions lost"}
            and event.get("partitions")
        ]

    def rss_mib(self) -> float | None:
        """Resident memory now, from /proc (None once it has gone)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def pause(self) -> None:
        """SIGSTOP: the process freezes (no heartbeats, no polls) until :meth:`resume`."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit — the crash the at-least-once promise is about."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=KILL_WAIT_S)

    def terminate(self) -> None:
        """SIGTERM: the polite stop; the worker should flush, commit and exit 0."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout_s:g} s\n{self.log_tail()}"
            ) from None

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout_s``; its exit code."""
        if self.alive():
            self.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode
