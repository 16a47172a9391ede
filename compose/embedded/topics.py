"""The pipeline's topics, and creating topics on a running broker or cluster."""

from __future__ import annotations

from collections.abc import Mapping

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from compose.processes import EmbeddedStackError
from emotion_stream.topics import DEAD_LETTER_TOPIC, EMOTIONS_TOPIC, TWEETS_TOPIC

__all__ = [
    "DEAD_LETTER_TOPIC",
    "DEFAULT_TWEETS_PARTITIONS",
    "EMOTIONS_TOPIC",
    "TWEETS_TOPIC",
    "create_topics",
    "pipeline_topics",
]

# Partitions of the pipeline's topics (named in emotion_stream.topics, the worker's defaults).
DEFAULT_TWEETS_PARTITIONS = 3


def pipeline_topics(tweets_partitions: int = DEFAULT_TWEETS_PARTITIONS) -> dict[str, int]:
    """The pipeline's topics and partition counts (results and dead letters keyed alike)."""
    return {
        TWEETS_TOPIC: tweets_partitions,
        EMOTIONS_TOPIC: tweets_partitions,
        DEAD_LETTER_TOPIC: 1,
    }


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
