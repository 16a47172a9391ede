"""Several embedded Kafka nodes as one KRaft cluster, for replication and failover tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from compose.embedded.kafka_broker import (
    KAFKA_START_TIMEOUT_S,
    KafkaBroker,
    KafkaPorts,
    Replication,
    new_cluster_id,
)
from compose.embedded.topics import create_topics

# Each node of a test cluster holds a few small topics; three share the machine.
CLUSTER_NODE_HEAP = "320m"


class KafkaCluster:
    """Several :class:`KafkaBroker` nodes forming one KRaft cluster on 127.0.0.1.

    Every node is broker and controller; the controller quorum is all nodes (a majority
    must run). Each node keeps ``kafka-<id>/`` in ``state_dir``; stop, kill and start
    single nodes through :meth:`node`.

    Parameters
    ----------
    state_dir:
        Folder holding the nodes' folders.
    ports:
        One :class:`KafkaPorts` per node; node ids are 1, 2, ... in this order.
    replication:
        Replica count and min ISR of new and internal topics (default: 3 and 2, or the
        node count and a majority of it for smaller clusters).
    libs_dir, java, die_with_parent, heap:
        As for :class:`KafkaBroker`, for every node.
    """

    component = "kafka-cluster"

    def __init__(
        self,
        state_dir: Path,
        ports: Sequence[KafkaPorts],
        *,
        replication: Replication | None = None,
        libs_dir: Path | None = None,
        java: str = "java",
        die_with_parent: bool = False,
        heap: str = CLUSTER_NODE_HEAP,
    ) -> None:
        if not ports:
            raise ValueError("a Kafka cluster needs at least one node")
        size = len(ports)
        self.replication = replication or Replication(min(3, size), min(3, size) // 2 + 1)
        if self.replication.factor > size:
            raise ValueError(
                f"replication factor {self.replication.factor} exceeds the {size} nodes"
            )
        quorum = {index + 1: node_ports for index, node_ports in enumerate(ports)}
        cluster_id = new_cluster_id()
        self.nodes = [
            KafkaBroker(
                state_dir,
                node_ports,
                libs_dir=libs_dir,
                java=java,
                die_with_parent=die_with_parent,
                node_id=node_id,
                name=f"kafka-{node_id}",
                quorum=quorum,
                replication=self.replication,
                cluster_id=cluster_id,
                heap=heap,
            )
            for node_id, node_ports in quorum.items()
        ]

    @property
    def bootstrap_servers(self) -> str:
        """Every node's ``host:port``, comma-separated (clients find the live ones)."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        """The node with id ``node_id`` (1-based, in the order of ``ports``)."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id} in this cluster (ids 1..{len(self.nodes)})")

    def running_nodes(self) -> list[KafkaBroker]:
        return [node for node in self.nodes if node.is_running()]

    def start(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Start every node not running yet, then wait until all are ready.

        Raises
        ------
        ServiceStartError
            A node failed to launch or become ready within ``timeout_s``; every node this
            call started is stopped again.
        """
        launched: list[KafkaBroker] = []
        try:
            for node in self.nodes:
                if not node.is_running():
                    node.launch()
                    launched.append(node)
            for node in self.nodes:
                # One deadline for the whole cluster: nodes become ready together.
                node.await_ready(timeout_s)
        except BaseException:
            for node in launched:
                node.stop()
            raise

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL); data stays."""
        for node in reversed(self.nodes):
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node at once (a test's teardown: a graceful stop of the last nodes
        waits for a controller quorum that is already gone)."""
        for node in self.nodes:
            node.kill()

    def is_ready(self) -> bool:
        """Whether every node answers with itself unfenced."""
        return all(node.is_ready() for node in self.nodes)

    def create_topics(self, partitions: Mapping[str, int]) -> list[str]:
        """Create the topics that do not exist yet with ``replication.factor`` replicas."""
        return create_topics(self.bootstrap_servers, partitions, self.replication.factor)
