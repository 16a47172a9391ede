"""Polling the source: how long one poll may wait, and retrying a poll that failed.

The loop never blocks longer than :data:`IDLE_POLL_S` in one poll, so ``stop()`` and due
batches are noticed promptly; it polls briefly while batches are at Triton, waits on the
oldest one when no more can be sent, and polls long while the consumer joins its group.
A failing poll is retried in place after a capped exponential backoff.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

from worker.backoff import Backoff
from worker.batching import MicroBatcher
from worker.errors import TransientError
from worker.inflight import InFlightBatches
from worker.messages import SourceRecord
from worker.observability import WorkerMetrics
from worker.ports import Source
from worker.settings import WorkerSettings

# The loop never blocks longer than this in one poll.
IDLE_POLL_S = 0.2
# While batches are at Triton, the loop looks for finished ones this often.
BUSY_POLL_S = 0.005
# While the consumer joins its group, each poll waits this long. kafka-python 3.0 drives
# the JoinGroup/SyncGroup round trip only inside poll(); with polls that keep timing out
# mid-join we saw members never finish rejoining (partitions stuck unassigned until the
# session timed out). Long polls let the join complete within one call.
REBALANCE_POLL_S = 1.0
# A failing poll is retried after a capped exponential backoff, capped here too: the loop
# waits in place (still beating, unlike a paused retry it cannot poll meanwhile), and
# must stay well inside the liveness timeout (60 s) and max.poll.interval.
POLL_RETRY_MAX_S = 5.0


class Poller:
    """One poll of the loop: its timeout from the loop's state, its retry on failure."""

    def __init__(
        self,
        settings: WorkerSettings,
        stop: threading.Event,
        metrics: WorkerMetrics,
        log: Any,
    ) -> None:
        retry_max_s = min(settings.retry_backoff_max_s, POLL_RETRY_MAX_S)
        self.backoff = Backoff(min(settings.retry_backoff_initial_s, retry_max_s), retry_max_s)
        self._stop = stop
        self._metrics = metrics
        self._log = log

    def poll(
        self, source: Source, batcher: MicroBatcher, batches: InFlightBatches
    ) -> list[SourceRecord]:
        """The records of one poll; none after a transient failure (waited out here)."""
        timeout = _timeout(source, batcher, batches)
        oldest = batches.oldest
        if timeout < REBALANCE_POLL_S and batches.full and oldest is not None:
            # Nothing can be sent until Triton answers: wake up the moment it does, rather
            # than spinning on short polls (a poll still follows, to keep the group).
            futures.wait([oldest.future], timeout=IDLE_POLL_S)
            timeout = 0.0
        try:
            records = source.poll(timeout)
        except TransientError as exc:
            delay = self.backoff.next_delay()
            self._log.warning("poll failed, will retry", error=str(exc), retry_in_s=round(delay, 2))
            self._metrics.retries.labels(reason=type(exc).__name__).inc()
            self._stop.wait(delay)
            return []
        self.backoff.reset()
        return records


def _timeout(source: Source, batcher: MicroBatcher, batches: InFlightBatches) -> float:
    if source.rebalancing:
        return REBALANCE_POLL_S
    if len(batches) or batches.retry_at is not None:
        return BUSY_POLL_S
    due = batcher.due_in()
    return IDLE_POLL_S if due is None else min(due, IDLE_POLL_S)
