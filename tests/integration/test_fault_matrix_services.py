"""Fault matrix, service rows: Triton and Kafka misbehave under a running worker.

Each test runs ``emotion-stream worker`` subprocesses (:mod:`tests.support.pipeline`)
against real services, injects the fault, lets the group settle and reads results and
dead letters back with a ``read_committed`` consumer. Faults that would disturb the
session's shared services run on services of their own
(:mod:`tests.support.fault_services`): a Triton with explicit model control (to kill it
and to unload the model), a Triton whose model is slower than ``max.poll.interval``, a
broker that does not create topics on first use.

Rows (docs/guarantees.md): Triton killed, restarted, model unloaded; the model reloaded
with other inputs; model slower than max.poll.interval; output or DLQ topic missing. Every
wait is bounded by the constants below.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import skip_or_fail
from tests.support.delivery import check_dead_letter, check_delivery
from tests.support.fault_services import (
    ControllableTriton,
    StrictKafka,
    slow_model_repository,
)
from tests.support.pipeline import (
    AT_LEAST_ONCE,
    DELIVERY_MODES,
    EXACTLY_ONCE,
    Pipeline,
    PipelineFactory,
)
from tests.support.topics import Feeder
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = 20
RESULTS_TIMEOUT_S = 180.0
SETTLE_TIMEOUT_S = 120.0
OUTAGE_TIMEOUT_S = 60.0
# Kafka's lower bound for max.poll.interval.ms in the worker's settings, and a model that
# takes longer than that for every call (the twin sleeps first).
MAX_POLL_INTERVAL_MS = 10_000
SLOW_MODEL_DELAY_MS = 12_000


def _start(server: Any, what: str) -> None:
    try:
        server.start()
    except Exception as error:  # skip locally, fail under CI
        skip_or_fail(f"{what} did not start: {error}")


@pytest.fixture
def controllable_triton(
    tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllableTriton]:
    server = ControllableTriton(tmp_path_factory.mktemp("triton-ctl"), tiny_model_repository)
    _start(server, "Triton with explicit model control")
    yield server
    server.stop()


@pytest.fixture
def slow_triton(
    tiny_model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControllableTriton]:
    repository = slow_model_repository(
        tiny_model_repository, tmp_path_factory.mktemp("slow-repo"), SLOW_MODEL_DELAY_MS
    )
    server = ControllableTriton(tmp_path_factory.mktemp("triton-slow"), repository)
    _start(server, "Triton with the slow model")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StrictKafka]:
    broker = StrictKafka(tmp_path_factory.mktemp("kafka-strict"))
    try:
        broker.start_fetched()
    except Exception as error:
        skip_or_fail(f"Kafka without topic auto-creation did not start: {error}")
    yield broker
    broker.stop()


def _outage(
    pipeline: Pipeline,
    worker: WorkerRun,
    feeder: Feeder,
    begin: Callable[[], object],
    end: Callable[[], object],
) -> None:
    """``begin`` an outage under a running feed, see the worker say not-ready and the feed
    go on for 30 more tweets, ``end`` it and see the worker ready again."""
    begin()
    sent_at_begin = feeder.sent
    pipeline.wait_readiness(worker, ready=False, timeout_s=OUTAGE_TIMEOUT_S)
    wait_until(lambda: feeder.sent >= sent_at_begin + 30, OUTAGE_TIMEOUT_S, "the feeder stalled")
    end()
    pipeline.wait_readiness(worker, ready=True, timeout_s=OUTAGE_TIMEOUT_S)


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_triton_killed_restarted_and_model_unloaded_loses_nothing_dead_letters_nothing(
    make_pipeline: PipelineFactory, controllable_triton: ControllableTriton, delivery: str
) -> None:
    """SIGKILL Triton mid-feed and restart it; then unload the model and load it again.
    Meanwhile the worker holds its batches, says not-ready and dead-letters nothing."""
    pipeline = make_pipeline(
        partitions=3, triton_url=controllable_triton.grpc_url, delivery=delivery
    )
    worker = pipeline.start_worker()
    warm = pipeline.warm_up(WARM_UP, first=10_000, timeout_s=RESULTS_TIMEOUT_S)
    pipeline.wait_readiness(worker, ready=True, timeout_s=OUTAGE_TIMEOUT_S)

    feeder = pipeline.feed(400, rate=10.0)  # 40 s, both outages land inside it
    pipeline.wait_for_result_count(WARM_UP + 20, RESULTS_TIMEOUT_S)

    _outage(pipeline, worker, feeder, controllable_triton.kill, controllable_triton.start)
    _outage(
        pipeline, worker, feeder, controllable_triton.unload_model, controllable_triton.load_model
    )
    assert feeder.sent < 400, "both outages should land inside the feed"

    feeder.finish()
    pipeline.settle(SETTLE_TIMEOUT_S)
    # Held batches are retried, never published twice and never dead-lettered.
    check_delivery(
        pipeline, warm + feeder.ids, max_extra_results=0, label=f"triton-outages-{delivery}"
    )
    assert worker.alive(), "the same worker rides both outages out\n" + worker.log_tail()
    assert worker.metric("emotion_worker_retries_total") > 0, worker.log_tail()
    reasons = {event.get("reason", "") for event in worker.events("readiness")}
    print(f"[triton-outages] readiness reasons: {sorted(reasons)}")


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_a_model_reloaded_with_other_inputs_stops_the_worker_and_dead_letters_nothing(
    make_pipeline: PipelineFactory, controllable_triton: ControllableTriton, delivery: str
) -> None:
    """The model is reloaded under a running worker with an input renamed (Triton's
    explicit model control, a config override): Triton rejects every request
    (INVALID_ARGUMENT), bisection rejects every text. The worker re-reads the model's
    metadata, sees the change and exits 1 naming it, instead of dead-lettering and
    committing the stream. With the old model back, a restart classifies everything."""
    pipeline = make_pipeline(
        partitions=3, triton_url=controllable_triton.grpc_url, delivery=delivery
    )
    worker = pipeline.start_worker()
    warm = pipeline.warm_up(WARM_UP, first=10_000, timeout_s=RESULTS_TIMEOUT_S)

    config = controllable_triton.model_config()
    for tensor in config["input"]:
        if tensor["name"] == "attention_mask":
            tensor["name"] = "mask"
    controllable_triton.load_model(config)
    later = pipeline.seed(40)
    assert worker.wait(RESULTS_TIMEOUT_S) == 1, worker.log_tail()
    stops = worker.events("model changed under the worker; stopping")
    assert stops, worker.log_tail()
    stopped = stops[0]
    print(f"[model-changed-{delivery}] {stopped['change']}")
    assert "no input 'attention_mask'" in stopped["change"], worker.log_tail()
    assert "changed while the worker ran" in worker.log(), worker.log_tail()
    pipeline.dead_letters.drain(SETTLE_TIMEOUT_S)
    assert pipeline.dead_letters.records == [], "the model's change dead-lettered tweets"
    redo = pipeline.published_past_the_commit(SETTLE_TIMEOUT_S)

    # The repository's own configuration again (a plain load of a loaded model whose
    # files did not change keeps the override).
    controllable_triton.unload_model()
    controllable_triton.load_model()
    assert controllable_triton.model_config()["input"][1]["name"] == "attention_mask"
    pipeline.start_worker()
    pipeline.settle(SETTLE_TIMEOUT_S)
    report = check_delivery(
        pipeline,
        warm + later,
        max_extra_results=redo,
        dead_letters=0,
        label=f"model-changed-{delivery}",
    )
    # Exactly what the restart re-read past the committed offsets, nothing else.
    assert report.extra_results == redo, pipeline.describe()
    if pipeline.exactly_once:
        assert redo == 0, pipeline.describe()


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_model_slower_than_max_poll_interval_causes_no_rebalance_and_loses_nothing(
    make_pipeline: PipelineFactory, slow_triton: ControllableTriton, delivery: str
) -> None:
    """Every inference takes longer than max.poll.interval.ms; the worker keeps polling
    while Triton works, so the group never evicts it: one assignment, no loss."""
    pipeline = make_pipeline(
        partitions=3,
        triton_url=slow_triton.grpc_url,
        delivery=delivery,
        EMOTION_STREAM_MAX_POLL_INTERVAL_MS=str(MAX_POLL_INTERVAL_MS),
        EMOTION_STREAM_TRITON_TIMEOUT_S=str(SLOW_MODEL_DELAY_MS / 1000 * 4),
        EMOTION_STREAM_MAX_BATCH_SIZE="8",
        EMOTION_STREAM_LOG_LEVEL="debug",
    )
    worker = pipeline.start_worker()
    ids = pipeline.seed(40)
    pipeline.settle(RESULTS_TIMEOUT_S * 2)
    check_delivery(pipeline, ids, max_extra_results=0, label=f"slow-model-{delivery}")

    slowest = max(event["inference_ms"] for event in worker.events("batch"))
    print(
        f"[slow-model] slowest inference {slowest / 1000:.1f} s, {worker.rebalances()} assignment"
    )
    assert slowest > MAX_POLL_INTERVAL_MS, "the model was not slower than max.poll.interval"
    assert worker.rebalances() == 1, pipeline.describe()
    assert not worker.partitions_taken_away(), pipeline.describe()
    assert worker.alive(), worker.log_tail()


@pytest.mark.parametrize(
    ("missing", "delivery"),
    [
        ("output", AT_LEAST_ONCE),
        ("dlq", AT_LEAST_ONCE),
        ("output", EXACTLY_ONCE),
        ("dlq", EXACTLY_ONCE),
    ],
)
def test_missing_output_or_dlq_topic_commits_nothing_then_delivers_once_it_exists(
    make_pipeline: PipelineFactory, strict_kafka: StrictKafka, missing: str, delivery: str
) -> None:
    """On a broker that never creates topics implicitly, the worker's output (or DLQ)
    topic does not exist: sends fail, the worker says so naming the topic, re-reads, and
    commits nothing past the first undeliverable record. Once the topic is created, every
    record is delivered."""
    pipeline = make_pipeline(
        bootstrap_servers=strict_kafka.bootstrap_servers, create_topics=False, delivery=delivery
    )
    absent = pipeline.output_topic if missing == "output" else pipeline.dlq_topic
    present = [pipeline.input_topic, pipeline.dlq_topic, pipeline.output_topic]
    pipeline.create_topics(*[topic for topic in present if topic != absent])
    worker = pipeline.start_worker()

    # Few records: each send to a missing topic blocks the worker's loop for the
    # producer's metadata wait (10 s), one record after another.
    good_before = pipeline.seed(1)
    pipeline.send_raw(b"poison", b'{"id": "poison", "no": "text"}')
    good_after = pipeline.seed(1, first=1)
    poison_offset = 1

    # At least once a failed send re-reads its partition; exactly once it aborts the
    # transaction and re-reads from the last commit.
    retried = {
        "publish failed, re-reading partition",
        "transaction aborted, re-reading from the last commit",
    }

    def failed_sends() -> list[dict[str, Any]]:
        return [
            event
            for event in worker.events()
            if event.get("event") in retried and absent in str(event.get("error", ""))
        ]

    # Two failed rounds: it retries rather than gives up or skips.
    wait_until(
        lambda: len(failed_sends()) >= 2,
        RESULTS_TIMEOUT_S,
        lambda: f"no failed send naming {absent}\n{pipeline.describe()}",
    )
    print(f"[missing-{missing}] error: {failed_sends()[0]['error']}")
    committed = pipeline.committed_offsets().get(0, 0)
    if missing == "output":
        assert committed == 0, f"committed {committed} with nowhere to publish"
    else:
        assert committed <= poison_offset, f"committed past the undeliverable poison: {committed}"
    assert worker.alive(), worker.log_tail()

    pipeline.create_topics(absent)
    pipeline.settle(RESULTS_TIMEOUT_S)
    # Records after the poison may have been published in each failed round (the
    # partition is re-read from the watermark): duplicates, never losses.
    # Exactly once, the aborted rounds' dead letters are never visible: the poison has
    # exactly one, like every good tweet one result.
    report = check_delivery(
        pipeline,
        good_before + good_after,
        max_extra_results=0 if pipeline.exactly_once else len(good_after) * 10,
        dead_letters=1 if pipeline.exactly_once else None,
        label=f"missing-{missing}-{delivery}",
    )
    # The poison is dead-lettered (again in each round where the DLQ was there): every
    # dead letter is that one record, with its context.
    assert pipeline.dead_letters.records, pipeline.describe()
    for letter in pipeline.dead_letters.records:
        check_dead_letter(
            letter,
            error_class="MissingText",
            source_topic=pipeline.input_topic,
            source=(0, poison_offset),
        )
        assert json.loads(letter.value) == {"id": "poison", "no": "text"}
    assert worker.alive(), worker.log_tail()
    print(f"[missing-{missing}] {report.extra_results} re-published after the failed rounds")
