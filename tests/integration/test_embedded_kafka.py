"""The embedded Kafka 4.x broker: a real round trip, a restart that keeps data and offsets,
a 3-node cluster losing a node, and transactions on a single node."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from compose.processes import wait_until
from tests.support.broker_fixtures import KafkaBrokerFactory, KafkaClusterFactory
from tests.support.service_fixtures import KafkaService

pytestmark = pytest.mark.integration

POLL_TIMEOUT_MS = 1_000
MAX_POLLS = 30  # bounded: 30 s at most to see what was produced
# A restarted cluster node replays its log and fetches what it missed: seconds.
REJOIN_TIMEOUT_S = 120.0


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


# ------------------------------------------------------------- brokers a test owns alone


def _replicas(servers: str, topic: str) -> dict[int, tuple[int, list[int], list[int]]]:
    """Per partition of ``topic``: (leader, replicas, in-sync replicas)."""
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        (described,) = admin.describe_topics([topic])
    finally:
        admin.close()
    return {
        int(p["partition_index"]): (
            int(p["leader_id"]),
            sorted(p["replica_nodes"]),
            sorted(p["isr_nodes"]),
        )
        for p in described["partitions"]
    }


def test_three_node_cluster_serves_acks_all_and_survives_one_node_killed(
    kafka_cluster: KafkaClusterFactory, unique_name: Callable[[str], str]
) -> None:
    cluster = kafka_cluster(3, replication_factor=3, min_insync_replicas=2)
    servers = cluster.bootstrap_servers
    topic, group = unique_name("cluster"), unique_name("group")
    cluster.create_topics({topic: 3})
    layout = _replicas(servers, topic)
    assert all(replicas == [1, 2, 3] for _, replicas, _ in layout.values()), layout
    before = [f"before {i}".encode() for i in range(30)]
    _produce(servers, topic, before)
    # Use the group while every node runs: Kafka creates __consumer_offsets (3 replicas)
    # on first use.
    consumer = _consumer(servers, topic, group)
    try:
        assert sorted(_consume(consumer, len(before))) == sorted(before)
        consumer.commit()
    finally:
        consumer.close()

    victim = cluster.node(layout[0][0])  # the leader of partition 0
    assert victim.kill()
    after = [f"after {i}".encode() for i in range(30)]
    # acks=all with min.insync.replicas=2: two live replicas are enough.
    _produce(servers, topic, after)

    consumer = _consumer(servers, topic, group)
    try:
        assert sorted(_consume(consumer, len(after))) == sorted(after)
    finally:
        consumer.close()
    survivors = _replicas(servers, topic)
    assert all(leader != victim.node_id for leader, _, _ in survivors.values()), survivors

    victim.start()  # same data folder: it catches up and rejoins every ISR
    assert wait_until(
        lambda: all(isr == [1, 2, 3] for _, _, isr in _replicas(servers, topic).values()),
        timeout_s=REJOIN_TIMEOUT_S,
    ), _replicas(servers, topic)


def test_private_broker_commits_transactions_and_keeps_them_through_a_kill(
    private_kafka_broker: KafkaBrokerFactory, unique_name: Callable[[str], str]
) -> None:
    broker = private_kafka_broker()
    servers, topic = broker.bootstrap_servers, unique_name("txn")
    broker.create_topics({topic: 1})
    producer = KafkaProducer(bootstrap_servers=servers, transactional_id=unique_name("txn-id"))
    try:
        producer.init_transactions()
        producer.begin_transaction()
        for value in (b"committed 1", b"committed 2"):
            producer.send(topic, value=value)
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(topic, value=b"aborted")
        producer.flush(timeout=30)
        producer.abort_transaction()
    finally:
        producer.close()

    assert _read_committed(servers, topic, 2) == [b"committed 1", b"committed 2"]
    assert broker.kill()  # SIGKILL: no clean shutdown
    assert not broker.is_running()
    broker.start()  # same data folder and ports
    assert _read_committed(servers, topic, 2) == [b"committed 1", b"committed 2"]


def _read_committed(servers: str, topic: str, expected: int) -> list[bytes]:
    reader = KafkaConsumer(
        bootstrap_servers=servers, group_id=None, isolation_level="read_committed"
    )
    try:
        partition = TopicPartition(topic, 0)
        reader.assign([partition])
        reader.seek_to_beginning(partition)
        values = _consume(reader, expected)
        # One more poll: an aborted record showing up late must fail the test.
        for records in reader.poll(timeout_ms=2 * POLL_TIMEOUT_MS).values():
            values.extend(record.value for record in records)
        return values
    finally:
        reader.close()
