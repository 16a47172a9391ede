"""Kafka errors translated once, at the edge: retriable -> transient, too large -> poison."""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import kafka.errors
import pytest
from hypothesis import given, settings
from kafka.coordinator.base import Generation
from kafka.coordinator.consumer import ConsumerCoordinator
from kafka.structs import ConsumerGroupMetadata, MemberState

from worker.errors import (
    BrokerUnavailable,
    FatalError,
    ProducerFenced,
    RecordTooLarge,
    TransactionAborted,
    TransactionOutcomeUnknown,
    TransientError,
)
from worker.messages import OutboundRecord
from worker.settings import WorkerSettings
from worker.transport import (
    PRODUCER_MAX_REQUEST_BYTES,
    KafkaPublisher,
    KafkaSource,
    TopicLimits,
    TransactionalPublisher,
    not_a_member,
    record_size,
    translate_kafka_error,
)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kafka.errors.KafkaTimeoutError("slow"), BrokerUnavailable),
        (kafka.errors.NotLeaderForPartitionError(), BrokerUnavailable),
        (kafka.errors.KafkaConnectionError("refused"), BrokerUnavailable),
        (ConnectionRefusedError("refused"), BrokerUnavailable),
        (kafka.errors.MessageSizeTooLargeError("2 MB"), RecordTooLarge),
        (kafka.errors.TopicAuthorizationFailedError(), FatalError),
        (kafka.errors.IllegalStateError("closed"), FatalError),
        (ValueError("bug"), FatalError),
    ],
)
def test_kafka_errors_translate(error: Exception, kind: type[Exception]) -> None:
    translated = translate_kafka_error(error, "send to emotions")
    assert type(translated) is kind
    assert "emotions" in str(translated)


def test_a_bootstrap_timeout_after_a_refused_login_is_fatal_and_names_the_settings() -> None:
    """kafka-python only logs the refusal and then times out: that must not read as an outage."""
    import logging  # noqa: PLC0415 - local to this test

    from worker.transport import translation  # noqa: PLC0415

    timeout = kafka.errors.KafkaTimeoutError("Unable to bootstrap from 127.0.0.1:9093")
    assert isinstance(translate_kafka_error(timeout, "consumer start"), BrokerUnavailable)
    refusal = kafka.errors.SaslAuthenticationFailedError("invalid credentials")
    try:
        logging.getLogger("kafka.net.manager").error("Connection failed: %s", refusal)
        error = translate_kafka_error(timeout, "consumer start")
        assert isinstance(error, FatalError)
        assert "refused the login" in str(error) and "invalid credentials" in str(error)
        assert "EMOTION_STREAM_SASL_PASSWORD" in str(error)
        # A password from a mounted Secret (the Helm chart's way) is named too.
        assert "EMOTION_STREAM_SASL_PASSWORD_FILE" in str(error)
        # Past the start, a timeout (a broker restarting) stays an outage to retry.
        assert isinstance(translate_kafka_error(timeout, "send to emotions"), BrokerUnavailable)
    finally:
        translation._login_failures.forget()  # later tests must see a plain timeout


def test_the_refusal_is_seen_whatever_the_log_level(caplog: pytest.LogCaptureFixture) -> None:
    """kafka-python logs a refused bootstrap at WARNING; with the root logger at ERROR (the
    worker's ``LOG_LEVEL=error``) the watch still sees it, and the line stays unlogged."""
    import logging  # noqa: PLC0415 - local to this test

    from worker.transport import translation  # noqa: PLC0415

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        refusal = kafka.errors.SaslAuthenticationFailedError("invalid credentials")
        with caplog.at_level(logging.ERROR):
            logging.getLogger("kafka.net.manager").warning(
                "Bootstrap connection to %s failed: %s", "bootstrap-0", refusal
            )
        timeout = kafka.errors.KafkaTimeoutError("Unable to bootstrap")
        assert isinstance(translate_kafka_error(timeout, "consumer start"), FatalError)
        assert "Bootstrap connection" not in caplog.text, "filtered as the root level says"
    finally:
        root.setLevel(level)
        translation._login_failures.forget()


def test_a_refused_broker_certificate_counts_as_a_refused_login() -> None:
    import logging  # noqa: PLC0415 - local to this test
    import ssl  # noqa: PLC0415

    from worker.transport import translation  # noqa: PLC0415

    try:
        # As kafka-python raises it: inside the handler of the ssl error.
        tls = ssl.SSLCertVerificationError("certificate verify failed")
        wrapped = kafka.errors.KafkaConnectionError(f"Handshake failed: {tls}")
        wrapped.__context__ = tls
        logging.getLogger("kafka.net.manager").error("Connection failed: %s", wrapped)
        timeout = kafka.errors.KafkaTimeoutError("Unable to bootstrap")
        error = translate_kafka_error(timeout, "producer start")
        assert isinstance(error, FatalError)
        assert "certificate verify failed" in str(error)
        assert "EMOTION_STREAM_SSL_CAFILE" in str(error)
    finally:
        translation._login_failures.forget()


def _publisher() -> TransactionalPublisher:
    # Limits read as unknown (the producer's cap): the default reader would wait 30 s for
    # a broker on localhost:9092 at the first send.
    return TransactionalPublisher(
        WorkerSettings(delivery="exactly_once", transactional_id="w-1"), lambda topics: {}
    )


@pytest.mark.parametrize(
    "error",
    [
        kafka.errors.ProducerFencedError(),
        kafka.errors.InvalidProducerEpochError(),
        # How kafka-python reports a send after the producer was fenced.
        kafka.errors.KafkaError("Cannot perform send", kafka.errors.ProducerFencedError()),
    ],
)
def test_fencing_is_recognised_however_it_is_reported(error: Exception) -> None:
    translated = _publisher()._translate(error, "commit")
    assert isinstance(translated, ProducerFenced)
    assert "'w-1'" in str(translated) and "took over" in str(translated)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (kafka.errors.CommitFailedError("stale generation"), TransactionAborted),
        (kafka.errors.KafkaTimeoutError("slow"), TransactionAborted),
        (kafka.errors.NotLeaderForPartitionError(), TransactionAborted),
        (kafka.errors.MessageSizeTooLargeError("2 MB"), RecordTooLarge),
        (kafka.errors.TransactionalIdAuthorizationFailedError(), FatalError),
    ],
)
def test_transactional_errors_translate(error: Exception, kind: type[Exception]) -> None:
    translated = _publisher()._translate(error, "emotions")
    assert type(translated) is kind
    assert "emotions" in str(translated)


def test_transactional_errors_are_transient_so_the_loop_aborts_and_rereads() -> None:
    assert issubclass(TransactionAborted, TransientError)
    assert issubclass(ProducerFenced, FatalError)


class _FakeFuture:
    def __init__(self) -> None:
        self.callbacks: list[Any] = []
        self.errbacks: list[Any] = []

    def add_callback(self, fn: Any) -> None:
        self.callbacks.append(fn)

    def add_errback(self, fn: Any) -> None:
        self.errbacks.append(fn)


class _FakeTransactionalProducer:
    """Records the order of kafka-python's transactional calls."""

    def __init__(self, fail_commit: Exception | None = None) -> None:
        self.calls: list[str] = []
        self.fail_commit = fail_commit
        self.futures: list[_FakeFuture] = []
        # Set to hold commit and abort as kafka-python does while the broker is away.
        self.unanswered: threading.Event | None = None
        # What init_transactions raises, one per call, before it succeeds.
        self.init_failures: list[Exception] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def init_transactions(self) -> None:
        self.calls.append("init")
        if self.init_failures:
            raise self.init_failures.pop(0)

    def close(self, timeout: float | None = None) -> None:
        self.calls.append("close")

    def send(self, topic: str, **_: Any) -> _FakeFuture:
        self.calls.append(f"send {topic}")
        self.futures.append(_FakeFuture())
        return self.futures[-1]

    def send_offsets_to_transaction(self, offsets: dict[Any, Any], membership: Any) -> None:
        described = sorted((tp.topic, tp.partition, meta.offset) for tp, meta in offsets.items())
        self.calls.append(f"offsets {described} {membership}")

    def commit_transaction(self) -> None:
        self.calls.append("commit")
        if self.unanswered is not None:
            self.unanswered.wait(30)
        if self.fail_commit is not None:
            raise self.fail_commit

    def abort_transaction(self) -> None:
        self.calls.append("abort")
        if self.unanswered is not None:
            self.unanswered.wait(30)


def _with_producer(producer: _FakeTransactionalProducer) -> TransactionalPublisher:
    publisher = _publisher()
    publisher._producer = producer
    return publisher


def _record(topic: str) -> OutboundRecord:
    return OutboundRecord(topic=topic, key=b"k", value=b"{}", headers=())


def test_a_transaction_opens_with_the_first_send_and_commits_with_its_offsets() -> None:
    producer = _FakeTransactionalProducer()
    publisher = _with_producer(producer)
    acks: list[BaseException | None] = []
    assert not publisher.in_transaction
    publisher.send(_record("emotions"), acks.append)
    publisher.send(_record("tweets.dlq"), acks.append)
    assert publisher.in_transaction
    for future in producer.futures:
        future.callbacks[0](object())
    assert acks == [None, None]
    publisher.commit_transaction({("tweets", 0): 12}, "generation-3")
    assert producer.calls == [
        "begin",
        "send emotions",
        "send tweets.dlq",
        "offsets [('tweets', 0, 12)] generation-3",
        "commit",
    ]
    assert not publisher.in_transaction
    publisher.commit_transaction({("tweets", 0): 12}, "generation-3")  # nothing open: no-op
    publisher.abort_transaction()
    assert producer.calls[-1] == "commit"


def test_a_fenced_commit_raises_producer_fenced_and_a_stale_one_asks_for_an_abort() -> None:
    fenced = _with_producer(_FakeTransactionalProducer(kafka.errors.ProducerFencedError()))
    fenced.send(_record("emotions"), lambda _error: None)
    with pytest.raises(ProducerFenced):
        fenced.commit_transaction({("tweets", 0): 1}, "generation-1")

    stale_error = kafka.errors.CommitFailedError("generation mismatch")
    stale = _with_producer(_FakeTransactionalProducer(stale_error))
    stale.send(_record("emotions"), lambda _error: None)
    with pytest.raises(TransactionAborted):
        stale.commit_transaction({("tweets", 0): 1}, "generation-1")
    assert stale.in_transaction  # still open: the worker aborts it
    stale.abort_transaction()
    assert not stale.in_transaction


def test_a_failed_send_reports_a_translated_error_through_the_callback() -> None:
    producer = _FakeTransactionalProducer()
    publisher = _with_producer(producer)
    errors: list[BaseException | None] = []
    publisher.send(_record("emotions"), errors.append)
    producer.futures[0].errbacks[0](kafka.errors.ProducerFencedError())
    assert len(errors) == 1 and isinstance(errors[0], ProducerFenced)


def test_a_producer_start_that_times_out_is_retried_not_aborted() -> None:
    translated = _publisher()._translate(kafka.errors.KafkaTimeoutError("slow"), "producer start")
    assert type(translated) is BrokerUnavailable


@contextlib.contextmanager
def _settling_publisher(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[
    tuple[TransactionalPublisher, list[_FakeTransactionalProducer], _FakeTransactionalProducer]
]:
    """A publisher whose producer never answers a transactional call, the producers it
    makes after that one (listed), and the hung one, which answers once the block ends."""
    hung = _FakeTransactionalProducer()
    hung.unanswered = threading.Event()
    from worker.transport import transactions  # noqa: PLC0415

    monkeypatch.setattr(transactions, "TRANSACTION_CALL_TIMEOUT_S", 0.2)
    publisher = TransactionalPublisher(
        WorkerSettings(
            delivery="exactly_once",
            transactional_id="w-1",
            retry_backoff_initial_s=0.01,
            retry_backoff_max_s=0.02,
        ),
        lambda topics: {},
    )
    publisher._producer = hung
    made: list[_FakeTransactionalProducer] = []

    def new_producer(**extra: Any) -> _FakeTransactionalProducer:
        assert extra["transactional_id"] == "w-1"  # the same id: it fences the hung one
        made.append(_FakeTransactionalProducer())
        return made[-1]

    monkeypatch.setattr(publisher, "_new_producer", new_producer)
    try:
        yield publisher, made, hung
    finally:
        hung.unanswered.set()


def test_an_unanswered_commit_settles_through_a_new_producer_and_says_the_outcome_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _settling_publisher(monkeypatch) as (publisher, made, hung):
        publisher.send(_record("emotions"), lambda _error: None)
        with pytest.raises(TransactionOutcomeUnknown, match="outcome is unknown") as commit:
            publisher.commit_transaction({("tweets", 0): 1}, "generation-1")
        # The loop's abort-and-re-read path handles it, re-reading the broker's offsets.
        assert isinstance(commit.value, TransactionAborted)
        assert hung.calls[-2:] == ["commit", "close"]
        assert [p.calls for p in made] == [["init"]] and publisher._producer is made[0]
        assert not publisher.in_transaction
        publisher.abort_transaction()  # nothing open any more: the loop's abort is a no-op
        assert made[0].calls == ["init"]
        publisher.send(_record("emotions"), lambda _error: None)  # a new transaction
        assert made[0].calls == ["init", "begin", "send emotions"]


def test_settling_retries_init_transactions_while_the_broker_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    away = kafka.errors.KafkaTimeoutError("Timeout expired while initializing transactional state")
    with _settling_publisher(monkeypatch) as (publisher, made, _hung):
        original = publisher._new_producer

        def away_twice(**extra: Any) -> _FakeTransactionalProducer:
            producer: _FakeTransactionalProducer = original(**extra)
            producer.init_failures = [away, away]
            return producer

        monkeypatch.setattr(publisher, "_new_producer", away_twice)
        publisher.send(_record("emotions"), lambda _error: None)
        with pytest.raises(TransactionOutcomeUnknown):
            publisher.commit_transaction({("tweets", 0): 1}, "generation-1")
        # One new producer, asked again after each timeout (kafka-python waits on for the
        # first request's answer): nothing sent, nothing committed meanwhile.
        assert [p.calls for p in made] == [["init", "init", "init"]]


def test_an_unanswered_abort_settles_through_a_new_producer_and_a_refused_one_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _settling_publisher(monkeypatch) as (publisher, made, hung):
        publisher.send(_record("emotions"), lambda _error: None)
        publisher.abort_transaction()  # a transaction never asked to commit: aborted
        assert hung.calls[-2:] == ["abort", "close"]
        assert [p.calls for p in made] == [["init"]] and not publisher.in_transaction

        publisher.send(_record("emotions"), lambda _error: None)
        made[0].unanswered = threading.Event()
        original = publisher._new_producer

        def refused(**extra: Any) -> _FakeTransactionalProducer:
            producer: _FakeTransactionalProducer = original(**extra)
            producer.init_failures = [kafka.errors.TransactionalIdAuthorizationFailedError()]
            return producer

        monkeypatch.setattr(publisher, "_new_producer", refused)
        with pytest.raises(FatalError, match="cannot restart") as stop:
            publisher.abort_transaction()
        assert not isinstance(stop.value, TransientError)
        made[0].unanswered.set()


class _ConsumerWithCommits:
    """kafka-python's ``committed()``: None for a partition without a commit."""

    def __init__(self, commits: dict[tuple[str, int], int], fail: Exception | None = None):
        self.commits = commits
        self.fail = fail
        self.asked: list[tuple[Any, int | None]] = []

    def committed(self, tp: Any, timeout_ms: int | None = None) -> int | None:
        self.asked.append((tp, timeout_ms))
        if self.fail is not None:
            raise self.fail
        return self.commits.get((tp.topic, tp.partition))


def test_the_source_reads_the_groups_committed_offsets_from_the_broker() -> None:
    source = KafkaSource(WorkerSettings(), handler=None)  # type: ignore[arg-type]
    consumer = _ConsumerWithCommits({("tweets", 0): 40, ("tweets", 2): 7})
    source._consumer = consumer
    wanted = {("tweets", 0), ("tweets", 1), ("tweets", 2)}
    assert source.committed_offsets(wanted) == {("tweets", 0): 40, ("tweets", 2): 7}
    assert all(timeout is not None for _, timeout in consumer.asked)  # bounded
    assert source.committed_offsets(set()) == {}

    source._consumer = _ConsumerWithCommits({}, kafka.errors.KafkaTimeoutError("no answer"))
    with pytest.raises(FatalError, match="committed offset"):
        source.committed_offsets({("tweets", 0)})


def test_the_private_kafka_python_commit_the_rebalance_listener_awaits_still_exists() -> None:
    # KafkaSource.commit_from_listener awaits it on kafka-python's I/O loop; its failure
    # there is only logged, so an upgrade that renamed it would lose every revocation
    # commit quietly. Pinned kafka-python==3.0.12: this fails first.
    from kafka.coordinator.consumer import ConsumerCoordinator  # noqa: PLC0415

    method = ConsumerCoordinator._commit_offsets_sync_async
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters)[:3] == ["self", "offsets", "timeout_ms"]


# --- a record kafka-python cannot parse (issue 11) ---------------------------------------


class _RawHeaderName(str):
    """kafka-python's record builder writes ``name.encode("utf-8")``: here, raw bytes."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"caf\xe9"


def _partition_records_with_a_bad_header_name() -> Any:
    """kafka-python's own fetcher state for a fetch of offsets 0..2 whose record 1 has a
    header name that is not UTF-8."""
    from kafka.consumer.fetcher import Fetcher  # noqa: PLC0415 - kafka-python internals
    from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: PLC0415
    from kafka.record.memory_records import MemoryRecords  # noqa: PLC0415

    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 2**20)
    builder.append(0, 1, b"k0", b"v0", [])
    builder.append(1, 1, b"k1", b"v1", [(_RawHeaderName("x"), b"h")])
    builder.append(2, 1, b"k2", b"v2", [])
    tp = kafka.TopicPartition("tweets", 3)
    return Fetcher.PartitionRecords(0, tp, MemoryRecords(bytes(builder.build())))


class _ConsumerStuckOnARecord:
    """What KafkaSource reads of kafka-python's consumer, around its real fetcher state."""

    def __init__(self, unpacking: Any) -> None:
        self._fetcher = type("FetcherState", (), {"_next_partition_records": unpacking})()
        self.tp = unpacking.topic_partition
        self.returned = unpacking.take(10)  # what the first poll returned
        self.next_offset = self.returned[-1].offset + 1
        self.sought: list[tuple[Any, int]] = []

    def poll(self, timeout_ms: int) -> Any:
        return self._fetcher._next_partition_records.take(10)  # raises, as poll() does

    def assignment(self) -> set[Any]:
        return {self.tp}

    def position(self, tp: Any, timeout_ms: int | None = None) -> int:
        return self.next_offset

    def seek(self, tp: Any, offset: int) -> None:
        self.sought.append((tp, offset))


def test_a_record_the_client_cannot_parse_becomes_a_stand_in_and_is_stepped_over() -> None:
    from worker.transport import KafkaSource  # noqa: PLC0415

    consumer = _ConsumerStuckOnARecord(_partition_records_with_a_bad_header_name())
    assert [r.offset for r in consumer.returned] == [0]
    source = KafkaSource(WorkerSettings(), handler=None)  # type: ignore[arg-type]
    source._consumer = consumer
    (stand_in,) = source.poll(0.1)
    assert (stand_in.topic, stand_in.partition, stand_in.offset) == ("tweets", 3, 1)
    assert stand_in.unreadable is not None and "CorruptRecordError" in stand_in.unreadable
    assert (stand_in.key, stand_in.value) == (None, None)
    assert consumer.sought == [(consumer.tp, 2)]


def test_a_record_the_client_cannot_parse_in_an_unknown_partition_stops_naming_it() -> None:
    from worker.transport import KafkaSource  # noqa: PLC0415

    consumer = _ConsumerStuckOnARecord(_partition_records_with_a_bad_header_name())
    consumer._fetcher._next_partition_records = None  # kafka-python changed its internals
    source = KafkaSource(WorkerSettings(), handler=None)  # type: ignore[arg-type]
    source._consumer = consumer
    consumer.poll = lambda timeout_ms: (_ for _ in ()).throw(  # type: ignore[method-assign]
        kafka.errors.CorruptRecordError("Found invalid record structure")
    )
    with pytest.raises(FatalError, match=r"cannot parse a record.*tweets.*3"):
        source.poll(0.1)


def test_the_private_kafka_python_fetcher_state_the_source_reads_still_exists() -> None:
    from kafka.consumer.fetcher import Fetcher  # noqa: PLC0415

    assert "self._next_partition_records = None" in inspect.getsource(Fetcher.__init__)
    assert "self._next_partition_records = self._parse_fetched_data" in inspect.getsource(
        Fetcher.fetched_records
    )
    assert "self.topic_partition = tp" in inspect.getsource(Fetcher.PartitionRecords.__init__)


def _evicted_by_kafka_python(error: type[Exception]) -> ConsumerGroupMetadata:
    """The group metadata kafka-python 3.0.12 itself leaves after its heartbeat thread hears
    ``error`` (its own reset_generation, on a coordinator that was a stable member)."""
    coordinator = object.__new__(ConsumerCoordinator)  # no network: only the membership state
    coordinator._lock = threading.RLock()
    coordinator.config = {"group_id": "workers", "group_instance_id": None}
    coordinator._generation = Generation(7, "member-1", "range")
    coordinator.state = MemberState.STABLE
    if error is kafka.errors.UnknownMemberIdError:
        coordinator.reset_generation()  # what _handle_heartbeat_response does for it
    else:  # IllegalGenerationError keeps the member id, drops the generation
        coordinator.reset_generation(member_id=coordinator._generation.member_id)
    metadata: ConsumerGroupMetadata = coordinator.group_metadata()
    return metadata


@pytest.mark.parametrize(
    "metadata",
    [
        _evicted_by_kafka_python(kafka.errors.UnknownMemberIdError),
        _evicted_by_kafka_python(kafka.errors.IllegalGenerationError),
        ConsumerGroupMetadata("workers"),  # never joined (the defaults)
        ConsumerGroupMetadata("workers", 7, "", None, MemberState.STABLE),
        ConsumerGroupMetadata("workers", 7, "member-1", None, MemberState.REBALANCING),
        ConsumerGroupMetadata("workers", 7, "member-1", None, MemberState.UNJOINED),
    ],
    ids=[
        "unknown-member",
        "illegal-generation",
        "never-joined",
        "no-member-id",
        "rejoining",
        "unjoined",
    ],
)
def test_a_consumer_that_is_not_a_stable_member_may_not_commit(
    metadata: ConsumerGroupMetadata,
) -> None:
    assert not_a_member(metadata) is not None
    source = KafkaSource(WorkerSettings(delivery="exactly_once"), handler=None)  # type: ignore[arg-type]
    source._consumer = type("Consumer", (), {"group_metadata": lambda self: metadata})()
    with pytest.raises(TransactionAborted, match="offset commit") as caught:
        source.membership()
    assert isinstance(caught.value, TransientError)  # the loop aborts and re-reads


def test_a_stable_member_commits_with_its_generation() -> None:
    metadata = ConsumerGroupMetadata("workers", 7, "member-1", None, MemberState.STABLE)
    assert not_a_member(metadata) is None
    source = KafkaSource(WorkerSettings(delivery="exactly_once"), handler=None)  # type: ignore[arg-type]
    source._consumer = type("Consumer", (), {"group_metadata": lambda self: metadata})()
    assert source.membership() is metadata


# --- the size budget: every record checked against its topic's max.message.bytes -------


def _built_batch_size(record: OutboundRecord) -> int:
    """The bytes kafka-python's own record builder writes for ``record`` alone."""
    from kafka.record.default_records import DefaultRecordBatchBuilder  # noqa: PLC0415

    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=2**30,
    )  # fmt: skip
    builder.append(0, 1_700_000_000_000, record.key, record.value, list(record.headers))
    return len(builder.build())


@given(
    key=st.none() | st.binary(max_size=300),
    value=st.none() | st.binary(max_size=5000),
    headers=st.lists(st.tuples(st.text(max_size=30), st.binary(max_size=500)), max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_the_size_budget_counts_key_value_and_every_header(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    """What the broker compares with max.message.bytes is the record batch: the budget is
    never below it (never a refusal after the check passed) and only a little above."""
    record = OutboundRecord("emotions", key, value, tuple(headers))
    built = _built_batch_size(record)
    assert built <= record_size(record) <= built + 32


def _sizing_publisher(limits: dict[str, int], producer: Any = None) -> KafkaPublisher:
    publisher = KafkaPublisher(
        WorkerSettings(output_topic="emotions", dlq_topic="tweets.dlq"), lambda topics: limits
    )
    publisher.limits.refresh()
    publisher._producer = producer or _FakeTransactionalProducer()
    return publisher


def test_a_record_over_its_topics_limit_fails_at_once_and_never_reaches_the_producer() -> None:
    producer = _FakeTransactionalProducer()
    publisher = _sizing_publisher({"emotions": 4096, "tweets.dlq": 2048}, producer)
    errors: list[BaseException | None] = []
    just_under = OutboundRecord("emotions", b"k", b"x" * (4096 - 100))
    assert record_size(just_under) <= 4096
    publisher.send(just_under, errors.append)
    over_output = OutboundRecord("emotions", b"k", b"x" * 4096)
    publisher.send(over_output, errors.append)
    # The same bytes fit one topic and not the other: limits are per topic.
    publisher.send(OutboundRecord("tweets.dlq", b"k", b"x" * 3000), errors.append)
    assert producer.calls == ["send emotions"]
    assert len(errors) == 2 and all(isinstance(e, RecordTooLarge) for e in errors)
    assert "max.message.bytes (4096)" in str(errors[0])
    assert "max.message.bytes (2048)" in str(errors[1])


def test_limits_are_capped_by_the_producer_and_unknown_ones_default_to_the_cap() -> None:
    limits = TopicLimits(["emotions", "tweets.dlq"], lambda topics: {"emotions": 50_000_000})
    assert limits.stale
    limits.refresh()
    assert not limits.stale
    assert limits.limit("emotions") == PRODUCER_MAX_REQUEST_BYTES
    assert limits.limit("tweets.dlq") == PRODUCER_MAX_REQUEST_BYTES

    def unreadable(topics: list[str]) -> dict[str, int]:
        raise kafka.errors.TopicAuthorizationFailedError()

    kept = TopicLimits(["emotions"], lambda topics: {"emotions": 4096})
    kept.refresh()
    kept._read = unreadable
    kept.refused()
    kept.refresh()  # logged, not raised: what was known stays
    assert kept.limit("emotions") == 4096


def test_a_broker_refusal_is_reread_not_dead_lettered_and_replaces_the_poisoned_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kafka-python 3.0.12: the idempotent producer turns fatal and fails everything it holds
    with the same error, so no failed record is known to be the large one."""
    reads: list[list[str]] = []
    current = {"emotions": 1_000_000}

    def read(topics: list[str]) -> dict[str, int]:
        reads.append(topics)
        return dict(current)

    first, second = _FakeTransactionalProducer(), _FakeTransactionalProducer()
    publisher = KafkaPublisher(WorkerSettings(output_topic="emotions"), read)
    publisher.limits.refresh()
    publisher._producer = first
    monkeypatch.setattr(publisher, "_new_producer", lambda **extra: second)
    errors: list[BaseException | None] = []
    publisher.send(OutboundRecord("emotions", b"k", b"x" * 5000), errors.append)
    publisher.send(OutboundRecord("emotions", b"k", b"small"), errors.append)
    current["emotions"] = 4096  # lowered while running: the broker refuses
    refusal = kafka.errors.MessageSizeTooLargeError("refused by the broker")
    for future in first.futures:
        future.errbacks[0](refusal)
    assert all(isinstance(e, BrokerUnavailable) for e in errors), errors
    assert publisher.limits.stale
    # The next send re-reads the limits, replaces the producer, and checks the size.
    publisher.send(OutboundRecord("emotions", b"k", b"x" * 5000), errors.append)
    publisher.send(OutboundRecord("emotions", b"k", b"small"), errors.append)
    assert len(reads) == 2 and publisher._producer is second
    assert isinstance(errors[2], RecordTooLarge)
    assert second.calls == ["send emotions"]


def test_a_broker_refusal_in_a_transaction_aborts_it_by_a_new_producer_and_rereads_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kafka-python 3.0.12 splits a refused batch and then fails it with
    OutOfOrderSequenceNumber while bumping its epoch, where no abort is possible: every
    error after a refusal aborts, and the abort is a new producer with the same id."""
    producer, fresh = _FakeTransactionalProducer(), _FakeTransactionalProducer()
    publisher = TransactionalPublisher(
        WorkerSettings(output_topic="emotions"), lambda topics: {"emotions": 4096}
    )
    publisher._producer = producer
    monkeypatch.setattr(publisher, "_new_producer", lambda **extra: fresh)
    errors: list[BaseException | None] = []
    publisher.send(_record("emotions"), errors.append)
    publisher.send(_record("emotions"), errors.append)
    producer.futures[0].errbacks[0](kafka.errors.MessageSizeTooLargeError("refused"))
    producer.futures[1].errbacks[0](kafka.errors.OutOfOrderSequenceNumberError())
    assert [type(e) for e in errors] == [TransactionAborted, TransactionAborted]
    assert publisher.limits.stale
    publisher.abort_transaction()
    assert "abort" not in producer.calls and producer.calls[-1] == "close"
    assert publisher._producer is fresh and fresh.calls == ["init"]
    assert not publisher.in_transaction
    publisher.send(OutboundRecord("emotions", b"k", b"x" * 5000), errors.append)
    assert isinstance(errors[2], RecordTooLarge) and not publisher.limits.stale
