"""The output side: :class:`KafkaPublisher` sends :class:`~worker.messages.OutboundRecord`
with ``acks=all`` and reports each acknowledgement through a callback, after checking each
record against its topic's limit (:class:`TopicLimits`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import kafka
import kafka.errors
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.record.default_records import DefaultRecordBatchBuilder

from worker.errors import BrokerUnavailable, RecordTooLarge, WorkerError
from worker.messages import OutboundRecord
from worker.settings import WorkerSettings
from worker.transport.translation import _TOO_LARGE, PRODUCER_START, translate_kafka_error

log = logging.getLogger(__name__)

# The worker finishes a batch's sends and commits within a loop iteration; a metadata
# lookup for a missing topic must not block the loop for kafka-python's default 60 s.
PRODUCER_MAX_BLOCK_MS = 10_000
# Lets a few records arrive together and leave together without delaying a result much.
PRODUCER_LINGER_MS = 5

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
