"""An embedded Kafka with a SASL_SSL listener (SCRAM-SHA-512), maybe ACLs (a pytest plugin).

``secure_kafka_broker(authorizer=False)`` starts a single-node broker of the test's own
(see :mod:`tests.support.broker_fixtures`) with certificates generated for the test (a
CA and a server certificate for ``127.0.0.1``/``localhost``) and two SCRAM users with
random passwords: ``admin`` (a super user) and ``worker``. It returns a
:class:`SecureKafka`:

- ``.bootstrap_servers``: the PLAINTEXT listener, for the harness (topics, seeding,
  reading results; with ACLs on it is a super user's door, loopback only);
- ``.secure_bootstrap_servers``: the SASL_SSL listener;
- ``.worker_env(user)``: the ``EMOTION_STREAM_*`` variables that make a worker connect
  as ``user`` over SASL_SSL (``password=`` to pass a wrong one);
- ``.client_options(user)``: kafka-python keyword arguments for the same;
- with ``authorizer=True`` (KRaft's StandardAuthorizer): ``.allow(user, operations,
  resource_type, name)``, ``.deny(...)`` and ``.allow_worker(user, input_topic=...,
  group=..., output_topics=[...])``, the rights a worker needs — leave a topic out of
  ``output_topics`` (or ``deny`` it) to take away the right to write it.

``tls_triton_server`` (module-scoped) is pytriton's ``tritonserver`` serving the tiny
model with gRPC over TLS (a certificate of its own CA): ``.grpc_url`` and
``.worker_env(root_certificates=None)`` for a worker that verifies it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compose.certificates import ServerCertificate, make_server_certificate
from compose.embedded import (
    SCRAM_MECHANISM,
    SECURE_LISTENER,
    KafkaBroker,
    KafkaSecurity,
    TritonPorts,
    TritonServer,
)
from tests.conftest import skip_or_fail
from tests.support.broker_fixtures import KafkaBrokerFactory
from tests.support.network import free_port, free_ports

ADMIN_USER = "admin"
WORKER_USER = "worker"


@dataclass
class SecureKafka:
    """A started broker with a SASL_SSL listener; see the module docstring."""

    broker: KafkaBroker
    security: KafkaSecurity
    tls: ServerCertificate

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers

    @property
    def secure_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.security.port}"

    def password(self, user: str) -> str:
        return self.security.users[user]

    def client_options(self, user: str = WORKER_USER) -> dict[str, Any]:
        return self.security.client_options(user)

    def worker_env(self, user: str = WORKER_USER, *, password: str | None = None) -> dict[str, str]:
        """``EMOTION_STREAM_*`` settings for a worker connecting as ``user`` over SASL_SSL."""
        return {
            "EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS": self.secure_bootstrap_servers,
            "EMOTION_STREAM_SECURITY_PROTOCOL": SECURE_LISTENER,
            "EMOTION_STREAM_SASL_MECHANISM": SCRAM_MECHANISM,
            "EMOTION_STREAM_SASL_USERNAME": user,
            "EMOTION_STREAM_SASL_PASSWORD": password
            if password is not None
            else self.password(user),
            "EMOTION_STREAM_SSL_CAFILE": str(self.tls.ca_cert),
        }

    def allow(self, user: str, operations: Iterable[str], resource_type: str, name: str) -> None:
        self.broker.set_acls(user, operations, resource_type, name, allow=True)

    def deny(self, user: str, operations: Iterable[str], resource_type: str, name: str) -> None:
        self.broker.set_acls(user, operations, resource_type, name, allow=False)

    def allow_worker(
        self,
        user: str = WORKER_USER,
        *,
        input_topic: str,
        group: str,
        output_topics: Iterable[str],
        transactional_id_prefix: str | None = None,
    ) -> None:
        """What a worker needs: read the input in its group, write the outputs.

        Writing any topic also grants the idempotent producer's InitProducerId (Kafka
        2.8+, KIP-679). ``transactional_id_prefix`` adds the exactly-once mode's rights.
        """
        self.allow(user, ["read", "describe"], "topic", input_topic)
        self.allow(user, ["read", "describe"], "group", group)
        for topic in output_topics:
            self.allow(user, ["write", "describe"], "topic", topic)
        if transactional_id_prefix is not None:
            self.broker.set_acls(
                user,
                ["write", "describe"],
                "transactional_id",
                transactional_id_prefix,
                prefixed=True,
            )


SecureKafkaFactory = Callable[..., SecureKafka]


@pytest.fixture
def secure_kafka_broker(
    private_kafka_broker: KafkaBrokerFactory, tmp_path_factory: pytest.TempPathFactory
) -> SecureKafkaFactory:
    """``secure_kafka_broker(authorizer=False)``: a started broker with a SASL_SSL listener."""

    def start(*, authorizer: bool = False) -> SecureKafka:
        tls = make_server_certificate(Path(tmp_path_factory.mktemp("kafka-tls")))
        security = KafkaSecurity(
            port=free_port(),
            keystore=tls.keystore,
            truststore=tls.ca_cert,
            # Random per test: a leak test can search the logs for the exact string.
            users={ADMIN_USER: secrets.token_urlsafe(18), WORKER_USER: secrets.token_urlsafe(18)},
            authorizer=authorizer,
            super_users=(ADMIN_USER,),
        )
        broker = private_kafka_broker(security=security)
        return SecureKafka(broker=broker, security=security, tls=tls)

    return start


@dataclass
class TlsTriton:
    """A started Triton whose gRPC endpoint speaks TLS only."""

    server: TritonServer
    tls: ServerCertificate

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url

    def worker_env(self, root_certificates: Path | None = None) -> dict[str, str]:
        """``EMOTION_STREAM_*`` for a worker verifying Triton against ``root_certificates``
        (default: the CA that signed the server's certificate)."""
        return {
            "EMOTION_STREAM_TRITON_URL": self.grpc_url,
            "EMOTION_STREAM_TRITON_SSL": "true",
            "EMOTION_STREAM_TRITON_ROOT_CERTIFICATES": str(root_certificates or self.tls.ca_cert),
        }


@pytest.fixture(scope="module")
def tls_triton_server(
    tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsTriton]:
    """Triton serving the tiny model with gRPC over TLS (``--grpc-use-ssl``)."""
    tls = make_server_certificate(Path(tmp_path_factory.mktemp("triton-tls")))
    grpc, http, metrics = free_ports(3)
    server = TritonServer(
        tmp_path_factory.mktemp("triton-tls-state"),
        tiny_model_repository,
        TritonPorts(grpc=grpc, http=http, metrics=metrics),
        die_with_parent=True,
        grpc_tls=tls,
    )
    try:
        server.start()
    except Exception as error:
        server.stop()
        skip_or_fail(f"Triton with gRPC over TLS did not start: {error}")
    yield TlsTriton(server=server, tls=tls)
    try:
        server.stop()
    except Exception as error:
        print(f"warning: stopping the TLS Triton failed: {error}")
