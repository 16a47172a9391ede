"""Kafka errors translated once, at the edge: retriable -> transient, too large -> poison."""

from __future__ import annotations

import kafka.errors
import pytest

from worker.errors import (
    BrokerUnavailable,
    FatalError,
    ProducerFenced,
    RecordTooLarge,
    TransactionAborted,
    TransientError,
)
from worker.settings import WorkerSettings
from worker.transport import TransactionalPublisher, translate_kafka_error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kafka.errors.KafkaTimeoutError("slow"), BrokerUnavailable),
        (kafka.errors.NotLeaderForPartitionError(), BrokerUnavailable),
        (kafka.errors.KafkaConnectionError("refused"), BrokerUnavailable),
        (ConnectionRefusedError("refused"), BrokerUnavailable),
        (kafka.errors.MessageSizeTooLargeError("2 MB"), RecordTooLarge),
        (kafka.errors.TopicAuthorizationFailedError(), FatalError),
        (kafka.errors.IllegalStateError("closed"), FatalError),
        (ValueError("bug"), FatalError),
    ],
)
def test_kafka_errors_translate(error: Exception, kind: type[Exception]) -> None:
    translated = translate_kafka_error(error, "send to emotions")
    assert type(translated) is kind
    assert "emotions" in str(translated)


def test_a_bootstrap_timeout_after_a_refused_login_is_fatal_and_names_the_settings() -> None:
    """kafka-python only logs the refusal and then times out: that must not read as an outage."""
    import logging  # noqa: PLC0415 - local to this test

    from worker import transport  # noqa: PLC0415

    timeout = kafka.errors.KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9093")
    assert isinstance(translate_kafka_error(timeout, "consumer start"), BrokerUnavailable)
    refusal = kafka.errors.SaslAuthenticationFailedError("invalid credentials")
    try:
        logging.getLogger("kafka.net.manager").error("Connection failed: %s", refusal)
        error = translate_kafka_error(timeout, "consumer start")
        assert isinstance(error, FatalError)
        assert "refused the login" in str(error) and "invalid credentials" in str(error)
        assert "EMOTION_STREAM_SASL_PASSWORD" in str(error)
    finally:
        transport._login_failures.failure = None  # later tests must see a plain timeout


def test_a_refused_broker_certificate_counts_as_a_refused_login() -> None:
    import logging  # noqa: PLC0415 - local to this test
    import ssl  # noqa: PLC0415

    from worker import transport  # noqa: PLC0415

    try:
        # As kafka-python raises it: inside the handler of the ssl error.
        tls = ssl.SSLCertVerificationError("certificate verify failed")
        wrapped = kafka.errors.KafkaConnectionError(f"Handshake failed: {tls}")
        wrapped.__context__ = tls
        logging.getLogger("kafka.net.manager").error("Connection failed: %s", wrapped)
        timeout = kafka.errors.KafkaTimeoutError("Unable to bootstrap")
        error = translate_kafka_error(timeout, "producer start")
        assert isinstance(error, FatalError)
        assert "certificate verify failed" in str(error)
        assert "EMOTION_STREAM_SSL_CAFILE" in str(error)
    finally:
        transport._login_failures.failure = None


def _publisher() -> TransactionalPublisher:
    return TransactionalPublisher(WorkerSettings(delivery="exactly_once", transactional_id="w-1"))


@pytest.mark.parametrize(
    "error",
    [
        kafka.errors.ProducerFencedError(),
        kafka.errors.InvalidProducerEpochError(),
        # How kafka-python reports a send after the producer was fenced.
        kafka.errors.KafkaError("Cannot perform send", kafka.errors.ProducerFencedError()),
    ],
)
def test_fencing_is_recognised_however_it_is_reported(error: Exception) -> None:
    translated = _publisher()._translate(error, "commit")
    assert isinstance(translated, ProducerFenced)
    assert "'w-1'" in str(translated) and "took over" in str(translated)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kafka.errors.CommitFailedError("stale generation"), TransactionAborted),
        (kafka.errors.KafkaTimeoutError("slow"), TransactionAborted),
        (kafka.errors.NotLeaderForPartitionError(), TransactionAborted),
        (kafka.errors.MessageSizeTooLargeError("2 MB"), RecordTooLarge),
        (kafka.errors.TransactionalIdAuthorizationFailedError(), FatalError),
    ],
)
def test_transactional_errors_translate(error: Exception, kind: type[Exception]) -> None:
    translated = _publisher()._translate(error, "emotions")
    assert type(translated) is kind
    assert "emotions" in str(translated)


def test_transactional_errors_are_transient_so_the_loop_aborts_and_rereads() -> None:
    assert issubclass(TransactionAborted, TransientError)
    assert issubclass(ProducerFenced, FatalError)
