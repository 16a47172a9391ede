"""Faults a real ``emotion-stream worker`` process must survive without losing a tweet.

Each test runs the worker as a subprocess (see :mod:`tests.support.pipeline`) against the
real Kafka broker and the real Triton server serving the tiny exported model, feeds
tweets with unique ids while the fault happens, and then checks the at-least-once
promise on the output topic: every input id has a result; duplicates are counted and
allowed only where the promise allows them (after a crash or a rebalance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import WORKER_START_TIMEOUT_S, Pipeline, duplicates, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = 20  # tweets classified before the fault, so the worker is known to be running
FEED = 600
FEED_RATE = 100.0  # tweets/s: the feed lasts ~6 s, long enough for a fault to land inside it
RESULTS_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 60.0
# Short backoff so that recovery after an outage is quick to observe.
FAST_RETRY = {
    "EMOTION_STREAM_RETRY_BACKOFF_INITIAL_S": "0.1",
    "EMOTION_STREAM_RETRY_BACKOFF_MAX_S": "1.0",
}


@pytest.fixture
def make_pipeline(
    kafka_broker: Any,
    triton_server: Any,
    tiny_model_repository: Path,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[..., Pipeline]]:
    """Build pipelines on the fixtures' broker and Triton; kill their workers afterwards."""
    built: list[Pipeline] = []

    def build(*, partitions: int = 1, **worker_env: str) -> Pipeline:
        name = unique_name("faults")
        pipeline = Pipeline(
            bootstrap_servers=kafka_broker.bootstrap_servers,
            triton_url=triton_server.grpc_url,
            model_repository=tiny_model_repository,
            name=name,
            workdir=tmp_path,
            partitions=partitions,
            worker_env={**FAST_RETRY, **worker_env},
        )
        built.append(pipeline)
        return pipeline

    yield build
    for pipeline in built:
        pipeline.close()


def _warm_up(pipeline: Pipeline) -> list[str]:
    """Seed a few tweets and wait for their results: the worker is up and consuming."""
    ids = pipeline.seed(WARM_UP, first=FEED)  # numbered after the feed, never clashing
    pipeline.wait_for_results(ids, RESULTS_TIMEOUT_S)
    return ids


def _report(test: str, pipeline: Pipeline, counts: Any) -> None:
    extra = duplicates(counts)
    print(
        f"\n[{test}] {len(pipeline.seeded)} seeded, {sum(counts.values())} results, "
        f"{len(extra)} ids duplicated ({sum(extra.values()) - len(extra)} extra results), "
        f"{pipeline.dead_letter_count()} dead letters"
    )


def test_sigkill_mid_stream_then_restart_loses_nothing(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(partitions=3)
    first = pipeline.start_worker()
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE)
    pipeline.wait_for_result_count(WARM_UP + FEED // 4, RESULTS_TIMEOUT_S)
    first.kill()
    # Mid-stream: tweets were still arriving or waiting (on a slow machine the feed may be
    # over, but the backlog is not).
    assert len(pipeline.result_ids()) < WARM_UP + FEED, "the kill came after all the work"
    assert first.process.returncode == -9

    pipeline.start_worker()
    feeder.finish()
    counts = pipeline.wait_for_results(warm + feeder.ids, RESULTS_TIMEOUT_S)
    _report("sigkill", pipeline, counts)
    assert pipeline.dead_letter_count() == 0, pipeline.describe()


def test_sigterm_exits_zero_commits_and_restart_makes_no_duplicates(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(partitions=3)
    first = pipeline.start_worker()
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE)
    pipeline.wait_for_result_count(WARM_UP + FEED // 4, RESULTS_TIMEOUT_S)
    first.terminate()
    assert first.wait(EXIT_TIMEOUT_S) == 0, first.log_tail()
    assert len(pipeline.result_ids()) < WARM_UP + FEED, "the stop came after all the work"

    # Every result published before the stop is covered by a committed offset, so a
    # restarted worker has no reason to classify any of them again.
    committed = pipeline.committed_offsets()
    published = pipeline.results_by_source()
    beyond = sorted(src for src in published if src[1] >= committed.get(src[0], 0))
    assert not beyond, f"results beyond the committed offsets {committed}: {beyond[:10]}"

    second = pipeline.start_worker()
    feeder.finish()
    counts = pipeline.wait_for_results(warm + feeder.ids, RESULTS_TIMEOUT_S)
    _report("sigterm", pipeline, counts)
    assert duplicates(counts) == {}, pipeline.describe()
    assert pipeline.dead_letter_count() == 0, pipeline.describe()

    # Once idle, a stop commits everything: the group is at the end of every partition.
    second.terminate()
    assert second.wait(EXIT_TIMEOUT_S) == 0, second.log_tail()
    assert pipeline.committed_offsets() == pipeline.end_offsets(), pipeline.describe()


def test_two_workers_in_one_group_classify_every_tweet(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_pipeline(partitions=3)
    workers = [pipeline.start_worker(), pipeline.start_worker()]
    warm = _warm_up(pipeline)
    # Feed only once the group has settled with both: each holds at least one partition.
    wait_until(
        lambda: all(worker.assigned_partitions() for worker in workers),
        WORKER_START_TIMEOUT_S,
        lambda: f"both workers never held partitions at once\n{pipeline.describe()}",
    )

    feeder = pipeline.feed(FEED, FEED_RATE)
    feeder.finish()
    counts = pipeline.wait_for_results(warm + feeder.ids, RESULTS_TIMEOUT_S)
    _report("two-workers", pipeline, counts)
    assert all(worker.alive() for worker in workers), pipeline.describe()
    assert pipeline.dead_letter_count() == 0, pipeline.describe()
    # Both took part: the group split the partitions between them.
    consumed = [worker.metric("emotion_worker_consumed_total") for worker in workers]
    print(f"[two-workers] consumed per worker: {consumed}")
    assert all(count > 0 for count in consumed), pipeline.describe()


def test_triton_outage_then_recovery_loses_nothing_and_dead_letters_nothing(
    make_pipeline: Callable[..., Pipeline], triton_server: Any
) -> None:
    pipeline = make_pipeline(partitions=3)
    worker = pipeline.start_worker()
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE / 2)
    pipeline.wait_for_result_count(WARM_UP + FEED // 10, RESULTS_TIMEOUT_S)
    triton_server.stop()
    try:
        # The outage lasts until the worker has noticed it (not ready) and tweets have
        # kept arriving meanwhile.
        sent_at_stop = feeder.sent
        wait_until(
            lambda: worker.http_status("/readyz") not in {200, None},
            EXIT_TIMEOUT_S,
            lambda: f"worker never reported not-ready\n{pipeline.describe()}",
        )
        wait_until(
            lambda: feeder.sent >= min(FEED, sent_at_stop + 50),
            EXIT_TIMEOUT_S,
            "the feeder stalled",
        )
        results_during_outage = pipeline.result_ids()
    finally:
        triton_server.start()

    feeder.finish()
    counts = pipeline.wait_for_results(warm + feeder.ids, RESULTS_TIMEOUT_S)
    _report("triton-outage", pipeline, counts)
    assert sum(counts.values()) > sum(results_during_outage.values())
    retries = worker.metric("emotion_worker_retries_total")
    print(f"[triton-outage] {retries:g} retries while Triton was down")
    assert retries > 0, "the outage should have been retried\n" + worker.log_tail()
    assert worker.alive(), "processing should resume in the same worker\n" + worker.log_tail()
    assert pipeline.dead_letter_count() == 0, pipeline.describe()
    wait_until(
        lambda: worker.http_status("/readyz") == 200,
        EXIT_TIMEOUT_S,
        lambda: f"worker not ready again after Triton came back\n{worker.log_tail()}",
    )
