"""Real Kafka broker and real Triton server for integration tests (a pytest plugin).

Session-scoped fixtures start each service once, on free loopback ports, through one of
two backends behind the same small interface (:class:`KafkaService`,
:class:`TritonService`):

- ``local`` — the processes ``emotion-stream local up`` runs (:mod:`compose.embedded`):
  Kafka 4.x from Maven Central jars and pytriton's ``tritonserver`` serving the
  Python-backend twin of the exported model;
- ``testcontainers`` — ``apache/kafka`` and NVIDIA's ``tritonserver`` images (real
  onnxruntime backend) through testcontainers.

``EMOTION_STREAM_TEST_BACKEND`` chooses (``local``, ``testcontainers`` or ``auto``, the
default: testcontainers when a Docker engine answers and already holds both images — a
pull may be impossible, as on the CI machine — local otherwise). A service that cannot
start skips its tests locally and fails them under ``CI=true``.

``EMOTION_STREAM_TEST_DOCKER_NETWORK=host`` runs the containers in the host's network
namespace, listening on free 127.0.0.1 ports, for engines without a bridge network
(``dockerd --bridge=none``, as compose/ci/stage.sh starts it); the default publishes the
container ports on free host ports.

Tests get unique topic and group names from ``unique_name`` so they never see each
other's messages on the shared broker.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from compose.embedded import (
    KafkaBroker,
    KafkaPorts,
    TritonPorts,
    TritonServer,
    fetch_kafka_jars,
)
from compose.processes import EmbeddedStackError, wait_until
from tests.conftest import skip_or_fail
from tests.support.network import free_ports

BACKEND_ENV = "EMOTION_STREAM_TEST_BACKEND"
BACKENDS = ("local", "testcontainers", "auto")
# Images of the testcontainers backend, the versions the embedded stack runs: Kafka as in
# compose/kafka/pom.xml, Triton 24.10 = server 2.51 like pytriton's binary.
KAFKA_IMAGE = os.environ.get("EMOTION_STREAM_KAFKA_IMAGE", "apache/kafka:4.4.0")
TRITON_IMAGE = os.environ.get(
    "EMOTION_STREAM_TRITON_IMAGE", "nvcr.io/nvidia/tritonserver:24.10-py3"
)
NETWORK_ENV = "EMOTION_STREAM_TEST_DOCKER_NETWORK"
CONTAINER_START_TIMEOUT_S = 180.0
DOCKER_PING_TIMEOUT_S = 3
KAFKA_NAME_LIMIT = 200  # Kafka allows 249 characters in a topic name
_UNSAFE_NAME_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


class KafkaService(Protocol):
    """What integration tests may do with the broker, whatever runs it."""

    @property
    def bootstrap_servers(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...

    def create_topic(self, name: str, partitions: int = 1) -> None: ...


class TritonService(Protocol):
    """What integration tests may do with the inference server, whatever runs it."""

    @property
    def grpc_url(self) -> str: ...

    @property
    def http_url(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def create_topic(bootstrap_servers: str, name: str, partitions: int = 1) -> None:
    """Create ``name`` with ``partitions`` partitions (single replica); no-op if it exists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)],
            wait_for_metadata=True,
        )
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


# --------------------------------------------------------------------------- local backend


class LocalKafka:
    """:class:`compose.embedded.KafkaBroker` in a temporary state folder, on free ports."""

    def __init__(self, state_dir: Path) -> None:
        port, controller = free_ports(2)
        self.broker = KafkaBroker(state_dir, KafkaPorts(port, controller), die_with_parent=True)

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers

    def start(self) -> None:
        fetch_kafka_jars()
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()

    def restart(self) -> None:
        self.broker.restart()

    def create_topic(self, name: str, partitions: int = 1) -> None:
        create_topic(self.bootstrap_servers, name, partitions)


class LocalTriton:
    """:class:`compose.embedded.TritonServer` serving ``repository``'s twin, on free ports."""

    def __init__(self, state_dir: Path, repository: Path) -> None:
        grpc, http, metrics = free_ports(3)
        self.server = TritonServer(
            state_dir,
            repository,
            TritonPorts(grpc=grpc, http=http, metrics=metrics),
            die_with_parent=True,
        )

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def log_file(self) -> Path:
        return self.server.log_file

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


# ------------------------------------------------------------------- testcontainers backend


def docker_available() -> bool:
    """Whether a Docker engine answers and holds both images (``auto`` never pulls).

    Checked only when an engine is configured or has a socket.
    """
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    try:
        import docker  # noqa: PLC0415 - only the testcontainers backend needs Docker

        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
        try:
            if not client.ping():
                return False
            for image in _images_needed():
                client.images.get(image)  # raises ImageNotFound
            return True
        finally:
            client.close()
    except Exception:
        return False


def _images_needed() -> list[str]:
    """The services' images, and testcontainers' Ryuk reaper unless it is disabled."""
    from testcontainers.core.config import testcontainers_config  # noqa: PLC0415 - optional

    images = [KAFKA_IMAGE, TRITON_IMAGE]
    if not testcontainers_config.ryuk_disabled:
        images.append(testcontainers_config.ryuk_image)
    return images


def host_network() -> bool:
    """Whether containers share the host's network (``EMOTION_STREAM_TEST_DOCKER_NETWORK``)."""
    return os.environ.get(NETWORK_ENV, "").strip().lower() == "host"


class _ContainerService:
    """A testcontainers container whose readiness is probed like its local twin's.

    Subclasses set ``component``, ``container`` and ``_probe`` (the local service object,
    used only for its ``is_ready``).
    """

    component: str
    container: Any
    _probe: KafkaBroker | TritonServer
    _started = False

    def _wait_ready(self) -> None:
        if not wait_until(self._probe.is_ready, timeout_s=CONTAINER_START_TIMEOUT_S):
            logs = b"".join(self.container.get_logs()).decode("utf-8", "replace")
            raise EmbeddedStackError(f"{self.component} container not ready:\n{logs[-4000:]}")

    def start(self) -> None:
        if self._started:
            self.container.get_wrapped_container().start()
        else:
            self.container.start()
            self._started = True
        self._wait_ready()

    def stop(self) -> None:
        self.container.get_wrapped_container().stop()

    def remove(self) -> None:
        self.container.stop()


class ContainerKafka(_ContainerService):
    """``apache/kafka`` (KRaft, one node) with its listener bound to a fixed free host port.

    A fixed port keeps the advertised listener valid across :meth:`restart`.
    """

    component = "kafka"

    def __init__(self, image: str = KAFKA_IMAGE) -> None:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415 - optional

        self.host_port, controller = free_ports(2)
        if host_network():
            listeners = (
                f"PLAINTEXT://127.0.0.1:{self.host_port},CONTROLLER://127.0.0.1:{controller}"
            )
            voters = f"1@127.0.0.1:{controller}"
            container = DockerContainer(image).with_kwargs(network_mode="host")
        else:
            listeners, voters = "PLAINTEXT://:9092,CONTROLLER://:9093", "1@localhost:9093"
            container = DockerContainer(image).with_bind_ports(9092, self.host_port)
        self.container: Any = container.with_envs(
            KAFKA_NODE_ID="1",
            KAFKA_PROCESS_ROLES="broker,controller",
            KAFKA_LISTENERS=listeners,
            KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{self.host_port}",
            KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
            KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            KAFKA_CONTROLLER_QUORUM_VOTERS=voters,
            KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
            KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR="1",
            KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR="1",
            KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
        )
        # Readiness is probed exactly as for the local broker.
        self._probe = KafkaBroker(Path("/nonexistent"), KafkaPorts(self.host_port, 0))

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.host_port}"

    def restart(self) -> None:
        self.container.get_wrapped_container().restart()
        self._wait_ready()

    def create_topic(self, name: str, partitions: int = 1) -> None:
        create_topic(self.bootstrap_servers, name, partitions)


class ContainerTriton(_ContainerService):
    """NVIDIA's ``tritonserver`` image serving ``repository`` with its onnxruntime backend."""

    component = "triton"

    def __init__(self, repository: Path, image: str = TRITON_IMAGE) -> None:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415 - optional

        grpc, http = free_ports(2)
        self.ports = TritonPorts(grpc=grpc, http=http, metrics=0)
        command = "tritonserver --model-repository=/models --allow-metrics=false"
        if host_network():
            container = DockerContainer(image).with_kwargs(network_mode="host")
            command += (
                f" --http-address=127.0.0.1 --http-port={http}"
                f" --grpc-address=127.0.0.1 --grpc-port={grpc}"
            )
        else:
            container = (
                DockerContainer(image).with_bind_ports(8001, grpc).with_bind_ports(8000, http)
            )
        self.container: Any = container.with_volume_mapping(
            str(repository.resolve()), "/models", "ro"
        ).with_command(command)
        self._probe = TritonServer(Path("/nonexistent"), Path(), self.ports)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"


# ----------------------------------------------------------------------------- fixtures


def chosen_backend() -> str:
    """``local`` or ``testcontainers``, from ``EMOTION_STREAM_TEST_BACKEND`` (default auto)."""
    wanted = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if wanted not in BACKENDS:
        raise pytest.UsageError(f"{BACKEND_ENV} must be one of {BACKENDS}, got {wanted!r}")
    if wanted == "auto":
        return "testcontainers" if docker_available() else "local"
    return wanted


@pytest.fixture(scope="session")
def service_backend() -> str:
    """The backend running this session's services."""
    return chosen_backend()


@pytest.fixture(scope="session")
def kafka_broker(
    service_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaService]:
    """A real Kafka 4.x broker for the whole session (``.bootstrap_servers``, restart())."""
    service: LocalKafka | ContainerKafka | None = None
    try:
        if service_backend == "testcontainers":
            service = ContainerKafka()
        else:
            service = LocalKafka(tmp_path_factory.mktemp("kafka-state"))
        service.start()
    except Exception as error:  # any failure to start: skip locally, fail under CI
        if service is not None:
            _cleanup(service)
        skip_or_fail(f"Kafka broker ({service_backend}) did not start: {error}")
    assert service is not None
    yield service
    _cleanup(service)


@pytest.fixture(scope="session")
def triton_server(
    service_backend: str,
    tiny_model_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonService]:
    """A real Triton server serving the tiny exported model (``.grpc_url``, stop()/start())."""
    service: LocalTriton | ContainerTriton | None = None
    try:
        if service_backend == "testcontainers":
            service = ContainerTriton(tiny_model_repository)
        else:
            service = LocalTriton(tmp_path_factory.mktemp("triton-state"), tiny_model_repository)
        service.start()
    except Exception as error:
        if service is not None:
            _cleanup(service)
        skip_or_fail(f"Triton server ({service_backend}) did not start: {error}")
    assert service is not None
    yield service
    _cleanup(service)


def _cleanup(service: LocalKafka | LocalTriton | ContainerKafka | ContainerTriton) -> None:
    """Stop (and for containers remove) a service; never masks the test's own outcome."""
    try:
        if isinstance(service, ContainerKafka | ContainerTriton):
            service.remove()
        else:
            service.stop()
    except Exception as error:  # teardown must not hide the real failure
        print(f"warning: stopping {type(service).__name__} failed: {error}")


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name(prefix)``: a topic/group name no other test (or run) uses."""
    test = _UNSAFE_NAME_CHARS.sub("-", request.node.name)[:60]

    def make(prefix: str = "t") -> str:
        name = f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"
        return name[:KAFKA_NAME_LIMIT]

    return make
