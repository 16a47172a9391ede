"""Test-only crash points: the worker SIGKILLs itself (or stalls) at a named step when told to.

Fault tests need a crash at an exact place in the publish/commit sequence — a SIGKILL
sent from outside lands wherever the worker happens to be. Setting
``EMOTION_STREAM_FAILPOINT=<name>`` (or ``<name>:<n>``, "on the n-th hit") makes the
worker log one line and kill itself with SIGKILL the moment it reaches that point: no
flush, no commit, no ``finally`` blocks, exactly like ``kill -9``.

``<name>:<n>:sleep=<seconds>`` stalls the calling thread that long on the n-th hit
instead, then goes on: a pause (a long GC, a stopped VM) landed at an exact step, e.g.
past ``max.poll.interval`` between the last poll and a commit, so the group evicts the
worker while it holds sent, uncommitted work. The other threads (kafka-python's
heartbeat) run on meanwhile, as they would in a real pause of the loop.

Unset (the only setting production should ever have), :func:`hit` is a dictionary
lookup and nothing else.

The points, in the order a batch reaches them:

``after_inference``
    A batch's inference result was collected, before any of it is published.
``after_send``
    Results (and dead letters) were sent and acknowledged by the broker, before the
    consumer offsets are committed. At-least-once: at the start of a commit that has
    acknowledged offsets to commit. Exactly-once: after the transaction's records were
    flushed, before ``send_offsets_to_transaction``.
``during_commit``
    At-least-once: immediately before the consumer's commit call. Exactly-once:
    between ``send_offsets_to_transaction`` and ``commit_transaction``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Final

import structlog

FAILPOINT_ENV: Final = "EMOTION_STREAM_FAILPOINT"

AFTER_INFERENCE: Final = "after_inference"
AFTER_SEND: Final = "after_send"
DURING_COMMIT: Final = "during_commit"
NAMES: Final = (AFTER_INFERENCE, AFTER_SEND, DURING_COMMIT)

log = structlog.get_logger("worker.failpoints")


class FailpointSpecError(ValueError):
    """``EMOTION_STREAM_FAILPOINT`` names no known point or has a bad hit number."""


SLEEP_PREFIX: Final = "sleep="


@dataclass(frozen=True)
class Failpoint:
    """An armed point: on the ``on_hit``-th time ``name`` is hit, kill the process (or,
    with ``sleep_s``, stall the calling thread that long)."""

    name: str
    on_hit: int = 1
    sleep_s: float | None = None


def parse(spec: str) -> Failpoint | None:
    """The failpoint a ``EMOTION_STREAM_FAILPOINT`` value asks for; None when empty.

    Raises
    ------
    FailpointSpecError
        Unknown name, a hit number that is not a positive integer, or an action other
        than ``sleep=<seconds>`` (a positive number).
    """
    spec = spec.strip()
    if not spec:
        return None
    name, _, rest = spec.partition(":")
    count, _, action = rest.partition(":")
    if name not in NAMES:
        raise FailpointSpecError(
            f"{FAILPOINT_ENV}={spec!r}: unknown failpoint {name!r} (known: {', '.join(NAMES)})"
        )
    if count and (not count.isdigit() or int(count) < 1):
        raise FailpointSpecError(
            f"{FAILPOINT_ENV}={spec!r}: the hit number after ':' must be a positive integer"
        )
    on_hit = int(count) if count else 1
    if not action:
        return Failpoint(name, on_hit)
    seconds = action.removeprefix(SLEEP_PREFIX)
    try:
        sleep_s = float(seconds) if action.startswith(SLEEP_PREFIX) else None
    except ValueError:
        sleep_s = None
    if sleep_s is None or not 0 < sleep_s < float("inf"):
        raise FailpointSpecError(
            f"{FAILPOINT_ENV}={spec!r}: the action after the hit number must be "
            "'sleep=<seconds>' with a positive number of seconds"
        )
    return Failpoint(name, on_hit, sleep_s)


_lock = threading.Lock()
_hits: dict[str, int] = {}


def armed() -> Failpoint | None:
    """The failpoint the environment arms, if any (read each time: tests set it late).

    Raises
    ------
    FailpointSpecError
        The variable is set to something :func:`parse` rejects.
    """
    return parse(os.environ.get(FAILPOINT_ENV, ""))


def hit(name: str) -> None:
    """Pass point ``name``: a no-op unless it is the armed point's n-th hit, which kills
    the process with SIGKILL (or stalls, for a ``sleep=`` point) after one log line."""
    spec = os.environ.get(FAILPOINT_ENV)
    if not spec:
        return
    try:
        point = parse(spec)
    except FailpointSpecError:
        return  # reported at startup by the worker; never crash at a random place instead
    if point is None or point.name != name:
        return
    with _lock:
        count = _hits[name] = _hits.get(name, 0) + 1
    if count != point.on_hit:
        return
    if point.sleep_s is not None:
        log.warning("failpoint hit: stalling", failpoint=name, hit=count, sleep_s=point.sleep_s)
        time.sleep(point.sleep_s)  # the stall is the fault being injected
        log.warning("failpoint stall over", failpoint=name, hit=count)
        return
    log.warning("failpoint hit: killing this process with SIGKILL", failpoint=name, hit=count)
    sys.stderr.flush()
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def reset() -> None:
    """Forget the hit counts (for tests that arm points in-process)."""
    with _lock:
        _hits.clear()
