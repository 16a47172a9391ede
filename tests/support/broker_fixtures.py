"""Embedded Kafka brokers a test owns alone (a pytest plugin): clusters, killable brokers.

The session's ``kafka_broker`` is shared by every test, so no test may kill it. A test
that kills, restarts or reconfigures a broker gets its own here, function-scoped, in a
temporary state folder on free loopback ports, stopped when the test ends:

- ``kafka_cluster(nodes=3, replication_factor=3, min_insync_replicas=2)`` starts a
  :class:`compose.embedded.KafkaCluster` (each node broker + controller) and returns it:
  ``.bootstrap_servers`` (all nodes), ``.node(i).kill() / .stop() / .start()``,
  ``.create_topics({...})`` with the cluster's replica count;
- ``private_kafka_broker()`` starts a single-node :class:`compose.embedded.KafkaBroker`
  (transactions supported: internal topics with one replica) with ``.kill()``,
  ``.stop()``, ``.start()`` and ``.restart()`` keeping its data.

These always run the embedded processes (Kafka jars + java), whatever
``EMOTION_STREAM_TEST_BACKEND`` says: killing one node of a cluster is what they are for.
A broker that cannot start skips the test locally and fails it under ``CI=true``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from compose.embedded import (
    KafkaBroker,
    KafkaCluster,
    KafkaPorts,
    Replication,
    fetch_kafka_jars,
)
from tests.conftest import skip_or_fail
from tests.support.network import free_ports

KafkaClusterFactory = Callable[..., KafkaCluster]
KafkaBrokerFactory = Callable[..., KafkaBroker]


def _stop_quietly(service: KafkaCluster | KafkaBroker) -> None:
    try:
        service.stop()
    except Exception as error:  # teardown must not hide the test's own outcome
        print(f"warning: stopping {type(service).__name__} failed: {error}")


@pytest.fixture
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaClusterFactory]:
    """``kafka_cluster(nodes=3, replication_factor=3, min_insync_replicas=2)``: a started cluster.

    Create the topics a test needs (and use a consumer group, a transactional producer)
    while every node runs: Kafka creates its internal topics on first use, with the
    cluster's replica count, which a cluster missing a node cannot place.
    """
    started: list[KafkaCluster] = []

    def start(
        nodes: int = 3, *, replication_factor: int = 3, min_insync_replicas: int = 2
    ) -> KafkaCluster:
        ports = free_ports(2 * nodes)
        cluster = KafkaCluster(
            tmp_path_factory.mktemp("kafka-cluster"),
            [KafkaPorts(ports[2 * i], ports[2 * i + 1]) for i in range(nodes)],
            replication=Replication(replication_factor, min_insync_replicas),
            die_with_parent=True,
        )
        started.append(cluster)
        try:
            fetch_kafka_jars()
            cluster.start()
        except Exception as error:  # any failure to start: skip locally, fail under CI
            _stop_quietly(cluster)
            skip_or_fail(f"Kafka cluster of {nodes} nodes did not start: {error}")
        return cluster

    yield start
    for cluster in started:
        try:
            cluster.kill()  # nothing to keep, and no quorum to wait for
        except Exception as error:
            print(f"warning: killing the Kafka cluster failed: {error}")


@pytest.fixture
def private_kafka_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[KafkaBrokerFactory]:
    """``private_kafka_broker(**options)``: a started single-node broker this test owns.

    ``options`` go to :class:`compose.embedded.KafkaBroker` (``security=...`` for a
    secure listener, see tests/support/secure_fixtures.py).
    """
    started: list[KafkaBroker] = []

    def start(**options: Any) -> KafkaBroker:
        port, controller = free_ports(2)
        broker = KafkaBroker(
            tmp_path_factory.mktemp("kafka-private"),
            KafkaPorts(port, controller),
            die_with_parent=True,
            **options,
        )
        started.append(broker)
        try:
            fetch_kafka_jars()
            broker.start()
        except Exception as error:
            _stop_quietly(broker)
            skip_or_fail(f"private Kafka broker did not start: {error}")
        return broker

    yield start
    for broker in started:
        _stop_quietly(broker)
