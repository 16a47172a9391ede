"""Short-lived Kafka admin clients: the operator's (PLAINTEXT, loopback) and readiness probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaConfigurationError, KafkaError

from compose.embedded.service import PROBE_TIMEOUT_S

_T = TypeVar("_T")


def operator_admin(bootstrap_servers: str) -> KafkaAdminClient:
    """An admin client on the PLAINTEXT listener (a super user when ACLs are on)."""
    return KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="emotion-stream-admin")


def probe(ask: Callable[[KafkaAdminClient], _T], **client: Any) -> _T | None:
    """``ask(admin)`` with a short-lived admin client built from ``client`` options and
    waiting at most :data:`~compose.embedded.service.PROBE_TIMEOUT_S`; None when the broker
    does not answer (not listening, no metadata yet, login refused)."""
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
