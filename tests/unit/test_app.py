"""The Worker's loop with in-memory parts: every offset ends as a result or a dead letter,
commits never pass undelivered work, transient failures hold records without loss."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import structlog

from tests.support.fakes import (
    DEADLINE_S,
    LABELS,
    FakeClassifier,
    FakePublisher,
    FakeSource,
    FakeTokenizer,
    record,
    settings,
    tweets,
    wait_for,
)
from worker.app import Worker
from worker.backoff import Backoff
from worker.errors import (
    BrokerUnavailable,
    ModelMismatch,
    RecordTooLarge,
)
from worker.inference import softmax
from worker.messages import OutboundRecord, SourceRecord
from worker.observability import configure_logging


def test_every_tweet_gets_one_result_in_order_and_offsets_are_committed(run_worker: Any) -> None:
    h = run_worker({("tweets", 0): tweets(0, 40), ("tweets", 1): tweets(1, 25)})
    wait_for(lambda: len(h.outputs()) == 65, "65 results")
    wait_for(lambda: h.source.committed() == {("tweets", 0): 40, ("tweets", 1): 25}, "commits")
    h.stop()
    outputs = h.outputs()
    for partition, count in ((0, 40), (1, 25)):
        offsets = [o["source"]["offset"] for o in outputs if o["source"]["partition"] == partition]
        assert offsets == list(range(count))  # published in consumption order
    for output in outputs:
        assert output["id"] == f"p{output['source']['partition']}-{output['source']['offset']}"
        # Its own scores, not a batch-mate's: FakeClassifier's logits come from the length.
        length = len(output["text"])
        expected = softmax(np.array([[length % k for k in (2, 3, 5, 7)]], dtype=np.float32))[0]
        assert list(output["scores"].values()) == pytest.approx(expected.tolist(), abs=1e-6)
        assert sum(output["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(output["scores"]) == LABELS
        assert output["label"] in LABELS
        assert output["model"] == {"name": "emotion-classifier", "version": "1"}
    assert not h.dead_letters()


def test_poison_is_dead_lettered_and_committed_past(run_worker: Any) -> None:
    values: list[bytes | None] = [
        b'{"id": "a", "text": "fine"}',
        None,
        b"\xff\xfe",
        b"   ",
        b'{"id": "b"}',
        b"x" * 200,
        b'{"id": "c", "text": "POISON for the model"}',
        b'"a json string"',
        b"plain text line",
    ]
    records = [record(0, i, v, key=b"k") for i, v in enumerate(values)]
    h = run_worker({("tweets", 0): records}, max_text_bytes=100)
    wait_for(lambda: len(h.outputs()) + len(h.dead_letters()) == len(values), "all done")
    wait_for(lambda: h.source.committed() == {("tweets", 0): len(values)}, "commit past poison")
    h.stop()
    assert [o["text"] for o in h.outputs()] == ["fine", "a json string", "plain text line"]
    classes = {
        int(dict(d.headers)["dlq.source.offset"]): dict(d.headers)["dlq.error.class"].decode()
        for d in h.dead_letters()
    }
    assert classes == {
        1: "NullValue",
        2: "InvalidUtf8",
        3: "EmptyText",
        4: "MissingText",
        5: "TextTooLarge",
        6: "InferenceRejected",
    }
    rejected = next(d for d in h.dead_letters() if dict(d.headers)["dlq.source.offset"] == b"6")
    assert rejected.value == values[6] and rejected.key == b"k"
    assert dict(rejected.headers)["dlq.worker.id"] == b"test-worker"


def test_transient_failures_hold_records_without_loss_or_dead_letters(run_worker: Any) -> None:
    classifier = FakeClassifier(failures=4)
    h = run_worker({("tweets", 0): tweets(0, 30)}, classifier=classifier)
    wait_for(lambda: len(h.outputs()) == 30, "30 results after recovery")
    wait_for(lambda: h.source.committed() == {("tweets", 0): 30}, "commit")
    h.stop()
    assert not h.dead_letters()
    assert [o["source"]["offset"] for o in h.outputs()] == list(range(30))
    assert h.worker.metrics.retries.labels(reason="InferenceUnavailable")._value.get() == 4


def test_backing_off_pauses_consumption_and_readiness(run_worker: Any) -> None:
    classifier = FakeClassifier(failures=10**9)
    h = run_worker(
        {("tweets", 0): tweets(0, 20)},
        classifier=classifier,
        retry_backoff_initial_s=0.01,
        retry_backoff_max_s=0.02,
    )
    wait_for(lambda: h.source.paused and h.source.paused_polls > 5, "paused and still polling")
    assert not h.worker.health.ready
    assert h.source.commits == [] or all(not c for c in h.source.commits)
    assert not h.dead_letters() and not h.outputs()
    with classifier.lock:
        classifier.failures = 0
    wait_for(lambda: len(h.outputs()) == 20, "recovered")
    wait_for(lambda: h.worker.health.ready and not h.source.paused, "ready and resumed")
    h.stop()


def test_batch_size_is_clamped_to_the_models(run_worker: Any) -> None:
    classifier = FakeClassifier(max_batch_size=4)
    h = run_worker({("tweets", 0): tweets(0, 30)}, classifier=classifier, max_batch_size=32)
    wait_for(lambda: len(h.outputs()) == 30, "results")
    h.stop()
    assert h.worker.max_batch_size == 4
    assert max(classifier.batch_sizes) <= 4


def test_labels_that_do_not_match_the_model_stop_the_worker() -> None:
    worker = Worker(
        settings(),
        source=lambda s, handler: FakeSource({}),
        publisher=lambda s: FakePublisher(),
        classifier=lambda s: FakeClassifier(),
        tokenizer=lambda s: FakeTokenizer(),
        labels=["only", "three", "labels"],
    )
    with pytest.raises(ModelMismatch, match="4 logits"):
        worker.run()


def test_revoked_partitions_are_dropped_and_not_committed(run_worker: Any) -> None:
    classifier = FakeClassifier(failures=10**9)
    h = run_worker(
        {("tweets", 0): tweets(0, 10), ("tweets", 1): tweets(1, 10)}, classifier=classifier
    )
    wait_for(lambda: h.source.paused, "held for retry")
    complete = h.source.revoke(h.worker, ("tweets", 1))
    assert complete == {}
    with classifier.lock:
        classifier.failures = 0
    wait_for(lambda: len(h.outputs()) == 10, "partition 0 done")
    wait_for(lambda: h.source.committed().get(("tweets", 0)) == 10, "commit p0")
    h.stop()
    assert ("tweets", 1) not in h.source.committed()
    assert {o["source"]["partition"] for o in h.outputs()} == {0}


def test_stop_exits_promptly_when_idle(run_worker: Any) -> None:
    h = run_worker({("tweets", 0): []})
    assert h.worker.wait_started(DEADLINE_S)
    started = time.monotonic()
    h.stop()
    assert time.monotonic() - started < 5


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(0.1, 1.0)
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert delays[-1] >= 0.5  # capped at 1.0, at least half of the cap
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_revocation_commits_complete_offsets_and_logs_as_json(
    run_worker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug")
    try:
        h = run_worker({("tweets", 0): tweets(0, 10), ("tweets", 1): tweets(1, 10)})
        wait_for(lambda: len(h.outputs()) == 20, "20 results")
        complete = h.source.revoke(h.worker, ("tweets", 1))
        assert complete in ({("tweets", 1): 10}, {})  # {} if already committed
        h.stop()
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]
    assert any(e["event"] == "partitions revoked" for e in events)
    assert any(e["event"] == "batch" and e["level"] == "debug" for e in events)


def test_revocation_commits_results_sent_but_not_yet_acknowledged(run_worker: Any) -> None:
    # A rebalance right after a publish: the acks are still on their way. Leaving those
    # offsets out of the revocation commit would make the next owner classify them again.
    publisher = FakePublisher()
    publisher.ack_on_flush = True  # before the worker starts: no result may be acked early
    h = run_worker({("tweets", 0): tweets(0, 10)}, publisher=publisher)
    wait_for(lambda: len(h.outputs()) == 10, "10 results sent")
    assert h.worker.tracker.committable() == {}, "nothing acknowledged yet"
    complete = h.source.revoke(h.worker, ("tweets", 0))
    assert complete == {("tweets", 0): 10}
    h.stop()


def test_records_too_large_for_the_broker_are_dead_lettered_not_fatal(run_worker: Any) -> None:
    limit = 2615  # between the result (~2680 bytes) and its dead letter (~2550)
    records = [
        record(0, 0, b'{"id": "ok", "text": "short"}'),
        record(0, 1, json.dumps({"id": "long", "text": "y" * 2300}).encode()),
        SourceRecord("tweets", 0, 2, None, b"k", b"", (("big", b"h" * 3000),)),
        record(0, 3, b'{"id": "ok2", "text": "short too"}'),
    ]
    h = run_worker({("tweets", 0): records}, publisher_max_bytes=limit)
    wait_for(lambda: len(h.outputs()) + len(h.dead_letters()) == 4, "all four done")
    wait_for(lambda: h.source.committed() == {("tweets", 0): 4}, "committed past them")
    h.stop()
    assert [o["id"] for o in h.outputs()] == ["ok", "ok2"]
    letters = {int(dict(d.headers)["dlq.source.offset"]): d for d in h.dead_letters()}
    # The result repeating a 2300-byte text was refused: the input is dead-lettered whole.
    assert dict(letters[1].headers)["dlq.error.class"] == b"RecordTooLarge"
    assert letters[1].value == records[1].value
    # An empty value with huge headers: dead-lettered slim, context kept.
    slim = dict(letters[2].headers)
    assert slim["dlq.error.class"] == b"EmptyText"
    assert slim["dlq.original.dropped"] == b"value,headers"
    assert "big" not in slim and letters[2].value is None


def test_a_lost_partition_that_comes_back_is_not_sought_to_a_stale_position(
    run_worker: Any,
) -> None:
    # Evicted (a zombie): another member owned the partition meanwhile and committed past
    # our old position. When it comes back, the group's committed offset rules, not ours
    # (the same in both delivery modes: on_lost remembers nothing).
    classifier = FakeClassifier(failures=10**9)
    h = run_worker({("tweets", 0): tweets(0, 20)}, classifier=classifier)
    wait_for(lambda: h.source.paused, "held for retry")
    h.worker.on_lost({("tweets", 0)})
    assert h.worker.on_assigned({("tweets", 0)}) == {}
    h.stop()


def test_partition_revoked_and_assigned_again_rereads_dropped_work(run_worker: Any) -> None:
    classifier = FakeClassifier(failures=10**9)
    h = run_worker({("tweets", 0): tweets(0, 20)}, classifier=classifier)
    wait_for(lambda: h.source.paused, "held for retry")
    h.source.rebalance_keeping(h.worker, ("tweets", 0))
    with classifier.lock:
        classifier.failures = 0
    wait_for(lambda: h.source.committed().get(("tweets", 0)) == 20, "all 20 committed")
    h.stop()
    offsets = sorted({o["source"]["offset"] for o in h.outputs()})
    assert offsets == list(range(20))  # nothing skipped: the dropped ones were read again


class KeyCountingPublisher(FakePublisher):
    """Counts the key in the size too (a key can be as large as a value)."""

    def send(self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]) -> None:
        size = len(record.key or b"") + len(record.value or b"")
        size += sum(len(n) + len(v) for n, v in record.headers)
        if self.max_bytes is not None and size > self.max_bytes:
            on_done(RecordTooLarge(record.topic, f"{size} bytes"))
            return
        super().send(record, on_done)


def test_a_dead_letter_too_large_even_slim_goes_out_without_its_key(run_worker: Any) -> None:
    huge_key = b"k" * 4000
    records = [
        record(0, 0, b'{"id": "a", "text": "hi"}', key=huge_key),  # result: too large
        record(0, 1, b'{"id": "b", "text": "fine"}', key=b"b"),
    ]
    h = run_worker({("tweets", 0): records}, publisher=KeyCountingPublisher(3000))
    wait_for(lambda: h.source.committed() == {("tweets", 0): 2}, "committed past both")
    h.stop()
    assert [o["id"] for o in h.outputs()] == ["b"]
    [letter] = h.dead_letters()
    headers = dict(letter.headers)
    assert letter.key is None and letter.value == b""
    assert headers["dlq.error.class"] == b"RecordTooLarge"
    assert headers["dlq.original.dropped"] == b"key,value,headers"
    assert headers["dlq.source.offset"] == b"0"


def test_a_dead_letter_topic_too_small_for_context_headers_stops_clearly(
    run_worker: Any,
) -> None:
    h = run_worker({("tweets", 0): [record(0, 0, b"")]}, publisher=KeyCountingPublisher(100))
    h.thread.join(DEADLINE_S)
    assert h.error is not None and "refuses even a dead letter" in str(h.error)
    assert h.source.committed() == {}


def test_consumption_pauses_while_max_unacknowledged_records_await_the_broker(
    run_worker: Any,
) -> None:
    """The broker acknowledges nothing (acks wait for flush): the worker stops reading at
    the bound instead of piling results up in the producer; it goes on once acks come."""
    publisher = FakePublisher()
    publisher.ack_on_flush = True
    bound, batch = 10, 4
    h = run_worker(
        {("tweets", 0): tweets(0, 200)},
        publisher=publisher,
        max_unacknowledged_records=bound,
        max_batch_size=batch,
        batch_window=batch,
    )
    wait_for(lambda: len(publisher.sent) >= bound, "the bound reached")
    wait_for(lambda: h.source.paused_polls > 50, "paused polls")
    time.sleep(0.2)
    # At most the batches already at Triton when the bound was reached come on top.
    assert bound <= len(publisher.sent) <= bound + 2 * batch
    assert h.source.position[("tweets", 0)] < 200

    def acknowledged_all() -> bool:
        publisher.flush(0)
        return h.source.committed().get(("tweets", 0)) == 200

    wait_for(acknowledged_all, "all 200 committed once the broker acknowledges")
    h.stop()
    assert sorted(o["source"]["offset"] for o in h.outputs()) == list(range(200))


class FailingFirstPublisher(FakePublisher):
    """The broker refuses offset 0's first ``failures`` sends (a transient error), noting
    when each offset was sent."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.sent_at: list[tuple[int, float]] = []

    def send(self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]) -> None:
        offset = json.loads(record.value or b"{}")["source"]["offset"]
        self.sent_at.append((offset, time.monotonic()))
        if offset == 0 and self.failures > 0:
            self.failures -= 1
            on_done(BrokerUnavailable("emotions", "NotEnoughReplicas"))
            return
        super().send(record, on_done)


def test_a_failed_publish_backs_off_before_rereading(run_worker: Any) -> None:
    publisher = FailingFirstPublisher(failures=3)
    h = run_worker(
        {("tweets", 0): tweets(0, 5)},
        publisher=publisher,
        retry_backoff_initial_s=0.4,
        retry_backoff_max_s=0.4,
        max_batch_size=5,
    )
    wait_for(lambda: h.source.committed().get(("tweets", 0)) == 5, "all 5 committed")
    h.stop()
    first_sends = [at for offset, at in publisher.sent_at if offset == 0]
    assert len(first_sends) == 4  # three refusals, then delivered
    gaps = [later - earlier for earlier, later in itertools.pairwise(first_sends)]
    assert min(gaps) >= 0.2, gaps  # half the backoff at least (full jitter on the rest)
    assert h.source.paused_polls > 0  # polling went on, paused, meanwhile
