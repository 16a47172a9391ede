"""The pipeline's Kafka topics, named once.

The worker's settings default to these names, the ``produce``/``consume`` tools read and
write them unless told otherwise, and the local stack (:mod:`compose`) creates them. Like
:mod:`emotion_stream.layout`, it imports nothing, so every part can share it without
pulling in another part's dependencies.
"""

from __future__ import annotations

TWEETS_TOPIC = "tweets"
"""The input: one tweet per record, JSON or plain text, keyed by the tweet's id."""

EMOTIONS_TOPIC = "emotions"
"""The output: one classified result per input record, keyed like the input."""

DEAD_LETTER_TOPIC = "tweets.dlq"
"""Poison records: the original key, value and headers plus ``dlq.*`` context headers."""
