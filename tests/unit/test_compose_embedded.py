"""The embedded Kafka's configuration: a single node, and the nodes of a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from compose.embedded import KafkaBroker, KafkaCluster, KafkaPorts, Replication


def test_a_single_node_keeps_one_replica_of_everything_so_transactions_work(
    tmp_path: Path,
) -> None:
    properties = KafkaBroker(tmp_path, KafkaPorts(19092, 19093)).server_properties()
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    for key in (
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert properties[key] == "1", key


def test_cluster_nodes_share_the_quorum_and_the_replica_counts(tmp_path: Path) -> None:
    ports = [KafkaPorts(19092 + 10 * i, 19093 + 10 * i) for i in range(3)]
    cluster = KafkaCluster(tmp_path, ports, replication=Replication(3, 2))
    assert cluster.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19102,127.0.0.1:19112"
    node = cluster.node(2)
    properties = node.server_properties()
    assert properties["node.id"] == "2"
    assert properties["listeners"].startswith("PLAINTEXT://127.0.0.1:19102,")
    assert properties["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19103,3@127.0.0.1:19113"
    )
    assert properties["default.replication.factor"] == "3"
    assert properties["offsets.topic.replication.factor"] == "3"
    assert properties["min.insync.replicas"] == "2"
    assert properties["transaction.state.log.min.isr"] == "2"
    # Every node in its own folder, all formatted with one cluster id.
    assert len({n.home for n in cluster.nodes}) == 3
    assert len({n.cluster_id for n in cluster.nodes}) == 1
    with pytest.raises(KeyError):
        cluster.node(4)


def test_impossible_replica_counts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_insync"):
        Replication(factor=1, min_insync=2)
    with pytest.raises(ValueError, match="exceeds"):
        KafkaCluster(tmp_path, [KafkaPorts(1, 2)], replication=Replication(3, 2))
