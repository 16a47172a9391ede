"""A real Kafka 4.x node (KRaft, broker and controller in one JVM) on 127.0.0.1.

Alone it is a single-node cluster; :class:`~compose.embedded.kafka_cluster.KafkaCluster`
gives several nodes one quorum. The JVM runs from the jars :mod:`compose.embedded.kafka_jars`
fetched; it is ready once it answers metadata with itself registered, unfenced, and a
controller elected.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from kafka.admin import KafkaAdminClient

from compose.embedded.kafka_admin import probe
from compose.embedded.kafka_jars import (
    KAFKA_LOG4J2_CONFIG,
    default_kafka_libs_dir,
    has_kafka_jars,
)
from compose.embedded.kafka_security import (
    CLUSTER_RESOURCE_NAME,
    SECURE_LISTENER,
    KafkaSecurity,
    add_scram_users,
    create_acls,
)
from compose.embedded.service import LOOPBACK, Launch, LocalService
from compose.embedded.topics import create_topics
from compose.processes import EmbeddedStackError, ServiceStartError

DEFAULT_KAFKA_PORT = 9092  # the Compose stack's ports, so `.env` files work for both
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
# First start formats storage and elects the single-node controller: ~5-15 s on 2 cores.
KAFKA_START_TIMEOUT_S = 90.0
KAFKA_HEAP = "512m"  # a test broker; Kafka's scripts default to 1 GiB
KAFKA_NODE_ID = 1
# A killed cluster node is fenced (its partitions led elsewhere, dropped from ISRs) once
# its heartbeats stop for this long; Kafka's default is 9 s.
CLUSTER_BROKER_SESSION_TIMEOUT_MS = 6000
CLUSTER_BROKER_HEARTBEAT_INTERVAL_MS = 1000
KAFKA_MAIN_CLASS = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"


def new_cluster_id() -> str:
    """A new cluster id in Kafka's format: a random UUID, URL-safe base64, no padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class KafkaPorts:
    """Where the broker listens: clients on ``port``, the KRaft controller on ``controller``."""

    port: int = DEFAULT_KAFKA_PORT
    controller: int = DEFAULT_KAFKA_CONTROLLER_PORT


@dataclass(frozen=True)
class Replication:
    """How many copies the broker keeps of each partition, and how many must acknowledge.

    ``factor`` is the default for new topics and for Kafka's internal topics (consumer
    offsets, transaction state); ``min_insync`` is ``min.insync.replicas`` (what an
    ``acks=all`` write needs) and the transaction log's minimum ISR.
    """

    factor: int = 1
    min_insync: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_insync <= self.factor:
            raise ValueError(
                f"replication: need 1 <= min_insync ({self.min_insync}) <= factor ({self.factor})"
            )


class KafkaBroker(LocalService):
    """A Kafka 4.x node (KRaft, combined broker + controller) on 127.0.0.1.

    Alone (the default) it is a single-node cluster; :class:`KafkaCluster` gives several
    nodes one ``quorum`` and ``cluster_id``.

    Parameters
    ----------
    state_dir:
        The stack's state folder; the broker keeps ``<name>/`` in it (data, config, log,
        pid file). Data survives :meth:`stop`/:meth:`start`, :meth:`kill` and :meth:`restart`.
    ports:
        Client and controller ports.
    libs_dir:
        The jars :func:`fetch_kafka_jars` copied.
    java:
        The ``java`` executable (17+).
    die_with_parent:
        Stop the broker when the process that started it dies (test fixtures).
    node_id:
        This node's id in the cluster.
    name:
        Folder in ``state_dir`` and the name in messages (``kafka``; ``kafka-2`` in a cluster).
    quorum:
        Every controller's node id and ports (default: this node alone).
    replication:
        Replica count and min ISR of new and internal topics (default: 1 and 1).
    cluster_id:
        The id storage is formatted with on first start (default: a new random one).
    heap:
        The JVM's heap (``-Xms``/``-Xmx``).
    security:
        A ``SASL_SSL`` listener, SCRAM users and maybe ACLs (:class:`KafkaSecurity`).
    """

    component = "kafka"
    process_name = "kafka"
    start_timeout_s = KAFKA_START_TIMEOUT_S

    def __init__(
        self,
        state_dir: Path,
        ports: KafkaPorts | None = None,
        *,
        libs_dir: Path | None = None,
        java: str = "java",
        die_with_parent: bool = False,
        node_id: int = KAFKA_NODE_ID,
        name: str = "kafka",
        quorum: Mapping[int, KafkaPorts] | None = None,
        replication: Replication | None = None,
        cluster_id: str | None = None,
        heap: str = KAFKA_HEAP,
        security: KafkaSecurity | None = None,
    ) -> None:
        home = state_dir.resolve() / name
        self.config_file = home / "server.properties"
        super().__init__(name, home, marker=self.config_file, die_with_parent=die_with_parent)
        self.ports = ports or KafkaPorts()
        self.libs_dir = libs_dir or default_kafka_libs_dir()
        self.java = java
        self.node_id = node_id
        self.quorum = dict(quorum) if quorum is not None else {node_id: self.ports}
        if self.quorum.get(node_id) != self.ports:
            raise ValueError(f"{name}: the quorum must list node {node_id} with its own ports")
        self.replication = replication or Replication()
        self.cluster_id = cluster_id
        self.heap = heap
        self.security = security
        self.data_dir = self.home / "data"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{LOOPBACK}:{self.ports.port}"

    @classmethod
    def unconfigured(cls, state_dir: Path) -> Self:
        return cls(state_dir)

    def endpoint(self) -> dict[str, Any]:
        return {"port": self.ports.port, "controller_port": self.ports.controller}

    def restore(self, endpoint: Mapping[str, Any]) -> None:
        self.ports = KafkaPorts(int(endpoint["port"]), int(endpoint["controller_port"]))

    def listeners(self) -> dict[str, int]:
        return {"client": self.ports.port, "controller": self.ports.controller}

    def server_properties(self) -> dict[str, str]:
        """The node's configuration: loopback only, replica counts from ``replication``.

        Internal topics (consumer offsets, transaction state) get the same replica count
        as new topics, so a single node supports transactions and a cluster keeps its
        group offsets through the loss of a node.
        """
        controller = f"{LOOPBACK}:{self.ports.controller}"
        voters = ",".join(
            f"{node}@{LOOPBACK}:{ports.controller}" for node, ports in sorted(self.quorum.items())
        )
        factor, min_insync = str(self.replication.factor), str(self.replication.min_insync)
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{self.bootstrap_servers},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": factor,
            "min.insync.replicas": min_insync,
            "offsets.topic.replication.factor": factor,
            "transaction.state.log.replication.factor": factor,
            "transaction.state.log.min.isr": min_insync,
            "share.coordinator.state.topic.replication.factor": factor,
            "share.coordinator.state.topic.min.isr": min_insync,
            # Tests join groups constantly; Kafka's default waits 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
        }
        if self.security is not None:
            properties["listeners"] += f",{self.security.listener}"
            properties["advertised.listeners"] += f",{self.security.listener}"
            properties["listener.security.protocol.map"] += f",{SECURE_LISTENER}:{SECURE_LISTENER}"
            properties.update(self.security.server_properties())
        if len(self.quorum) > 1:
            # Failover tests kill nodes: notice a dead one sooner than Kafka's 9 s.
            properties["broker.session.timeout.ms"] = str(CLUSTER_BROKER_SESSION_TIMEOUT_MS)
            properties["broker.heartbeat.interval.ms"] = str(CLUSTER_BROKER_HEARTBEAT_INTERVAL_MS)
        return properties

    def _java_argv(self, main_class: str, *args: str) -> list[str]:
        return [
            self.java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J2_CONFIG}",
            "-cp",
            f"{self.libs_dir.resolve()}/*",
            main_class,
            *args,
        ]

    def command(self) -> Launch:
        """The broker's JVM; raises :class:`ServiceStartError` without jars or java."""
        if not has_kafka_jars(self.libs_dir):
            raise ServiceStartError(
                self.component,
                f"no Kafka jars in {self.libs_dir}; run `emotion-stream local fetch` first",
            )
        if shutil.which(self.java) is None:
            raise ServiceStartError(self.component, f"`{self.java}` (Java 17+) not on PATH")
        return Launch(self._java_argv(KAFKA_MAIN_CLASS, str(self.config_file)))

    def prepare(self) -> None:
        """Write ``server.properties``; format the data folder on first start."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "".join(f"{key}={value}\n" for key, value in self.server_properties().items()),
            encoding="utf-8",
        )
        self._format_storage()

    def _format_storage(self) -> None:
        """Format the data folder on first start (KRaft's ``kafka-storage format``)."""
        if (self.data_dir / "meta.properties").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = self._java_argv(
            KAFKA_STORAGE_TOOL, "format", "--ignore-formatted",
            # `=`: a generated id may start with "-" and read as an option.
            f"--cluster-id={self.cluster_id or new_cluster_id()}",
            f"--config={self.config_file}",
        )  # fmt: skip
        with self.log_file.open("ab") as log:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise ServiceStartError(
                self.component, f"formatting storage failed (exit {result.returncode})",
                self.log_file,
            )  # fmt: skip

    def is_ready(self) -> bool:
        """Whether the broker answers metadata with itself registered and a controller."""
        cluster = probe(KafkaAdminClient.describe_cluster, bootstrap_servers=self.bootstrap_servers)
        if cluster is None:
            return False
        unfenced = {
            int(broker["broker_id"])
            for broker in cluster.get("brokers", [])
            if not broker.get("is_fenced", False)
        }
        return self.node_id in unfenced and int(cluster.get("controller_id", -1)) >= 0

    def not_ready_message(self) -> str:
        return f"broker {self.bootstrap_servers} not ready"

    def on_ready(self, timeout_s: float) -> None:
        """Create the SCRAM users, then wait until the secure listener accepts one of them."""
        security = self.security
        if security is None or not security.users:
            return
        try:
            self.add_scram_users(security.users)
        except EmbeddedStackError as error:
            self.stop()
            raise ServiceStartError(self.component, str(error), self.log_file) from error
        user = next(iter(security.users))
        self.process.await_ready(
            lambda: security.accepts(user),
            timeout_s,
            f"{SECURE_LISTENER} listener on port {security.port} refused user {user!r}",
        )

    def add_scram_users(self, users: Mapping[str, str]) -> None:
        """Create or update SCRAM-SHA-512 users (:func:`kafka_security.add_scram_users`)."""
        add_scram_users(self.bootstrap_servers, users)

    def set_acls(
        self,
        user: str,
        operations: Iterable[str],
        resource_type: str,
        resource_name: str = CLUSTER_RESOURCE_NAME,
        *,
        allow: bool = True,
        prefixed: bool = False,
    ) -> None:
        """Allow (or deny) ``user`` the ``operations`` on one resource, for any host.

        As :func:`compose.embedded.kafka_security.create_acls`; needs ``security.authorizer``.
        """
        create_acls(
            self.bootstrap_servers,
            user,
            operations,
            resource_type,
            resource_name,
            allow=allow,
            prefixed=prefixed,
        )

    def create_topics(self, partitions: Mapping[str, int]) -> list[str]:
        """Create the topics that do not exist yet (idempotent); return those created.

        Each gets ``replication.factor`` replicas.

        Raises
        ------
        EmbeddedStackError
            The broker refused a topic for another reason than its existence.
        """
        return create_topics(self.bootstrap_servers, partitions, self.replication.factor)
