"""Exactly-once delivery with a real broker, a real Triton server and real worker processes.

Every test runs ``emotion-stream worker`` with ``EMOTION_STREAM_DELIVERY=exactly_once``
(see :mod:`tests.support.pipeline`) and reads the output and dead-letter topics back
with ``isolation_level=read_committed``, the way docs/guarantees.md tells consumers to. The
promise checked: every input id has exactly one result (or dead letter) — after a clean
run, after a SIGKILL at each failpoint of the publish/commit sequence followed by a
restart, and after a second instance with the same transactional id fences the first.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from tests.support.delivery import Delivery, check_delivery, duplicates
from tests.support.pipeline import EXACTLY_ONCE, Pipeline, PipelineFactory
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until
from tests.support.worker_process import WORKER_START_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULTS_TIMEOUT_S = 240.0
EXIT_TIMEOUT_S = 90.0
FEED = 240
FEED_RATE = 60.0  # tweets/s: the feed spans several commits, so the crash lands mid-stream
POISON = 4
UNCOMMITTED_READ_TIMEOUT_S = 120.0


@pytest.fixture
def make_eos_pipeline(make_pipeline: PipelineFactory) -> Callable[..., Pipeline]:
    """Exactly-once pipelines; every worker of one pipeline shares one transactional id,
    as restarts of one replica do."""

    def build(*, partitions: int = 3) -> Pipeline:
        return make_pipeline(
            partitions=partitions,
            delivery=EXACTLY_ONCE,
            one_replica=True,
            prefix="eos",
            # Several transactions per second: a failpoint's n-th hit comes early.
            EMOTION_STREAM_COMMIT_INTERVAL_MS="200",
            # Batches of at most 32: the default look-ahead (128) would take the backlog
            # that builds while the worker starts in two or three batches, so the feed
            # could end before a failpoint's n-th transaction.
            EMOTION_STREAM_BATCH_WINDOW="32",
        )

    return build


def _seed_poison(pipeline: Pipeline, count: int) -> None:
    """Undecodable records (not UTF-8): each must end as exactly one dead letter."""
    for n in range(count):
        pipeline.producer.send(pipeline.input_topic, key=f"poison-{n}".encode(), value=b"\xff\xfe")
    pipeline.producer.flush(timeout=60)


def _uncommitted_result_ids(pipeline: Pipeline) -> Counter[str]:
    """Results as a read_uncommitted reader sees them: aborted transactions included."""
    with TopicReader(
        pipeline.bootstrap_servers, pipeline.output_topic, isolation_level="read_uncommitted"
    ) as reader:
        records = reader.drain(UNCOMMITTED_READ_TIMEOUT_S)
    # Transaction markers carry no value.
    return Counter(str(json.loads(r.value)["id"]) for r in records if r.value is not None)


def _assert_exactly_once(pipeline: Pipeline, ids: list[str], test: str) -> Delivery:
    """Every id once, every poison record dead-lettered once, as a read_committed consumer
    sees the topics read to their ends after the group committed every input offset."""
    pipeline.wait_for_results(ids, RESULTS_TIMEOUT_S)  # names the missing ids if any
    # Committed to the input's end: nothing more can become visible after this, so the
    # output and the DLQ are read to their ends (not one short poll) and the counts are
    # final; a late duplicate is among them.
    pipeline.settle(RESULTS_TIMEOUT_S)
    report = check_delivery(pipeline, ids, max_extra_results=0, dead_letters=POISON, label=test)
    letters = Counter(bytes(r.key or b"").decode() for r in pipeline.dead_letters.records)
    assert letters == {f"poison-{n}": 1 for n in range(POISON)}, pipeline.describe()
    return report


def test_exactly_once_end_to_end_every_id_once(make_eos_pipeline: Callable[..., Pipeline]) -> None:
    pipeline = make_eos_pipeline()
    worker = pipeline.start_worker()
    ids = pipeline.seed(FEED)
    _seed_poison(pipeline, POISON)
    _assert_exactly_once(pipeline, ids, "eos-clean")
    assert f'"transactional_id": "{pipeline.name}-replica-0"' in worker.log(), worker.log_tail()
    worker.terminate()
    assert worker.wait(EXIT_TIMEOUT_S) == 0, worker.log_tail()


# after_send's crash must find results in its transaction (checked below): the poison,
# seeded as the feed starts, can fill the first transactions alone.
@pytest.mark.parametrize(
    "failpoint", ["after_inference:4", "after_send:6", "during_commit:3"], ids=lambda f: f
)
def test_sigkill_at_a_failpoint_then_restart_makes_no_duplicates(
    make_eos_pipeline: Callable[..., Pipeline], failpoint: str
) -> None:
    pipeline = make_eos_pipeline()
    doomed = pipeline.start_worker(EMOTION_STREAM_FAILPOINT=failpoint)
    # Consuming before the feed starts: on a busy machine a slow start-up found the whole
    # feed waiting and classified it in too few transactions to reach the n-th hit.
    wait_until(
        lambda: bool(doomed.assigned_partitions()),
        WORKER_START_TIMEOUT_S,
        lambda: f"the worker never got its partitions\n{doomed.log_tail()}",
    )
    feeder = pipeline.feed(FEED, FEED_RATE)
    _seed_poison(pipeline, POISON)
    returncode = doomed.wait(RESULTS_TIMEOUT_S)
    assert returncode == -9, doomed.log_tail()
    assert "failpoint hit" in doomed.log(), doomed.log_tail()
    before_restart = sum(pipeline.result_ids().values())

    # The same transactional id: the restart aborts whatever the dead one left open.
    pipeline.start_worker()
    feeder.finish()
    _assert_exactly_once(pipeline, feeder.ids, f"eos-{failpoint}")
    # The crash did leave sent, unacknowledged-by-commit work behind: a read_uncommitted
    # reader sees it twice (the aborted copy and the redone one); read_committed never does.
    raw = duplicates(_uncommitted_result_ids(pipeline))
    print(
        f"[eos-{failpoint}] {before_restart} results visible before the restart; "
        f"{len(raw)} ids duplicated for a read_uncommitted reader"
    )
    if not failpoint.startswith("after_inference"):
        assert raw, "the crash should have aborted sent results (redone after the restart)"


def test_a_second_instance_with_the_same_transactional_id_fences_the_first(
    make_eos_pipeline: Callable[..., Pipeline],
) -> None:
    pipeline = make_eos_pipeline(partitions=1)
    first = pipeline.start_worker()
    warm = pipeline.seed(20)
    pipeline.wait_for_results(warm, RESULTS_TIMEOUT_S)

    second = pipeline.start_worker()
    wait_until(
        # "consuming" is logged once init_transactions has fenced every older producer.
        lambda: '"event": "consuming"' in second.log() or not second.alive(),
        WORKER_START_TIMEOUT_S,
        lambda: f"the second instance never initialised its producer\n{second.log_tail()}",
    )
    assert second.alive(), second.log_tail()

    # The first learns it is fenced at its next transactional call: give it work.
    more = pipeline.seed(FEED, first=20)
    _seed_poison(pipeline, POISON)
    assert first.wait(EXIT_TIMEOUT_S) == 1, first.log_tail()
    assert "fenced" in first.log(), first.log_tail()
    assert "took over" in first.log(), first.log_tail()

    _assert_exactly_once(pipeline, warm + more, "eos-fenced")
    assert second.alive(), second.log_tail()


def test_rebalances_while_producing_make_no_duplicates(
    make_eos_pipeline: Callable[..., Pipeline],
) -> None:
    # Two replicas, each with its own transactional id. Mid-stream one stops: the group
    # rebalances and the survivor loses (and regains) partitions whose results sit in its
    # open transaction. It must abort them, never commit them; the leaver commits on its
    # way out. Long commit intervals keep transactions open, so the rebalance finds one.
    pipeline = make_eos_pipeline(partitions=3)
    slow_commits = {"EMOTION_STREAM_COMMIT_INTERVAL_MS": "3000"}
    survivor = pipeline.start_worker(
        EMOTION_STREAM_TRANSACTIONAL_ID=f"{pipeline.name}-replica-1", **slow_commits
    )
    leaver = pipeline.start_worker(
        EMOTION_STREAM_TRANSACTIONAL_ID=f"{pipeline.name}-replica-2", **slow_commits
    )
    wait_until(
        lambda: bool(survivor.assigned_partitions()) and bool(leaver.assigned_partitions()),
        WORKER_START_TIMEOUT_S,
        lambda: f"the group never split the partitions\n{pipeline.describe()}",
    )
    feeder = pipeline.feed(FEED, FEED_RATE / 2)
    _seed_poison(pipeline, POISON)
    pipeline.wait_for_result_count(FEED // 4, RESULTS_TIMEOUT_S)
    leaver.terminate()
    assert leaver.wait(EXIT_TIMEOUT_S) == 0, leaver.log_tail()

    feeder.finish()
    _assert_exactly_once(pipeline, feeder.ids, "eos-rebalance")
    assert survivor.alive(), survivor.log_tail()
    aborts = survivor.log().count("transaction aborted, re-reading from the last commit")
    print(f"[eos-rebalance] the survivor aborted {aborts} transaction(s) on revocation")
    assert aborts >= 1, "the rebalance should have found results in the open transaction"


# The evicted replica's consumer: kafka-python's smallest max.poll.interval the worker
# accepts; past it, kafka-python's heartbeat thread leaves the group (generation -1).
EVICTING_POLL_INTERVAL_MS = 10_000
# The stall between the last poll and the commit: max.poll.interval, plus kafka-python's
# heartbeat interval (3 s: when its thread notices), plus margin for a loaded machine;
# well under the transaction timeout (60 s), so the broker does not abort it first.
STALL_S = 25.0


def test_an_eviction_between_the_last_poll_and_the_commit_makes_no_duplicates(
    make_eos_pipeline: Callable[..., Pipeline],
) -> None:
    # Two replicas. One stalls, with sent and acknowledged results in its open
    # transaction, just before committing them (a failpoint that sleeps past
    # max.poll.interval). Meanwhile kafka-python leaves the group for it and resets its
    # membership to generation -1 / member '', and the other replica takes its partitions
    # over and redoes their uncommitted records. A commit with that membership would be
    # accepted (the broker skips the generation check without one): every record of the
    # stalled transaction twice. It must abort instead.
    pipeline = make_eos_pipeline(partitions=3)
    survivor = pipeline.start_worker(EMOTION_STREAM_TRANSACTIONAL_ID=f"{pipeline.name}-replica-1")
    wait_until(
        lambda: bool(survivor.assigned_partitions()),
        WORKER_START_TIMEOUT_S,
        lambda: f"the first replica never got partitions\n{pipeline.describe()}",
    )
    stalled = pipeline.start_worker(
        EMOTION_STREAM_TRANSACTIONAL_ID=f"{pipeline.name}-replica-2",
        EMOTION_STREAM_MAX_POLL_INTERVAL_MS=str(EVICTING_POLL_INTERVAL_MS),
        # Its third transaction with results: after the group has settled on two members.
        EMOTION_STREAM_FAILPOINT=f"after_send:3:sleep={STALL_S:g}",
    )
    wait_until(
        lambda: bool(survivor.assigned_partitions()) and bool(stalled.assigned_partitions()),
        WORKER_START_TIMEOUT_S,
        lambda: f"the group never split the partitions\n{pipeline.describe()}",
    )
    feeder = pipeline.feed(FEED, FEED_RATE / 4)  # 16 s: the stall lands mid-feed
    _seed_poison(pipeline, POISON)
    wait_until(
        lambda: bool(stalled.events("failpoint stall over")) or not stalled.alive(),
        RESULTS_TIMEOUT_S,
        lambda: f"the stall never happened or never ended\n{stalled.log_tail()}",
    )
    assert stalled.alive(), stalled.log_tail()
    feeder.finish()
    report = _assert_exactly_once(pipeline, feeder.ids, "eos-evicted-before-commit")

    # It did find itself evicted at the commit, and aborted rather than committed.
    stall = stalled.events("failpoint hit: stalling")[0]
    refused = [
        event
        for event in stalled.events("transaction aborted, re-reading from the last commit")
        if "not a member of group" in str(event.get("error", ""))
    ]
    print(
        f"[eos-evicted-before-commit] stalled {stall['sleep_s']} s; aborted as a non-member: "
        f"{len(refused)}; {report.results} results, {report.duplicated_ids} duplicated"
    )
    assert refused, stalled.log_tail()
    assert survivor.alive() and stalled.alive(), pipeline.describe()
