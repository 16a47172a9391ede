"""The Worker in exactly-once mode, with in-memory parts: results and offsets are committed
together, aborted work is read again, nothing committed twice, fencing stops the worker."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.fakes import (
    FakeClassifier,
    FakePublisher,
    FakeSource,
    Harness,
    record,
    tweets,
    wait_for,
)
from worker.errors import (
    BrokerUnavailable,
    ProducerFenced,
    TransactionAborted,
    TransactionOutcomeUnknown,
)
from worker.inference import Classified
from worker.messages import OutboundRecord
from worker.offsets import Partition
from worker.tokenizing import EncodedBatch

MEMBERSHIP = "generation-7"


class TransactionalSource(FakeSource):
    """A source whose consumer must never commit by itself in exactly-once mode; the
    group's committed offsets are those of the transactions ``broker`` committed."""

    def __init__(self, records: dict[Partition, list[Any]]) -> None:
        super().__init__(records)
        self.broker: TransactionalPublisher | None = None
        self.committed_reads: list[dict[Partition, int]] = []

    def membership(self) -> Any:
        return MEMBERSHIP

    def commit(self, offsets: dict[Partition, int]) -> bool:
        raise AssertionError("exactly-once commits offsets only inside transactions")

    def committed_offsets(self, partitions: set[Partition]) -> dict[Partition, int]:
        assert self.broker is not None
        found = {p: o for p, o in self.broker.committed_offsets().items() if p in partitions}
        self.committed_reads.append(found)
        return found


class TransactionalPublisher(FakePublisher):
    """Records of the open transaction stay invisible until it commits, as for a
    read_committed reader; an abort throws them away."""

    def __init__(
        self,
        fail_sends: int = 0,
        fail_commits: int = 0,
        fenced: bool = False,
        unanswered_commits: tuple[bool, ...] = (),
    ) -> None:
        super().__init__()
        self.fail_sends = fail_sends
        self.fail_commits = fail_commits
        self.fenced = fenced
        # Commits (with results) that get no answer, in turn; True: it went through anyway.
        self.unanswered_commits = list(unanswered_commits)
        self.open_records: list[OutboundRecord] = []
        self.visible: list[OutboundRecord] = []
        self.transactions: list[dict[Partition, int]] = []
        self.aborts = 0
        self._open = False

    @property
    def in_transaction(self) -> bool:
        return self._open

    def send(self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]) -> None:
        with self.lock:
            self._open = True
            self.sent.append(record)
            failing = self.fail_sends > 0
            if failing:
                self.fail_sends -= 1
            else:
                self.open_records.append(record)
        on_done(BrokerUnavailable("send", "leader moved") if failing else None)

    def commit_transaction(self, offsets: dict[Partition, int], membership: Any) -> None:
        assert membership == MEMBERSHIP
        with self.lock:
            if self.fenced:
                raise ProducerFenced("workers-host", "epoch bumped by a newer producer")
            if self.fail_commits > 0:
                self.fail_commits -= 1
                raise TransactionAborted("commit", "stale generation")
            unanswered = bool(self.open_records) and bool(self.unanswered_commits)
            went_through = self.unanswered_commits.pop(0) if unanswered else True
            if went_through:
                self.visible.extend(self.open_records)
                self.transactions.append(dict(offsets))
            self.open_records.clear()
            self._open = False
            if unanswered:
                # As the transport: a new producer settled the transaction (rolled forward
                # or aborted); nothing is open any more, and the worker cannot tell which.
                raise TransactionOutcomeUnknown("commit", "no answer within 30 s")

    def abort_transaction(self) -> None:
        with self.lock:
            self.open_records.clear()
            self.aborts += 1
            self._open = False

    def on(self, topic: str) -> list[OutboundRecord]:
        with self.lock:
            return [r for r in self.visible if r.topic == topic]

    def committed_offsets(self) -> dict[Partition, int]:
        merged: dict[Partition, int] = {}
        with self.lock:
            for offsets in self.transactions:
                merged.update(offsets)
        return merged


class GatedClassifier(FakeClassifier):
    """Holds every inference until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def classify(self, batch: EncodedBatch) -> Classified:
        assert self.gate.wait(30), "gate never opened"
        return super().classify(batch)


@pytest.fixture
def run_eos(run_worker: Callable[..., Harness]) -> Callable[..., Harness]:
    """``run_worker`` in exactly-once mode, on the transactional fakes."""

    def start(
        records: dict[Partition, list[Any]],
        publisher: TransactionalPublisher | None = None,
        classifier: FakeClassifier | None = None,
        **overrides: Any,
    ) -> Harness:
        source = TransactionalSource(records)
        source.broker = publisher = publisher or TransactionalPublisher()
        return run_worker(
            records,
            classifier,
            source=source,
            publisher=publisher,
            delivery="exactly_once",
            **overrides,
        )

    return start


def visible_ids(h: Harness) -> Counter[str]:
    return Counter(str(json.loads(r.value or b"")["id"]) for r in h.publisher.on("emotions"))


def publisher_of(h: Harness) -> TransactionalPublisher:
    assert isinstance(h.publisher, TransactionalPublisher)
    return h.publisher


def test_results_and_offsets_are_committed_together_exactly_once(run_eos: Any) -> None:
    h = run_eos({("tweets", 0): tweets(0, 40), ("tweets", 1): tweets(1, 25)})
    out = publisher_of(h)
    ends = {("tweets", 0): 40, ("tweets", 1): 25}
    wait_for(lambda: out.committed_offsets() == ends, "offsets committed in transactions")
    h.stop()
    counts = visible_ids(h)
    assert len(counts) == 65 and set(counts.values()) == {1}
    assert out.aborts == 0
    assert not out.open_records  # the last transaction was committed, not left open
    assert h.worker.metrics.commits._value.get() == len(out.transactions)


def test_dead_letters_are_committed_in_the_transaction_of_their_offsets(run_eos: Any) -> None:
    values: list[bytes | None] = [
        b'{"id": "a", "text": "fine"}',
        None,
        b"\xff\xfe",
        b'{"id": "b"}',
        b'{"id": "c", "text": "POISON for the model"}',
        b"plain text line",
    ]
    records = [record(0, i, v, key=b"k") for i, v in enumerate(values)]
    h = run_eos({("tweets", 0): records})
    out = publisher_of(h)
    wait_for(lambda: out.committed_offsets() == {("tweets", 0): 6}, "commit past poison")
    h.stop()
    assert [json.loads(r.value or b"")["text"] for r in out.on("emotions")] == [
        "fine",
        "plain text line",
    ]
    dead = sorted(int(dict(d.headers)["dlq.source.offset"]) for d in out.on("tweets.dlq"))
    assert dead == [1, 2, 3, 4]


def test_a_dead_letter_waits_for_earlier_records_still_at_triton(run_eos: Any) -> None:
    # At-least-once sends a dead letter at once. Here it would run ahead of results still
    # being inferred, and a commit stopping below them would leave it above the cut.
    classifier = GatedClassifier()
    records = [*tweets(0, 4), record(0, 4, None)]
    h = run_eos({("tweets", 0): records}, classifier=classifier, max_batch_size=4)
    out = publisher_of(h)
    wait_for(lambda: h.worker.tracker.pending_count() == 5, "all five consumed")
    wait_for(lambda: len(h.worker._running.delivery.held) == 1, "the null record held back")
    assert out.sent == []
    classifier.gate.set()
    wait_for(lambda: out.committed_offsets() == {("tweets", 0): 5}, "all five committed")
    h.stop()
    assert [r.topic for r in out.sent] == ["emotions"] * 4 + ["tweets.dlq"]


def test_a_failed_send_aborts_and_rereads_without_duplicates(run_eos: Any) -> None:
    out = TransactionalPublisher(fail_sends=3)
    h = run_eos({("tweets", 0): tweets(0, 30)}, publisher=out)
    wait_for(lambda: out.committed_offsets() == {("tweets", 0): 30}, "all committed")
    h.stop()
    counts = visible_ids(h)
    assert len(counts) == 30 and set(counts.values()) == {1}
    assert out.aborts >= 1
    assert h.worker.metrics.retries.labels(reason="BrokerUnavailable")._value.get() >= 1
    assert not h.dead_letters()


def test_the_backoff_after_an_abort_keeps_polling_paused_then_resumes(run_eos: Any) -> None:
    # A backoff longer than a poll: the loop must not sleep through it (liveness and
    # max.poll.interval would run out at the configured maximum of 600 s); it pauses the
    # partitions, keeps polling, and reads again when the backoff is over.
    out = TransactionalPublisher(fail_commits=1)
    h = run_eos(
        {("tweets", 0): tweets(0, 20)},
        publisher=out,
        retry_backoff_initial_s=1.0,
        retry_backoff_max_s=1.0,
    )
    wait_for(lambda: out.aborts == 1, "the first commit aborted")
    wait_for(lambda: h.source.paused_polls >= 20, "polls go on while paused")
    assert h.worker.health.alive
    wait_for(lambda: out.committed_offsets() == {("tweets", 0): 20}, "all committed")
    h.stop()
    counts = visible_ids(h)
    assert len(counts) == 20 and set(counts.values()) == {1}


def test_a_rejected_commit_aborts_and_rereads_without_duplicates(run_eos: Any) -> None:
    out = TransactionalPublisher(fail_commits=2)
    h = run_eos({("tweets", 0): tweets(0, 30), ("tweets", 1): tweets(1, 12)}, publisher=out)
    ends = {("tweets", 0): 30, ("tweets", 1): 12}
    wait_for(lambda: out.committed_offsets() == ends, "all committed")
    h.stop()
    counts = visible_ids(h)
    assert len(counts) == 42 and set(counts.values()) == {1}
    assert out.aborts == 2
    assert len(out.sent) > 42  # the aborted transactions' records were sent, then redone


@pytest.mark.parametrize("went_through", [True, False], ids=["committed", "aborted"])
def test_a_commit_without_an_answer_rereads_from_the_offsets_the_broker_committed(
    run_eos: Any, went_through: bool
) -> None:
    # Batches of 8, a commit every turn: the unanswered commit holds results of both
    # partitions, and later ones follow. Had it gone through, re-reading from the worker's
    # own last commit would publish its results twice; had it not, skipping them loses them.
    out = TransactionalPublisher(unanswered_commits=(went_through,))
    h = run_eos(
        {("tweets", 0): tweets(0, 40), ("tweets", 1): tweets(1, 24)},
        publisher=out,
        max_batch_size=8,
    )
    ends = {("tweets", 0): 40, ("tweets", 1): 24}
    wait_for(lambda: out.committed_offsets() == ends, "all committed")
    h.stop()
    counts = visible_ids(h)
    assert len(counts) == 64 and set(counts.values()) == {1}, counts.most_common(3)
    source = h.source
    assert isinstance(source, TransactionalSource)
    assert len(source.committed_reads) == 1  # read once, after the unanswered commit
    assert h.worker.metrics.retries.labels(reason="TransactionOutcomeUnknown")._value.get() == 1
    assert not out.unanswered_commits and not h.dead_letters()


def test_a_fenced_producer_stops_the_worker_with_nothing_committed(run_eos: Any) -> None:
    out = TransactionalPublisher(fenced=True)
    h = run_eos({("tweets", 0): tweets(0, 10)}, publisher=out)
    h.thread.join(20)
    assert not h.thread.is_alive()
    assert isinstance(h.error, ProducerFenced)
    assert "took over" in str(h.error)
    assert out.transactions == [] and out.on("emotions") == []


def test_losing_a_partition_with_results_in_the_open_transaction_aborts_it(
    run_eos: Any,
) -> None:
    # A long commit interval keeps the transaction open while the partition is revoked.
    # The loop's first turn commits at once (no commit yet): the gate holds every result
    # until that turn is over, or it would commit part of them and leave too few open.
    classifier = GatedClassifier()
    h = run_eos(
        {("tweets", 0): tweets(0, 10), ("tweets", 1): tweets(1, 10)},
        classifier=classifier,
        commit_interval_ms=60_000,
    )
    out = publisher_of(h)
    assert h.worker.wait_started(30)
    wait_for(lambda: h.worker._running.delivery.last_commit > 0, "the first commit turn")
    classifier.gate.set()
    wait_for(lambda: len(out.open_records) == 20, "both partitions sent, uncommitted")
    complete = h.source.revoke(h.worker, ("tweets", 1))
    assert complete == {}  # nothing committed outside a transaction
    wait_for(lambda: out.aborts == 1, "the open transaction aborted")
    wait_for(lambda: len(out.open_records) == 10, "partition 0 read and sent again")
    h.stop()  # the shutdown commit
    assert out.committed_offsets() == {("tweets", 0): 10}
    counts = visible_ids(h)
    assert sorted(counts) == [f"p0-{n}" for n in range(10)]
    assert set(counts.values()) == {1}


class EvictedSource(TransactionalSource):
    """A consumer whose membership kafka-python reset (generation -1, member '') before
    the worker's n-th commit: the transport refuses it, as ``KafkaSource.membership``."""

    def __init__(
        self,
        records: dict[Partition, list[Any]],
        publisher: TransactionalPublisher,
        evicted_at_commit: int,
    ) -> None:
        super().__init__(records)
        self.publisher = publisher
        self.evicted_at_commit = evicted_at_commit
        self.asked = 0
        self.open_at_eviction: list[OutboundRecord] = []

    def membership(self) -> Any:
        self.asked += 1
        if self.asked == self.evicted_at_commit:
            with self.publisher.lock:
                self.open_at_eviction = list(self.publisher.open_records)
            raise TransactionAborted("offset commit", "not a member (generation -1)")
        return MEMBERSHIP


def test_a_commit_as_a_member_that_no_longer_is_one_aborts_and_rereads(
    run_worker: Callable[..., Harness],
) -> None:
    # Many short transactions; the eviction lands on a commit that holds results.
    records = {("tweets", 0): tweets(0, 40)}
    out = TransactionalPublisher()
    source = EvictedSource(records, out, evicted_at_commit=2)
    h = run_worker(
        records,
        source=source,
        publisher=out,
        delivery="exactly_once",
        max_batch_size=8,
    )
    wait_for(lambda: out.aborts == 1, "the evicted commit aborted")
    assert source.open_at_eviction, "the evicted commit held results"
    wait_for(lambda: out.committed_offsets() == {("tweets", 0): 40}, "all committed")
    h.stop()
    # The aborted results were never visible; read again and committed once.
    counts = visible_ids(h)
    assert len(counts) == 40 and set(counts.values()) == {1}
    assert out.aborts == 1
    assert h.worker.metrics.retries.labels(reason="TransactionAborted")._value.get() >= 1
