"""kafka-python's own checks on an outgoing record, without a broker; and producing
records the way other clients do (what kafka-python's producer refuses to send).

The worker hands every result and dead letter to ``KafkaProducer.send``, which refuses
some records outright (neither key nor value, a header that is not ``(str, bytes)``)
before anything reaches the network, and then encodes them with the v2 record-batch
builder (header names as UTF-8). Test doubles that skip both would pass records the real
producer refuses — exactly the crashers of issue 11. :func:`send_checked` runs the real
code: ``KafkaProducer.send`` itself up to the point where it would wait for metadata,
then ``DefaultRecordBatchBuilder`` and a read back with ``DefaultRecordBatch``, the
consumer's parser.
"""

from __future__ import annotations

from typing import Any

import confluent_kafka
from kafka import KafkaProducer
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from worker.messages import OutboundRecord

# The broker's default message.max.bytes would be a different check (the limits
# branch's); here the batch may be as large as the record needs.
_BATCH_SIZE = 2**31 - 1
_TIMESTAMP_MS = 1_700_000_000_000


class _ChecksPassed(Exception):
    """Raised where KafkaProducer.send would start waiting for metadata."""


class _NoMetadata:
    def partitions_for_topic(self, topic: str) -> Any:
        raise _ChecksPassed


class _ProducerShell:
    """What ``KafkaProducer.send`` reads of ``self`` before it needs a broker."""

    _closed = False
    config: dict[str, Any] = {  # noqa: RUF012 — read-only
        "api_version": (3, 9),
        "key_serializer": None,
        "value_serializer": None,
    }
    _metadata = _NoMetadata()
    _serialize = KafkaProducer._serialize


def producer_send_checks(record: OutboundRecord) -> None:
    """Run ``KafkaProducer.send``'s own checks on ``record``; raise what it raises."""
    try:
        KafkaProducer.send(
            _ProducerShell(),
            record.topic,
            value=record.value,
            key=record.key,
            headers=list(record.headers),
        )
    except _ChecksPassed:
        return
    raise AssertionError("KafkaProducer.send went past its checks without metadata")


def encode_and_read_back(record: OutboundRecord) -> None:
    """Encode ``record`` as the producer does and parse it as the consumer does; the
    read-back record must equal the one sent."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=_BATCH_SIZE,
    )
    headers = list(record.headers)
    assert builder.append(0, _TIMESTAMP_MS, record.key, record.value, headers) is not None
    batch = DefaultRecordBatch(bytes(builder.build()))
    assert batch.validate_crc()
    (read,) = list(batch)
    assert read.key == record.key
    assert read.value == record.value
    assert list(read.headers) == headers


def send_checked(record: OutboundRecord) -> None:
    """Both: what the real producer and the real consumer would make of ``record``."""
    producer_send_checks(record)
    encode_and_read_back(record)


# --- producing as other clients do --------------------------------------------------------

NOT_UTF8_NAME = b"caf\xe9-\xff"


class RawHeaderName(str):
    """A header name kafka-python's producer writes as raw bytes: its record builder
    calls ``name.encode("utf-8")``. confluent-kafka turns a bytes name into its repr,
    so neither Python client sends a non-UTF-8 name plainly; the Java client can."""

    raw = b""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def not_utf8_header_name(raw: bytes) -> RawHeaderName:
    name = RawHeaderName("not-utf8")
    name.raw = raw
    return name


def produce_unparsable(servers: str, topic: str, key: bytes, value: bytes) -> None:
    """One record whose header name is not UTF-8, on partition 0."""
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    try:
        producer.send(
            topic,
            key=key,
            value=value,
            headers=[(not_utf8_header_name(NOT_UTF8_NAME), b"v")],
            partition=0,
        ).get(timeout=30)
    finally:
        producer.close()


def produce_with_librdkafka(
    servers: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    *,
    compression: str = "none",
) -> None:
    """As other clients produce (null key with null value allowed), on partition 0, in
    batches compressed with ``compression`` (librdkafka's ``compression.type``)."""
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": servers, "linger.ms": 20, "compression.type": compression}
    )
    for key, value, headers in records:
        # librdkafka's stubs take str or bytes header values; the list is rebuilt to that type.
        producer.produce(
            topic, key=key, value=value, headers=[(n, v) for n, v in headers], partition=0
        )
    assert producer.flush(30) == 0, "every record acknowledged"
