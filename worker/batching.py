"""Micro-batches: the queue of decoded tweets waiting for inference.

:class:`MicroBatcher` hands out up to ``max_size`` tweets (the look-ahead window) once
``full_size`` of them wait or the oldest has waited ``max_wait``: pure bookkeeping with
an injectable clock, so it is tested without sleeping. Tweets leave in the order they
arrived; the worker publishes each batch's results in that order, which keeps order per
partition (and so per key), whatever order the requests ran in.

How a batch is then cut into inference requests is :mod:`worker.planning`'s job.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from worker.messages import InboundTweet
from worker.offsets import Partition, Ticket


@dataclass(frozen=True)
class PendingTweet:
    """A decoded tweet waiting for classification, with its commit ticket."""

    tweet: InboundTweet
    ticket: Ticket
    consumed_at: float
    """Monotonic time it was polled: the start of its end-to-end latency."""


@dataclass(frozen=True)
class MicroBatch:
    """Tweets classified in one inference call, in arrival order."""

    items: tuple[PendingTweet, ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def texts(self) -> list[str]:
        return [item.tweet.text for item in self.items]

    def partitions(self) -> set[Partition]:
        return {item.ticket.partition for item in self.items}


class MicroBatcher:
    """Collects pending tweets and hands out batches when full or due.

    A batch is due ``max_wait_s`` after the arrival of its oldest tweet, so tweets
    left over from a full batch do not wait again.
    """

    def __init__(
        self,
        max_size: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        full_size: int | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self.full_size = max(1, min(full_size or max_size, max_size))
        """This many waiting tweets make a batch due at once (one full request's worth);
        a due batch takes up to ``max_size``."""
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._waiting: deque[tuple[float, PendingTweet]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, item: PendingTweet) -> None:
        self._waiting.append((self._clock(), item))

    def due_in(self) -> float | None:
        """Seconds until the next batch is due (0 if now); None if nothing waits."""
        if not self._waiting:
            return None
        if len(self._waiting) >= self.full_size:
            return 0.0
        return max(0.0, self._waiting[0][0] + self.max_wait_s - self._clock())

    def ready(self) -> bool:
        due = self.due_in()
        return due is not None and due <= 0.0

    def take(self, *, force: bool = False) -> MicroBatch | None:
        """The next batch if it is full or due (or anything waiting, when ``force``)."""
        if not self._waiting or not (force or self.ready()):
            return None
        count = min(self.max_size, len(self._waiting))
        return MicroBatch(tuple(self._waiting.popleft()[1] for _ in range(count)))

    def drop(self, partitions: Iterable[Partition]) -> int:
        """Discard waiting tweets of revoked partitions; returns how many."""
        gone = set(partitions)
        before = len(self._waiting)
        self._waiting = deque(
            entry for entry in self._waiting if entry[1].ticket.partition not in gone
        )
        return before - len(self._waiting)
