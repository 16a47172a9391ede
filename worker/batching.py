"""Micro-batches and how each is cut into inference requests.

:class:`MicroBatcher` hands out up to ``max_size`` tweets (the look-ahead window) once
``full_size`` of them wait or the oldest has waited ``max_wait``: pure bookkeeping with
an injectable clock, so it is tested without sleeping. Tweets leave in the order they
arrived; the worker publishes each batch's results in that order, which keeps order per
partition (and so per key), whatever order the requests ran in.

:func:`plan_requests` cuts one batch into requests of at most the model's batch size.
Bucketed, it sorts the texts by token length and picks the cut that minimises padded
tokens plus a fixed cost per request, so short tweets are not padded to a long one's
length; each request is padded to a multiple of 8 tokens.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
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


# --- cutting a batch into requests ----------------------------------------------------

PAD_MULTIPLE = 8
"""Requests are padded to a multiple of this many tokens (onnxruntime's kernels like it)."""

REQUEST_OVERHEAD_TOKENS = 24
"""The fixed cost of one more request, in padded tokens: one request costs ~4 ms at Triton
(gRPC, the backend, onnxruntime's per-call work) besides ~0.18 ms per token, measured on
the benchmark's roberta-base INT8 model on 2 VNNI cores (benchmarks/RESULTS.md)."""


@dataclass(frozen=True)
class PlannedRequest:
    """One inference request: which texts of the batch it carries, padded to what width."""

    indices: tuple[int, ...]
    """Positions in the batch (arrival order), in the order the request carries them."""
    width: int
    """Tokens per row after padding."""


def padded_width(length: int, limit: int, multiple: int = PAD_MULTIPLE) -> int:
    """``length`` rounded up to ``multiple``, but never past ``limit`` (the model's)."""
    return min(limit, -(-max(1, length) // multiple) * multiple)


def plan_requests(
    lengths: Sequence[int],
    max_size: int,
    *,
    limit: int,
    bucketed: bool = True,
    multiple: int = PAD_MULTIPLE,
    overhead_tokens: int = REQUEST_OVERHEAD_TOKENS,
) -> list[PlannedRequest]:
    """Cut a batch of texts with these token lengths into requests of at most ``max_size``.

    Bucketed: sort by length (ties by arrival) and choose the contiguous cut of the sorted
    order with the lowest cost, ``sum(rows * width) + overhead_tokens * requests`` (dynamic
    programming, exact for that cost). Otherwise: consecutive chunks of ``max_size`` in
    arrival order, each padded to its longest. Widths are rounded up to ``multiple`` and
    capped at ``limit``. Every index appears in exactly one request.
    """
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    count = len(lengths)
    if not bucketed:
        return [
            PlannedRequest(
                tuple(range(start, min(start + max_size, count))),
                padded_width(max(lengths[start : start + max_size]), limit, multiple),
            )
            for start in range(0, count, max_size)
        ]
    order = sorted(range(count), key=lambda i: (lengths[i], i))
    widths = [padded_width(lengths[i], limit, multiple) for i in order]
    # best[j]: cheapest cost of the first j sorted texts; cut[j]: where its last request starts.
    best = [0] * (count + 1)
    cut = [0] * (count + 1)
    for stop in range(1, count + 1):
        width = widths[stop - 1]  # the longest of any request ending here
        best[stop], cut[stop] = min(
            (best[start] + overhead_tokens + (stop - start) * width, start)
            for start in range(max(0, stop - max_size), stop)
        )
    requests: list[PlannedRequest] = []
    stop = count
    while stop > 0:
        start = cut[stop]
        requests.append(PlannedRequest(tuple(order[start:stop]), widths[stop - 1]))
        stop = start
    requests.reverse()
    return requests
