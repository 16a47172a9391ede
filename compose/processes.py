"""Background processes that outlive the command that started them, tracked by pid files.

``emotion-stream local up`` starts Kafka and Triton and returns; ``down`` (another
process, maybe hours later) must stop exactly those and nothing else. So each service
records its pid *and* a marker (a path unique to its state folder) in a pid file, and a
pid is only ever signalled while ``/proc/<pid>/cmdline`` still carries that marker: a pid
the kernel recycled for someone else's process is left alone.

Every service runs in its own session (process group led by the service), so stopping
it also stops the children it spawned (Triton's Python-backend stubs) and no one else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# How much of a service's log a failure message carries.
LOG_TAIL_LINES = 40
# A stopped service gets this long after SIGTERM before SIGKILL (Kafka flushes its
# logs and writes a clean-shutdown marker; Triton unloads models).
DEFAULT_STOP_TIMEOUT_S = 30.0
# How long to wait for the kernel to reap a SIGKILLed process group.
KILL_WAIT_S = 10.0
# Bound on the wait for a started process's command line to appear in /proc.
EXEC_VISIBLE_TIMEOUT_S = 5.0
EXEC_POLL_INTERVAL_S = 0.005
# prctl(2) option: signal the child when the thread that started it dies.
PR_SET_PDEATHSIG = 1
# Polling interval of every wait loop here: readiness is polled, never slept for.
POLL_INTERVAL_S = 0.2


class EmbeddedStackError(Exception):
    """Root of the errors raised by the Docker-free stack."""


class ServiceStartError(EmbeddedStackError):
    """A service did not become ready; names it and carries the tail of its log."""

    def __init__(self, component: str, reason: str, log_path: Path | None = None) -> None:
        self.component = component
        self.reason = reason
        self.log_path = log_path
        self.log_tail = tail(log_path) if log_path is not None else ""
        message = f"{component}: {reason}"
        if log_path is not None:
            message += f"\n--- last {LOG_TAIL_LINES} lines of {log_path} ---\n{self.log_tail}"
        super().__init__(message)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            # Log lines are short; 64 KiB comfortably holds the tail we show.
            handle.seek(max(0, size - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    on_poll: Callable[[], None] | None = None,
    interval_s: float = POLL_INTERVAL_S,
) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; ``True`` when it held.

    ``on_poll`` runs before each attempt and may raise to abort early (a service whose
    process died will never become ready).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if on_poll is not None:
            on_poll()
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval_s, remaining))


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' when it no longer exists or is a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", errors="replace")


def _live_group_members(pgid: int) -> list[int]:
    """Pids in process group ``pgid`` that are not zombies (read from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ")".
            fields = (entry / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and (fields[0] != "Z" or _threads_alive(entry)):
            members.append(int(entry.name))
    return members


def _threads_alive(process: Path) -> bool:
    """Whether a zombie-looking process still has live threads.

    A multi-threaded process (the JVM) shows ``Z`` once its main thread has exited while
    its other threads are still being torn down; its sockets close only after the last
    one, so a restart on the same ports must wait for them.
    """
    try:
        tasks = list((process / "task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in {"Z", "X"}:
            return True
    return False


def _sigterm_on_parent_death() -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to SIGTERM the child when its parent dies (Linux)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    parent = os.getpid()

    def arrange() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return arrange


@dataclass
class ManagedProcess:
    """One background service process, its log file and its pid file.

    Parameters
    ----------
    component:
        Name used in messages ("kafka", "triton").
    pid_file:
        Where the pid is recorded while the process runs.
    log_file:
        Receives the process's stdout and stderr.
    marker:
        A string that the process's command line must contain for a recorded pid to be
        considered ours (the service's state folder).
    """

    component: str
    pid_file: Path
    log_file: Path
    marker: str
    # The handle of a process this object started (None when adopted via the pid file).
    _child: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def await_ready(
        self,
        is_ready: Callable[[], bool],
        timeout_s: float,
        not_ready: str,
        *,
        stop_on_failure: bool = True,
    ) -> None:
        """Poll ``is_ready`` until it holds; otherwise raise (and stop the process).

        Whatever goes wrong — the process exits, time runs out, the probe raises — a
        process this call is starting is stopped (``stop_on_failure``), so no half-started
        process is left behind; one found already running is left as it is. The error
        carries the log's tail.

        Raises
        ------
        ServiceStartError
            The process exited before becoming ready, or ``not_ready`` after ``timeout_s``.
        """

        def raise_if_dead() -> None:
            if not self.is_running():
                raise ServiceStartError(
                    self.component, "process exited before becoming ready", self.log_file
                )

        try:
            ready = wait_until(is_ready, timeout_s=timeout_s, on_poll=raise_if_dead)
        except BaseException:
            if stop_on_failure:
                self.stop()
            raise
        if not ready:
            if stop_on_failure:
                self.stop()
            raise ServiceStartError(
                self.component, f"{not_ready} after {timeout_s:.0f} s", self.log_file
            )

    def recorded_pid(self) -> int | None:
        """The pid in the pid file if that process still runs and is ours, else ``None``."""
        try:
            pid = int(self.pid_file.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None
        if self.marker in _cmdline(pid):
            return pid
        return None

    def is_running(self) -> bool:
        """Whether the recorded process runs (and is not a zombie awaiting its parent).

        For a process this object started, its own handle answers: no /proc race.
        """
        if self._child is not None and self.pid_file.is_file():
            return self._child.poll() is None
        pid = self.recorded_pid()
        if pid is None:
            return False
        try:
            state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state.split()[0] != "Z"

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_parent: bool = False,
    ) -> int:
        """Start ``argv`` in its own session, output appended to the log; record its pid.

        ``die_with_parent`` makes the kernel SIGTERM the service when this process dies
        (test fixtures: a killed pytest must not leave brokers behind); ``local up``
        leaves it off so the services outlive the command.
        """
        preexec = _sigterm_on_parent_death() if die_with_parent else None
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                # Own session: survives the launching command, and stop() can signal the
                # whole group (Triton's backend stubs) without touching anyone else.
                start_new_session=True,
                preexec_fn=preexec,  # noqa: PLW1509 - only prctl(2), async-signal-safe
            )
        self._child = process
        self.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
        # /proc/<pid>/cmdline can show the parent's command line for a moment after
        # Popen returns; wait until it carries the marker so that any other handle (a
        # second `up`, `down`, `status`) recognises the process from now on.
        wait_until(
            lambda: process.poll() is not None or self.marker in _cmdline(process.pid),
            timeout_s=EXEC_VISIBLE_TIMEOUT_S,
            interval_s=EXEC_POLL_INTERVAL_S,
        )
        return process.pid

    def _reap(self) -> None:
        """Collect our own child's exit status so it does not linger as a zombie."""
        if self._child is not None:
            with contextlib.suppress(Exception):
                self._child.poll()

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> bool:
        """SIGTERM the service's process group, SIGKILL it after ``timeout_s``.

        Returns ``True`` when a running process was stopped, ``False`` when there was
        nothing of ours to stop. The pid file is removed either way.
        """
        pid = self.recorded_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal_group(pid, signal.SIGTERM)
        if not wait_until(lambda: not self._alive(pid), timeout_s=timeout_s, on_poll=self._reap):
            self._signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not self._alive(pid), timeout_s=KILL_WAIT_S, on_poll=self._reap)
        self.pid_file.unlink(missing_ok=True)
        return True

    def kill(self) -> bool:
        """SIGKILL the service's process group at once: a crash, no clean shutdown.

        Returns ``True`` when a running process was killed, ``False`` when there was
        nothing of ours to kill. The pid file is removed either way.
        """
        pid = self.recorded_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._signal_group(pid, signal.SIGKILL)
        wait_until(lambda: not self._alive(pid), timeout_s=KILL_WAIT_S, on_poll=self._reap)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _alive(self, pid: int) -> bool:
        """Whether any live (non-zombie) process of the group ``pid`` led still exists."""
        return bool(_live_group_members(pid))

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        """Signal the process group that ``pid`` leads (it was started as a session leader).

        Only called for a pid whose command line carried our marker when ``stop`` began;
        once the leader has exited, the group id still names its remaining children.
        """
        try:
            leads_group = os.getpgid(pid) == pid
        except ProcessLookupError:
            leads_group = True  # leader gone: signal what remains of its group
        try:
            if leads_group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
