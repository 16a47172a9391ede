"""Fault matrix, worker rows: what happens to the worker processes themselves.

Each test runs ``emotion-stream worker`` subprocesses (:mod:`tests.support.pipeline`)
against the real Kafka broker and the real Triton server (tiny exported model), seeds
tweets with unique ids while the fault happens, lets the group settle (every input
offset committed), reads results and dead letters back with a ``read_committed``
consumer and checks the invariants: no id lost, duplicates within the row's bound.

Rows (docs/guarantees.md): SIGTERM rolling restart; replicas 1 → 3 → 1 while
producing; SIGKILL mid-stream; SIGSTOP past the session timeout then SIGCONT (zombie).
Every wait is bounded; the bounds are the constants below.
"""

from __future__ import annotations

import json

import pytest

from tests.support.delivery import check_delivery
from tests.support.pipeline import DELIVERY_MODES, Pipeline, PipelineFactory
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = 20  # tweets classified before the fault: the workers are known to be running
FEED = 600
# tweets/s: the feed lasts 30 s, long enough for worker start-ups (seconds each on a
# loaded machine) and the faults to land inside it.
FEED_RATE = 20.0
RESULTS_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 120.0
# kafka-python's default session.timeout.ms (the worker does not change it): a member
# silent for longer is evicted and its partitions handed to the others.
SESSION_TIMEOUT_S = 45.0


def _warm_up(pipeline: Pipeline) -> list[str]:
    """A few tweets classified: the group is up and consuming (numbered after the feed)."""
    return pipeline.warm_up(WARM_UP, first=FEED, timeout_s=RESULTS_TIMEOUT_S)


def _stop_politely(pipeline: Pipeline, worker: WorkerRun) -> None:
    worker.terminate()
    assert worker.wait(EXIT_TIMEOUT_S) == 0, worker.log_tail()


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_sigterm_rolling_restart_makes_no_duplicates(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    """Two replicas replaced one at a time (start the new one, SIGTERM the old one) while
    tweets arrive: every stop commits what it published, so nothing is classified twice."""
    pipeline = make_pipeline(
        partitions=3, delivery=delivery, EMOTION_STREAM_COMMIT_INTERVAL_MS="200"
    )
    old = [pipeline.start_worker(), pipeline.start_worker()]
    pipeline.wait_holding(old)
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE)
    pipeline.wait_for_result_count(WARM_UP + FEED // 6, RESULTS_TIMEOUT_S)
    for retiring in old:
        replacement = pipeline.start_worker()
        pipeline.wait_holding([replacement])
        _stop_politely(pipeline, retiring)
    assert feeder.sent < FEED, "the restarts came after the feed"

    feeder.finish()
    pipeline.settle(SETTLE_TIMEOUT_S)
    check_delivery(
        pipeline, warm + feeder.ids, max_extra_results=0, label=f"rolling-restart-{delivery}"
    )
    assert all(run.alive() for run in pipeline.runs[2:]), pipeline.describe()


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_replicas_one_to_three_to_one_while_producing_loses_nothing(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    """Scale out to three replicas and back to one (SIGTERM) in the middle of a feed."""
    pipeline = make_pipeline(
        partitions=3, delivery=delivery, EMOTION_STREAM_COMMIT_INTERVAL_MS="200"
    )
    first = pipeline.start_worker()
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE)
    pipeline.wait_for_result_count(WARM_UP + FEED // 6, RESULTS_TIMEOUT_S)
    added = [pipeline.start_worker(), pipeline.start_worker()]
    group = [first, *added]
    pipeline.wait_holding(group)
    # Each of the three owns one partition now: all of them classify part of the feed.
    wait_until(
        lambda: all(w.metric("emotion_worker_consumed_total") > 0 for w in group),
        RESULTS_TIMEOUT_S,
        lambda: f"not all three replicas consumed\n{pipeline.describe()}",
    )
    for worker in added:
        _stop_politely(pipeline, worker)
    assert feeder.sent < FEED, "the scaling came after the feed"

    feeder.finish()
    pipeline.settle(SETTLE_TIMEOUT_S)
    check_delivery(
        pipeline, warm + feeder.ids, max_extra_results=0, label=f"scale-1-3-1-{delivery}"
    )
    assert first.alive(), first.log_tail()
    assert first.assigned_partitions() == {0, 1, 2}, first.log_tail()


# Small batches, a commit after every loop turn: a crash finds little uncommitted work.
CRASH_SETTINGS = {
    "EMOTION_STREAM_COMMIT_INTERVAL_MS": "0",
    "EMOTION_STREAM_MAX_BATCH_SIZE": "8",
    "EMOTION_STREAM_MAX_IN_FLIGHT_BATCHES": "2",
}
# The crash comes on this hit of its failpoint: inside the feed.
CRASH_ON_HIT = 12


@pytest.mark.parametrize("failpoint", ["after_inference", "after_send", "during_commit"])
def test_sigkill_at_a_failpoint_then_restart_loses_nothing(
    make_pipeline: PipelineFactory, failpoint: str
) -> None:
    """The worker SIGKILLs itself at an exact step (worker/failpoints.py): after a batch's
    inference, after its results were acknowledged but before the commit, or right
    before the commit call. A restarted worker redoes what was not committed: no id
    lost, and the only duplicates are results published past the committed offsets."""
    pipeline = make_pipeline(partitions=3, **CRASH_SETTINGS)
    doomed = pipeline.start_worker(EMOTION_STREAM_FAILPOINT=f"{failpoint}:{CRASH_ON_HIT}")
    # Consuming before the feed starts: on a busy machine a slow start-up let the whole
    # feed go out first, and the crash came after it.
    pipeline.wait_holding([doomed])
    feeder = pipeline.feed(FEED, FEED_RATE)
    exit_code = doomed.wait(RESULTS_TIMEOUT_S)
    assert exit_code == -9, doomed.log_tail()
    assert doomed.events("failpoint hit: killing this process with SIGKILL"), doomed.log_tail()
    assert feeder.sent < FEED, "the crash came after the feed"
    redo = pipeline.published_past_the_commit(SETTLE_TIMEOUT_S)

    pipeline.start_worker()  # same settings, no failpoint
    feeder.finish()
    pipeline.settle(SETTLE_TIMEOUT_S)
    report = check_delivery(
        pipeline, feeder.ids, max_extra_results=redo, label=f"sigkill-{failpoint}"
    )
    print(f"[sigkill-{failpoint}] {redo} results were past the commit at the crash")
    # The restart re-reads from the committed offsets: every result past them once more,
    # and nothing else.
    assert report.extra_results == redo, pipeline.describe()
    assert report.dead_letters == 0


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_zombie_worker_stopped_past_the_session_timeout_rejoins_without_loss(
    make_pipeline: PipelineFactory, delivery: str
) -> None:
    """SIGSTOP one of two replicas for longer than the session timeout: the group evicts it
    and the other takes its partitions over. After SIGCONT the zombie learns that it lost
    them: at least once, its commits are rejected, it drops their work and rejoins;
    exactly once, its transaction cannot commit (the group generation moved on: KIP-447),
    so whatever it had published is never visible. No loss, no crash loop."""
    pipeline = make_pipeline(
        partitions=3, delivery=delivery, EMOTION_STREAM_COMMIT_INTERVAL_MS="200"
    )
    zombie, survivor = pipeline.start_worker(), pipeline.start_worker()
    pipeline.wait_holding([zombie, survivor])
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE / 3)  # 90 s: the eviction happens mid-feed
    pipeline.wait_for_result_count(WARM_UP + FEED // 10, RESULTS_TIMEOUT_S)
    zombie_partitions = zombie.assigned_partitions()
    zombie.pause()
    # Where the survivor will start reading the zombie's partitions: the zombie cannot
    # commit while it is stopped.
    committed_at_pause = pipeline.committed_offsets()
    try:
        wait_until(
            lambda: survivor.assigned_partitions() == {0, 1, 2},
            SESSION_TIMEOUT_S + RESULTS_TIMEOUT_S,
            lambda: f"the survivor never took every partition over\n{pipeline.describe()}",
        )
    finally:
        zombie.resume()

    # Back from the dead: it finds out it lost the partitions (or, exactly once, that it
    # was fenced, and exits 1 to be restarted cleanly).
    wait_until(
        lambda: bool(zombie.events("partitions lost")) or not zombie.alive(),
        RESULTS_TIMEOUT_S,
        lambda: f"the zombie never noticed it lost its partitions\n{zombie.log_tail()}",
    )
    stale = zombie.events("commit rejected: the group rebalanced")
    aborted = zombie.events("transaction aborted, re-reading from the last commit")
    print(
        f"[zombie-{delivery}] stale commits rejected: {len(stale)}, transactions aborted: "
        f"{len(aborted)}, alive: {zombie.alive()}"
    )
    if not pipeline.exactly_once:
        # Its first commit after SIGCONT still carries the generation the group left
        # behind: the broker must refuse it (kafka-python sends an at-least-once commit
        # only with a generation; exactly once, the transaction aborts instead).
        wait_until(
            lambda: bool(zombie.events("commit rejected: the group rebalanced")),
            RESULTS_TIMEOUT_S,
            lambda: f"the zombie's stale commit was not rejected\n{zombie.log_tail()}",
        )
    if zombie.alive():
        pipeline.wait_holding([zombie, survivor])
    else:
        assert pipeline.exactly_once, "at least once, a zombie rejoins\n" + zombie.log_tail()
        assert zombie.wait(0) == 1, zombie.log_tail()
        assert "fenced" in zombie.log(), zombie.log_tail()
        pipeline.start_worker()  # what its supervisor does
    feeder.finish()
    pipeline.settle(SETTLE_TIMEOUT_S)
    # At least once, duplicates come only from the zombie's partitions, past their
    # committed offsets when it stopped (what the group had to hand over unfinished), and
    # no record has more than two results.
    sources: dict[str, list[tuple[int, int]]] = {}
    for record in pipeline.results.records:
        result = json.loads(record.value)
        where = (int(result["source"]["partition"]), int(result["source"]["offset"]))
        sources.setdefault(str(result["id"]), []).append(where)
    unfinished = {
        ids[0]
        for ids in sources.values()
        if ids[0][0] in zombie_partitions and ids[0][1] >= committed_at_pause.get(ids[0][0], 0)
    }
    report = check_delivery(
        pipeline,
        warm + feeder.ids,
        max_extra_results=0 if pipeline.exactly_once else len(unfinished),
        label=f"zombie-{delivery}",
    )
    for tweet_id, where in sources.items():
        if len(where) > 1:
            assert len(where) == 2 and where[0] in unfinished, (tweet_id, where, unfinished)
    print(
        f"[zombie-{delivery}] {len(unfinished)} records of the zombie's partitions "
        f"{sorted(zombie_partitions)} were past the commit at the pause (committed "
        f"{committed_at_pause}); {report.extra_results} duplicated"
    )
    assert survivor.alive(), pipeline.describe()
    # No crash loop and no rebalance storm: a handful of assignments, not dozens.
    assert all(run.rebalances() <= 4 for run in pipeline.runs), pipeline.describe()
    assert sum(not run.alive() for run in pipeline.runs) <= 1, pipeline.describe()
