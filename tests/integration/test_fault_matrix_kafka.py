"""Fault matrix, Kafka rows: the broker itself fails or refuses.

Each test runs ``emotion-stream worker`` subprocesses (:mod:`tests.support.pipeline`)
on a broker the test owns (tests/support/broker_fixtures.py, secure_fixtures.py), with
the session's real Triton server, seeds tweets with unique ids while the fault happens,
lets the group settle and reads results back ``read_committed``.

Rows (README "Guarantees"): a single broker restarted (SIGTERM) or killed (SIGKILL), data
kept; a 3-broker cluster (replication 3, min.insync.replicas 2) losing one broker
mid-stream; output or DLQ topic not authorized (ACLs). Bounded by the constants below.
"""

from __future__ import annotations

import pytest

from tests.support.broker_fixtures import KafkaBrokerFactory, KafkaClusterFactory
from tests.support.pipeline import (
    AT_LEAST_ONCE,
    DELIVERY_MODES,
    EXACTLY_ONCE,
    Pipeline,
    PipelineFactory,
    check_delivery,
    wait_until,
)
from tests.support.secure_fixtures import WORKER_USER, SecureKafkaFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = 20
FEED = 400
FEED_RATE = 20.0  # 20 s of feed: the fault and the recovery land inside it
RESULTS_TIMEOUT_S = 180.0
SETTLE_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 120.0


def _warm_up(pipeline: Pipeline) -> list[str]:
    ids = pipeline.seed(WARM_UP, first=FEED)
    pipeline.wait_for_results(ids, RESULTS_TIMEOUT_S)
    return ids


@pytest.mark.parametrize(
    ("how", "delivery"),
    [
        ("restart", AT_LEAST_ONCE),
        ("kill", AT_LEAST_ONCE),
        ("restart", EXACTLY_ONCE),
        ("kill", EXACTLY_ONCE),
    ],
)
def test_broker_restart_or_crash_mid_stream_loses_nothing(
    make_pipeline: PipelineFactory,
    private_kafka_broker: KafkaBrokerFactory,
    how: str,
    delivery: str,
) -> None:
    """The only broker goes away mid-feed (SIGTERM then start, or SIGKILL then start),
    keeping its data. The worker backs off, keeps its uncommitted work uncommitted, and
    carries on when the broker is back: no id lost."""
    broker = private_kafka_broker()
    pipeline = make_pipeline(
        partitions=3, bootstrap_servers=broker.bootstrap_servers, delivery=delivery
    )
    worker = pipeline.start_worker()
    warm = _warm_up(pipeline)

    feeder = pipeline.feed(FEED, FEED_RATE)
    pipeline.wait_for_result_count(WARM_UP + 40, RESULTS_TIMEOUT_S)
    if how == "kill":
        broker.kill()
    else:
        broker.stop()
    broker.start()
    assert feeder.sent < FEED, "the broker came back after the feed"

    feeder.finish(timeout_s=RESULTS_TIMEOUT_S)
    pipeline.settle(SETTLE_TIMEOUT_S)
    report = check_delivery(
        pipeline,
        warm + feeder.ids,
        max_extra_results=0 if pipeline.exactly_once else FEED,
        label=f"broker-{how}-{delivery}",
    )
    assert report.dead_letters == 0
    assert worker.alive(), worker.log_tail()
    wait_until(
        lambda: worker.http_status("/readyz") == 200,
        RESULTS_TIMEOUT_S,
        lambda: f"not ready after the broker came back\n{worker.log_tail()}",
    )


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_cluster_losing_one_of_three_brokers_mid_stream_loses_nothing(
    make_pipeline: PipelineFactory, kafka_cluster: KafkaClusterFactory, delivery: str
) -> None:
    """Replication 3, min.insync.replicas 2: with one broker killed, acks=all still
    succeeds on the other two; leadership moves and the worker follows. The broker comes
    back (same data) and rejoins. No id lost."""
    cluster = kafka_cluster(3, replication_factor=3, min_insync_replicas=2)
    pipeline = make_pipeline(
        partitions=3,
        bootstrap_servers=cluster.bootstrap_servers,
        create_topics=False,
        delivery=delivery,
    )
    pipeline.create_topics(
        pipeline.input_topic, pipeline.output_topic, pipeline.dlq_topic, replication_factor=3
    )
    # The group's offsets topic is created (replicated 3 times) on first use: while all
    # three brokers run.
    worker = pipeline.start_worker()
    warm = _warm_up(pipeline)

    # 40 s of feed: fencing the dead broker takes its session timeout (6 s), a restart more.
    feeder = pipeline.feed(FEED, FEED_RATE / 2)
    pipeline.wait_for_result_count(WARM_UP + 40, RESULTS_TIMEOUT_S)
    victim = cluster.node(2)
    victim.kill()
    at_kill, sent_at_kill = len(pipeline.results.records), feeder.sent
    # Down for 60 more tweets (6 s at least: the dead broker's session timeout fences it
    # and leadership moves to the two in-sync replicas left).
    wait_until(lambda: feeder.sent >= sent_at_kill + 60, RESULTS_TIMEOUT_S, "feeder stalled")
    pipeline.results.poll()
    during = len(pipeline.results.records) - at_kill
    victim.start()
    print(f"[cluster-lose-one-{delivery}] {during} results while the broker was down")
    assert feeder.sent < FEED, "the broker came back after the feed"

    feeder.finish(timeout_s=RESULTS_TIMEOUT_S)
    pipeline.settle(SETTLE_TIMEOUT_S)
    report = check_delivery(
        pipeline,
        warm + feeder.ids,
        max_extra_results=0 if pipeline.exactly_once else FEED,
        label=f"cluster-lose-one-{delivery}",
    )
    assert report.dead_letters == 0
    assert worker.alive(), worker.log_tail()


@pytest.mark.parametrize(
    ("refused", "delivery"),
    [
        ("output", AT_LEAST_ONCE),
        ("dlq", AT_LEAST_ONCE),
        ("output", EXACTLY_ONCE),
        ("dlq", EXACTLY_ONCE),
    ],
)
def test_output_or_dlq_topic_not_authorized_commits_nothing_and_stops_clearly(
    make_pipeline: PipelineFactory,
    secure_kafka_broker: SecureKafkaFactory,
    refused: str,
    delivery: str,
) -> None:
    """The worker may read its input but an ACL denies it writing the output (or DLQ)
    topic. Authorization is not transient: the worker stops with exit code 1 and an
    error naming the topic, having committed nothing past the refused record."""
    secure = secure_kafka_broker(authorizer=True)
    pipeline = make_pipeline(bootstrap_servers=secure.bootstrap_servers, delivery=delivery)
    denied = pipeline.output_topic if refused == "output" else pipeline.dlq_topic
    allowed = pipeline.dlq_topic if refused == "output" else pipeline.output_topic
    secure.allow_worker(
        input_topic=pipeline.input_topic,
        group=pipeline.group,
        output_topics=[allowed],
        # Exactly-once: its transactional ids (<group>-<worker id>) may be used.
        transactional_id_prefix=pipeline.group if pipeline.exactly_once else None,
    )
    secure.deny(WORKER_USER, ["write"], "topic", denied)

    ids = pipeline.seed(5)
    pipeline.send_raw(b"poison", b'{"id": "poison", "no": "text"}')  # offset 5
    pipeline.seed(5, first=5)
    worker = pipeline.start_worker(**secure.worker_env())

    assert worker.wait(EXIT_TIMEOUT_S) == 1, worker.log_tail()
    log = worker.log()
    assert f"Kafka {denied} failed" in log, worker.log_tail()
    assert "TopicAuthorizationFailedError" in log, worker.log_tail()
    first_refused = 0 if refused == "output" else 5
    committed = pipeline.committed_offsets().get(0, 0)
    assert committed <= first_refused, f"committed {committed} past a refused record"
    pipeline.results.drain(SETTLE_TIMEOUT_S)
    if refused == "dlq":
        # Results before the poison are fine to have been published (and may be again).
        published = {r.key for r in pipeline.results.records}
        assert published <= {i.encode() for i in ids} | {
            pipeline.tweet_id(n).encode() for n in range(5, 10)
        }
    else:
        assert pipeline.results.records == []
    print(f"[acl-{refused}-{delivery}] exit 1, committed {committed}")
