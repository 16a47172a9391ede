"""No record stops the worker (issue 11, part 1): each known crasher, through the real
``Worker`` loop on the unit-test fakes, in both delivery modes, ends as a result or a dead
letter of its own class; an unexpected exception in one record's own work dead-letters
that record as ``Unprocessable`` and the loop goes on.

The publishers here hand every record to kafka-python's own send checks and record
builder (:mod:`tests.support.kafka_records`) and fail the send the way
``worker.transport.KafkaPublisher`` would: a record the real producer refuses stops the
worker here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.fakes import FakePublisher, Harness, record, tweets, wait_for
from tests.support.kafka_records import send_checked
from tests.unit.test_app_exactly_once import TransactionalPublisher, run_eos  # noqa: F401 — a fixture
from worker import app as worker_app
from worker import publishing
from worker.errors import RecordTooLarge
from worker.messages import (
    DLQ_DROPPED,
    DLQ_ORIGINAL_NULL,
    ClassifiedTweet,
    DeadLetter,
    OutboundRecord,
    SourceRecord,
)
from worker.offsets import Partition
from worker.transport import translate_kafka_error

DELIVERY_MODES = ("at_least_once", "exactly_once")


def _refused(record: OutboundRecord) -> BaseException | None:
    """What the real publisher reports for a record kafka-python refuses, else None."""
    try:
        send_checked(record)
    except Exception as exc:
        return translate_kafka_error(exc, record.topic)
    return None


class StrictPublisher(FakePublisher):
    def send(self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]) -> None:
        refused = _refused(record)
        if refused is not None:
            on_done(refused)
            return
        super().send(record, on_done)


class StrictTransactionalPublisher(TransactionalPublisher):
    def send(self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]) -> None:
        size = len(record.value or b"") + sum(len(n) + len(v) for n, v in record.headers)
        if self.max_bytes is not None and size > self.max_bytes:  # as FakePublisher
            on_done(RecordTooLarge(record.topic, f"{size} bytes"))
            return
        refused = _refused(record)
        if refused is not None:
            on_done(refused)
            return
        super().send(record, on_done)


@pytest.fixture
def run_strict(
    run_worker: Callable[..., Harness],
    run_eos: Callable[..., Harness],  # noqa: F811 — the fixture imported above
) -> Callable[..., Harness]:
    """A worker on fakes whose publisher refuses what kafka-python refuses."""

    def start(
        delivery: str, records: dict[Partition, list[SourceRecord]], **overrides: Any
    ) -> Harness:
        if delivery == "exactly_once":
            max_bytes = overrides.pop("publisher_max_bytes", None)
            publisher = StrictTransactionalPublisher()
            publisher.max_bytes = max_bytes
            return run_eos(records, publisher=publisher, **overrides)
        max_bytes = overrides.pop("publisher_max_bytes", None)
        return run_worker(records, publisher=StrictPublisher(max_bytes), **overrides)

    return start


def settled(h: Harness, count: int) -> None:
    """Every one of ``count`` records (partition 0) a result or a dead letter, committed."""

    def committed() -> int | None:
        if isinstance(h.publisher, TransactionalPublisher):
            return h.publisher.committed_offsets().get(("tweets", 0))
        return h.source.committed().get(("tweets", 0))

    def describe() -> str:
        return f"{count} records settled (worker error: {h.error!r})"

    wait_for(lambda: h.error is not None or committed() == count, describe())
    assert h.error is None, f"the worker stopped: {h.error!r}"
    assert len(h.outputs()) + len(h.dead_letters()) == count
    assert h.thread.is_alive(), "the worker loop is still running"


def letters_by_offset(h: Harness) -> dict[int, OutboundRecord]:
    letters = {int(dict(d.headers)["dlq.source.offset"]): d for d in h.dead_letters()}
    assert len(letters) == len(h.dead_letters()), "a record dead-lettered twice"
    return letters


def error_class(letter: OutboundRecord) -> str:
    return dict(letter.headers)["dlq.error.class"].decode()


# Issue 11's table, row by row (the header-name row lives in test_transport.py: only the
# Kafka client parses header names). value, key, the class it now gets.
CRASHERS: list[tuple[str, bytes | None, bytes | None, str]] = [
    ("1000 '[' (2 kB of nesting)", b"[" * 1000, b"k", "NestingTooDeep"),
    ("lone surrogate escape in text", b'{"text": "hi \\ud800"}', b"k", "LoneSurrogate"),
    ("bare JSON string of a lone surrogate", b'"\\udfff"', b"k", "LoneSurrogate"),
    ("lone surrogate in id", b'{"id": "\\ud800", "text": "hi"}', b"k", "LoneSurrogate"),
    ("lone surrogate in meta", b'{"text": "hi", "lang": "\\udc00"}', b"k", "LoneSurrogate"),
    (
        "meta nested 256 deep (~530 bytes)",
        b'{"text": "hi", "meta": ' + b"[" * 256 + b"]" * 256 + b"}",
        b"k",
        "NestingTooDeep",
    ),
    ("lone surrogate key, no text", b'{"\\ud800": 1}', b"k", "LoneSurrogate"),
    ("null key and null value", None, None, "NullValue"),
    (
        "Schema Registry framed value",
        b"\x00\x00\x00\x00\x07" + b'{"text": "framed"}',
        b"k",
        "SchemaFramed",
    ),
    ("NaN in a JSON object", b'{"text": "hi", "score": NaN}', b"k", "MalformedJson"),
    ("a key given twice", b'{"text": "hi", "text": "bye"}', b"k", "DuplicateKey"),
]


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_every_crasher_of_issue_11_is_dead_lettered_with_its_class_and_the_loop_goes_on(
    run_strict: Callable[..., Harness], delivery: str
) -> None:
    good = tweets(0, 3)
    records = [
        *good[:1],
        *(record(0, 1 + i, value, key) for i, (_, value, key, _) in enumerate(CRASHERS)),
    ]
    after = [
        record(0, len(records) + i, json.dumps({"id": f"after-{i}", "text": f"ok {i}"}).encode())
        for i in range(3)
    ]
    h = run_strict(delivery, {("tweets", 0): records + after})
    settled(h, len(records) + len(after))
    h.stop()
    letters = letters_by_offset(h)
    found = {name: error_class(letters[1 + i]) for i, (name, *_) in enumerate(CRASHERS)}
    assert found == {name: expected for name, _, _, expected in CRASHERS}
    assert [o["id"] for o in h.outputs()] == ["p0-0", "after-0", "after-1", "after-2"]
    null = letters[1 + [c[0] for c in CRASHERS].index("null key and null value")]
    assert (null.key, null.value) == (None, b"")
    assert dict(null.headers)[DLQ_ORIGINAL_NULL] == b"value"
    for offset, letter in letters.items():
        original = records[offset]
        if original.value is not None:
            assert letter.value == original.value, "the original bytes, unchanged"


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
@pytest.mark.parametrize(
    ("value", "key", "expected"),
    [crasher[1:] for crasher in CRASHERS],
    ids=[crasher[0] for crasher in CRASHERS],
)
def test_each_crasher_alone_between_good_tweets(
    run_strict: Callable[..., Harness],
    delivery: str,
    value: bytes | None,
    key: bytes | None,
    expected: str,
) -> None:
    records = [*tweets(0, 1), record(0, 1, value, key), record(0, 2, b"fine after it")]
    h = run_strict(delivery, {("tweets", 0): records})
    settled(h, 3)
    h.stop()
    assert [error_class(d) for d in h.dead_letters()] == [expected]
    assert [o["source"]["offset"] for o in h.outputs()] == [0, 2]


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_an_unkeyed_record_dead_lettered_slim_still_goes_out(
    run_strict: Callable[..., Harness], delivery: str
) -> None:
    # Poison whose dead letter is too large whole: sent slim, and slim drops the value.
    # Without a key that left neither key nor value, which Kafka clients refuse.
    huge = SourceRecord("tweets", 0, 1, None, None, b"", (("big", b"h" * 3000),))
    records = [*tweets(0, 1), huge, record(0, 2, b'{"id": "after", "text": "fine"}')]
    h = run_strict(delivery, {("tweets", 0): records}, publisher_max_bytes=2000)
    settled(h, 3)
    h.stop()
    letter = letters_by_offset(h)[1]
    assert (letter.key, letter.value) == (None, b"")
    assert dict(letter.headers)[DLQ_DROPPED] == b"value,headers"
    assert error_class(letter) == "EmptyText"


class Boom(Exception):
    """A bug nobody foresaw."""


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
@pytest.mark.parametrize(
    ("stage", "patch"),
    [
        ("decoding", "decode"),
        ("building its result", "from_scores"),
        ("serializing its result", "result_record"),
    ],
)
def test_an_unexpected_exception_dead_letters_only_its_record_as_unprocessable(
    run_strict: Callable[..., Harness],
    monkeypatch: pytest.MonkeyPatch,
    delivery: str,
    stage: str,
    patch: str,
) -> None:
    def failing(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if "cursed" in repr(args):
                raise Boom("cursed \udcff input")  # a message that is not even UTF-8
            return real(*args, **kwargs)

        return call

    if patch == "from_scores":
        real = ClassifiedTweet.from_scores
        monkeypatch.setattr(ClassifiedTweet, "from_scores", failing(real))
    else:
        module = {"decode": worker_app, "result_record": publishing}[patch]
        monkeypatch.setattr(module, patch, failing(getattr(module, patch)))
    records = [
        record(0, i, json.dumps({"id": f"t{i}", "text": "cursed" if i == 2 else "ok"}).encode())
        for i in range(5)
    ]
    h = run_strict(delivery, {("tweets", 0): records})
    settled(h, 5)
    h.stop()
    assert [o["id"] for o in h.outputs()] == ["t0", "t1", "t3", "t4"]
    (letter,) = h.dead_letters()
    headers = dict(letter.headers)
    assert headers["dlq.error.class"] == b"Unprocessable"
    assert headers["dlq.source.offset"] == b"2"
    assert headers["dlq.error.message"].startswith(f"unexpected Boom while {stage}".encode())
    assert b"cursed \\udcff input" in headers["dlq.error.message"]
    assert letter.value == records[2].value
    metric = h.worker.metrics.unprocessable.labels(stage=stage, exception="Boom")
    assert metric._value.get() == 1


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_a_dead_letter_that_cannot_be_built_goes_out_bare(
    run_strict: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch, delivery: str
) -> None:
    real = DeadLetter.to_record

    def to_record(self: DeadLetter, topic: str, *, slim: bool = False) -> OutboundRecord:
        if self.record.offset == 1:
            raise Boom("no letter for you")
        return real(self, topic, slim=slim)

    monkeypatch.setattr(DeadLetter, "to_record", to_record)
    records = [
        *tweets(0, 1),
        record(0, 1, b'{"id": "x"}', key=b"user-9"),
        SourceRecord("tweets", 0, 2, None, None, None),
        record(0, 3, b'{"id": "after", "text": "fine"}'),
    ]
    h = run_strict(delivery, {("tweets", 0): records})
    settled(h, 4)
    h.stop()
    letters = letters_by_offset(h)
    bare = dict(letters[1].headers)
    assert set(bare) == {
        "dlq.error.class",
        "dlq.error.message",
        "dlq.source.topic",
        "dlq.source.partition",
        "dlq.source.offset",
        "dlq.source.timestamp",
        "dlq.worker.id",
        "dlq.time",
        DLQ_DROPPED,
    }
    assert bare["dlq.error.class"] == b"Unprocessable"
    assert b"MissingText" in bare["dlq.error.message"]
    assert b"Boom" in bare["dlq.error.message"]
    assert (letters[1].key, letters[1].value) == (b"user-9", None)
    assert error_class(letters[2]) == "NullValue"
    metric = h.worker.metrics.unprocessable.labels(
        stage="building its dead letter", exception="Boom"
    )
    assert metric._value.get() == 1
    counted = h.worker.metrics.dead_lettered.labels(error_class="Unprocessable")
    assert counted._value.get() == 1, "counted under the class its dead letter carries"


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_a_record_the_client_could_not_parse_is_dead_lettered_slim(
    run_strict: Callable[..., Harness], delivery: str
) -> None:
    # KafkaSource.poll's stand-in for it (tests/integration/test_transport_unparsable.py).
    unparsable = SourceRecord(
        "tweets", 0, 1, None, None, None, (), "CorruptRecordError: invalid header name"
    )
    records = [*tweets(0, 1), unparsable, record(0, 2, b'{"id": "after", "text": "fine"}')]
    h = run_strict(delivery, {("tweets", 0): records})
    settled(h, 3)
    h.stop()
    letter = letters_by_offset(h)[1]
    headers = dict(letter.headers)
    assert error_class(letter) == "CorruptRecord"
    assert b"invalid header name" in headers["dlq.error.message"]
    assert headers[DLQ_DROPPED] == b"key,value,headers"
    assert (letter.key, letter.value) == (None, b"")
