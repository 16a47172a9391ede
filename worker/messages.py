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

Decoding is strict and bounded, because a hostile producer may send anything: a value
nesting ``[``/``{`` more than :data:`MAX_JSON_DEPTH` levels is
:class:`~worker.errors.NestingTooDeep` (checked before parsing, so nothing recurses
without bound); ``NaN``/``Infinity`` and numbers overflowing a double are not JSON
(RFC 8259) and a key given twice in one object is ambiguous, so in a JSON object they
are poison (:class:`~worker.errors.MalformedJson`, :class:`~worker.errors.DuplicateKey`)
— in any other value they only make it text, like any value that does not parse; a
string escape naming a lone surrogate (``"\\ud800"``) in the text, the id or meta is
:class:`~worker.errors.LoneSurrogate` (it has no UTF-8 form, so no result could carry
it); a Confluent Schema Registry framed value is :class:`~worker.errors.SchemaFramed`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from worker.errors import (
    CorruptRecord,
    DuplicateKey,
    EmptyText,
    InvalidTweet,
    InvalidUtf8,
    LoneSurrogate,
    MalformedJson,
    MissingText,
    NestingTooDeep,
    NullValue,
    PoisonMessage,
    SchemaFramed,
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
# Only on a dead letter of a record with neither key nor value: Kafka clients refuse to
# send such a record, so the dead letter's value is empty and this header says "value".
DLQ_ORIGINAL_NULL = "dlq.original.null"
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
# Deepest nesting of JSON arrays/objects decoded. Tweet payloads nest a few levels;
# json's C decoder recurses up to Python's recursion limit (1000, minus the stack in
# use) and pydantic's serializer stops at depth 255 (meta sits one level inside a
# result), so the cap sits far below both.
MAX_JSON_DEPTH = 64
# JSON strings, whose brackets do not nest (even an unterminated one; possessive, so
# linear on any input).
_JSON_STRINGS = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
# Depth step of each byte: +1 opens an array/object, -1 closes one.
_BRACKET_STEPS = np.zeros(256, dtype=np.int8)
_BRACKET_STEPS[[ord("["), ord("{")]] = 1
_BRACKET_STEPS[[ord("]"), ord("}")]] = -1
# A \u escape of a UTF-16 surrogate (D800-DFFF): the only way a decoded value can hold
# a lone surrogate (strict UTF-8 decoding refuses encoded ones).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
# Confluent Schema Registry's wire format: magic byte 0, a big-endian schema id, payload.
_SCHEMA_REGISTRY_MAGIC = 0
_SCHEMA_ID_END = 5


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
    unreadable: str | None = None
    """Set when the Kafka client could not parse the record (its key, value and headers
    are then unknown): why. Such a record is dead-lettered as ``CorruptRecord``."""

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
    CorruptRecord, NullValue, SchemaFramed, InvalidUtf8, NestingTooDeep, MalformedJson,
    DuplicateKey, LoneSurrogate, MissingText, InvalidTweet, EmptyText, TextTooLarge
    """
    if record.unreadable is not None:
        raise CorruptRecord(record.unreadable)
    if record.value is None:
        raise NullValue()
    if len(record.value) >= _SCHEMA_ID_END and record.value[0] == _SCHEMA_REGISTRY_MAGIC:
        raise SchemaFramed(int.from_bytes(record.value[1:_SCHEMA_ID_END], "big"))
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
    _check_nesting(raw)
    try:
        parsed = json.loads(
            raw,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except _DuplicateKeyError as exc:
        if _JSON_OBJECT_START.match(raw):
            raise DuplicateKey(exc.key) from None
        return raw, None, {}
    except ValueError as exc:
        if _JSON_OBJECT_START.match(raw):
            raise MalformedJson(str(exc)) from None
        return raw, None, {}
    if isinstance(parsed, str | dict) and _SURROGATE_ESCAPE.search(raw):
        _check_unicode(parsed)
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


def _check_nesting(raw: str) -> None:
    """Raise :class:`NestingTooDeep` before json.loads would recurse past the cap."""
    if raw.lstrip()[:1] not in ("[", "{"):
        return  # json.loads stops at the first character: no recursion
    if raw.count("[") + raw.count("{") <= MAX_JSON_DEPTH:
        return  # too few brackets to nest that deep (every tweet takes this path)
    # Vectorized: a 1 MB value of brackets costs milliseconds, not a Python loop. The
    # running depth over-counts only past a misplaced bracket, where json.loads stops.
    brackets = _JSON_STRINGS.sub("", raw).encode("utf-8")
    steps = _BRACKET_STEPS[np.frombuffer(brackets, dtype=np.uint8)]
    if int(np.cumsum(steps, dtype=np.int64).max(initial=0)) > MAX_JSON_DEPTH:
        raise NestingTooDeep(MAX_JSON_DEPTH)


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"duplicate key {key!r}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a dict, unless a key repeats (json.loads keeps the last one
    silently; other readers keep the first, so the record means different things)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKeyError(key)
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (RFC 8259)")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):  # 1e400: a double cannot hold it; JSON cannot write inf
        raise ValueError(f"number {literal[:40]} is out of range for a double")
    return number


def _check_unicode(parsed: str | dict[str, Any]) -> None:
    """Raise :class:`LoneSurrogate` when a decoded string has no UTF-8 form."""
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        if isinstance(parsed, str):
            raise LoneSurrogate("the JSON string") from None
        for name in ("text", "id"):
            field_value = parsed.get(name)
            if isinstance(field_value, str) and not _encodable(field_value):
                raise LoneSurrogate(f"field {name!r}") from None
        raise LoneSurrogate("a key or a value of meta") from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
        # backslashreplace: an error message may quote what could not be encoded.
        message = str(self.error).encode("utf-8", "backslashreplace")[:MAX_ERROR_MESSAGE_BYTES]
        timestamp = "" if source.timestamp is None else str(source.timestamp)
        return (
            (DLQ_ERROR_CLASS, self.error_class.encode()),
            (DLQ_ERROR_MESSAGE, message.decode("utf-8", "ignore").encode("utf-8")),
            (DLQ_SOURCE_TOPIC, source.topic.encode("utf-8", "backslashreplace")),
            (DLQ_SOURCE_PARTITION, str(source.partition).encode()),
            (DLQ_SOURCE_OFFSET, str(source.offset).encode()),
            (DLQ_SOURCE_TIMESTAMP, timestamp.encode()),
            (DLQ_WORKER_ID, self.worker_id.encode("utf-8", "backslashreplace")),
            (DLQ_TIME, self.failed_at.isoformat().encode()),
        )

    def to_record(self, topic: str, *, slim: bool = False) -> OutboundRecord:
        """Original key, value (null stays null) and headers, then the ``dlq.*`` headers.

        ``slim`` leaves out the original value and headers, for a dead letter the broker
        refused as too large; ``dlq.source.*`` still say where the original is. A record
        the Kafka client could not parse always goes out slim, without its key too.

        Kafka clients refuse a record with neither key nor value: where both would be
        null, the value is empty instead, and ``dlq.original.null: value`` says the
        original value was null (a slim one says ``dlq.original.dropped`` already).
        """
        if slim or self.record.unreadable is not None:
            dropped = b"value,headers" if self.record.unreadable is None else b"key,value,headers"
            key = self.record.key if self.record.unreadable is None else None
            return OutboundRecord(
                topic=topic,
                key=key,
                value=None if key is not None else b"",
                headers=(*self.context_headers(), (DLQ_DROPPED, dropped)),
            )
        headers = self.record.headers + self.context_headers()
        value = self.record.value
        if value is None and self.record.key is None:
            value = b""
            headers = (*headers, (DLQ_ORIGINAL_NULL, b"value"))
        return OutboundRecord(topic=topic, key=self.record.key, value=value, headers=headers)


def bare_dead_letter(
    topic: str,
    record: SourceRecord,
    error: PoisonMessage,
    failure: BaseException,
    worker_id: str,
) -> OutboundRecord:
    """The dead letter of last resort, for when :meth:`DeadLetter.to_record` itself failed:
    class ``Unprocessable``, the ``dlq.*`` headers only (ASCII, from plain ints and
    escaped text, so building it cannot fail) and the key if it is bytes."""

    def ascii_bytes(describe: Any) -> bytes:
        try:
            text = str(describe())
        except Exception:  # whatever broke the full letter may break this too
            text = "?"
        return text.encode("ascii", "backslashreplace")[:MAX_ERROR_MESSAGE_BYTES]

    key = record.key if isinstance(record.key, bytes) else None
    message = ascii_bytes(
        lambda: (
            f"unexpected {type(failure).__name__} while building the dead letter of a "
            f"{type(error).__name__} ({error}): {failure}"
        )
    )
    headers: Headers = (
        (DLQ_ERROR_CLASS, b"Unprocessable"),
        (DLQ_ERROR_MESSAGE, message),
        (DLQ_SOURCE_TOPIC, ascii_bytes(lambda: record.topic)),
        (DLQ_SOURCE_PARTITION, ascii_bytes(lambda: int(record.partition))),
        (DLQ_SOURCE_OFFSET, ascii_bytes(lambda: int(record.offset))),
        (DLQ_SOURCE_TIMESTAMP, ascii_bytes(lambda: record.timestamp or "")),
        (DLQ_WORKER_ID, ascii_bytes(lambda: worker_id)),
        (DLQ_TIME, ascii_bytes(lambda: datetime.now(UTC).isoformat())),
        (DLQ_DROPPED, b"value,headers" if key is not None else b"key,value,headers"),
    )
    return OutboundRecord(
        topic=topic, key=key, value=None if key is not None else b"", headers=headers
    )
