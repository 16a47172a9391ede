"""Which offsets may be committed: the per-partition watermark below which all is done.

A consumed offset is *done* when its result or its dead letter has been acknowledged
by the broker. Results are acknowledged out of order (a dead letter goes out at once,
a result after inference; batches may finish in any order), so the tracker keeps, per
partition, the offsets still pending in consumption order. The commit watermark is the
first pending offset — or one past the last consumed offset when none is pending. It
never passes a gap.

Acknowledgements arrive on the producer's I/O thread while the main thread consumes
and commits, so every method takes one lock. Each partition's state carries an
*epoch*: forgetting a partition (revocation, rewind after a failed publish) starts a
new epoch, and late acknowledgements from the old one are ignored, so they can never
move a watermark the worker no longer owns.

For exactly-once the tracker also knows which records were *sent* (handed to the
producer, not yet acknowledged): a transaction may only commit at a clean cut, where
everything sent lies below the committed offsets (:meth:`CommitTracker.ragged`), and
a dead letter is held until every earlier record of its partition was sent
(:meth:`CommitTracker.sent_before`), so that it never runs ahead of the cut.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Partition = tuple[str, int]
"""(topic, partition): the worker's own partition type, free of any Kafka client type."""


@dataclass(frozen=True)
class Ticket:
    """Proof of consumption: where a record came from and in which epoch."""

    partition: Partition
    offset: int
    epoch: int


@dataclass(slots=True)
class _Entry:
    offset: int
    sent: bool = False
    done: bool = False


@dataclass
class _PartitionState:
    epoch: int
    # Entries in consumption order; the head is the oldest not yet popped.
    pending: deque[_Entry] = field(default_factory=deque)
    by_offset: dict[int, _Entry] = field(default_factory=dict)
    # One past the last offset popped from ``pending``: the watermark when none is pending.
    done_below: int | None = None
    last_consumed: int | None = None
    committed: int | None = None
    # The first offset consumed since the partition was (re)gained: where its reading
    # started, i.e. the group's committed offset then.
    start: int | None = None

    def restart_point(self) -> int | None:
        """Where to read again when everything not committed is thrown away."""
        return self.committed if self.committed is not None else self.start

    def watermark(self) -> int | None:
        """None until something was done: committing the first pending offset says nothing."""
        if self.done_below is None:
            return None
        if self.pending:
            return self.pending[0].offset
        return self.done_below

    def first_not_done(self) -> int | None:
        """Where to read again when the pending records are thrown away; unlike
        :meth:`watermark`, also when nothing was done yet (then: the first pending)."""
        if self.pending:
            return self.pending[0].offset
        return self.done_below


class CommitTracker:
    """Per partition, the highest offset below which every record is published or
    dead-lettered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[Partition, _PartitionState] = {}
        self._epochs = itertools.count(1)

    def track(self, partition: Partition, offset: int) -> Ticket:
        """Record that ``offset`` was consumed; it is pending until :meth:`done`."""
        with self._lock:
            state = self._partitions.get(partition)
            if state is None:
                state = self._partitions[partition] = _PartitionState(epoch=next(self._epochs))
            elif state.last_consumed is not None and offset <= state.last_consumed:
                # The consumer went back (a seek, an offset reset): what was pending will be
                # read again, so start over from here; the old epoch's acks no longer count.
                state = self._partitions[partition] = _PartitionState(
                    epoch=next(self._epochs), committed=state.committed, start=state.start
                )
            entry = _Entry(offset)
            state.pending.append(entry)
            state.by_offset[offset] = entry
            state.last_consumed = offset
            if state.start is None:
                state.start = offset
            return Ticket(partition, offset, state.epoch)

    def sent(self, ticket: Ticket) -> None:
        """Note that the ticket's result or dead letter was handed to the producer."""
        with self._lock:
            state = self._partitions.get(ticket.partition)
            if state is not None and state.epoch == ticket.epoch:
                entry = state.by_offset.get(ticket.offset)
                if entry is not None:
                    entry.sent = True

    def sent_before(self, ticket: Ticket) -> bool:
        """True when every record of the ticket's partition before it was sent (or is done):
        sending this one now keeps the partition's sends a contiguous run. False if stale."""
        with self._lock:
            state = self._partitions.get(ticket.partition)
            if state is None or state.epoch != ticket.epoch:
                return False
            for entry in state.pending:
                if entry.offset == ticket.offset:
                    return True
                if not (entry.sent or entry.done):
                    return False
            return False

    def ragged(self) -> set[Partition]:
        """Partitions with a record sent or done *after* one that is not done: committing
        their watermark would leave sent work above the commit (exactly-once forbids it)."""
        with self._lock:
            # The head of ``pending`` is never done (done heads are popped at once).
            return {
                partition
                for partition, state in self._partitions.items()
                if any(e.sent or e.done for e in itertools.islice(state.pending, 1, None))
            }

    def done(self, ticket: Ticket) -> bool:
        """Mark the ticket's record published or dead-lettered. False if it is stale."""
        with self._lock:
            state = self._partitions.get(ticket.partition)
            if state is None or state.epoch != ticket.epoch:
                return False
            entry = state.by_offset.pop(ticket.offset, None)
            if entry is None:
                return False
            entry.done = True
            while state.pending and state.pending[0].done:
                state.done_below = state.pending.popleft().offset + 1
            return True

    def is_current(self, ticket: Ticket) -> bool:
        """False once the ticket's partition was forgotten or rewound."""
        with self._lock:
            state = self._partitions.get(ticket.partition)
            return state is not None and state.epoch == ticket.epoch

    def committable(self) -> dict[Partition, int]:
        """Offsets to commit now: each partition's watermark, where it passed the last commit."""
        with self._lock:
            ready = {}
            for partition, state in self._partitions.items():
                mark = state.watermark()
                if mark is not None and (state.committed is None or mark > state.committed):
                    ready[partition] = mark
            return ready

    def committed(self, offsets: dict[Partition, int]) -> None:
        """Note that ``offsets`` were committed (partitions forgotten since are skipped)."""
        with self._lock:
            for partition, offset in offsets.items():
                state = self._partitions.get(partition)
                if state is not None and (state.committed is None or offset > state.committed):
                    state.committed = offset

    def unfinished(self, partitions: set[Partition]) -> dict[Partition, int]:
        """The first offset not yet done, for each partition that has one pending: where
        reading must start again if the partition's in-memory work is dropped."""
        with self._lock:
            return {
                partition: state.pending[0].offset
                for partition, state in self._partitions.items()
                if partition in partitions and state.pending
            }

    def restart_points(self, partitions: set[Partition]) -> dict[Partition, int]:
        """Exactly-once: the last committed offset (else where reading started) of each of
        ``partitions`` that was read: where to resume when uncommitted work is aborted."""
        with self._lock:
            points = {}
            for partition, state in self._partitions.items():
                point = state.restart_point()
                if partition in partitions and point is not None:
                    points[partition] = point
            return points

    def rewind_to_committed(self, partition: Partition) -> int | None:
        """Exactly-once, after an abort: forget everything past the last commit (a new epoch)
        and return the offset to read from again (None if the partition was never read)."""
        return self._restart(partition, _PartitionState.restart_point)

    def forget(self, partitions: list[Partition] | set[Partition]) -> None:
        """Drop partitions (revoked or lost); their late acknowledgements are ignored."""
        with self._lock:
            for partition in partitions:
                self._partitions.pop(partition, None)

    def rewind(self, partition: Partition) -> int | None:
        """Forget a partition's pending records and return the offset to re-read from.

        Used when a publish failed: the records from the first one not done on are consumed
        again (a new epoch), so nothing after a gap is ever committed — also when nothing
        of the partition was done yet (the watermark is unknown then, and returning None
        would leave the consumer past the failed records: lost).
        """
        return self._restart(partition, _PartitionState.first_not_done)

    def _restart(
        self, partition: Partition, point_of: Callable[[_PartitionState], int | None]
    ) -> int | None:
        """Replace the partition's state by a fresh epoch that resumes at ``point_of(state)``
        (everything before it counts as done); drop the partition if there is no such point.
        The point, for the caller to seek to."""
        with self._lock:
            state = self._partitions.pop(partition, None)
            if state is None:
                return None
            point = point_of(state)
            if point is not None:
                fresh = _PartitionState(
                    epoch=next(self._epochs), committed=state.committed, start=state.start
                )
                fresh.done_below = point
                fresh.last_consumed = point - 1
                self._partitions[partition] = fresh
            return point

    def pending_count(self) -> int:
        """Records consumed and not yet done, over all partitions."""
        with self._lock:
            return sum(len(state.by_offset) for state in self._partitions.values())

    def next_offsets(self) -> dict[Partition, int]:
        """One past the last consumed offset of each partition (for the consumer-lag gauge)."""
        with self._lock:
            return {
                partition: state.last_consumed + 1
                for partition, state in self._partitions.items()
                if state.last_consumed is not None
            }

    def partitions(self) -> set[Partition]:
        with self._lock:
            return set(self._partitions)
