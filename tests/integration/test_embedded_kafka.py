"""The embedded Kafka 4.x broker: a real round trip, and a restart that keeps data and offsets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from tests.support.service_fixtures import KafkaService

pytestmark = pytest.mark.integration

POLL_TIMEOUT_MS = 1_000
MAX_POLLS = 30  # bounded: 30 s at most to see what was produced


def _consume(consumer: KafkaConsumer, expected: int) -> list[bytes]:
    values: list[bytes] = []
    for _ in range(MAX_POLLS):
        for records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
            values.extend(record.value for record in records)
        if len(values) >= expected:
            break
    return values


def _consumer(servers: str, topic: str, group: str) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    consumer.subscribe([topic])
    return consumer


def _produce(servers: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    try:
        for index, value in enumerate(values):
            producer.send(topic, key=str(index).encode(), value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def test_produce_consume_round_trip(
    kafka_broker: KafkaService, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("roundtrip"), unique_name("group")
    kafka_broker.create_topic(topic, partitions=3)
    sent = [f"tweet {i} 😊".encode() for i in range(20)]

    _produce(kafka_broker.bootstrap_servers, topic, sent)
    consumer = _consumer(kafka_broker.bootstrap_servers, topic, group)
    try:
        received = _consume(consumer, len(sent))
    finally:
        consumer.close()

    assert sorted(received) == sorted(sent)


def test_restart_keeps_committed_messages_and_offsets(
    kafka_broker: KafkaService, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("restart"), unique_name("group")
    kafka_broker.create_topic(topic, partitions=1)
    first, second = [b"a", b"b", b"c"], [b"d", b"e"]
    _produce(kafka_broker.bootstrap_servers, topic, first + second)
    consumer = _consumer(kafka_broker.bootstrap_servers, topic, group)
    try:
        assert _consume(consumer, 5) == first + second
        # Commit only past the first three: the group must resume at "d".
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(len(first), "", -1)})
    finally:
        consumer.close()

    kafka_broker.restart()

    consumer = _consumer(kafka_broker.bootstrap_servers, topic, group)
    try:
        assert consumer.committed(TopicPartition(topic, 0)) == len(first)
        assert _consume(consumer, len(second)) == second
    finally:
        consumer.close()
    # Every message is still on disk, from the first offset.
    reader = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap_servers, group_id=None)
    try:
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        reader.seek_to_beginning(partition)
        assert _consume(reader, 5) == first + second
    finally:
        reader.close()
