"""Partitions assigned, revoked and lost, and the unfinished work they leave.

kafka-python runs these callbacks on its I/O thread while the loop thread waits in
``poll()``. They only take notes: where to re-read a partition that comes back (its
in-memory work was dropped), and which partitions left, for the loop thread to drop
their work (:meth:`Rebalance.take_gone`). What may be committed on revocation, and where
re-reading starts, is the delivery mode's to say.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from worker.delivery import Delivery, loggable
from worker.offsets import CommitTracker, Partition


class Rebalance:
    """The worker's rebalance callbacks (a :class:`~worker.ports.RebalanceHandler`)."""

    def __init__(self, tracker: CommitTracker, delivery: Delivery, log: Any) -> None:
        self._tracker = tracker
        self._delivery = delivery
        self._log = log
        self._gone: queue.SimpleQueue[set[Partition]] = queue.SimpleQueue()
        self._resume_from: dict[Partition, int] = {}
        self._resume_lock = threading.Lock()

    def on_assigned(self, partitions: set[Partition]) -> dict[Partition, int]:
        with self._resume_lock:
            seeks = {p: o for p, o in self._resume_from.items() if p in partitions}
            self._resume_from.clear()
        self._log.info(
            "partitions assigned", partitions=sorted(partitions), rereading=loggable(seeks)
        )
        return seeks

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, int]:
        complete = self._delivery.revoking(partitions)
        points = self._delivery.restart_points(partitions)
        with self._resume_lock:
            self._resume_from.update(points)
        self._tracker.forget(partitions)
        self._gone.put(set(partitions))
        self._log.info(
            "partitions revoked", partitions=sorted(partitions), committing=loggable(complete)
        )
        return complete

    def on_lost(self, partitions: set[Partition]) -> None:
        # No position to remember: kafka-python drops a lost partition's fetch position,
        # and if it comes back, reading starts from the group's committed offset, which
        # another member may have moved on meanwhile. Our old position would be stale:
        # seeking to it re-published what the other member had committed (duplicates even
        # with exactly-once) or skipped past what nobody had (losses).
        with self._resume_lock:
            for partition in partitions:
                self._resume_from.pop(partition, None)
        self._tracker.forget(partitions)
        self._gone.put(set(partitions))
        self._log.warning("partitions lost", partitions=sorted(partitions))

    def take_gone(self) -> set[Partition]:
        """Loop thread: the partitions revoked or lost since the last call."""
        gone: set[Partition] = set()
        while True:
            try:
                gone |= self._gone.get_nowait()
            except queue.Empty:
                return gone
