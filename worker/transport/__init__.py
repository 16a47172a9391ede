"""Thin Kafka wrappers: the only package that imports ``kafka``.

- :mod:`~worker.transport.source`: :class:`KafkaSource`, the input topic's consumer, and
  the rebalance listener;
- :mod:`~worker.transport.publisher`: :class:`KafkaPublisher`, results and dead letters
  with ``acks=all``, each record checked against its topic's limit;
- :mod:`~worker.transport.transactions`: :class:`TransactionalPublisher`, exactly-once;
- :mod:`~worker.transport.translation`: kafka-python's errors, translated once into the
  worker's (:mod:`worker.errors`).
"""

from worker.transport.publisher import (
    MAX_MESSAGE_BYTES,
    PRODUCER_MAX_REQUEST_BYTES,
    AckCallback,
    KafkaPublisher,
    TopicLimits,
    read_record_limits,
    record_size,
)
from worker.transport.source import KafkaSource, not_a_member
from worker.transport.transactions import TransactionalPublisher
from worker.transport.translation import CONSUMER_START, PRODUCER_START, translate_kafka_error

__all__ = [
    "CONSUMER_START",
    "MAX_MESSAGE_BYTES",
    "PRODUCER_MAX_REQUEST_BYTES",
    "PRODUCER_START",
    "AckCallback",
    "KafkaPublisher",
    "KafkaSource",
    "TopicLimits",
    "TransactionalPublisher",
    "not_a_member",
    "read_record_limits",
    "record_size",
    "translate_kafka_error",
]
