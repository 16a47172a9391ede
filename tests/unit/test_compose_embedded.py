"""The embedded services' configuration: a Kafka node, a cluster's nodes, recorded endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from compose.embedded import (
    KafkaBroker,
    KafkaCluster,
    KafkaPorts,
    KafkaSecurity,
    Replication,
    TritonPorts,
    TritonServer,
)
from compose.embedded.service import write_json


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


def test_a_secure_broker_adds_a_sasl_ssl_listener_and_keeps_passwords_out_of_its_config(
    tmp_path: Path,
) -> None:
    security = KafkaSecurity(
        port=19094,
        keystore=tmp_path / "keystore.pem",
        truststore=tmp_path / "ca.pem",
        users={"worker": "pw-worker-123"},
        authorizer=True,
        super_users=("admin",),
    )
    broker = KafkaBroker(tmp_path, KafkaPorts(19092, 19093), security=security)
    properties = broker.server_properties()
    assert properties["listeners"].endswith(",SASL_SSL://127.0.0.1:19094")
    assert "SASL_SSL://127.0.0.1:19094" in properties["advertised.listeners"]
    assert "SASL_SSL:SASL_SSL" in properties["listener.security.protocol.map"]
    assert properties["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    assert properties["super.users"] == "User:ANONYMOUS;User:admin"
    assert properties["allow.everyone.if.no.acl.found"] == "false"
    # Users are created through the admin API, never written to a file or a command line.
    assert "pw-worker-123" not in "".join(f"{k}={v}" for k, v in properties.items())
    assert "pw-worker-123" not in repr(security)
    assert security.client_options("worker")["sasl_plain_password"] == "pw-worker-123"


def test_acl_helper_refuses_unknown_names(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path, KafkaPorts(19092, 19093))
    with pytest.raises(ValueError, match="resource_type"):
        broker.set_acls("worker", ["read"], "topics", "tweets")
    with pytest.raises(ValueError, match="operation"):
        broker.set_acls("worker", ["reed"], "topic", "tweets")


def test_down_and_status_find_each_service_on_the_ports_it_recorded(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path, KafkaPorts(19092, 19093))
    server = TritonServer(
        tmp_path, tmp_path / "repository", TritonPorts(18001, 18000, 18002), model_name="m"
    )
    for service in (broker, server):
        write_json(service.endpoint_file, service.endpoint())  # what launch() records

    found_broker = KafkaBroker.recorded(tmp_path)
    assert found_broker.ports == KafkaPorts(19092, 19093)
    assert found_broker.home == broker.home
    assert found_broker.log_file == broker.home / "kafka.log"
    found_server = TritonServer.recorded(tmp_path)
    assert found_server.ports == TritonPorts(18001, 18000, 18002)
    assert found_server.model_name == "m"
    assert found_server.model_repository == (tmp_path / "repository").resolve()
    assert found_server.process.pid_file == server.home / "triton.pid"


def test_nothing_recorded_means_the_default_ports(tmp_path: Path) -> None:
    assert KafkaBroker.recorded(tmp_path).ports == KafkaPorts()
    assert TritonServer.recorded(tmp_path).ports == TritonPorts()
    assert not KafkaBroker.recorded(tmp_path).is_running()
