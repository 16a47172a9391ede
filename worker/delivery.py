"""Delivery modes: what a send, a dead letter, a failed send, a commit and a lost
partition mean, at least once or exactly once. The loop never asks which mode it runs;
:func:`delivery_for` picks the object once.

At least once (:class:`AtLeastOnce`): a record's offset is committed once its result or
dead letter is acknowledged, never past a gap (:class:`~worker.offsets.CommitTracker`).
A failed send re-reads its partition from the first record not done, after a backoff.

Exactly once (:class:`ExactlyOnce`): every send since the last commit belongs to one
open Kafka transaction; a commit first reaches a *clean cut* (everything flushed and
acknowledged, every record sent lies below the offsets to commit — dead letters of
undecodable records are held back until every earlier record of their partition was
sent), then commits records and consumer offsets together. A failed send, a stale group
generation or a broker error aborts the transaction and re-reads every partition from
its last committed offset; losing a partition whose results are in the open transaction
aborts it too, so the old owner never commits work a new owner redoes. A commit without
an answer (:class:`~worker.errors.TransactionOutcomeUnknown`) re-reads from the offsets
committed on the broker instead: it may have gone through. Fencing by a newer producer
with the same transactional id ends ``run()`` (:class:`~worker.errors.ProducerFenced`).

Both modes pause reading after a re-read for a capped backoff (the loop keeps polling, so
neither liveness nor ``max.poll.interval`` runs out): re-reading at once would resend
into the same failure.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from worker import failpoints
from worker.backoff import Backoff
from worker.errors import (
    FatalError,
    PoisonMessage,
    TransactionAborted,
    TransactionOutcomeUnknown,
    TransientError,
)
from worker.messages import SourceRecord
from worker.observability import WorkerMetrics
from worker.offsets import CommitTracker, Partition, Ticket
from worker.ports import Publisher, Source, Transactions
from worker.settings import WorkerSettings

# Exactly-once: how long a commit waits for the acknowledgement of what was sent (ms on
# a healthy broker) before it is postponed to the next commit interval.
CUT_FLUSH_TIMEOUT_S = 2.0
# Exactly-once: flush/release rounds to reach a clean cut before a commit. One round
# suffices unless sends beget sends (a too-large result re-sent as a dead letter, then
# slim); past this, the commit waits for the next interval.
MAX_CUT_ROUNDS = 4
# On revocation, sends already made get this long to be acknowledged before the commit
# (kafka-python's I/O thread waits meanwhile; acks=all on a healthy broker takes ms).
REVOKE_FLUSH_TIMEOUT_S = 10.0


class HeldDeadLetter(NamedTuple):
    """An undecodable record on its way to the dead-letter topic."""

    record: SourceRecord
    poison: PoisonMessage
    ticket: Ticket


@dataclass(frozen=True)
class LoopHooks:
    """What a delivery mode asks of the worker's loop."""

    dead_letter: Callable[[HeldDeadLetter], None]
    settle_sends: Callable[[], None]
    """Settle the sends that failed so far (may send again, or re-read)."""
    discard_failed_sends: Callable[[], None]
    drop_waiting: Callable[[set[Partition]], None]
    """Forget the unsent work of partitions that are read again."""


class Delivery(Protocol):
    """One delivery mode. Loop-thread methods, except :meth:`revoking` and
    :meth:`restart_points` (the rebalance listener's, on the consumer's I/O thread)."""

    def note_sent(self, ticket: Ticket) -> None:
        """A result or dead letter for ``ticket`` is about to be handed to the publisher."""
        ...

    def dead_letter_in_turn(self, letter: HeldDeadLetter) -> None:
        """Dead-letter poison now, or hold it until its turn."""
        ...

    def release_held(self) -> None:
        """Dead-letter held poison whose turn came."""
        ...

    def send_failed(self, ticket: Ticket, error: TransientError) -> None:
        """A send failed transiently: re-read what it leaves undelivered."""
        ...

    def commit(self, *, force: bool = False) -> None:
        """Commit what is safe, at most once per commit interval unless ``force``."""
        ...

    def partitions_gone(self, gone: set[Partition]) -> set[Partition]:
        """Partitions were revoked or lost; the partitions rewound as a consequence."""
        ...

    def drop(self, partitions: set[Partition]) -> int:
        """Forget held work of partitions read again; how many records were dropped."""
        ...

    def rereading_paused(self) -> bool:
        """True while reading waits after a re-read."""
        ...

    def revoking(self, partitions: set[Partition]) -> dict[Partition, int]:
        """The offsets to commit before ``partitions`` are handed over."""
        ...

    def restart_points(self, partitions: set[Partition]) -> dict[Partition, int]:
        """Where to re-read ``partitions`` if they come back (their work is dropped)."""
        ...


def loggable(offsets: dict[Partition, int]) -> dict[str, int]:
    """``{"topic:partition": offset}``: JSON objects need string keys."""
    return {f"{topic}:{partition}": offset for (topic, partition), offset in offsets.items()}


@dataclass(frozen=True)
class DeliveryParts:
    """What a delivery mode works with, built once by ``Worker.run()``."""

    settings: WorkerSettings
    source: Source
    publisher: Publisher
    tracker: CommitTracker
    metrics: WorkerMetrics
    log: Any
    loop: LoopHooks


class _Mode:
    """What both modes share: the commit interval and the pause after a re-read."""

    def __init__(self, parts: DeliveryParts) -> None:
        settings = parts.settings
        self._settings = settings
        self._source = parts.source
        self._publisher = parts.publisher
        self._tracker = parts.tracker
        self._metrics = parts.metrics
        self._log = parts.log
        self._loop = parts.loop
        self._abort_backoff = Backoff(
            settings.retry_backoff_initial_s, settings.retry_backoff_max_s
        )
        self._reread_at: float | None = None
        """After a re-read: partitions stay paused until this time."""
        self.last_commit = 0.0

    def rereading_paused(self) -> bool:
        if self._reread_at is not None and time.monotonic() >= self._reread_at:
            self._reread_at = None
        return self._reread_at is not None

    def commit(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_commit < self._settings.commit_interval_ms / 1000:
            return
        self.last_commit = now
        self._commit_now()

    def _commit_now(self) -> None:
        raise NotImplementedError


class AtLeastOnce(_Mode):
    """Commit offsets whose output is acknowledged; re-read a partition after a failed send."""

    def note_sent(self, ticket: Ticket) -> None:
        pass  # the acknowledgement is what counts

    def dead_letter_in_turn(self, letter: HeldDeadLetter) -> None:
        self._loop.dead_letter(letter)  # its offset waits for it in the tracker anyway

    def release_held(self) -> None:
        pass

    def drop(self, partitions: set[Partition]) -> int:
        return 0

    def send_failed(self, ticket: Ticket, error: TransientError) -> None:
        offset = self._tracker.rewind(ticket.partition)
        self._metrics.retries.labels(reason=type(error).__name__).inc()
        self._log.warning(
            "publish failed, re-reading partition",
            error=str(error),
            partition=ticket.partition,
            from_offset=offset,
        )
        self._loop.drop_waiting({ticket.partition})
        if offset is not None:
            self._source.seek(ticket.partition, offset)
        # Re-reading at once would resend into the same failure, a loop that multiplies
        # memory and duplicates: pause and keep polling until the backoff is over.
        delay = self._abort_backoff.next_delay()
        self._reread_at = max(self._reread_at or 0.0, time.monotonic() + delay)

    def partitions_gone(self, gone: set[Partition]) -> set[Partition]:
        return set()

    def revoking(self, partitions: set[Partition]) -> dict[Partition, int]:
        # Results sent a moment ago are not acknowledged yet: wait for them, or they
        # stay out of this commit and the next owner classifies them again.
        self._publisher.flush(REVOKE_FLUSH_TIMEOUT_S)
        return {p: o for p, o in self._tracker.committable().items() if p in partitions}

    def restart_points(self, partitions: set[Partition]) -> dict[Partition, int]:
        return self._tracker.unfinished(partitions)

    def _commit_now(self) -> None:
        offsets = self._tracker.committable()
        if not offsets:
            return
        failpoints.hit(failpoints.AFTER_SEND)  # acknowledged, not yet committed
        try:
            failpoints.hit(failpoints.DURING_COMMIT)
            if self._source.commit(offsets):
                self._tracker.committed(offsets)
                self._abort_backoff.reset()  # the publish failures are over
                self._metrics.commits.inc()
            else:
                self._log.warning(
                    "commit rejected: the group rebalanced", offsets=loggable(offsets)
                )
        except TransientError as exc:
            self._metrics.retries.labels(reason=type(exc).__name__).inc()
            self._log.warning("commit failed, will retry", error=str(exc))


class ExactlyOnce(_Mode):
    """Results and offsets committed together in one transaction per commit (module doc)."""

    def __init__(self, parts: DeliveryParts, transactions: Transactions) -> None:
        super().__init__(parts)
        self._transactions = transactions
        self._held: deque[HeldDeadLetter] = deque()
        """Dead letters waiting until every earlier record of their partition was sent."""
        self._txn_partitions: set[Partition] = set()
        """Input partitions with records sent in the open transaction."""
        self._sends = 0

    @property
    def held(self) -> tuple[HeldDeadLetter, ...]:
        return tuple(self._held)

    def note_sent(self, ticket: Ticket) -> None:
        self._sends += 1
        self._tracker.sent(ticket)
        self._txn_partitions.add(ticket.partition)

    def dead_letter_in_turn(self, letter: HeldDeadLetter) -> None:
        # Sent now, it could run ahead of earlier records still at Triton and land in a
        # transaction whose offsets stop below it: a duplicate after a crash. It waits
        # for its turn instead.
        self._held.append(letter)

    def release_held(self) -> None:
        if not self._held:
            return
        waiting: deque[HeldDeadLetter] = deque()
        for letter in self._held:  # consumption order
            if not self._tracker.is_current(letter.ticket):
                continue  # its partition is read again
            if self._tracker.sent_before(letter.ticket):
                self._loop.dead_letter(letter)
            else:
                waiting.append(letter)
        self._held = waiting

    def drop(self, partitions: set[Partition]) -> int:
        held = len(self._held)
        self._held = deque(h for h in self._held if h.ticket.partition not in partitions)
        return held - len(self._held)

    def send_failed(self, ticket: Ticket, error: TransientError) -> None:
        # The open transaction holds every partition's sends: all start over.
        self._abort_and_rewind(error)

    def partitions_gone(self, gone: set[Partition]) -> set[Partition]:
        if not (self._transactions.in_transaction and gone & self._txn_partitions):
            return set()
        lost = sorted(gone & self._txn_partitions)
        return self._abort_and_rewind(
            TransactionAborted("rebalance", f"partitions {lost} left us with results"),
            back_off=False,
        )

    def revoking(self, partitions: set[Partition]) -> dict[Partition, int]:
        # Offsets are committed only inside a transaction, with their results; the loop
        # aborts the open one if it holds results of these partitions.
        return {}

    def restart_points(self, partitions: set[Partition]) -> dict[Partition, int]:
        # Uncommitted results may be aborted with the open transaction: from the commit.
        return self._tracker.restart_points(partitions)

    def _commit_now(self) -> None:
        """Commit the open transaction with the offsets below its clean cut."""
        if not self._transactions.in_transaction:
            return
        try:
            offsets = self._transaction_cut()
            if offsets is None:
                return
            failpoints.hit(failpoints.AFTER_SEND)  # flushed and acknowledged, not committed
            self._transactions.commit_transaction(offsets, self._source.membership())
        except TransientError as exc:
            self._abort_and_rewind(exc)
            return
        self._tracker.committed(offsets)
        self._txn_partitions.clear()
        self._abort_backoff.reset()
        self._metrics.commits.inc()

    def _transaction_cut(self) -> dict[Partition, int] | None:
        """Flush until every send is acknowledged and no held dead letter can go out; the
        offsets to commit, or None when the transaction was aborted meanwhile or is not at
        a clean cut yet (tried again at the next commit).

        Raises
        ------
        TransactionAborted
            Nothing to commit for what was sent.
        """
        for _ in range(MAX_CUT_ROUNDS):
            sends = self._sends
            if not self._publisher.flush(CUT_FLUSH_TIMEOUT_S):
                # The broker is not acknowledging (e.g. a partition under min.insync.replicas).
                # Aborting would wait for those sends too (kafka-python finishes in-flight
                # batches first) and re-reading would only add more: commit later. Reading
                # stays paused at max_unacknowledged_records; sends that fail for good abort
                # the transaction, and the broker aborts one open past its timeout.
                self._log.info("commit postponed: sends not acknowledged yet")
                return None
            self._loop.settle_sends()
            if not self._transactions.in_transaction:
                return None  # a failed send aborted it
            self.release_held()
            if self._sends == sends:
                break
        else:
            return None
        ragged = self._tracker.ragged()
        if ragged:
            self._log.info("commit postponed: sends past a gap", partitions=sorted(ragged))
            return None
        offsets = self._tracker.committable()
        if not offsets:
            raise TransactionAborted("commit", "records were sent but no offset moved")
        return offsets

    def _abort_and_rewind(self, error: TransientError, *, back_off: bool = True) -> set[Partition]:
        """Abort the open transaction, re-read every partition from its last commit, and
        drop what was in memory for them. The partitions rewound.

        Raises
        ------
        ProducerFenced
            The abort found a newer producer with our transactional id.
        FatalError
            The abort itself failed.
        """
        self._metrics.retries.labels(reason=type(error).__name__).inc()
        self._transactions.abort_transaction()
        self._txn_partitions.clear()
        self._loop.discard_failed_sends()  # failures of the aborted sends: moot now
        if isinstance(error, TransactionOutcomeUnknown):
            # The commit may have gone through: resume from the broker's offsets, not ours.
            self._tracker.committed(self._source.committed_offsets(self._tracker.partitions()))
        points: dict[Partition, int] = {}
        for partition in self._tracker.partitions():
            point = self._tracker.rewind_to_committed(partition)
            if point is not None:
                self._source.seek(partition, point)
                points[partition] = point
        self._loop.drop_waiting(set(points))
        delay = self._abort_backoff.next_delay() if back_off else 0.0
        self._log.warning(
            "transaction aborted, re-reading from the last commit",
            error=str(error),
            rereading=loggable(points),
            retry_in_s=round(delay, 2),
        )
        if delay:
            # Not a sleep: a backoff of up to retry_backoff_max_s (≤ 600 s) would outlast
            # the liveness timeout and max.poll.interval. Pause and keep polling instead.
            self._reread_at = time.monotonic() + delay
        return set(points)


def delivery_for(parts: DeliveryParts) -> Delivery:
    """The delivery mode ``settings.delivery`` names, built once.

    Raises
    ------
    FatalError
        Exactly once without a publisher that does transactions.
    """
    if not parts.settings.exactly_once:
        return AtLeastOnce(parts)
    if not isinstance(parts.publisher, Transactions):
        raise FatalError("delivery=exactly_once needs a transactional publisher")
    return ExactlyOnce(parts, transactions=parts.publisher)
