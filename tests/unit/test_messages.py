"""Decoding records into tweets (every poison kind, the id fallback chain) and encoding out."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

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
from worker.messages import (
    DLQ_DROPPED,
    DLQ_HEADERS,
    DLQ_ORIGINAL_NULL,
    ClassifiedTweet,
    DeadLetter,
    ModelRef,
    SourceRecord,
    decode,
    result_record,
)

CAP = 1000


def record(value: bytes | None, key: bytes | None = None, offset: int = 7) -> SourceRecord:
    return SourceRecord(
        topic="tweets",
        partition=2,
        offset=offset,
        timestamp=1_700_000_000_000,
        key=key,
        value=value,
        headers=(("trace", b"abc"),),
    )


def test_json_object_with_id_text_and_meta() -> None:
    value = json.dumps({"id": "t1", "text": "I love it", "lang": "en", "n": 3}).encode()
    tweet = decode(record(value, key=b"k"), max_text_bytes=CAP)
    assert (tweet.id, tweet.text) == ("t1", "I love it")
    assert tweet.meta == {"lang": "en", "n": 3}


def test_numeric_id_becomes_string() -> None:
    tweet = decode(record(b'{"id": 42, "text": "x"}'), max_text_bytes=CAP)
    assert tweet.id == "42"


def test_id_falls_back_to_key_then_position() -> None:
    assert decode(record(b'{"text": "x"}', key=b"user-1"), max_text_bytes=CAP).id == "user-1"
    assert decode(record(b'{"text": "x"}'), max_text_bytes=CAP).id == "tweets:2:7"
    assert decode(record(b"plain", key=b"\xff\xfe"), max_text_bytes=CAP).id == "fffe"


def test_plain_utf8_line_is_the_text() -> None:
    tweet = decode(record("héllo wörld 😂".encode()), max_text_bytes=CAP)
    assert tweet.text == "héllo wörld 😂"
    assert tweet.meta == {}


def test_json_string_value_is_the_text() -> None:
    assert decode(record(b'"hello"'), max_text_bytes=CAP).text == "hello"


def test_non_object_json_is_taken_literally() -> None:
    assert decode(record(b"42"), max_text_bytes=CAP).text == "42"
    # Braces that do not open a JSON object's first key are text, not a broken object.
    assert decode(record(b"{sigh} mondays"), max_text_bytes=CAP).text == "{sigh} mondays"
    assert decode(record(b"[1, 2]"), max_text_bytes=CAP).text == "[1, 2]"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (None, NullValue),
        (b"\xff\xfe bad", InvalidUtf8),
        (b"", EmptyText),
        (b"   \n\t", EmptyText),
        (b'"  "', EmptyText),
        (b'{"text": " "}', EmptyText),
        (b'{"id": "1", "body": "no text"}', MissingText),
        (b'{"id": "1", "text": "cut off', MalformedJson),
        (b'  { "text": "x",}', MalformedJson),
        (b'{"text": 5}', InvalidTweet),
        (b'{"text": null}', InvalidTweet),
        (b'{"text": "ok", "id": {"a": 1}}', InvalidTweet),
        (("x" * (CAP + 1)).encode(), TextTooLarge),
        (json.dumps({"text": "é" * (CAP // 2 + 1)}).encode(), TextTooLarge),
    ],
)
def test_poison_kinds(value: bytes | None, error: type[PoisonMessage]) -> None:
    with pytest.raises(error):
        decode(record(value), max_text_bytes=CAP)


def test_text_at_the_cap_is_accepted() -> None:
    assert decode(record(b"x" * CAP), max_text_bytes=CAP).text == "x" * CAP


def test_classified_tweet_output_schema() -> None:
    value = b'{"id": "a", "text": "yay", "lang": "en"}'
    tweet = decode(record(value, key=b"k"), max_text_bytes=CAP)
    scores = {"anger": 0.1, "joy": 0.7, "optimism": 0.15, "sadness": 0.05}
    result = ClassifiedTweet.from_scores(
        tweet, scores, ModelRef(name="m", version="1"), datetime(2026, 1, 1, tzinfo=UTC)
    )
    out = result_record("emotions", tweet, result)
    assert out.key == b"k"
    body = json.loads(out.value or b"")
    assert body["id"] == "a"
    assert body["label"] == "joy"
    assert body["score"] == pytest.approx(0.7)
    assert list(body["scores"]) == ["anger", "joy", "optimism", "sadness"]
    assert body["model"] == {"name": "m", "version": "1"}
    assert body["source"] == {
        "topic": "tweets",
        "partition": 2,
        "offset": 7,
        "timestamp": 1_700_000_000_000,
    }
    assert body["processed_at"].startswith("2026-01-01T00:00:00")
    assert body["meta"] == {"lang": "en"}


def test_dead_letter_keeps_original_and_adds_context() -> None:
    source = record(b"\xff", key=b"k")
    with pytest.raises(PoisonMessage) as caught:
        decode(source, max_text_bytes=CAP)
    letter = DeadLetter(record=source, error=caught.value, worker_id="w-1")
    out = letter.to_record("tweets.dlq")
    assert (out.topic, out.key, out.value) == ("tweets.dlq", b"k", b"\xff")
    headers = dict(out.headers)
    assert out.headers[0] == ("trace", b"abc")
    assert set(DLQ_HEADERS) <= set(headers)
    assert headers["dlq.error.class"] == b"InvalidUtf8"
    assert b"UTF-8" in headers["dlq.error.message"]
    assert headers["dlq.source.topic"] == b"tweets"
    assert headers["dlq.source.partition"] == b"2"
    assert headers["dlq.source.offset"] == b"7"
    assert headers["dlq.worker.id"] == b"w-1"
    datetime.fromisoformat(headers["dlq.time"].decode())


def test_dead_letter_of_null_value_stays_null() -> None:
    letter = DeadLetter(record=record(None, key=b"k"), error=NullValue(), worker_id="w")
    out = letter.to_record("dlq")
    assert out.value is None and out.key == b"k"
    assert DLQ_ORIGINAL_NULL not in dict(out.headers)


def test_dead_letter_of_null_key_and_null_value_has_an_empty_value_and_says_so() -> None:
    # Kafka clients refuse a record with neither key nor value (kafka-python: "Need at
    # least one: key or value"), yet Java and librdkafka producers can write one.
    letter = DeadLetter(record=record(None), error=NullValue(), worker_id="w")
    out = letter.to_record("dlq")
    assert (out.key, out.value) == (None, b"")
    assert dict(out.headers)[DLQ_ORIGINAL_NULL] == b"value"
    assert dict(out.headers)["trace"] == b"abc"
    slim = letter.to_record("dlq", slim=True)
    assert (slim.key, slim.value) == (None, b"")
    assert dict(slim.headers)[DLQ_DROPPED] == b"value,headers"


def test_dead_letter_error_message_is_bounded() -> None:
    letter = DeadLetter(record=record(b"x"), error=MissingText(["f" * 5000]), worker_id="w")
    assert len(dict(letter.context_headers())["dlq.error.message"]) <= 1000
