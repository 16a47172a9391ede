"""The embedded broker's secure side: a ``SASL_SSL`` listener, SCRAM users and ACLs.

:class:`KafkaSecurity` says what the broker's configuration gains (SCRAM-SHA-512 over TLS,
maybe KRaft's authorizer) and how a client logs in; :func:`add_scram_users` and
:func:`create_acls` are the admin calls made on the PLAINTEXT listener once it runs. TLS
material comes from :mod:`compose.certificates`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourceType,
)
from kafka.admin._users import UserScramCredentialUpsertion

from compose.embedded.kafka_admin import operator_admin, probe
from compose.embedded.service import LOOPBACK
from compose.processes import EmbeddedStackError

# The secure listener: SASL (SCRAM-SHA-512) over TLS.
SECURE_LISTENER = "SASL_SSL"
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
KRAFT_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
# The PLAINTEXT listener's (and the controllers') principal: the operator's loopback door.
ANONYMOUS = "User:ANONYMOUS"

# Names an ACL helper accepts, as Kafka's own tools spell them.
ACL_RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "cluster": ResourceType.CLUSTER,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}
CLUSTER_RESOURCE_NAME = "kafka-cluster"


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

    @property
    def listener(self) -> str:
        """The listener's ``NAME://host:port``, as ``listeners`` spells it."""
        return f"{SECURE_LISTENER}://{LOOPBACK}:{self.port}"

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

    def accepts(self, user: str) -> bool:
        """Whether ``user`` authenticates on the secure listener and gets metadata."""
        # Metadata: any authenticated user may ask.
        topics = probe(KafkaAdminClient.list_topics, **self.client_options(user))
        return topics is not None


def add_scram_users(bootstrap_servers: str, users: Mapping[str, str]) -> None:
    """Create or update SCRAM-SHA-512 users (the client sends only salted hashes).

    Raises
    ------
    EmbeddedStackError
        The broker refused one (its message names the user, never the password).
    """
    admin = operator_admin(bootstrap_servers)
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


def _acl_operation(name: str) -> ACLOperation:
    try:
        return ACLOperation[name.upper().replace("-", "_")]
    except KeyError:
        raise ValueError(f"unknown ACL operation {name!r}") from None


def create_acls(
    bootstrap_servers: str,
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
    ``resource_name``. A deny wins over any allow. Needs ``KafkaSecurity.authorizer``.

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
    admin = operator_admin(bootstrap_servers)
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    if result.get("failed"):
        raise EmbeddedStackError(f"kafka: ACLs refused: {result['failed']}")
