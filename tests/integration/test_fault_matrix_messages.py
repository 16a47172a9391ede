"""Fault matrix, message rows: what the input topic may hold besides well-formed tweets.

Each test seeds records on the real broker, runs ``emotion-stream worker`` as a
subprocess against the real Triton server (tiny exported model), lets the group commit
to the end of the input, and reads results and dead letters back ``read_committed``.

Rows (docs/guarantees.md):

- every poison kind in one batch with good tweets: each dead-lettered with its context
  headers and its original key, value and headers; its batch-mates classified;
- records near the broker's 1 MB limit: a poison record whose dead letter would be over
  the limit is dead-lettered *slim* (no original value or headers, ``dlq.original.dropped``);
  a good tweet with huge headers is classified (headers are not carried to results);
- valid but extreme text (10k emoji, right-to-left scripts, zero-width characters, a bare
  JSON string, text at the size cap): classified, never dead-lettered, and cut by the
  worker at the model's 128 tokens (a different tail past the cut leaves the scores
  unchanged, a different head changes them);
- issue 11's crashers as other clients write them, and a record kafka-python cannot
  parse: each offset one result or one dead letter of its class, the worker alive.

Bounded: results within ``SETTLE_TIMEOUT_S``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.record.default_records import DefaultRecordBatchBuilder
from transformers import AutoTokenizer

from emotion_stream.layout import ModelLayout
from tests.support.delivery import check_dead_letter, check_delivery, dead_letter_headers
from tests.support.kafka_records import produce_unparsable, produce_with_librdkafka
from tests.support.pipeline import DELIVERY_MODES, Pipeline, PipelineFactory
from worker.messages import DLQ_DROPPED, DLQ_ORIGINAL_NULL, DLQ_SOURCE_OFFSET

pytestmark = pytest.mark.integration

SETTLE_TIMEOUT_S = 180.0
MODEL_MAX_TOKENS = 128
DEFAULT_MAX_TEXT_BYTES = 100_000
# Kafka's default message.max.bytes (a record batch) and kafka-python's default
# max_request_size, the worker producer's own cap.
BROKER_MAX_MESSAGE_BYTES = 1_048_588
PRODUCER_MAX_REQUEST_BYTES = 1_048_576
# How far below the broker's limit the near-limit records are: room for the test's own
# estimate being off, far less than the ~400 bytes of dlq.* headers a dead letter adds.
BROKER_LIMIT_MARGIN = 120


def _good(pipeline: Pipeline, number: int) -> str:
    """One well-formed tweet, sent; its id."""
    tweet_id = pipeline.tweet_id(number)
    pipeline.send_raw(
        tweet_id.encode(), json.dumps({"id": tweet_id, "text": f"good tweet {number}"}).encode()
    )
    return tweet_id


def _letters_by_key(pipeline: Pipeline) -> dict[bytes, Any]:
    letters = {record.key: record for record in pipeline.dead_letters.records}
    assert len(letters) == len(pipeline.dead_letters.records), "a record dead-lettered twice"
    return letters


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_every_poison_kind_in_one_batch_is_dead_lettered_and_its_batch_mates_classified(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    # One partition and a generous batching window: the good tweets and the poison are
    # consumed together and land in the same micro-batch.
    pipeline = make_pipeline(delivery=delivery, EMOTION_STREAM_MAX_BATCH_WAIT_MS="1000")
    trace = [("trace-id", b"abc-123")]
    poison: list[tuple[bytes, bytes | None, str]] = [
        (b"p-malformed", b'{"id": "p-malformed", "text": "cut off in the mid', "MalformedJson"),
        (b"p-no-text", b'{"id": "p-no-text", "body": "no text field"}', "MissingText"),
        (b"p-text-type", b'{"id": "p-text-type", "text": 42}', "InvalidTweet"),
        (b"p-empty", b"", "EmptyText"),
        (b"p-blank", b" \t\n ", "EmptyText"),
        (b"p-null", None, "NullValue"),
        (b"p-not-utf8", b"caf\xe9 \xff\xfe", "InvalidUtf8"),
        (b"p-over-cap", b"x" * (DEFAULT_MAX_TEXT_BYTES + 1), "TextTooLarge"),
    ]
    ids = [_good(pipeline, n) for n in range(3)]
    for key, value, _ in poison:
        pipeline.send_raw(key, value, trace)
    ids += [_good(pipeline, n) for n in range(3, 6)]
    worker = pipeline.start_worker()

    pipeline.settle(SETTLE_TIMEOUT_S)
    check_delivery(pipeline, ids, max_extra_results=0, dead_letters=len(poison), label="poison")
    letters = _letters_by_key(pipeline)
    for offset, (key, value, error_class) in enumerate(poison, start=3):
        letter = letters[key]
        headers = check_dead_letter(
            letter, error_class=error_class, source_topic=pipeline.input_topic, source=(0, offset)
        )
        assert letter.value == value, f"{key!r}: the original value, unchanged"
        assert headers["trace-id"] == b"abc-123", f"{key!r}: original headers kept"
        assert DLQ_DROPPED not in headers
        assert headers["dlq.worker.id"].decode().endswith("worker-1")
    dead_lettered = {e["error_class"] for e in worker.events("dead-lettered")}
    assert dead_lettered == {error_class for _, _, error_class in poison}


def _near_broker_limit(key: bytes, headers: list[tuple[str, bytes]], filler: int) -> int:
    """How many filler bytes make a record of ``key``/``headers`` just fit the broker."""
    base = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, b"", headers)
    return BROKER_MAX_MESSAGE_BYTES - BROKER_LIMIT_MARGIN - base - filler


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_records_near_the_broker_limit_dead_letter_slim_or_classify(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    """~1 MB records, just under the broker's default limit. Their dead letters would add
    the dlq.* headers and go over it, so they are sent slim: context headers and key,
    ``dlq.original.dropped: value,headers``, no value. A good tweet whose *headers* are
    huge is classified: results do not carry input headers."""
    pipeline = make_pipeline(delivery=delivery)
    big_text = b"y" * _near_broker_limit(b"p-1mb", [], 0)
    huge_header = b"h" * _near_broker_limit(b"p-huge-headers", [("blob", b"")], 40)
    poison_json = json.dumps({"id": "p-huge-headers", "no": "text"}).encode()
    assert len(poison_json) < 40

    ids = [_good(pipeline, 0)]
    pipeline.send_raw(b"p-1mb", big_text)  # offset 1: text over the cap, ~1 MB
    pipeline.send_raw(b"p-huge-headers", poison_json, [("blob", huge_header)])  # offset 2
    good_id = pipeline.tweet_id(1)
    pipeline.send_raw(
        good_id.encode(),
        json.dumps({"id": good_id, "text": "huge headers, fine text"}).encode(),
        [("blob", b"z" * 900_000)],
    )
    ids += [good_id, _good(pipeline, 2)]
    worker = pipeline.start_worker()

    pipeline.settle(SETTLE_TIMEOUT_S)
    check_delivery(pipeline, ids, max_extra_results=0, dead_letters=2, label="near-1MB")
    letters = _letters_by_key(pipeline)
    for key, offset, error_class in [
        (b"p-1mb", 1, "TextTooLarge"),
        (b"p-huge-headers", 2, "MissingText"),
    ]:
        letter = letters[key]
        headers = check_dead_letter(
            letter, error_class=error_class, source_topic=pipeline.input_topic, source=(0, offset)
        )
        assert headers[DLQ_DROPPED] == b"value,headers", headers
        assert letter.value is None
        assert "blob" not in headers
    slim = [e for e in worker.events("dead-lettered") if e.get("slim")]
    assert len(slim) == 2, worker.log_tail()


EXTREME_TEXTS = {
    "emoji-10k": "😂" * 10_000,
    "emoji-mixed": "I love this 🎉🔥💯 " * 400,
    "rtl-arabic-hebrew": ("مرحبا بالعالم، هذا يوم جميل " + "שלום עולם, איזה יום יפה ") * 40,
    "rtl-with-ltr": "\u202eevil override\u202c تويت mixed עם English 123 " * 50,
    "zero-width-mixed": ("zero\u200bwidth\u200c joiner\u200d word\u2060 joiner\ufeff ") * 100,
    "zero-width-only": "\u200b\u200c\u200d" * 300,
    "combining-marks": "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334" * 500,
    "at-the-cap": ("ab " * (DEFAULT_MAX_TEXT_BYTES // 3)) + "a" * (DEFAULT_MAX_TEXT_BYTES % 3),
}


# Texts far over 128 tokens whose twins stay under the size cap: the same text with a
# different tail (past the cut) and with a different head (inside it).
TRUNCATION_TWINS = ("emoji-10k", "emoji-mixed", "rtl-arabic-hebrew", "zero-width-only")
DIFFERENT_TAIL = " and then something else entirely, 🎉 שלום"
DIFFERENT_HEAD = "I really hate mondays so much "


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_valid_extreme_text_is_classified_truncated_never_dead_lettered(
    make_pipeline: PipelineFactory, tiny_model_repository: Path, delivery: str
) -> None:
    """Extreme text is classified, unchanged in the result, never dead-lettered; and the
    worker cuts it at the model's 128 tokens: a text's twin with a different tail (past
    the cut) gets the very same scores, its twin with a different head does not. One
    tweet per request and one request at a time, so each twin's request holds exactly its
    own tokens (Triton's dynamic batcher merges concurrent requests of one shape, and the
    INT8 model's activation scales span the merged batch)."""
    pipeline = make_pipeline(
        delivery=delivery,
        EMOTION_STREAM_MAX_BATCH_SIZE="1",
        EMOTION_STREAM_MAX_IN_FLIGHT_BATCHES="1",
    )
    twins = {f"{name}+tail": EXTREME_TEXTS[name] + DIFFERENT_TAIL for name in TRUNCATION_TWINS}
    twins |= {f"{name}+head": DIFFERENT_HEAD + EXTREME_TEXTS[name] for name in TRUNCATION_TWINS}
    for name, text in {**EXTREME_TEXTS, **twins}.items():
        pipeline.send_raw(name.encode(), json.dumps({"id": name, "text": text}).encode())
    # A bare JSON string is the text itself (docs/messages.md); its id is the key.
    pipeline.send_raw(b"json-string", json.dumps("a bare JSON string 😂 שלום").encode())
    pipeline.start_worker()

    pipeline.settle(SETTLE_TIMEOUT_S)
    expected = {**EXTREME_TEXTS, **twins, "json-string": "a bare JSON string 😂 שלום"}
    check_delivery(pipeline, list(expected), max_extra_results=0, label="extreme-text")
    results = {json.loads(r.value)["id"]: json.loads(r.value) for r in pipeline.results.records}
    for name, text in expected.items():
        assert results[name]["text"] == text, f"{name}: the text comes back unchanged"
        assert sum(results[name]["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    # Precondition: the twins' texts are far over the model's 128 tokens (the server
    # would reject longer sequences, docs/deployment.md) and the tails lie past it.
    tokenizer = AutoTokenizer.from_pretrained(str(ModelLayout(tiny_model_repository).tokenizer_dir))
    for name in TRUNCATION_TWINS:
        assert len(tokenizer(EXTREME_TEXTS[name])["input_ids"]) > 2 * MODEL_MAX_TOKENS, name
    for name in TRUNCATION_TWINS:
        scores = results[name]["scores"]
        assert results[f"{name}+tail"]["scores"] == pytest.approx(scores, abs=1e-6), (
            f"{name}: text past the 128th token changed the result: the worker did not cut there"
        )
        head = results[f"{name}+head"]["scores"]
        assert max(abs(head[label] - scores[label]) for label in scores) > 1e-4, (
            f"{name}: a different start gave the same scores: the test cannot see the cut"
        )


# Issue 11's crashers and their neighbours, as other clients write them: expected class,
# or "result" for a record that is a valid tweet (its id is its key).
HOSTILE_CORPUS: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]], str]] = [
    (b"h-deep", b"[" * 1000, [], "NestingTooDeep"),
    (b"h-sur-text", b'{"id": "h-sur-text", "text": "hi \\ud800"}', [], "LoneSurrogate"),
    (b"h-sur-bare", b'"\\udfff"', [], "LoneSurrogate"),
    (b"h-sur-id", b'{"id": "\\ud800", "text": "hi"}', [], "LoneSurrogate"),
    (b"h-sur-meta", b'{"id": "h-sur-meta", "text": "hi", "lang": "\\udc00"}', [], "LoneSurrogate"),
    (
        b"h-meta-deep",
        b'{"id": "h-meta-deep", "text": "hi", "meta": ' + b"[" * 256 + b"]" * 256 + b"}",
        [],
        "NestingTooDeep",
    ),
    (b"h-sur-key", b'{"\\ud800": 1}', [], "LoneSurrogate"),
    (None, None, [], "NullValue"),  # kafka-python's producer refuses to send this one
    (None, b'{"id": "h-unkeyed", "no": "text"}', [("trace", None)], "MissingText"),
    (b"h-framed", b"\x00\x00\x00\x00\x07" + b'{"text": "framed"}', [], "SchemaFramed"),
    (b"h-nan", b'{"id": "h-nan", "text": "hi", "score": NaN}', [], "MalformedJson"),
    (b"h-1e400", b'{"id": "h-1e400", "text": "hi", "x": 1e400}', [], "MalformedJson"),
    (
        b"h-bigint",
        b'{"id": "h-bigint", "text": "hi", "n": ' + b"9" * 5000 + b"}",
        [],
        "MalformedJson",
    ),
    (b"h-dup", b'{"id": "h-dup", "text": "a", "text": "b"}', [], "DuplicateKey"),
    (
        b"h-odd-headers",
        b'{"id": "h-odd-headers"}',
        [("", b"x"), ("dlq.error.class", b"spoofed"), ("é ☃", None)],
        "MissingText",
    ),
    (b"h-null-header", b'{"id": "h-null-header", "text": "fine"}', [("trace", None)], "result"),
    (b"h-pair", b'{"id": "h-pair", "text": "\\ud83d\\ude02 a valid pair"}', [], "result"),
    (b"h-array-nan", b"[1, NaN]", [], "result"),
]


@pytest.mark.slow
@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_hostile_records_from_other_clients_each_end_as_a_result_or_a_dead_letter(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    """Issue 11's crashers through the real broker, produced by librdkafka (null key with
    null value) and by a producer writing a header name that is not UTF-8 (kafka-python's
    consumer cannot parse that record): each offset ends as exactly one result or one
    dead letter of its class, the good tweets after them are classified, nothing hits the
    last line of defence, and the worker is alive and healthy at the end."""
    pipeline = make_pipeline(delivery=delivery)
    ids = [_good(pipeline, n) for n in range(2)]
    produce_with_librdkafka(
        pipeline.bootstrap_servers, pipeline.input_topic, [c[:3] for c in HOSTILE_CORPUS]
    )
    produce_unparsable(pipeline.bootstrap_servers, pipeline.input_topic, b"h-bad-name", b"x")
    ids += [_good(pipeline, n) for n in range(2, 6)]
    expected: dict[int, str] = {2 + i: c[3] for i, c in enumerate(HOSTILE_CORPUS)}
    unparsable_offset = 2 + len(HOSTILE_CORPUS)
    expected[unparsable_offset] = "CorruptRecord"
    result_ids = [c[0].decode() for c in HOSTILE_CORPUS if c[3] == "result" and c[0]]
    worker = pipeline.start_worker()

    pipeline.settle(SETTLE_TIMEOUT_S)
    poison = sum(1 for outcome in expected.values() if outcome != "result")
    check_delivery(
        pipeline, ids + result_ids, max_extra_results=0, dead_letters=poison, label="hostile"
    )
    outcomes: dict[int, str] = {}
    for record in pipeline.results.records:
        offset = json.loads(record.value)["source"]["offset"]
        assert offset not in outcomes, f"offset {offset}: two outcomes"
        outcomes[offset] = "result"
    for letter in pipeline.dead_letters.records:
        headers = dead_letter_headers(letter)
        offset = int(headers[DLQ_SOURCE_OFFSET])
        assert offset not in outcomes, f"offset {offset}: two outcomes"
        outcomes[offset] = headers["dlq.error.class"].decode()
        check_dead_letter(
            letter,
            error_class=outcomes[offset],
            source_topic=pipeline.input_topic,
            source=(0, offset),
        )
    hostile = {offset: outcomes.get(offset) for offset in expected}
    assert hostile == expected, pipeline.describe()
    assert [
        outcomes.get(n) for n in (0, 1, *range(unparsable_offset + 1, unparsable_offset + 5))
    ] == ["result"] * 6, "the good tweets around them classified"
    letters = {
        int(dead_letter_headers(d)[DLQ_SOURCE_OFFSET]): d for d in pipeline.dead_letters.records
    }
    null_both = letters[2 + [c[:2] for c in HOSTILE_CORPUS].index((None, None))]
    assert (null_both.key, null_both.value) == (None, b"")
    assert dead_letter_headers(null_both)[DLQ_ORIGINAL_NULL] == b"value"
    corrupt = dead_letter_headers(letters[unparsable_offset])
    assert corrupt[DLQ_DROPPED] == b"key,value,headers"
    assert b"utf-8" in corrupt["dlq.error.message"]
    assert worker.alive(), worker.log_tail()
    assert worker.http_status("/healthz") == 200, worker.log_tail()
    # The metrics endpoint answered (every dead letter counted), and none was Unprocessable.
    assert worker.metric("emotion_worker_dead_lettered_total") >= poison, worker.log_tail()
    assert worker.metric("emotion_worker_unprocessable_total") == 0, worker.log_tail()


# A topic limit of a few kB, and the one it is lowered to while the worker runs.
SMALL_OUTPUT_LIMIT = 4096
LOWERED_OUTPUT_LIMIT = 2048
SMALL_DLQ_LIMIT = 6144
# Each row's sweep of padding (a meta field, or a poison record's filler): its records
# straddle the limit by a few hundred bytes either way, in steps this fine.
SWEEP_STEP = 64
# A refusal by the broker is followed by one re-read (a few at most if several batches
# were in flight); a loop would make hundreds within the settle timeout.
MAX_REFUSALS = 5


def _set_max_message_bytes(pipeline: Pipeline, limits: dict[str, int]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=pipeline.bootstrap_servers)
    try:
        admin.alter_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})
                for topic, limit in limits.items()
            ]
        )
    finally:
        admin.close()


def _padded_tweets(pipeline: Pipeline, label: str, pads: range) -> dict[str, int]:
    """Ordinary tweets whose *meta* carries ``pad`` bytes (meta is not size-capped); id → pad."""
    sent = {}
    for pad in pads:
        tweet_id = f"{label}-{pad:05d}"
        value = json.dumps({"id": tweet_id, "text": "a plain tweet", "pad": "m" * pad})
        pipeline.send_raw(tweet_id.encode(), value.encode())
        sent[tweet_id] = pad
    return sent


def _check_threshold(classified: set[str], pads: dict[str, int], limit: int) -> None:
    """Results up to some padding, dead letters above it, the cut near the limit."""
    fits = sorted(pads[i] for i in pads if i in classified)
    over = sorted(pads[i] for i in pads if i not in classified)
    assert fits and over, f"the sweep must straddle the limit: {fits} / {over}"
    assert max(fits) < min(over), f"not a clean cut at the limit: {fits} / {over}"
    # A result adds ~350-450 bytes of fields (labels, scores, source, model) to its meta.
    assert limit - 700 < min(over) <= limit, (min(over), limit)


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_records_over_a_small_topic_limit_are_dead_lettered_even_when_it_shrinks_while_running(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    """Output topic max.message.bytes 4 kB, DLQ 6 kB, read by the worker at start: tweets
    with meta just under and just over are classified or dead-lettered (RecordTooLarge),
    poison just under and over the DLQ limit dead-lettered whole or slim — the broker never
    sees a record over its limit. Then the output limit drops to 2 kB while the worker
    runs: the broker refuses a result (kafka-python 3.0.12 poisons the idempotent producer
    and dooms the transaction); the worker re-reads the limits, replaces the producer or
    aborts, re-reads the input, and dead-letters what is now too large. Nothing lost, no
    refusal loop, no stall, the worker alive."""
    pipeline = make_pipeline(delivery=delivery)
    _set_max_message_bytes(
        pipeline, {pipeline.output_topic: SMALL_OUTPUT_LIMIT, pipeline.dlq_topic: SMALL_DLQ_LIMIT}
    )
    first = _padded_tweets(
        pipeline, "meta", range(SMALL_OUTPUT_LIMIT - 800, SMALL_OUTPUT_LIMIT + 100, SWEEP_STEP)
    )
    poison = {}
    for filler in range(SMALL_DLQ_LIMIT - 800, SMALL_DLQ_LIMIT + 100, SWEEP_STEP):
        key = f"poison-{filler:05d}".encode()
        pipeline.send_raw(key, json.dumps({"id": key.decode(), "no": "t" * filler}).encode())
        poison[key] = filler
    worker = pipeline.start_worker()
    pipeline.settle(SETTLE_TIMEOUT_S)
    classified = set(pipeline.result_ids())
    _check_threshold(classified, first, SMALL_OUTPUT_LIMIT)

    _set_max_message_bytes(pipeline, {pipeline.output_topic: LOWERED_OUTPUT_LIMIT})
    second = _padded_tweets(
        pipeline,
        "shrunk",
        range(LOWERED_OUTPUT_LIMIT - 800, LOWERED_OUTPUT_LIMIT + 1000, SWEEP_STEP),
    )
    pipeline.settle(SETTLE_TIMEOUT_S)
    counts = pipeline.result_ids()
    _check_threshold(set(counts), second, LOWERED_OUTPUT_LIMIT)
    assert worker.alive(), worker.log_tail()

    # Every record: one result or one dead letter; no id both, none twice in exactly-once.
    letters = pipeline.dead_letters.records
    by_source = [int(dict(r.headers)["dlq.source.offset"]) for r in letters]
    too_large = [r for r in letters if dict(r.headers)["dlq.error.class"] == b"RecordTooLarge"]
    expected_too_large = {i for i in {**first, **second} if i not in counts}
    assert {r.key.decode() for r in too_large} == expected_too_large
    for letter in too_large:
        headers = check_dead_letter(
            letter, error_class="RecordTooLarge", source_topic=pipeline.input_topic
        )
        assert b"max.message.bytes" in headers["dlq.error.message"], headers
        assert letter.value is not None and b'"pad"' in letter.value  # whole: it fits the DLQ
    assert not set(counts) & expected_too_large
    slim = {r.key: r for r in letters if dict(r.headers).get(DLQ_DROPPED)}
    missing_text = {r.key for r in letters if dict(r.headers)["dlq.error.class"] == b"MissingText"}
    assert missing_text == set(poison)
    assert slim and set(slim) < set(poison), "some poison just over the DLQ limit goes slim"
    assert max(poison[k] for k in set(poison) - set(slim)) < min(poison[k] for k in slim)
    duplicates = sum(n - 1 for n in counts.values()) + len(by_source) - len(set(by_source))
    if pipeline.exactly_once:
        assert duplicates == 0
    refusals = worker.log().count("refused a record as too large")
    assert 1 <= refusals <= MAX_REFUSALS, worker.log_tail()
    print(
        f"[small-topic-limit-{delivery}] {len(counts)} classified, {len(too_large)} too large, "
        f"{len(slim)} slim, {refusals} refusal(s) by the broker, {duplicates} duplicates"
    )
