"""Test-only failpoints: inert when unset, SIGKILL at exactly the named point when set.

A process that kills itself cannot be observed from inside, so each behavioural test
runs a child Python process and looks at how it ended and what it printed before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker import failpoints

CHILD_TIMEOUT_S = 120.0
REPO = Path(__file__).resolve().parents[2]


def run_child(code: str, failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != failpoints.FAILPOINT_ENV}
    if failpoint is not None:
        env[failpoints.FAILPOINT_ENV] = failpoint
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


# Logs go to stderr (as in the worker), so stdout holds only what the child prints.
HIT_THREE_TIMES = """
    from worker import failpoints
    from worker.observability import configure_logging
    configure_logging()
    for n in range(1, 4):
        print(f"before {n}", flush=True)
        failpoints.hit("after_send")
        print(f"after {n}", flush=True)
    print("finished", flush=True)
"""


def test_unset_failpoint_is_a_no_op() -> None:
    child = run_child(HIT_THREE_TIMES, None)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [
        "before",
        "1",
        "after",
        "1",
        "before",
        "2",
        "after",
        "2",
        "before",
        "3",
        "after",
        "3",
        "finished",
    ]


def test_armed_failpoint_kills_the_process_with_sigkill_on_the_first_hit() -> None:
    child = run_child(HIT_THREE_TIMES, "after_send")
    assert child.returncode == -signal.SIGKILL
    assert child.stdout.splitlines() == ["before 1"]
    assert "failpoint hit" in child.stderr
    assert "after_send" in child.stderr


def test_hit_number_kills_on_the_nth_hit() -> None:
    child = run_child(HIT_THREE_TIMES, "after_send:2")
    assert child.returncode == -signal.SIGKILL
    assert child.stdout.splitlines() == ["before 1", "after 1", "before 2"]


def test_a_sleep_point_stalls_on_the_nth_hit_then_goes_on() -> None:
    child = run_child(HIT_THREE_TIMES, "after_send:2:sleep=1.5")
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines()[-1] == "finished"
    assert "failpoint hit: stalling" in child.stderr
    assert child.stderr.count("failpoint stall over") == 1
    assert '"hit": 2' in child.stderr


def test_another_armed_point_leaves_this_one_alone() -> None:
    child = run_child(HIT_THREE_TIMES, "during_commit")
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines()[-1] == "finished"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", None),
        ("  ", None),
        ("after_inference", failpoints.Failpoint("after_inference", 1)),
        ("during_commit:3", failpoints.Failpoint("during_commit", 3)),
        ("after_send:2:sleep=25", failpoints.Failpoint("after_send", 2, 25.0)),
        ("after_send::sleep=0.5", failpoints.Failpoint("after_send", 1, 0.5)),
    ],
)
def test_parse_accepts_names_and_hit_numbers(
    spec: str, expected: failpoints.Failpoint | None
) -> None:
    assert failpoints.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("after_lunch", "unknown failpoint 'after_lunch'"),
        ("after_send:0", "positive integer"),
        ("after_send:two", "positive integer"),
        ("after_send:-1", "positive integer"),
        ("after_send:1:nap=3", "sleep=<seconds>"),
        ("after_send:1:sleep=", "sleep=<seconds>"),
        ("after_send:1:sleep=-2", "sleep=<seconds>"),
        ("after_send:1:sleep=nan", "sleep=<seconds>"),
        ("after_send:1:sleep=inf", "sleep=<seconds>"),
    ],
)
def test_parse_rejects_unknown_names_and_bad_hit_numbers(spec: str, message: str) -> None:
    with pytest.raises(failpoints.FailpointSpecError, match=message) as caught:
        failpoints.parse(spec)
    assert failpoints.FAILPOINT_ENV in str(caught.value)


# A worker built from the unit tests' in-memory parts, in a child process: the publisher
# and the source print what reaches them, so the parent sees where the crash landed.
WORKER_CHILD = """
    import json, sys
    from tests.support.fakes import (
        LABELS, FakeClassifier, FakePublisher, FakeSource, FakeTokenizer, settings, tweets
    )
    from worker.app import Worker
    from worker.observability import configure_logging
    configure_logging()

    class PrintingPublisher(FakePublisher):
        def send(self, record, on_done):
            print("sent", json.loads(record.value)["id"], flush=True)
            super().send(record, on_done)

    class PrintingSource(FakeSource):
        def commit(self, offsets):
            print("committed", sorted(offsets.values()), flush=True)
            return super().commit(offsets)

    source = PrintingSource({("tweets", 0): tweets(0, 5)})
    worker = Worker(
        settings(max_batch_size=5, max_batch_wait_ms=0),
        source=lambda s, handler: source,
        publisher=lambda s: PrintingPublisher(),
        classifier=lambda s: FakeClassifier(),
        tokenizer=lambda s: FakeTokenizer(),
        labels=LABELS,
    )
    import threading, time
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while source.committed() != {("tweets", 0): 5} and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(30)
    print("clean exit", flush=True)
"""


def test_worker_without_failpoint_publishes_and_commits() -> None:
    child = run_child(WORKER_CHILD, None)
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert [line for line in lines if line.startswith("sent")] == [f"sent p0-{n}" for n in range(5)]
    assert "committed [5]" in lines
    assert lines[-1] == "clean exit"


def test_worker_killed_after_inference_has_published_nothing() -> None:
    child = run_child(WORKER_CHILD, "after_inference")
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == ""
    assert "test failpoint armed" in child.stderr


@pytest.mark.parametrize("point", ["after_send", "during_commit"])
def test_worker_killed_after_send_or_during_commit_has_published_but_not_committed(
    point: str,
) -> None:
    child = run_child(WORKER_CHILD, point)
    assert child.returncode == -signal.SIGKILL, child.stderr
    lines = child.stdout.splitlines()
    assert lines == [f"sent p0-{n}" for n in range(5)]


def test_worker_refuses_a_malformed_failpoint_at_startup() -> None:
    child = run_child(WORKER_CHILD.replace("thread.start()", "worker.run()"), "during_comit")
    assert child.returncode == 1
    assert "unknown failpoint 'during_comit'" in child.stderr
