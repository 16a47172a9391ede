"""MicroBatcher: size and wait limits, order, revocation."""

from __future__ import annotations

from worker.batching import MicroBatcher, PendingTweet
from worker.messages import InboundTweet, SourceRecord
from worker.offsets import Ticket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pending(offset: int, partition: int = 0) -> PendingTweet:
    record = SourceRecord("tweets", partition, offset, None, None, b"x")
    tweet = InboundTweet(id=str(offset), text=f"t{offset}", meta={}, source=record)
    return PendingTweet(tweet=tweet, ticket=Ticket(("tweets", partition), offset, 1), consumed_at=0)


def test_empty_batcher_has_nothing_due() -> None:
    batcher = MicroBatcher(4, 0.05, Clock())
    assert batcher.due_in() is None
    assert batcher.take() is None
    assert batcher.take(force=True) is None


def test_full_batch_is_due_at_once() -> None:
    batcher = MicroBatcher(3, 10.0, Clock())
    for offset in range(4):
        batcher.add(pending(offset))
    batch = batcher.take()
    assert batch is not None
    assert [i.ticket.offset for i in batch.items] == [0, 1, 2]
    assert len(batcher) == 1


def test_partial_batch_waits_for_max_wait_from_first_tweet() -> None:
    clock = Clock()
    batcher = MicroBatcher(8, 0.05, clock)
    batcher.add(pending(0))
    clock.now += 0.03
    batcher.add(pending(1))
    assert batcher.take() is None
    assert abs((batcher.due_in() or 0) - 0.02) < 1e-9
    clock.now += 0.02
    batch = batcher.take()
    assert batch is not None and len(batch) == 2
    assert batcher.due_in() is None


def test_leftovers_do_not_wait_again() -> None:
    clock = Clock()
    batcher = MicroBatcher(2, 1.0, clock)
    for offset in range(3):
        batcher.add(pending(offset))
    assert batcher.take() is not None
    clock.now += 1.0
    batch = batcher.take()
    assert batch is not None and [i.ticket.offset for i in batch.items] == [2]


def test_zero_wait_sends_whatever_is_there() -> None:
    batcher = MicroBatcher(8, 0.0, Clock())
    batcher.add(pending(0))
    assert batcher.ready()


def test_force_takes_a_partial_batch() -> None:
    batcher = MicroBatcher(8, 10.0, Clock())
    batcher.add(pending(0))
    assert batcher.take() is None
    batch = batcher.take(force=True)
    assert batch is not None and len(batch) == 1


def test_drop_revoked_partitions_keeps_order_of_the_rest() -> None:
    batcher = MicroBatcher(10, 1.0, Clock())
    for offset in range(6):
        batcher.add(pending(offset, partition=offset % 2))
    assert batcher.drop({("tweets", 1)}) == 3
    batch = batcher.take(force=True)
    assert batch is not None
    assert [i.ticket.offset for i in batch.items] == [0, 2, 4]
    assert batch.texts == ["t0", "t2", "t4"]
    assert batch.partitions() == {("tweets", 0)}
