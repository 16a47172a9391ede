"""Thin Kafka wrappers: the only module that imports ``kafka``.

:class:`KafkaSource` consumes (poll, pause/resume, seek, commit — all from the one
thread that runs the worker's loop, since kafka-python's consumer is not
thread-safe) and turns records into :class:`~worker.messages.SourceRecord`.
:class:`KafkaPublisher` sends :class:`~worker.messages.OutboundRecord` with
``acks=all`` and reports each acknowledgement through a callback. Kafka errors are
translated once, here: retriable ones become :class:`BrokerUnavailable`, others
:class:`FatalError`.

Exactly-once: :class:`TransactionalPublisher` is one transactional producer per
worker. Its transaction opens with the first send after a commit and ends with
:meth:`~TransactionalPublisher.commit_transaction`, which adds the consumer offsets
with the consumer's group metadata (KIP-447: the broker rejects offsets from a member
whose generation is over; a consumer kafka-python has reset to no generation is refused
here, see :func:`not_a_member`) and commits records and offsets together. Fencing by a newer
producer with the same transactional id becomes :class:`ProducerFenced`; anything that
dooms only the open transaction becomes :class:`TransactionAborted`.

Rebalances: kafka-python 3 runs rebalance listeners on its I/O thread while the
caller is inside ``poll()``. The listener here is asynchronous so the revocation
commit can be *awaited* on that loop (a blocking commit from the I/O thread would
deadlock), and so the commit is done before the partitions are handed over.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import kafka
import kafka.errors
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.structs import MemberState, OffsetAndMetadata

from worker import failpoints, kafka_repair
from worker.errors import (
    BrokerUnavailable,
    FatalError,
    ProducerFenced,
    RecordTooLarge,
    TransactionAborted,
    WorkerError,
)
from worker.messages import OutboundRecord, SourceRecord
from worker.offsets import Partition
from worker.settings import WorkerSettings

if TYPE_CHECKING:  # worker.ports imports this module for its default factories
    from worker.ports import RebalanceHandler

log = logging.getLogger(__name__)

# The worker finishes a batch's sends and commits within a loop iteration; a metadata
# lookup for a missing topic must not block the loop for kafka-python's default 60 s.
PRODUCER_MAX_BLOCK_MS = 10_000
COMMIT_TIMEOUT_MS = 10_000
# Lets a few records arrive together and leave together without delaying a result much.
PRODUCER_LINGER_MS = 5


# The producer's own size check and the broker's answers for a record over its limits.
_TOO_LARGE = (kafka.errors.MessageSizeTooLargeError, kafka.errors.RecordListTooLargeError)

# kafka-python's defaults, set explicitly because the size budget depends on them: its
# own cap on one record (max_request_size) and the size a batch of records grows to.
PRODUCER_MAX_REQUEST_BYTES = 1_048_576
PRODUCER_BATCH_BYTES = 16_384
# The topic setting the broker checks each record batch against.
MAX_MESSAGE_BYTES = "max.message.bytes"
# Reading the topics' limits: a start-up step, and after a refusal.
LIMITS_TIMEOUT_MS = 10_000


def record_size(record: OutboundRecord) -> int:
    """Bytes ``record`` takes as a record batch of its own: what the broker compares with
    the topic's ``max.message.bytes`` (no compression; kafka-python's own upper bound,
    the one its ``max_request_size`` check uses)."""
    return int(
        DefaultRecordBatchBuilder.estimate_size_in_bytes(
            record.key, record.value, list(record.headers)
        )
    )


class TopicLimits:
    """The largest record batch each output topic accepts (thread-safe).

    Read from the topics' ``max.message.bytes`` (describe_configs) at start-up and again
    after the broker refused a record; capped by the producer's own request limit. A
    topic whose limit cannot be read (missing, no DESCRIBE_CONFIGS permission) gets that
    cap until a later read succeeds.
    """

    def __init__(self, topics: Iterable[str], read: Callable[[list[str]], dict[str, int]]):
        self._topics = sorted(set(topics))
        self._read = read
        self._lock = threading.Lock()
        self._limits: dict[str, int] = {}
        self._stale = True

    def limit(self, topic: str) -> int:
        with self._lock:
            return min(
                self._limits.get(topic, PRODUCER_MAX_REQUEST_BYTES), PRODUCER_MAX_REQUEST_BYTES
            )

    def smallest(self) -> int:
        return min(
            (self.limit(topic) for topic in self._topics), default=PRODUCER_MAX_REQUEST_BYTES
        )

    @property
    def stale(self) -> bool:
        return self._stale

    def refused(self) -> None:
        """The broker refused a record as too large: read the limits again before the
        next send (from any thread; the read itself happens in :meth:`refresh`)."""
        self._stale = True

    def refresh(self) -> None:
        """Read the limits now (loop thread); failures keep what is known, logged."""
        self._stale = False
        try:
            read = self._read(self._topics)
        except Exception as exc:
            log.warning(
                "cannot read the topics' %s (the 1 MiB cap applies): %s", MAX_MESSAGE_BYTES, exc
            )
            return
        with self._lock:
            self._limits.update(read)
        log.info("record size limits: %s", {t: self.limit(t) for t in self._topics})


class _LoginFailureWatch(logging.Filter):
    """Remembers the last refused login (SASL credentials, TLS certificate) kafka-python saw.

    kafka-python 3.0.12 retries a bootstrap whose login the broker refused until its
    bootstrap timeout and then reports only "Unable to bootstrap"; the refusal itself is
    only logged, with the exception as a log argument. Wrong credentials are not a broker
    outage: :func:`translate_kafka_error` turns that timeout into a :class:`FatalError`
    carrying the refusal. The broker's message names the mechanism, never the password.
    """

    def __init__(self) -> None:
        super().__init__()
        # (refusal, when): one reference, replaced whole, so the loop thread reading it
        # never sees one refusal's error with another's time (it is written on
        # kafka-python's I/O thread).
        self._last: tuple[BaseException, float] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if not isinstance(arg, BaseException):
                continue
            # A failed TLS handshake comes wrapped: KafkaConnectionError raised while
            # handling the ssl error, which stays reachable as its context.
            for error in (arg, arg.__cause__, arg.__context__):
                if isinstance(error, _LOGIN_REFUSED):
                    self._last = (arg, time.monotonic())
        # Watches only: the record goes on as the root logger's level would let it (the
        # watched logger's own level is pinned low so that the watch sees every refusal).
        return record.levelno >= logging.getLogger().getEffectiveLevel()

    def recent(self, within_s: float) -> BaseException | None:
        last = self._last
        if last is not None and time.monotonic() - last[1] <= within_s:
            return last[0]
        return None

    def forget(self) -> None:
        self._last = None


_LOGIN_REFUSED = (kafka.errors.SaslAuthenticationFailedError, ssl.SSLCertVerificationError)
# Longer than kafka-python's bootstrap timeout (30 s): a refusal during this bootstrap.
_LOGIN_FAILURE_WINDOW_S = 90.0
# Only a client's start waits for a bootstrap; later timeouts (a send's metadata wait, a
# commit) during a broker restart that briefly refused a login stay retriable.
CONSUMER_START = "consumer start"
PRODUCER_START = "producer start"
_login_failures = _LoginFailureWatch()
# kafka-python logs a refused bootstrap at WARNING. Left to inherit the root's level, the
# watch went blind whenever that was higher (EMOTION_STREAM_LOG_LEVEL=error, or any code in
# the process raising it): a wrong password was then retried forever as an outage.
_WATCHED = logging.getLogger("kafka.net.manager")
_WATCHED.setLevel(logging.WARNING)
_WATCHED.addFilter(_login_failures)
# Without it the broker's refusal is often read together with its close and dropped, so
# the watch never sees it (worker/kafka_repair.py).
kafka_repair.install()


def translate_kafka_error(exc: BaseException, operation: str) -> WorkerError:
    """The worker error for an exception from kafka-python."""
    if isinstance(exc, WorkerError):
        return exc
    refused = (
        _login_failures.recent(_LOGIN_FAILURE_WINDOW_S)
        if operation in (CONSUMER_START, PRODUCER_START)
        else None
    )
    if isinstance(exc, kafka.errors.KafkaTimeoutError) and refused is not None:
        return FatalError(
            f"Kafka {operation} failed: the broker refused the login ({refused}); check "
            "EMOTION_STREAM_SASL_USERNAME, EMOTION_STREAM_SASL_PASSWORD (or the file "
            "EMOTION_STREAM_SASL_PASSWORD_FILE names), EMOTION_STREAM_SASL_MECHANISM and "
            "EMOTION_STREAM_SSL_CAFILE"
        )
    if isinstance(exc, _TOO_LARGE):
        return RecordTooLarge(operation, str(exc))
    if isinstance(exc, kafka.errors.KafkaError) and exc.retriable:
        return BrokerUnavailable(operation, str(exc))
    if isinstance(exc, kafka.errors.KafkaError | OSError):
        if isinstance(exc, OSError):
            return BrokerUnavailable(operation, str(exc))
        return FatalError(f"Kafka {operation} failed: {exc}")
    return FatalError(f"Kafka {operation} failed unexpectedly: {exc!r}")


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


AckCallback = Callable[[BaseException | None], None]


def read_record_limits(settings: WorkerSettings, topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (its own or the broker default), where readable."""
    admin = kafka.KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
        client_id=f"{settings.worker_id}-limits",
        request_timeout_ms=LIMITS_TIMEOUT_MS,
        **settings.kafka_security(),
    )
    try:
        described = admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, {MAX_MESSAGE_BYTES: None})
                for t in topics
            ],
            config_filter="all",
        )
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    limits = {}
    for topic, configs in (described.get("topic") or {}).items():
        value = (configs or {}).get(MAX_MESSAGE_BYTES, {}).get("value")
        if value is not None and str(value).isdigit():
            limits[str(topic)] = int(value)
    return limits


class KafkaPublisher:
    """One idempotent producer for results and dead letters; flushes on exit.

    Every record is size-checked before it is handed to kafka-python: one over its topic's
    limit fails at once with :class:`RecordTooLarge` and never reaches the broker. A
    refusal by the broker anyway (a limit lowered while running) dooms more than the
    record in kafka-python 3.0.12: the idempotent producer turns fatal (every later send
    fails) and fails every record it holds with the same error, so no failed record can be
    told to be *the* large one. All of them are reported as :class:`BrokerUnavailable`
    (re-read, not dead-lettered), the limits are read again and the producer replaced
    before the next send; on the re-read the size check dead-letters the large record.
    """

    def __init__(
        self, settings: WorkerSettings, limits: Callable[[list[str]], dict[str, int]] | None = None
    ) -> None:
        self._settings = settings
        self._producer: Any = None
        self.limits = TopicLimits(
            (settings.output_topic, settings.dlq_topic),
            limits or (lambda topics: read_record_limits(settings, topics)),
        )
        self._poisoned = False

    def _new_producer(self, **extra: Any) -> Any:
        """kafka-python's producer as both publishers configure it, plus ``extra``."""
        s = self._settings
        return kafka.KafkaProducer(
            bootstrap_servers=s.kafka_bootstrap_servers.split(","),
            client_id=f"{s.worker_id}-producer",
            acks="all",
            enable_idempotence=True,
            linger_ms=PRODUCER_LINGER_MS,
            max_block_ms=PRODUCER_MAX_BLOCK_MS,
            max_request_size=PRODUCER_MAX_REQUEST_BYTES,
            # A batch of several records never outgrows the smallest topic limit (one
            # record over it is refused before it is sent): no refusal by the broker.
            batch_size=max(1, min(PRODUCER_BATCH_BYTES, self.limits.smallest())),
            **extra,
            **s.kafka_security(),
        )

    def __enter__(self) -> KafkaPublisher:
        try:
            self.limits.refresh()
            self._producer = self._new_producer()
        except Exception as exc:
            raise self._translate(exc, PRODUCER_START) from exc
        return self

    def _before_send(self) -> None:
        """Loop thread: re-read the limits after a refusal; replace a poisoned producer."""
        if self.limits.stale:
            self.limits.refresh()
        if self._poisoned:
            self._replace_producer()

    def _replace_producer(self, **extra: Any) -> None:
        """Close the poisoned producer (what it still held has failed) and start a new one."""
        self._poisoned = False
        old, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            old.close(timeout=0)
        log.warning("producer replaced after the broker refused a record as too large")
        try:
            self._producer = self._new_producer(**extra)
        except Exception as exc:
            raise self._translate(exc, PRODUCER_START) from exc

    def _refused_too_large(self, exc: BaseException, topic: str) -> WorkerError:
        """The broker refused a record batch as too large (see the class docstring)."""
        self.limits.refused()
        self._poisoned = True
        return BrokerUnavailable(
            topic,
            f"the broker refused a record as too large ({exc}); limits re-read, producer replaced",
        )

    def _translate(self, exc: BaseException, operation: str) -> WorkerError:
        return translate_kafka_error(exc, operation)

    def __exit__(self, *exc: object) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.flush(timeout=PRODUCER_MAX_BLOCK_MS / 1000)
            with contextlib.suppress(Exception):
                self._producer.close(timeout=5)
            self._producer = None

    def send(self, record: OutboundRecord, on_done: AckCallback) -> None:
        """Send; ``on_done(None)`` once acknowledged by all in-sync replicas, else
        ``on_done(error)`` (a :class:`WorkerError`). May run on the producer's thread;
        runs at once for a record over its topic's limit (:class:`RecordTooLarge`)."""
        self._before_send()
        size, limit = record_size(record), self.limits.limit(record.topic)
        if size > limit:
            on_done(
                RecordTooLarge(
                    record.topic, f"{size} bytes, over the topic's {MAX_MESSAGE_BYTES} ({limit})"
                )
            )
            return
        try:
            future = self._producer.send(
                record.topic,
                value=record.value,
                key=record.key,
                headers=list(record.headers),
            )
        except Exception as exc:
            on_done(self._translate(exc, record.topic))
            return
        future.add_callback(lambda _metadata: on_done(None))
        future.add_errback(lambda exc: on_done(self._translate_send(exc, record.topic)))

    def _translate_send(self, exc: BaseException, topic: str) -> WorkerError:
        if isinstance(exc, _TOO_LARGE):  # only the broker: our own check ran first
            return self._refused_too_large(exc, topic)
        return self._translate(exc, topic)

    def flush(self, timeout_s: float) -> bool:
        """Wait for every send to be acknowledged or failed; False on timeout."""
        try:
            self._producer.flush(timeout=timeout_s)
        except kafka.errors.KafkaTimeoutError:
            return False
        return True


# On shutdown after a fatal error, an open transaction gets this long to abort; the
# broker aborts it anyway after the transaction timeout, or when the replica restarts.
ABORT_ON_EXIT_TIMEOUT_S = 10.0
# kafka-python 3.0.12's send_offsets_to_transaction, commit_transaction and
# abort_transaction wait for the broker with no timeout (its sender retries while the
# coordinator is away). The loop waits this long, under the worker's liveness timeout
# (60 s) so the worker stops itself with a message rather than hang until killed.
TRANSACTION_CALL_TIMEOUT_S = 30.0


def _is_fenced(exc: BaseException | None) -> bool:
    """Fencing, however kafka-python reports it: the error itself, or a generic KafkaError
    ("...in an error state") carrying it as an argument or cause."""
    fenced = (kafka.errors.ProducerFencedError, kafka.errors.InvalidProducerEpochError)
    seen = 0
    while exc is not None and seen < 5:  # bounded walk down args/causes
        if isinstance(exc, fenced):
            return True
        if any(isinstance(arg, fenced) for arg in getattr(exc, "args", ())):
            return True
        exc = exc.__cause__
        seen += 1
    return False


class _CallTimedOut(FatalError):  # noqa: N818 — a FatalError: the policy is the type
    def __init__(self, operation: str, timeout_s: float) -> None:
        super().__init__(
            f"Kafka transaction {operation} got no answer within {timeout_s:g} s (broker or "
            "coordinator unreachable); its outcome is unknown and this producer cannot go "
            "on: stopping, a restart settles the transaction (init_transactions)"
        )


def _call_bounded(call: Callable[[], None], operation: str, timeout_s: float) -> None:
    """Run a kafka-python call that may wait forever; raise what it raised, or
    :class:`_CallTimedOut` after ``timeout_s`` (the call goes on, on a daemon thread
    that ends with the producer or the process)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"worker-txn-{operation}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise _CallTimedOut(operation, timeout_s)
    if failure:
        raise failure[0]


class TransactionalPublisher(KafkaPublisher):
    """Exactly-once: one transactional producer; a transaction per commit of the worker.

    ``send`` opens a transaction when none is open; :meth:`commit_transaction` adds the
    consumer offsets and commits; :meth:`abort_transaction` throws the open one away.
    Call these from the worker's loop thread only (acknowledgements still arrive on the
    producer's thread).
    """

    def __init__(
        self, settings: WorkerSettings, limits: Callable[[list[str]], dict[str, int]] | None = None
    ) -> None:
        super().__init__(settings, limits)
        self.transactional_id = settings.effective_transactional_id
        self._open = False

    def __enter__(self) -> TransactionalPublisher:
        try:
            self.limits.refresh()
            self._producer = self._new_producer(
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self._settings.transaction_timeout_ms,
            )
            # Fences every older producer with this id and aborts what it left open;
            # bounded by max_block_ms (a KafkaTimeoutError, retried like any start).
            self._producer.init_transactions()
        except Exception as exc:
            self._close_now()
            raise self._translate(exc, PRODUCER_START) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._producer is not None and self._open:
            self._abort_bounded()
        self._close_now()

    def _close_now(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=5)
            self._producer = None

    def _abort_bounded(self) -> None:
        """Abort on exit, without hanging on a broker that is gone; failures are logged
        (the broker aborts the transaction anyway, see ABORT_ON_EXIT_TIMEOUT_S)."""
        try:
            _call_bounded(self._producer.abort_transaction, "abort", ABORT_ON_EXIT_TIMEOUT_S)
        except Exception as exc:
            log.warning("abort on exit failed; the broker aborts on timeout: %s", exc)
        self._open = False

    @property
    def in_transaction(self) -> bool:
        """True from the first send after a commit or abort until the next one."""
        return self._open

    def _transaction_state(self) -> Any:
        # kafka-python 3.0's TransactionManager (pinned): the only place that says whether
        # the producer is fenced or only its open transaction is doomed.
        return getattr(self._producer, "_transaction_manager", None)

    def _translate(self, exc: BaseException, operation: str) -> WorkerError:
        if isinstance(exc, WorkerError):
            return exc
        state = self._transaction_state() if self._producer is not None else None
        if _is_fenced(exc) or (state is not None and _is_fenced(state.last_error)):
            return ProducerFenced(self.transactional_id, f"{operation}: {exc}")
        if self._poisoned and operation != PRODUCER_START:
            return TransactionAborted(operation, f"after a refusal as too large: {exc}")
        plain = translate_kafka_error(exc, operation)
        if operation == PRODUCER_START:
            return plain  # a start is retried (or refused) like any client's
        if isinstance(exc, kafka.errors.CommitFailedError) or (
            state is not None and state.has_abortable_error()
        ):
            return TransactionAborted(operation, str(exc))
        if isinstance(plain, BrokerUnavailable):
            # Inside a transaction, retrying means aborting it and doing the work again.
            return TransactionAborted(operation, str(exc))
        return plain

    def _refused_too_large(self, exc: BaseException, topic: str) -> WorkerError:
        # kafka-python 3.0.12 makes this abortable for a transactional producer, but a
        # refused batch of several records is split and re-sent, which it then fails with
        # OutOfOrderSequenceNumber while bumping its epoch, a state no abort leaves. The
        # transaction is doomed either way: the abort replaces the producer instead
        # (init_transactions with the same id aborts the open transaction on the broker).
        self.limits.refused()
        self._poisoned = True
        return TransactionAborted(topic, f"the broker refused a record as too large ({exc})")

    def _before_send(self) -> None:
        # Inside a transaction the producer is replaced only by the abort.
        if self.limits.stale:
            self.limits.refresh()

    def send(self, record: OutboundRecord, on_done: AckCallback) -> None:
        """As :meth:`KafkaPublisher.send`, inside the open transaction (opened if needed)."""
        if not self._open:
            try:
                self._producer.begin_transaction()  # local state only: never waits
            except Exception as exc:
                on_done(self._translate(exc, "begin transaction"))
                return
            self._open = True
        super().send(record, on_done)

    def commit_transaction(self, offsets: dict[Partition, int], membership: Any) -> None:
        """Add ``offsets`` (next offset to read, per input partition) for the consumer whose
        group metadata is ``membership``, then commit records and offsets atomically.

        Raises
        ------
        ProducerFenced
            A newer producer with this transactional id exists: stop.
        TransactionAborted
            This transaction cannot commit (stale group generation, failed send, broker
            trouble): abort it and re-read from the last commit.
        FatalError
            Anything else (e.g. not authorized for the group), or no answer within
            :data:`TRANSACTION_CALL_TIMEOUT_S`: the outcome is then unknown and this
            producer unusable; a restart's ``init_transactions`` settles it.
        """
        if not self._open:
            return
        try:
            if offsets:
                kafka_offsets = _offsets(offsets)
                _call_bounded(
                    lambda: self._producer.send_offsets_to_transaction(kafka_offsets, membership),
                    "offset commit",
                    TRANSACTION_CALL_TIMEOUT_S,
                )
            failpoints.hit(failpoints.DURING_COMMIT)
            _call_bounded(self._producer.commit_transaction, "commit", TRANSACTION_CALL_TIMEOUT_S)
        except Exception as exc:
            raise self._translate(exc, "commit") from exc
        self._open = False

    def abort_transaction(self) -> None:
        """Throw the open transaction away (its records stay invisible to read_committed).

        Raises
        ------
        ProducerFenced
            A newer producer took over (which aborted it already).
        FatalError
            The producer is in a state no abort can mend, or the abort got no answer
            within :data:`TRANSACTION_CALL_TIMEOUT_S`.
        """
        if not self._open:
            return
        if self._poisoned:
            self._open = False
            self._replace_producer(
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self._settings.transaction_timeout_ms,
            )
            try:  # fences the old producer; its open transaction is aborted by the broker
                self._producer.init_transactions()
            except Exception as exc:
                raise FatalError(f"cannot restart the transactional producer: {exc}") from exc
            return
        try:
            _call_bounded(self._producer.abort_transaction, "abort", TRANSACTION_CALL_TIMEOUT_S)
        except Exception as exc:
            error = self._translate(exc, "abort")
            if isinstance(error, ProducerFenced):
                raise error from exc
            raise FatalError(f"cannot abort the Kafka transaction: {exc}") from exc
        finally:
            self._open = False
