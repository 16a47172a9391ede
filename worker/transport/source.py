"""The input topic's consumer: :class:`KafkaSource`.

It consumes (poll, pause/resume, seek, commit — all from the one thread that runs the
worker's loop, since kafka-python's consumer is not thread-safe) and turns records into
:class:`~worker.messages.SourceRecord`. For exactly-once it gives the consumer's group
metadata to a transactional offset commit, refusing a consumer kafka-python has reset to
no generation (:func:`not_a_member`).

Rebalances: kafka-python 3 runs rebalance listeners on its I/O thread while the
caller is inside ``poll()``. The listener here is asynchronous so the revocation
commit can be *awaited* on that loop (a blocking commit from the I/O thread would
deadlock), and so the commit is done before the partitions are handed over.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import kafka
import kafka.errors
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import MemberState, OffsetAndMetadata

from worker.errors import FatalError, TransactionAborted
from worker.messages import SourceRecord
from worker.offsets import Partition
from worker.settings import WorkerSettings
from worker.transport.translation import CONSUMER_START, translate_kafka_error

if TYPE_CHECKING:  # worker.ports imports this package for its default factories
    from worker.ports import RebalanceHandler

log = logging.getLogger(__name__)

# The worker commits within a loop iteration; a commit must not block the loop for long.
COMMIT_TIMEOUT_MS = 10_000
# Reading the group's committed offsets after a transaction's outcome was unknown: the
# broker has just answered the new producer, so this is generous.
COMMITTED_READ_TIMEOUT_S = 30.0


def _partition(tp: Any) -> Partition:
    return (str(tp.topic), int(tp.partition))


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource, handler: RebalanceHandler) -> None:
        self._source = source
        self._handler = handler

    # An exception escaping a listener makes kafka-python's poll() raise, which would stop
    # the worker over bookkeeping; each hook therefore contains its own failures.

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        try:
            offsets = self._handler.on_revoked({_partition(tp) for tp in revoked})
            if offsets:
                await self._source.commit_from_listener(offsets)
        except Exception:
            log.exception("revocation handling failed; the next owner re-reads uncommitted")

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        try:
            seeks = self._handler.on_assigned({_partition(tp) for tp in assigned})
            # kafka-python keeps the fetch position of a partition that stays assigned
            # across a rebalance; work dropped at revocation must be read again.
            for partition, offset in seeks.items():
                self._source.seek(partition, offset)
        except Exception:
            log.exception("assignment handling failed")

    async def on_partitions_lost(self, lost: Iterable[Any]) -> None:
        # The group has moved on: a commit would be rejected, and must not be tried.
        try:
            self._handler.on_lost({_partition(tp) for tp in lost})
        except Exception:
            log.exception("lost-partition handling failed")


def _offsets(offsets: dict[Partition, int]) -> dict[Any, Any]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}


def not_a_member(metadata: Any) -> str | None:
    """Why a consumer with this group metadata must not commit offsets; None if it may.

    kafka-python 3.0.12 resets the membership to generation -1 and member id ``''`` on
    its heartbeat thread when the coordinator no longer knows the member, or when
    ``max.poll.interval`` ran out (it leaves the group), and its
    ``send_offsets_to_transaction`` accepts that snapshot. The broker skips the generation
    check for a transactional offset commit without a generation, so a worker evicted
    between its last poll and its commit would commit results and offsets of partitions
    another member now owns and redoes: duplicates, even exactly once. A snapshot with a
    real generation is safe to send, even if it goes stale a moment later: the broker
    checks that generation against the group's.
    """
    if metadata.generation_id < 0 or not metadata.member_id:
        return (
            f"not a member of group {metadata.group_id!r} any more (generation "
            f"{metadata.generation_id}, member id {metadata.member_id!r}): evicted, or it "
            "left after max.poll.interval"
        )
    if metadata.state != MemberState.STABLE:
        return (
            f"group {metadata.group_id!r} is not stable for this member (state "
            f"{metadata.state}, generation {metadata.generation_id}): it is rejoining"
        )
    return None


class KafkaSource:
    """The input topic's consumer, in the worker's group; a context manager."""

    def __init__(self, settings: WorkerSettings, handler: RebalanceHandler) -> None:
        self._settings = settings
        self._handler = handler
        self._consumer: Any = None
        self._paused = False

    def __enter__(self) -> KafkaSource:
        s = self._settings
        # Exactly-once: read_committed also makes the committed-offset fetch after a
        # rebalance wait for a transaction that is still committing offsets (KIP-447's
        # require_stable), so a new owner never starts from a stale offset.
        isolation = "read_committed" if s.exactly_once else "read_uncommitted"
        try:
            self._consumer = kafka.KafkaConsumer(
                bootstrap_servers=s.kafka_bootstrap_servers.split(","),
                group_id=s.consumer_group,
                client_id=f"{s.worker_id}-consumer",
                enable_auto_commit=False,
                auto_offset_reset=s.auto_offset_reset,
                # One poll never brings more than a batch or two: the backlog stays small
                # and pausing takes effect at once.
                max_poll_records=max(s.max_batch_size, 1) * 2,
                max_poll_interval_ms=s.max_poll_interval_ms,
                isolation_level=isolation,
                **s.kafka_security(),
            )
            self._consumer.subscribe([s.input_topic], listener=_Listener(self, self._handler))
        except Exception as exc:
            self._close()
            raise translate_kafka_error(exc, CONSUMER_START) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close(autocommit=False)
            self._consumer = None

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        """Records since the last poll, in offset order per partition."""
        try:
            batches = self._consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)))
        except kafka.errors.CorruptRecordError as exc:
            return [self._skip_unparsable(exc)]
        except Exception as exc:
            raise translate_kafka_error(exc, "poll") from exc
        return [SourceRecord.from_kafka(r) for records in batches.values() for r in records]

    def _skip_unparsable(self, error: Exception) -> SourceRecord:
        """A record kafka-python cannot parse (a header name that is not UTF-8, a failed
        CRC): step over it and return its stand-in, which the worker dead-letters slim.

        kafka-python 3.0.12 raises CorruptRecordError from ``poll()`` without saying where
        (for a bad header name not even the partition), and raises it again at every poll:
        the partition would be stuck, and the worker with it. The failing partition is the
        one its fetcher was unpacking (private state, pinned version; the unit test in
        tests/unit/test_transport.py fails if it goes away); the record is the one at the
        consumer's position — records before it in the same fetch were returned by earlier
        polls (the fetcher defers an error past the records it drained). On a compacted
        topic with a gap just before it the position may fall short of the record: then
        the stand-in names an offset that holds nothing, and the next poll steps again.

        Raises
        ------
        FatalError
            The failing partition cannot be found: names what is known.
        """
        fetcher = getattr(self._consumer, "_fetcher", None)
        unpacking = getattr(fetcher, "_next_partition_records", None)
        tp = getattr(unpacking, "topic_partition", None)
        if tp is None or tp not in self._consumer.assignment():
            raise FatalError(
                f"Kafka poll failed: the client cannot parse a record, and which partition "
                f"holds it is unknown (assigned: {sorted(self.assignment())}): {error}"
            )
        try:
            offset = int(self._consumer.position(tp, timeout_ms=COMMIT_TIMEOUT_MS))
        except Exception as exc:
            raise FatalError(
                f"Kafka poll failed: the client cannot parse a record of {tp.topic} "
                f"partition {tp.partition}, and its offset is unknown ({exc}): {error}"
            ) from exc
        log.warning(
            "skipping a record the Kafka client cannot parse: %s partition %d offset %d: %s",
            tp.topic,
            tp.partition,
            offset,
            error,
        )
        self._consumer.seek(tp, offset + 1)
        return SourceRecord(
            topic=str(tp.topic),
            partition=int(tp.partition),
            offset=offset,
            timestamp=None,
            key=None,
            value=None,
            unreadable=f"{type(error).__name__}: {error}",
        )

    def assignment(self) -> set[Partition]:
        return {_partition(tp) for tp in self._consumer.assignment()}

    @property
    def rebalancing(self) -> bool:
        """True until the consumer has joined its group and while it rejoins."""
        return bool(self._consumer.group_metadata().state != MemberState.STABLE)

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_all(self) -> None:
        """Pause every assigned partition (polls keep the group membership alive)."""
        assigned = self._consumer.assignment()
        newly = set(assigned) - set(self._consumer.paused())
        if newly:
            self._consumer.pause(*newly)
        self._paused = True

    def resume_all(self) -> None:
        paused = self._consumer.paused()
        if paused:
            self._consumer.resume(*paused)
        self._paused = False

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(TopicPartition(*partition), offset)

    def membership(self) -> Any:
        """The consumer's group metadata now (generation, member id), for a transactional
        offset commit; opaque outside this module.

        Raises
        ------
        TransactionAborted
            The consumer is no longer a member of a stable group (see
            :func:`not_a_member`): the open transaction must not commit.
        """
        metadata = self._consumer.group_metadata()
        problem = not_a_member(metadata)
        if problem is not None:
            raise TransactionAborted("offset commit", problem)
        return metadata

    def commit(self, offsets: dict[Partition, int]) -> bool:
        """Commit synchronously; False when the group moved on (rebalance) meanwhile.

        Raises
        ------
        BrokerUnavailable
            Retriable: try again later.
        FatalError
            E.g. not authorized for the group.
        """
        if not offsets:
            return True
        try:
            self._consumer.commit(offsets=_offsets(offsets), timeout_ms=COMMIT_TIMEOUT_MS)
        except (
            kafka.errors.CommitFailedError,
            kafka.errors.IllegalGenerationError,
            kafka.errors.UnknownMemberIdError,
            kafka.errors.RebalanceInProgressError,
        ):
            return False
        except Exception as exc:
            raise translate_kafka_error(exc, "commit") from exc
        return True

    def committed_offsets(self, partitions: set[Partition]) -> dict[Partition, int]:
        """The offsets the group has committed on the broker for ``partitions`` (those with
        a commit). Exactly-once reads ``read_committed``, so the fetch waits for a
        transaction still committing offsets (KIP-447's require_stable).

        Raises
        ------
        FatalError
            No answer within :data:`COMMITTED_READ_TIMEOUT_S`: where to resume without
            redoing or skipping work is unknown; a restart reads it when it joins the group.
        """
        deadline = time.monotonic() + COMMITTED_READ_TIMEOUT_S
        found = {}
        for partition in sorted(partitions):
            left_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                offset = self._consumer.committed(TopicPartition(*partition), timeout_ms=left_ms)
            except Exception as exc:
                raise FatalError(
                    f"cannot read the group's committed offset of {partition}: {exc}"
                ) from exc
            if offset is not None:
                found[partition] = int(offset)
        return found

    async def commit_from_listener(self, offsets: dict[Partition, int]) -> None:
        """Commit from inside the rebalance listener, on kafka-python's I/O loop."""
        coordinator = self._consumer._coordinator
        try:
            # kafka-python 3.0's awaitable form of commit() (private: no public one); the
            # public commit() would block the I/O thread on itself. Pinned in
            # pyproject.toml; tests/unit/test_transport.py fails if it goes away.
            # At-least-once only: in exactly-once on_revoked returns no offsets.
            await coordinator._commit_offsets_sync_async(_offsets(offsets), COMMIT_TIMEOUT_MS)
        except Exception as exc:  # the new owner re-reads from the last commit
            log.warning("commit on revocation failed: %s", exc)

    def lag(self, next_offsets: dict[Partition, int]) -> dict[Partition, int]:
        """Records behind the high watermark, for partitions whose watermark is known."""
        lag = {}
        for partition, position in next_offsets.items():
            high = self._consumer.highwater(TopicPartition(*partition))
            if high is not None:
                lag[partition] = max(0, int(high) - position)
        return lag
