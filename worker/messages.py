"""Kafka bytes become typed messages here, and typed messages become bytes here.

Nothing past this module sees a Kafka type: :class:`SourceRecord` is the worker's own
copy of what a consumed record carried, :func:`decode` turns it into an
:class:`InboundTweet` (or raises a :class:`~worker.errors.PoisonMessage`), and
:class:`ClassifiedTweet` / :class:`DeadLetter` say what goes back out.

Input (``Tweet``) — a JSON object with ``text`` and optionally ``id``; other fields are
carried through as ``meta``. A value that is not JSON but valid non-empty UTF-8 is the
text itself, and so is a JSON string (``"hello"``) or any other non-object JSON value.
A value that starts like a JSON object (``{"``) but does not parse is poison
(:class:`~worker.errors.MalformedJson`), not text: a broken producer's output, not a tweet.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.errors import (
    EmptyText,
    InvalidTweet,
    InvalidUtf8,
    MalformedJson,
    MissingText,
    NullValue,
    PoisonMessage,
    TextTooLarge,
)

Headers = tuple[tuple[str, bytes], ...]

# Names of the context headers a dead letter carries besides the original ones.
DLQ_ERROR_CLASS = "dlq.error.class"
DLQ_ERROR_MESSAGE = "dlq.error.message"
DLQ_SOURCE_TOPIC = "dlq.source.topic"
DLQ_SOURCE_PARTITION = "dlq.source.partition"
DLQ_SOURCE_OFFSET = "dlq.source.offset"
DLQ_SOURCE_TIMESTAMP = "dlq.source.timestamp"
DLQ_WORKER_ID = "dlq.worker.id"
DLQ_TIME = "dlq.time"
# Only on a dead letter too large to send whole: what was left out of it.
DLQ_DROPPED = "dlq.original.dropped"
DLQ_HEADERS = (
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_TIMESTAMP,
    DLQ_WORKER_ID,
    DLQ_TIME,
)
# An error message is context, not payload: keep headers small whatever the error says.
MAX_ERROR_MESSAGE_BYTES = 1000
# A JSON object's start: an opening brace and the quote of its first key. Plain text
# rarely starts so; a truncated or garbled JSON object always does.
_JSON_OBJECT_START = re.compile(r'\s*\{\s*"')


@dataclass(frozen=True)
class SourceRecord:
    """What one consumed Kafka record carried, without any Kafka client type."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers = ()

    @property
    def position(self) -> str:
        """``topic:partition:offset``, the id of last resort."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    @classmethod
    def from_kafka(cls, record: Any) -> SourceRecord:
        """Copy a kafka-python ``ConsumerRecord``."""
        stamp = record.timestamp
        timestamp = stamp if stamp is not None and stamp >= 0 else None
        headers = tuple((str(name), bytes(value or b"")) for name, value in record.headers or ())
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=timestamp,
            key=record.key,
            value=record.value,
            headers=headers,
        )


class Tweet(BaseModel):
    """Input schema: the JSON object form of a message on the input topic."""

    model_config = ConfigDict(extra="allow")

    text: str
    """The text to classify (required, non-empty)."""
    id: str | None = None
    """The tweet's id; when absent the Kafka key, else ``topic:partition:offset``."""


@dataclass(frozen=True)
class InboundTweet:
    """A decoded tweet on its way through the pipeline, with where it came from."""

    id: str
    text: str
    meta: dict[str, Any]
    source: SourceRecord


def decode(record: SourceRecord, *, max_text_bytes: int) -> InboundTweet:
    """Turn a record into a tweet, or raise the :class:`PoisonMessage` that says why not.

    Raises
    ------
    NullValue, InvalidUtf8, MalformedJson, MissingText, InvalidTweet, EmptyText, TextTooLarge
    """
    if record.value is None:
        raise NullValue()
    try:
        raw = record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUtf8(f"byte {exc.start}: {exc.reason}") from None

    text, tweet_id, meta = _parse(raw)
    if not text.strip():
        raise EmptyText()
    size = len(text.encode("utf-8"))
    if size > max_text_bytes:
        raise TextTooLarge(size, max_text_bytes)
    if tweet_id is None:
        tweet_id = _key_text(record.key) or record.position
    return InboundTweet(id=tweet_id, text=text, meta=meta, source=record)


def _parse(raw: str) -> tuple[str, str | None, dict[str, Any]]:
    """(text, id or None, meta) from a value that may or may not be JSON."""
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        if _JSON_OBJECT_START.match(raw):
            raise MalformedJson(str(exc)) from None
        return raw, None, {}
    if isinstance(parsed, str):
        return parsed, None, {}
    if not isinstance(parsed, dict):
        # A bare number, list or boolean typed at a console is still something to classify.
        return raw, None, {}
    if "text" not in parsed:
        raise MissingText(sorted(parsed))
    text = parsed.pop("text")
    if not isinstance(text, str):
        raise InvalidTweet("text", type(text).__name__)
    tweet_id = parsed.pop("id", None)
    if isinstance(tweet_id, int) and not isinstance(tweet_id, bool):
        tweet_id = str(tweet_id)
    if tweet_id is not None and not isinstance(tweet_id, str):
        raise InvalidTweet("id", type(tweet_id).__name__)
    return text, tweet_id, parsed


def _key_text(key: bytes | None) -> str | None:
    if not key:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()


# --- output -------------------------------------------------------------------------


class ModelRef(BaseModel):
    """Which model produced a result."""

    name: str
    version: str


class SourceRef(BaseModel):
    """Where the input of a result was read."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None = Field(description="Kafka record timestamp, ms since the epoch")


class ClassifiedTweet(BaseModel):
    """Output schema: one result per input on the output topic, keyed like the input."""

    model_config = ConfigDict(frozen=True)

    id: str
    text: str
    label: str
    """The most probable label."""
    score: float
    """Probability of ``label``."""
    scores: dict[str, float]
    """Probability of every label, in the model's label order; they sum to 1."""
    model: ModelRef
    source: SourceRef
    processed_at: datetime
    """When the worker classified it (UTC, ISO 8601)."""
    meta: dict[str, Any] = Field(default_factory=dict)
    """The input object's other fields, unchanged."""

    @classmethod
    def from_scores(
        cls,
        tweet: InboundTweet,
        scores: dict[str, float],
        model: ModelRef,
        processed_at: datetime | None = None,
    ) -> ClassifiedTweet:
        label = max(scores, key=lambda name: scores[name])
        source = tweet.source
        return cls(
            id=tweet.id,
            text=tweet.text,
            label=label,
            score=scores[label],
            scores=scores,
            model=model,
            source=SourceRef(
                topic=source.topic,
                partition=source.partition,
                offset=source.offset,
                timestamp=source.timestamp,
            ),
            processed_at=processed_at or datetime.now(UTC),
            meta=tweet.meta,
        )

    def encoded_value(self) -> bytes:
        return self.model_dump_json().encode("utf-8")


@dataclass(frozen=True)
class OutboundRecord:
    """A record to publish: the worker's side of ``producer.send``."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default=())


def result_record(topic: str, tweet: InboundTweet, result: ClassifiedTweet) -> OutboundRecord:
    """The output record for a result: same key as the input, so order per key is kept."""
    return OutboundRecord(topic=topic, key=tweet.source.key, value=result.encoded_value())


@dataclass(frozen=True)
class DeadLetter:
    """A poison record with the reason it could not be classified."""

    record: SourceRecord
    error: PoisonMessage
    worker_id: str
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def error_class(self) -> str:
        return type(self.error).__name__

    def context_headers(self) -> Headers:
        source = self.record
        message = str(self.error).encode("utf-8")[:MAX_ERROR_MESSAGE_BYTES]
        timestamp = "" if source.timestamp is None else str(source.timestamp)
        return (
            (DLQ_ERROR_CLASS, self.error_class.encode()),
            (DLQ_ERROR_MESSAGE, message.decode("utf-8", "ignore").encode("utf-8")),
            (DLQ_SOURCE_TOPIC, source.topic.encode()),
            (DLQ_SOURCE_PARTITION, str(source.partition).encode()),
            (DLQ_SOURCE_OFFSET, str(source.offset).encode()),
            (DLQ_SOURCE_TIMESTAMP, timestamp.encode()),
            (DLQ_WORKER_ID, self.worker_id.encode()),
            (DLQ_TIME, self.failed_at.isoformat().encode()),
        )

    def to_record(self, topic: str, *, slim: bool = False) -> OutboundRecord:
        """Original key, value (null stays null) and headers, then the ``dlq.*`` headers.

        ``slim`` leaves out the original value and headers, for a dead letter the broker
        refused as too large; ``dlq.source.*`` still say where the original is.
        """
        if slim:
            return OutboundRecord(
                topic=topic,
                key=self.record.key,
                value=None,
                headers=(*self.context_headers(), (DLQ_DROPPED, b"value,headers")),
            )
        return OutboundRecord(
            topic=topic,
            key=self.record.key,
            value=self.record.value,
            headers=self.record.headers + self.context_headers(),
        )
