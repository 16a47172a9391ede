"""Pid-file bookkeeping: stop only our own process group, never a stranger's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from compose.processes import ManagedProcess, ServiceStartError, tail, wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _managed(tmp_path: Path, marker: str) -> ManagedProcess:
    return ManagedProcess("sleeper", tmp_path / "s.pid", tmp_path / "s.log", marker)


def test_start_records_and_stop_ends_the_process(tmp_path: Path) -> None:
    marker = str(tmp_path)
    process = _managed(tmp_path, marker)
    pid = process.start([*SLEEPER, marker])
    assert process.recorded_pid() == pid and process.is_running()

    assert process.stop(timeout_s=10)
    assert not process.is_running()
    assert not process.pid_file.exists()
    # Stopping again is harmless.
    assert not process.stop()


def test_kill_ends_a_process_that_ignores_sigterm_at_once(tmp_path: Path) -> None:
    marker = str(tmp_path)
    process = _managed(tmp_path, marker)
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    process.start([sys.executable, "-c", stubborn, marker])
    assert process.kill()
    assert not process.is_running()
    assert not process.pid_file.exists()
    assert not process.kill()  # nothing of ours left to kill


def test_a_recorded_pid_that_is_not_ours_is_left_alone(tmp_path: Path) -> None:
    stranger = subprocess.Popen(SLEEPER)  # no marker in its command line
    try:
        process = _managed(tmp_path, marker=str(tmp_path))
        process.pid_file.write_text(f"{stranger.pid}\n")
        assert process.recorded_pid() is None
        assert not process.stop()
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_fresh_handle_finds_the_process_through_its_pid_file(tmp_path: Path) -> None:
    marker = str(tmp_path)
    pid = _managed(tmp_path, marker).start([*SLEEPER, marker])
    again = _managed(tmp_path, marker)  # as `emotion-stream local down` sees it
    assert again.recorded_pid() == pid
    assert again.stop(timeout_s=10)
    assert wait_until(
        lambda: (
            not Path(f"/proc/{pid}/cmdline").exists()
            or marker not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
        ),
        timeout_s=10,
    )


def test_start_error_names_the_component_and_carries_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    error = ServiceStartError("kafka", "not ready after 1 s", log)
    assert str(error).startswith("kafka: not ready after 1 s")
    assert "line 99" in str(error) and "line 10\n" not in str(error)
    assert tail(tmp_path / "missing.log") == ""


def test_wait_until_gives_up_at_the_deadline() -> None:
    assert not wait_until(lambda: False, timeout_s=0.05)
    assert wait_until(lambda: True, timeout_s=0)


def test_die_with_parent_stops_the_service_when_its_launcher_dies(tmp_path: Path) -> None:
    # A launcher (standing in for a killed pytest) starts a sleeper bound to it, then is
    # SIGKILLed: the kernel must end the sleeper too.
    marker = str(tmp_path / "bound")
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from compose.processes import ManagedProcess\n"
            f"p = ManagedProcess('s', Path({str(tmp_path / 's.pid')!r}), "
            f"Path({str(tmp_path / 's.log')!r}), {marker!r})\n"
            f"p.start({[*SLEEPER, marker]!r}, die_with_parent=True)\n"
            "print('started', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdout is not None and launcher.stdout.readline().strip() == "started"
        sleeper = _managed(tmp_path, marker)
        assert sleeper.recorded_pid() is not None
    finally:
        launcher.kill()
        launcher.wait()
    assert wait_until(lambda: sleeper.recorded_pid() is None, timeout_s=10)
