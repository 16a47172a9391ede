"""Shared test configuration.

Unit tests need no services. Integration tests (marker ``integration``) start a real
Kafka broker and a real Triton server through the same code as
``emotion-stream local up``; under ``CI=true`` a service that cannot start fails the
test instead of skipping it.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def skip_or_fail(reason: str) -> None:
    """Skip locally when a service cannot start; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: integration services must start)")
    pytest.skip(reason)


# Fixtures live beside the code they exercise, as plugins, so each part owns its own:
#   tests/support/model_fixtures.py    tiny HF model + tokenizer, exported model repository
#   tests/support/service_fixtures.py  real Kafka broker and real Triton server
#   tests/support/broker_fixtures.py   brokers a test owns: clusters, killable brokers
#   tests/support/secure_fixtures.py   a broker with a SASL_SSL listener, maybe ACLs
pytest_plugins = [
    "tests.support.model_fixtures",
    "tests.support.service_fixtures",
    "tests.support.broker_fixtures",
    "tests.support.secure_fixtures",
]
