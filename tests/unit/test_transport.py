"""Kafka errors translated once, at the edge: retriable -> transient, too large -> poison."""

from __future__ import annotations

import kafka.errors
import pytest

from worker.errors import BrokerUnavailable, FatalError, RecordTooLarge
from worker.transport import translate_kafka_error


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
