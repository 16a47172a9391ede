"""A real Apache Kafka broker and a real Triton server as local processes, without Docker.

- :class:`KafkaBroker` runs Kafka 4.x in KRaft mode (one process, broker and controller)
  from the Maven Central jars that :func:`fetch_kafka_jars` copies into a git-ignored cache;
  :class:`KafkaCluster` runs several of them as one cluster (each node broker and
  controller, a static quorum of all nodes) for replication and failover tests.
- :class:`TritonServer` runs the ``tritonserver`` binary of the ``nvidia-pytriton`` wheel on
  the Python-backend twin (:mod:`compose.twin`) of the exporter's model repository.

Both listen on 127.0.0.1 only, keep state, config and log under one folder per service,
record their pid (:mod:`compose.processes`), and are ready only once the real thing answers:
broker metadata for Kafka, ``v2/health/ready`` and model readiness for Triton. A start
that does not become ready stops what it started and raises
:class:`~compose.processes.ServiceStartError` naming the component with its log tail.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    NewTopic,
    ResourcePattern,
    ResourceType,
)
from kafka.admin._users import UserScramCredentialUpsertion
from kafka.errors import KafkaConfigurationError, KafkaError, TopicAlreadyExistsError

from compose.certificates import ServerCertificate
from compose.processes import (
    EmbeddedStackError,
    ManagedProcess,
    ServiceStartError,
    tail,
)
from compose.twin import TwinError, generate_twin_repository, read_json_object
from emotion_stream.layout import DEFAULT_MODEL_NAME, project_root
from emotion_stream.topics import DEAD_LETTER_TOPIC, EMOTIONS_TOPIC, TWEETS_TOPIC

LOOPBACK = "127.0.0.1"
DEFAULT_KAFKA_PORT = 9092  # the Compose stack's ports, so `.env` files work for both
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
DEFAULT_TRITON_HTTP_PORT = 8000
DEFAULT_TRITON_GRPC_PORT = 8001
DEFAULT_TRITON_METRICS_PORT = 8002

# Partitions of the pipeline's topics (named in emotion_stream.topics, the worker's defaults).
DEFAULT_TWEETS_PARTITIONS = 3

# First start formats storage and elects the single-node controller: ~5-15 s on 2 cores.
KAFKA_START_TIMEOUT_S = 90.0
# Triton loads the twin model, whose stub imports numpy and onnxruntime: ~5-20 s.
TRITON_START_TIMEOUT_S = 120.0
KAFKA_HEAP = "512m"  # a test broker; Kafka's scripts default to 1 GiB
# Each node of a test cluster holds a few small topics; three share the machine.
CLUSTER_NODE_HEAP = "320m"
KAFKA_NODE_ID = 1
# A killed cluster node is fenced (its partitions led elsewhere, dropped from ISRs) once
# its heartbeats stop for this long; Kafka's default is 9 s.
CLUSTER_BROKER_SESSION_TIMEOUT_MS = 6000
CLUSTER_BROKER_HEARTBEAT_INTERVAL_MS = 1000
# Each readiness probe gives up quickly so the outer deadline stays the one that counts.
PROBE_TIMEOUT_S = 3.0
# Triton's grace period for in-flight requests on SIGTERM (its default is 30 s).
TRITON_EXIT_TIMEOUT_S = 10

# The secure listener: SASL (SCRAM-SHA-512) over TLS.
SECURE_LISTENER = "SASL_SSL"
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
KRAFT_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# The PLAINTEXT listener's (and the controllers') principal: the operator's loopback door.
ANONYMOUS = "User:ANONYMOUS"

KAFKA_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
KAFKA_LOG4J2_CONFIG = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"
KAFKA_MAIN_CLASS = "kafka.Kafka"
KAFKA_STORAGE_TOOL = "kafka.tools.StorageTool"
# Written after a complete copy, holding the pom's content: an interrupted fetch or a
# changed pom fetches again.
FETCH_STAMP = ".fetched-from-pom"
FETCH_TIMEOUT_S = 600.0

PYTRITON_DIR_NAME = "pytriton"


def default_kafka_libs_dir() -> Path:
    """``$EMOTION_STREAM_KAFKA_LIBS`` or ``<checkout>/.cache/kafka/libs`` (git-ignored)."""
    env = os.environ.get("EMOTION_STREAM_KAFKA_LIBS")
    return Path(env) if env else project_root() / ".cache" / "kafka" / "libs"


def default_state_dir() -> Path:
    """``<checkout>/.local`` (git-ignored): data, configs, logs and pid files."""
    return project_root() / ".local"


def fetch_kafka_jars(libs_dir: Path | None = None, *, mvn: str = "mvn") -> Path:
    """Copy Kafka's broker jars, runtime dependencies and log4j2 binding into ``libs_dir``.

    Idempotent and quick once done: a stamp holding the pom's content marks a complete copy.

    Raises
    ------
    EmbeddedStackError
        Maven is missing or failed (its output is attached).
    """
    libs_dir = (libs_dir or default_kafka_libs_dir()).resolve()
    pom_text = KAFKA_POM.read_text(encoding="utf-8")
    stamp = libs_dir / FETCH_STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == pom_text:
        return libs_dir
    if shutil.which(mvn) is None:
        raise EmbeddedStackError(f"kafka: `{mvn}` not found on PATH; install Maven 3.8+")
    if libs_dir.exists():
        shutil.rmtree(libs_dir)  # a changed pom must not leave old jars on the classpath
    libs_dir.mkdir(parents=True)
    argv = [
        mvn, "-q", "-B", "-f", str(KAFKA_POM),
        "dependency:copy-dependencies", f"-Dkafka.libs.dir={libs_dir}",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise EmbeddedStackError(f"kafka: `mvn` took over {FETCH_TIMEOUT_S:.0f} s") from error
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise EmbeddedStackError(f"kafka: fetching jars with Maven failed:\n{output}")
    stamp.write_text(pom_text, encoding="utf-8")
    return libs_dir


def ensure_ports_free(component: str, ports: Mapping[str, int]) -> None:
    """Raise unless each port can be bound on 127.0.0.1 right now.

    Readiness is probed over the network, so a port someone else's broker or server
    already holds would answer for ours; refuse to start instead.

    Raises
    ------
    ServiceStartError
        Naming the component, the busy port and what it was for.
    """
    for purpose, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As the services themselves bind: connections of a previous run lingering
            # in TIME_WAIT (a restart) do not count, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError as error:
                raise ServiceStartError(
                    component,
                    f"{purpose} port {LOOPBACK}:{port} is already in use ({error.strerror}); "
                    "another stack running? see `emotion-stream local status`, or pick "
                    "other ports",
                ) from error


def _kafka_cluster_id() -> str:
    """A new cluster id in Kafka's format: a random UUID, URL-safe base64, no padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


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


@dataclass(frozen=True)
class KafkaSecurity:
    """A ``SASL_SSL`` listener (SCRAM-SHA-512 over TLS) beside the PLAINTEXT one, maybe ACLs.

    The PLAINTEXT listener stays, on loopback, for the operator and test harnesses
    (readiness, topic creation, reading results); clients under test use the secure one.

    Parameters
    ----------
    port:
        The ``SASL_SSL`` listener's port.
    keystore:
        PEM file with the broker's private key and certificate (``ssl.keystore.type=PEM``),
        for ``127.0.0.1``/``localhost``; :func:`compose.certificates.make_server_certificate`.
    truststore:
        PEM file of the CA that signed it: what clients verify the broker with.
    users:
        SCRAM-SHA-512 user names and passwords, created once the broker runs. The admin
        client sends only the salted hash: no password on a command line or in a log.
    authorizer:
        Run KRaft's ``StandardAuthorizer``: a SCRAM user may do only what ACLs allow
        (:meth:`KafkaBroker.set_acls`). The PLAINTEXT listener (``User:ANONYMOUS``, the
        controllers' too) and ``super_users`` may do everything.
    super_users:
        User names with every right.
    """

    port: int
    keystore: Path
    truststore: Path
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    authorizer: bool = False
    super_users: tuple[str, ...] = ()

    def client_options(self, user: str) -> dict[str, Any]:
        """kafka-python keyword arguments for ``user`` on the secure listener (with password)."""
        return {
            "bootstrap_servers": f"{LOOPBACK}:{self.port}",
            "security_protocol": SECURE_LISTENER,
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.users[user],
            "ssl_cafile": str(self.truststore),
        }

    def server_properties(self) -> dict[str, str]:
        """What the broker's configuration gains (listener lists are extended by the caller)."""
        listener = SECURE_LISTENER.lower()
        properties = {
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"listener.name.{listener}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                f"{SCRAM_LOGIN_MODULE} required;"
            ),
            f"listener.name.{listener}.ssl.keystore.type": "PEM",
            f"listener.name.{listener}.ssl.keystore.location": str(self.keystore),
            f"listener.name.{listener}.ssl.client.auth": "none",
        }
        if self.authorizer:
            principals = [ANONYMOUS, *(f"User:{user}" for user in self.super_users)]
            properties["authorizer.class.name"] = KRAFT_AUTHORIZER
            properties["super.users"] = ";".join(principals)
            properties["allow.everyone.if.no.acl.found"] = "false"
        return properties


# Names an ACL helper accepts, as Kafka's own tools spell them.
ACL_RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "cluster": ResourceType.CLUSTER,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}
CLUSTER_RESOURCE_NAME = "kafka-cluster"


def _acl_operation(name: str) -> ACLOperation:
    try:
        return ACLOperation[name.upper().replace("-", "_")]
    except KeyError:
        raise ValueError(f"unknown ACL operation {name!r}") from None


_T = TypeVar("_T")


def _probe(ask: Callable[[KafkaAdminClient], _T], **client: Any) -> _T | None:
    """``ask(admin)`` with a short-lived admin client built from ``client`` options and
    waiting at most :data:`PROBE_TIMEOUT_S`; None when the broker does not answer (not
    listening, no metadata yet, login refused)."""
    probe_ms = int(PROBE_TIMEOUT_S * 1000)
    try:
        admin = KafkaAdminClient(
            client_id="emotion-stream-readiness",
            request_timeout_ms=probe_ms,
            bootstrap_timeout_ms=probe_ms,
            **client,
        )
    except KafkaConfigurationError:
        raise  # our bug, not "not ready yet"
    except (KafkaError, OSError):
        return None
    try:
        return ask(admin)
    except (KafkaError, OSError):
        return None
    finally:
        admin.close()


class KafkaBroker:
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
        self.component = name
        self.home = state_dir.resolve() / name
        self.ports = ports or KafkaPorts()
        self.libs_dir = libs_dir or default_kafka_libs_dir()
        self.java = java
        self.die_with_parent = die_with_parent
        self.node_id = node_id
        self.quorum = dict(quorum) if quorum is not None else {node_id: self.ports}
        if self.quorum.get(node_id) != self.ports:
            raise ValueError(f"{name}: the quorum must list node {node_id} with its own ports")
        self.replication = replication or Replication()
        self.cluster_id = cluster_id
        self.heap = heap
        self.security = security
        self.data_dir = self.home / "data"
        self.config_file = self.home / "server.properties"
        self.endpoint_file = self.home / "endpoint.json"
        self.process = ManagedProcess(
            component=self.component,
            pid_file=self.home / "kafka.pid",
            log_file=self.home / "kafka.log",
            marker=str(self.config_file),
        )

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return f"{LOOPBACK}:{self.ports.port}"

    @classmethod
    def recorded(cls, state_dir: Path) -> KafkaBroker:
        """The broker as last started in ``state_dir`` (its recorded ports), for down/status."""
        broker = cls(state_dir)
        endpoint = read_json_object(broker.endpoint_file)
        if endpoint:
            broker.ports = KafkaPorts(int(endpoint["port"]), int(endpoint["controller_port"]))
        return broker

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
            secure = f"{SECURE_LISTENER}://{LOOPBACK}:{self.security.port}"
            properties["listeners"] += f",{secure}"
            properties["advertised.listeners"] += f",{secure}"
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

    def _check_jars(self) -> None:
        if not any(self.libs_dir.glob("kafka_2.13-*.jar")):
            raise ServiceStartError(
                self.component,
                f"no Kafka jars in {self.libs_dir}; run `emotion-stream local fetch` first",
            )
        if shutil.which(self.java) is None:
            raise ServiceStartError(self.component, f"`{self.java}` (Java 17+) not on PATH")

    def _format_storage(self) -> None:
        """Format the data folder on first start (KRaft's ``kafka-storage format``)."""
        if (self.data_dir / "meta.properties").is_file():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = self._java_argv(
            KAFKA_STORAGE_TOOL, "format", "--ignore-formatted",
            # `=`: a generated id may start with "-" and read as an option.
            f"--cluster-id={self.cluster_id or _kafka_cluster_id()}",
            f"--config={self.config_file}",
        )  # fmt: skip
        with self.log_file.open("ab") as log:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            raise ServiceStartError(
                self.component, f"formatting storage failed (exit {result.returncode})",
                self.log_file,
            )  # fmt: skip

    def is_running(self) -> bool:
        return self.process.is_running()

    def is_ready(self) -> bool:
        """Whether the broker answers metadata with itself registered and a controller."""
        cluster = _probe(
            KafkaAdminClient.describe_cluster, bootstrap_servers=self.bootstrap_servers
        )
        if cluster is None:
            return False
        unfenced = {
            int(broker["broker_id"])
            for broker in cluster.get("brokers", [])
            if not broker.get("is_fenced", False)
        }
        return self.node_id in unfenced and int(cluster.get("controller_id", -1)) >= 0

    def start(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> bool:
        """Start the broker unless it already runs here and answers; wait until ready.

        Returns ``True`` when this call started it, ``False`` when it was already running.

        Raises
        ------
        ServiceStartError
            Jars or java missing, storage formatting failed, the process exited, or the
            broker did not answer within ``timeout_s`` (the process is then stopped).
        """
        if self.is_running():
            self.process.await_ready(
                self.is_ready, timeout_s, "running but not ready", stop_on_failure=False
            )
            return False
        self.launch()
        self.await_ready(timeout_s)
        self._secure(timeout_s)
        return True

    def _secure(self, timeout_s: float) -> None:
        """Create the SCRAM users, then wait until the secure listener accepts one of them."""
        if self.security is None or not self.security.users:
            return
        try:
            self.add_scram_users(self.security.users)
        except EmbeddedStackError as error:
            self.stop()
            raise ServiceStartError(self.component, str(error), self.log_file) from error
        user = next(iter(self.security.users))
        self.process.await_ready(
            lambda: self._answers_as(user),
            timeout_s,
            f"{SECURE_LISTENER} listener on port {self.security.port} refused user {user!r}",
        )

    def _answers_as(self, user: str) -> bool:
        """Whether ``user`` authenticates on the secure listener and gets metadata."""
        assert self.security is not None
        # Metadata: any authenticated user may ask.
        topics = _probe(KafkaAdminClient.list_topics, **self.security.client_options(user))
        return topics is not None

    def _admin(self) -> KafkaAdminClient:
        """An admin client on the PLAINTEXT listener (a super user when ACLs are on)."""
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, client_id="emotion-stream-admin"
        )

    def add_scram_users(self, users: Mapping[str, str]) -> None:
        """Create or update SCRAM-SHA-512 users (the client sends only salted hashes).

        Raises
        ------
        EmbeddedStackError
            The broker refused one (its message names the user, never the password).
        """
        admin = self._admin()
        try:
            results = admin.alter_user_scram_credentials(
                [
                    UserScramCredentialUpsertion(user, SCRAM_MECHANISM, password)
                    for user, password in users.items()
                ]
            )
        finally:
            admin.close()
        refused = {user: error for user, error in results.items() if error}
        if refused:
            raise EmbeddedStackError(f"kafka: SCRAM users refused: {refused}")

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

        ``resource_type`` is ``topic``, ``group``, ``cluster`` or ``transactional_id``;
        ``operations`` are Kafka's names (``read``, ``write``, ``describe``,
        ``idempotent_write``, ``all``...); ``prefixed`` matches every name starting with
        ``resource_name``. A deny wins over any allow. Needs ``security.authorizer``.

        Raises
        ------
        ValueError
            Unknown resource type or operation.
        EmbeddedStackError
            The broker refused an ACL (no authorizer configured, for instance).
        """
        if resource_type not in ACL_RESOURCES:
            raise ValueError(f"resource_type must be one of {sorted(ACL_RESOURCES)}")
        pattern = ResourcePattern(
            ACL_RESOURCES[resource_type],
            resource_name,
            ACLResourcePatternType.PREFIXED if prefixed else ACLResourcePatternType.LITERAL,
        )
        permission = ACLPermissionType.ALLOW if allow else ACLPermissionType.DENY
        acls = [
            ACL(f"User:{user}", "*", _acl_operation(operation), permission, pattern)
            for operation in operations
        ]
        admin = self._admin()
        try:
            result = admin.create_acls(acls)
        finally:
            admin.close()
        if result.get("failed"):
            raise EmbeddedStackError(f"kafka: ACLs refused: {result['failed']}")

    def await_ready(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Wait until this node answers with itself unfenced (stop it if it does not).

        Raises
        ------
        ServiceStartError
            The process exited, or the node was not ready within ``timeout_s``.
        """
        self.process.await_ready(
            self.is_ready, timeout_s, f"broker {self.bootstrap_servers} not ready"
        )

    def launch(self) -> None:
        """Write the config, format storage on first start and start the process; no wait.

        A cluster launches every node before waiting: no node is ready before a majority
        of the controller quorum runs.

        Raises
        ------
        ServiceStartError
            Jars or java missing, a port taken, or storage formatting failed.
        """
        self._check_jars()
        ensure_ports_free(
            self.component, {"client": self.ports.port, "controller": self.ports.controller}
        )
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            "".join(f"{key}={value}\n" for key, value in self.server_properties().items()),
            encoding="utf-8",
        )
        self._format_storage()
        self.process.start(
            self._java_argv(KAFKA_MAIN_CLASS, str(self.config_file)),
            die_with_parent=self.die_with_parent,
        )
        _write_json(
            self.endpoint_file,
            {"port": self.ports.port, "controller_port": self.ports.controller},
        )

    def stop(self) -> bool:
        """Stop the broker (SIGTERM, then SIGKILL); data stays. ``True`` if it was running."""
        return self.process.stop()

    def kill(self) -> bool:
        """SIGKILL the broker: a crash without clean shutdown; data on disk stays.

        ``True`` if it was running. :meth:`start` brings it back on the same data (Kafka
        recovers its logs from the last flushed state).
        """
        return self.process.kill()

    def restart(self, timeout_s: float = KAFKA_START_TIMEOUT_S) -> None:
        """Stop, then start again on the same data and ports."""
        self.stop()
        self.start(timeout_s)

    def create_topics(self, partitions: Mapping[str, int]) -> list[str]:
        """Create the topics that do not exist yet (idempotent); return those created.

        Each gets ``replication.factor`` replicas.

        Raises
        ------
        EmbeddedStackError
            The broker refused a topic for another reason than its existence.
        """
        return create_topics(self.bootstrap_servers, partitions, self.replication.factor)


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
        cluster_id = _kafka_cluster_id()
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


def create_topics(
    bootstrap_servers: str, partitions: Mapping[str, int], replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet (idempotent); return those created.

    Raises
    ------
    EmbeddedStackError
        The broker refused a topic for another reason than its existence.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name, count in partitions.items():
            if name in existing:
                continue
            topic = NewTopic(name=name, num_partitions=count, replication_factor=replication_factor)
            try:
                admin.create_topics([topic], wait_for_metadata=True)
            except TopicAlreadyExistsError:
                continue  # created concurrently: the outcome we want
            except Exception as error:
                raise EmbeddedStackError(f"kafka: creating topic {name!r}: {error}") from error
            created.append(name)
    finally:
        admin.close()
    return created


def pipeline_topics(tweets_partitions: int = DEFAULT_TWEETS_PARTITIONS) -> dict[str, int]:
    """The pipeline's topics and partition counts (results and dead letters keyed alike)."""
    return {
        TWEETS_TOPIC: tweets_partitions,
        EMOTIONS_TOPIC: tweets_partitions,
        DEAD_LETTER_TOPIC: 1,
    }


@dataclass(frozen=True)
class TritonPorts:
    """Triton's three listeners."""

    grpc: int = DEFAULT_TRITON_GRPC_PORT
    http: int = DEFAULT_TRITON_HTTP_PORT
    metrics: int = DEFAULT_TRITON_METRICS_PORT


def pytriton_dir() -> Path:
    """The installed ``pytriton`` package (it carries ``tritonserver``)."""
    spec = importlib.util.find_spec(PYTRITON_DIR_NAME)
    if spec is None or spec.origin is None:
        raise EmbeddedStackError(
            "triton: nvidia-pytriton is not installed (pip install -e '.[local]')"
        )
    return Path(spec.origin).parent


class TritonServer:
    """pytriton's ``tritonserver`` serving the Python-backend twin of a model repository.

    Parameters
    ----------
    state_dir:
        The stack's state folder; the server keeps ``triton/`` in it (twin repository,
        backend folder, log, pid file).
    model_repository:
        The exporter's repository (``onnxruntime_onnx`` models).
    ports:
        gRPC, HTTP and metrics ports.
    model_name:
        The model whose readiness :meth:`start` waits for.
    intra_op_threads:
        onnxruntime threads per model instance when the config does not say (0: all cores).
    die_with_parent:
        Stop the server when the process that started it dies (test fixtures).
    grpc_tls:
        Serve gRPC over TLS with this certificate and key (``--grpc-use-ssl``); clients
        verify it against its CA. HTTP (readiness probes, loopback only) stays plain.
    """

    component = "triton"

    def __init__(
        self,
        state_dir: Path,
        model_repository: Path,
        ports: TritonPorts | None = None,
        *,
        model_name: str = DEFAULT_MODEL_NAME,
        intra_op_threads: int = 0,
        die_with_parent: bool = False,
        grpc_tls: ServerCertificate | None = None,
    ) -> None:
        self.grpc_tls = grpc_tls
        self.home = state_dir.resolve() / "triton"
        self.model_repository = model_repository
        self.ports = ports or TritonPorts()
        self.model_name = model_name
        self.intra_op_threads = intra_op_threads
        self.die_with_parent = die_with_parent
        self.twin_repository = self.home / "models"
        self.backend_dir = self.home / "backends"
        self.endpoint_file = self.home / "endpoint.json"
        self.process = ManagedProcess(
            component=self.component,
            pid_file=self.home / "triton.pid",
            log_file=self.home / "triton.log",
            marker=str(self.twin_repository),
        )

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc``."""
        return f"{LOOPBACK}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.metrics}/metrics"

    @classmethod
    def recorded(cls, state_dir: Path) -> TritonServer:
        """The server as last started in ``state_dir`` (its recorded ports), for down/status."""
        server = cls(state_dir, Path())
        endpoint = read_json_object(server.endpoint_file)
        if endpoint:
            server.ports = TritonPorts(
                int(endpoint["grpc"]), int(endpoint["http"]), int(endpoint["metrics"])
            )
            server.model_name = str(endpoint.get("model_name", server.model_name))
            server.model_repository = Path(str(endpoint.get("model_repository", "")))
        return server

    def _http_ok(self, path: str) -> bool:
        # No proxy for loopback whatever the environment says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.http_url}{path}", timeout=PROBE_TIMEOUT_S) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def is_running(self) -> bool:
        return self.process.is_running()

    def is_ready(self) -> bool:
        """Server ready and the model loaded (``v2/health/ready``, ``v2/models/<m>/ready``)."""
        return self._http_ok("/v2/health/ready") and self._http_ok(
            f"/v2/models/{self.model_name}/ready"
        )

    def _prepare_backend_dir(self) -> Path:
        """``<dir>/python/`` with the backend library, its utils and the 3.11 stub."""
        pytriton = pytriton_dir()
        python_dir = self.backend_dir / "python"
        python_dir.mkdir(parents=True, exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        sources = {
            "libtriton_python.so": pytriton / "tritonserver/backends/python/libtriton_python.so",
            "triton_python_backend_utils.py": (
                pytriton / "tritonserver/backends/python/triton_python_backend_utils.py"
            ),
            # The stub must match the Python the model's imports come from.
            "triton_python_backend_stub": (
                pytriton / f"tritonserver/python_backend_stubs/{version}/triton_python_backend_stub"
            ),
        }
        for name, source in sources.items():
            if not source.is_file():
                raise ServiceStartError(self.component, f"missing from nvidia-pytriton: {source}")
            target = python_dir / name
            if not target.is_file() or target.stat().st_size != source.stat().st_size:
                shutil.copy2(source, target)
        return self.backend_dir

    def _environment(self, pytriton: Path) -> dict[str, str]:
        """tritonserver's environment: the wheel's libraries, and this venv first on PATH.

        The Python backend's stub imports numpy and onnxruntime from the environment whose
        ``bin/`` comes first on PATH.
        """
        env = dict(os.environ)
        libs = pytriton.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            part for part in (str(libs), env.get("LD_LIBRARY_PATH", "")) if part
        )
        env["PATH"] = os.pathsep.join((str(Path(sys.prefix) / "bin"), env.get("PATH", "")))
        env["VIRTUAL_ENV"] = sys.prefix
        return env

    def argv(self, binary: Path) -> list[str]:
        """tritonserver's command line: the twin, our backend folder, loopback listeners."""
        return [
            str(binary),
            f"--model-repository={self.twin_repository}",
            f"--backend-directory={self.backend_dir}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.ports.http}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={TRITON_EXIT_TIMEOUT_S}",
            *self._grpc_tls_arguments(),
        ]

    def _grpc_tls_arguments(self) -> list[str]:
        if self.grpc_tls is None:
            return []
        return [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={self.grpc_tls.cert}",
            f"--grpc-server-key={self.grpc_tls.key}",
            f"--grpc-root-cert={self.grpc_tls.ca_cert}",
        ]

    def start(self, timeout_s: float = TRITON_START_TIMEOUT_S) -> bool:
        """Generate the twin, start tritonserver unless already serving here, wait until ready.

        Returns ``True`` when this call started it, ``False`` when it was already running.

        Raises
        ------
        ServiceStartError
            No ONNX model in the repository, pytriton missing, the process exited, or the
            model was not ready within ``timeout_s`` (the process is then stopped).
        """
        if self.is_running():
            self.process.await_ready(
                self.is_ready, timeout_s, "running but not ready", stop_on_failure=False
            )
            return False
        pytriton = pytriton_dir()
        binary = pytriton / "tritonserver" / "bin" / "tritonserver"
        if shutil.which(str(binary)) is None:
            raise ServiceStartError(self.component, f"no executable tritonserver at {binary}")
        ensure_ports_free(
            self.component,
            {"gRPC": self.ports.grpc, "HTTP": self.ports.http, "metrics": self.ports.metrics},
        )
        if self.twin_repository.exists():
            shutil.rmtree(self.twin_repository)
        try:
            generate_twin_repository(
                self.model_repository,
                self.twin_repository,
                intra_op_threads=self.intra_op_threads,
            )
        except TwinError as error:
            raise ServiceStartError(self.component, str(error)) from error
        self._prepare_backend_dir()
        self.process.start(
            self.argv(binary),
            env=self._environment(pytriton),
            cwd=self.home,
            die_with_parent=self.die_with_parent,
        )
        _write_json(
            self.endpoint_file,
            {
                "grpc": self.ports.grpc,
                "http": self.ports.http,
                "metrics": self.ports.metrics,
                "model_name": self.model_name,
                "model_repository": str(self.model_repository.resolve()),
            },
        )
        self.process.await_ready(
            self.is_ready, timeout_s, f"model {self.model_name!r} not ready on {self.http_url}"
        )
        return True

    def stop(self) -> bool:
        """Stop tritonserver and its backend stubs. ``True`` if it was running."""
        return self.process.stop()


__all__ = [
    "DEAD_LETTER_TOPIC",
    "EMOTIONS_TOPIC",
    "TWEETS_TOPIC",
    "EmbeddedStackError",
    "KafkaBroker",
    "KafkaCluster",
    "KafkaPorts",
    "KafkaSecurity",
    "Replication",
    "ServiceStartError",
    "TritonPorts",
    "TritonServer",
    "create_topics",
    "fetch_kafka_jars",
    "pipeline_topics",
    "tail",
]
