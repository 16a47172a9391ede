"""Fault matrix, Kafka rows: the broker itself fails or refuses.

Each test runs ``emotion-stream worker`` subprocesses (:mod:`tests.support.pipeline`)
on a broker the test owns (tests/support/broker_fixtures.py, secure_fixtures.py), with
the session's real Triton server, seeds tweets with unique ids while the fault happens,
lets the group settle and reads results back ``read_committed``.

Rows (docs/guarantees.md): a single broker restarted (SIGTERM) or killed (SIGKILL), data
kept (and, through the transport alone, a transactional commit the killed broker never
answered); a 3-broker cluster (replication 3, min.insync.replicas 2) losing one broker
mid-stream; output or DLQ topic not authorized (ACLs). Bounded by the constants below.
"""

from __future__ import annotations

import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from tests.support.broker_fixtures import KafkaBrokerFactory, KafkaClusterFactory
from tests.support.delivery import check_delivery
from tests.support.fakes import NoRebalanceWork
from tests.support.pipeline import (
    AT_LEAST_ONCE,
    DELIVERY_MODES,
    EXACTLY_ONCE,
    Pipeline,
    PipelineFactory,
)
from tests.support.secure_fixtures import WORKER_USER, SecureKafkaFactory
from tests.support.topics import Feeder, TopicReader
from tests.support.waiting import wait_until
from worker.errors import TransactionOutcomeUnknown
from worker.messages import OutboundRecord
from worker.settings import WorkerSettings
from worker.transport import KafkaSource, TransactionalPublisher, transactions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WARM_UP = 20
FEED = 400  # the warm-up's ids start here; the faults' feeds after it
FEED_RATE = 20.0  # tweets/s
RESULTS_TIMEOUT_S = 180.0
SETTLE_TIMEOUT_S = 180.0
EXIT_TIMEOUT_S = 120.0
# The restart and cluster rows' feeds are timed by the fault, not by a guess at how long
# a broker restart takes on a loaded machine: each runs from before the fault until
# FAULT_TAIL tweets after the broker is back (the worker carries on with new input, not
# only a backlog), and the fault lands once FAULT_AFTER results of the feed are out (work
# in flight). FAULT_FEED_MAX bounds it: the broker's own start bound (180 s) at FEED_RATE.
FAULT_AFTER = 40
FAULT_TAIL = 60
FAULT_FEED_MAX = 3600


def _nothing_lost(pipeline: Pipeline, warm: list[str], feeder: Feeder, label: str) -> None:
    """The feed ended and the group settled: every id has a result (exactly once: one),
    none dead-lettered."""
    feeder.finish(timeout_s=RESULTS_TIMEOUT_S)
    pipeline.settle(SETTLE_TIMEOUT_S)
    report = check_delivery(
        pipeline,
        warm + feeder.ids,
        max_extra_results=0 if pipeline.exactly_once else feeder.sent,
        label=label,
    )
    assert report.dead_letters == 0


def _warm_up(pipeline: Pipeline) -> list[str]:
    return pipeline.warm_up(WARM_UP, first=FEED, timeout_s=RESULTS_TIMEOUT_S)


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
    carries on when the broker is back: no id lost. Exactly once, a commit the broker
    never answered is settled by a new producer and re-read from the broker's offsets."""
    broker = private_kafka_broker()
    pipeline = make_pipeline(
        partitions=3, bootstrap_servers=broker.bootstrap_servers, delivery=delivery
    )
    worker = pipeline.start_worker()
    warm = _warm_up(pipeline)

    feeder = pipeline.feed_across_a_fault(
        FEED_RATE, first=FEED + WARM_UP, tail=FAULT_TAIL, limit=FAULT_FEED_MAX
    )
    pipeline.wait_for_result_count(WARM_UP + FAULT_AFTER, RESULTS_TIMEOUT_S)
    sent_at_fault, faulted_at = feeder.sent, time.monotonic()
    if how == "kill":
        broker.kill()
    else:
        broker.stop()
    broker.start()
    down_s = time.monotonic() - faulted_at
    sent_when_back = feeder.fault_over()
    print(
        f"[broker-{how}-{delivery}] broker back after {down_s:.1f} s; fed {sent_at_fault} "
        f"before the fault, {sent_when_back - sent_at_fault} while it lasted"
    )
    assert sent_when_back > sent_at_fault, "nothing was fed while the broker was away"

    _nothing_lost(pipeline, warm, feeder, f"broker-{how}-{delivery}")
    assert worker.alive(), worker.log_tail()
    wait_until(
        lambda: worker.http_status("/readyz") == 200,
        RESULTS_TIMEOUT_S,
        lambda: f"not ready after the broker came back\n{worker.log_tail()}",
    )


def _visible(bootstrap_servers: str, topic: str) -> list[str]:
    """What a read_committed reader sees on ``topic``, from the start to its end."""
    reader = TopicReader(bootstrap_servers, topic)
    try:
        return sorted(record.value.decode() for record in reader.drain(SETTLE_TIMEOUT_S))
    finally:
        reader.close()


def test_a_transaction_the_broker_never_answers_is_settled_and_reread_from_its_offsets(
    private_kafka_broker: KafkaBrokerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transport under the restart row's exactly-once case, on a real broker (SIGKILLed
    while a commit is in flight, so its outcome is unknown to kafka-python): the commit
    without an answer raises TransactionOutcomeUnknown only once a new producer with the
    same id has settled the transaction; the group's offsets read back from the broker are
    where the worker resumes, and the new producer commits the redone work once."""
    # Shorter than the broker's start: the commit gets no answer in time.
    monkeypatch.setattr(transactions, "TRANSACTION_CALL_TIMEOUT_S", 1.0)
    broker = private_kafka_broker()
    servers = broker.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in ("in", "out", "dlq")])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=servers)
    for n in range(10):
        producer.send("in", value=str(n).encode())
    producer.flush(timeout=60)
    producer.close()
    settings = WorkerSettings(
        kafka_bootstrap_servers=servers,
        input_topic="in",
        output_topic="out",
        dlq_topic="dlq",
        consumer_group="settle",
        delivery="exactly_once",
        transactional_id="settle-1",
        retry_backoff_initial_s=0.5,
        retry_backoff_max_s=2.0,
    )
    partition = ("in", 0)

    def result(n: int) -> OutboundRecord:
        return OutboundRecord("out", b"k", f"r{n}".encode(), ())

    with (
        KafkaSource(settings, NoRebalanceWork()) as source,
        TransactionalPublisher(settings) as publisher,
    ):
        consumed: list[object] = []
        wait_until(
            lambda: bool(consumed.extend(source.poll(1.0))) or len(consumed) >= 10,
            RESULTS_TIMEOUT_S,
            "the input never arrived",
        )
        for n in range(5):
            publisher.send(result(n), lambda _error: None)
        assert publisher.flush(30)
        publisher.commit_transaction({partition: 5}, source.membership())
        assert source.committed_offsets({partition}) == {partition: 5}

        for n in range(5, 10):
            publisher.send(result(n), lambda _error: None)
        assert publisher.flush(30)
        membership = source.membership()
        outcome: list[BaseException] = []

        def commit() -> None:
            try:
                publisher.commit_transaction({partition: 10}, membership)
            except BaseException as error:  # handed to the test below
                outcome.append(error)

        broker.kill()
        committing = threading.Thread(target=commit, daemon=True)
        committing.start()
        broker.start()  # from this thread: the broker dies with the thread that started it
        committing.join(SETTLE_TIMEOUT_S)
        assert not committing.is_alive(), "the commit never came back"
        assert len(outcome) == 1 and isinstance(outcome[0], TransactionOutcomeUnknown), outcome
        assert not publisher.in_transaction
        # Killed before its commit reached the broker: the settlement aborted it.
        assert source.committed_offsets({partition}) == {partition: 5}
        assert _visible(servers, "out") == [f"r{n}" for n in range(5)]

        def a_stable_member() -> bool:
            source.poll(0.5)  # the consumer rejoins, if the restart cost it the group
            return not source.rebalancing

        wait_until(a_stable_member, RESULTS_TIMEOUT_S, "the consumer never rejoined")
        for n in range(5, 10):  # the worker's re-read, through the new producer
            publisher.send(result(n), lambda _error: None)
        assert publisher.flush(30)
        publisher.commit_transaction({partition: 10}, source.membership())
        assert source.committed_offsets({partition}) == {partition: 10}
    assert _visible(servers, "out") == [f"r{n}" for n in range(10)]


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

    # At half the rate: fencing the dead broker takes its session timeout (6 s).
    feeder = pipeline.feed_across_a_fault(
        FEED_RATE / 2, first=FEED + WARM_UP, tail=FAULT_TAIL, limit=FAULT_FEED_MAX
    )
    pipeline.wait_for_result_count(WARM_UP + FAULT_AFTER, RESULTS_TIMEOUT_S)
    victim = cluster.node(2)
    victim.kill()
    at_kill, sent_at_kill = len(pipeline.results.records), feeder.sent
    # Down for 60 more tweets (6 s at least: the dead broker's session timeout fences it
    # and leadership moves to the two in-sync replicas left).
    wait_until(lambda: feeder.sent >= sent_at_kill + 60, RESULTS_TIMEOUT_S, "feeder stalled")
    pipeline.results.poll()
    during = len(pipeline.results.records) - at_kill
    victim.start()
    feeder.fault_over()
    print(f"[cluster-lose-one-{delivery}] {during} results while the broker was down")

    _nothing_lost(pipeline, warm, feeder, f"cluster-lose-one-{delivery}")
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


# The ISR row: how long the output partition stays under min.insync.replicas (the issue
# asks for a minute or more), the unacknowledged bound the worker runs with, and the
# backlog waiting in the input meanwhile (several times the bound: without it, the worker
# would read and hold all of it).
ISR_OUTAGE_S = 60.0
ISR_BOUND = 300
ISR_BACKLOG = 2000
# What the bound allows on top of it: the batches at Triton and waiting when it was
# reached (batch window 128 x (2 in flight + 1)) and one poll's records.
ISR_SLACK = 128 * 3 + 64
# RSS growth allowed over the outage: the bounded records are ~1 kB each; the rest is the
# allocator and kafka-python's retry bookkeeping. Without the bound the worker held the
# whole backlog (issue 11: 40,000 records -> ~85 MB).
ISR_RSS_GROWTH_MIB = 40.0
ISR_TRITON_TIMEOUT_S = 60


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


# Kafka's defaults for its internal topics' partition counts (the embedded broker keeps them).
OFFSETS_TOPIC_PARTITIONS = 50
TRANSACTION_TOPIC_PARTITIONS = 50


def _java_string_hash(text: str) -> int:
    """Java's String.hashCode, which Kafka uses to place a group or transactional id."""
    value = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        value = (31 * value + int(unit, 16)) & 0xFFFFFFFF
    return value


def _coordinators(bootstrap_servers: str, group: str, transactional_id: str | None) -> set[int]:
    """The brokers coordinating ``group`` (and ``transactional_id``): the leaders of their
    partitions of ``__consumer_offsets`` (``__transaction_state``)."""
    wanted = {"__consumer_offsets": (group, OFFSETS_TOPIC_PARTITIONS)}
    if transactional_id is not None:
        wanted["__transaction_state"] = (transactional_id, TRANSACTION_TOPIC_PARTITIONS)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        described = admin.describe_topics(list(wanted))
    finally:
        admin.close()
    leaders = set()
    for topic in described:
        key, count = wanted[topic["name"]]
        partition = (_java_string_hash(key) & 0x7FFFFFFF) % count
        [found] = [p for p in topic["partitions"] if p["partition_index"] == partition]
        leaders.add(int(found["leader_id"]))
    return leaders


@pytest.mark.parametrize("delivery", DELIVERY_MODES)
def test_output_partition_below_min_insync_replicas_for_a_minute_keeps_memory_bounded(
    make_pipeline: PipelineFactory, kafka_cluster: KafkaClusterFactory, delivery: str
) -> None:
    """3 brokers; the output topic has three replicas and min.insync.replicas 3, so killing
    one broker leaves its ISR at 2, under the minimum: the broker refuses every write to it
    (NotEnoughReplicas) while the input, the DLQ, the group and the transaction log
    (min.insync.replicas 2) carry on. The broker killed is one that coordinates neither
    the group nor the transaction (that is the cluster row's fault). For a minute the
    worker can publish nothing: it must stop reading at max_unacknowledged_records (RSS
    flat, the backlog left in Kafka), and once the broker is back deliver everything, with
    duplicates bounded."""
    cluster = kafka_cluster(3, replication_factor=3, min_insync_replicas=2)
    pipeline = make_pipeline(
        partitions=1,
        bootstrap_servers=cluster.bootstrap_servers,
        create_topics=False,
        delivery=delivery,
        EMOTION_STREAM_MAX_UNACKNOWLEDGED_RECORDS=str(ISR_BOUND),
        # Exactly-once rides out an outage shorter than its transaction timeout (the broker
        # aborts a transaction open longer); a 60 s Triton deadline makes it 123 s.
        EMOTION_STREAM_TRITON_TIMEOUT_S=str(ISR_TRITON_TIMEOUT_S),
    )
    pipeline.create_topics(pipeline.input_topic, pipeline.dlq_topic, replication_factor=3)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    try:
        admin.create_topics(
            [
                NewTopic(
                    pipeline.output_topic,
                    num_partitions=1,
                    replication_factor=3,
                    topic_configs={"min.insync.replicas": "3"},
                )
            ]
        )
        admin.wait_for_topics([pipeline.output_topic], timeout_ms=30_000)
    finally:
        admin.close()
    worker = pipeline.start_worker()
    warm = _warm_up(pipeline)
    rss_before = _rss_mib(worker.pid)
    transactional_id = f"{pipeline.group}-{pipeline.name}-worker-1"
    coordinators = _coordinators(
        cluster.bootstrap_servers,
        pipeline.group,
        transactional_id if pipeline.exactly_once else None,
    )
    victim = cluster.node(max({1, 2, 3} - coordinators))

    victim.kill()
    killed_at = time.monotonic()
    backlog = pipeline.seed(ISR_BACKLOG, first=FEED + WARM_UP)
    peak, samples = rss_before, 0
    while time.monotonic() - killed_at < ISR_OUTAGE_S:
        assert worker.alive(), worker.log_tail()
        peak = max(peak, _rss_mib(worker.pid))
        samples += 1
        time.sleep(1.0)
    pipeline.results.poll()
    during = len(pipeline.results.records) - len(warm)
    summaries = [e for e in worker.events("throughput") if "unacknowledged" in e]
    most_pending = max((int(e["pending"]) for e in summaries), default=0)
    victim.start()

    pipeline.settle(SETTLE_TIMEOUT_S + RESULTS_TIMEOUT_S)
    report = check_delivery(
        pipeline,
        warm + backlog,
        max_extra_results=0 if pipeline.exactly_once else ISR_BOUND + ISR_SLACK,
        label=f"isr-below-min-{delivery}",
    )
    assert worker.alive(), worker.log_tail()
    growth = peak - rss_before
    print(
        f"[isr-below-min-{delivery}] outage {ISR_OUTAGE_S:.0f} s: {during} results meanwhile, "
        f"at most {most_pending} records pending (bound {ISR_BOUND}), worker RSS "
        f"{rss_before:.0f} -> peak {peak:.0f} MiB (+{growth:.1f}, {samples} samples), "
        f"{report.extra_results} duplicates"
    )
    assert most_pending <= ISR_BOUND + ISR_SLACK, f"{most_pending} pending\n{worker.log_tail()}"
    assert growth <= ISR_RSS_GROWTH_MIB, f"RSS grew {growth:.1f} MiB\n{worker.log_tail()}"
