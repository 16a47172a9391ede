"""MicroBatcher: size and wait limits, order, revocation; plan_requests: the cut into requests."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest

from worker.batching import MicroBatcher, PendingTweet
from worker.messages import InboundTweet, SourceRecord
from worker.offsets import Ticket
from worker.planning import PlannedRequest, plan_requests


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


def test_a_full_request_makes_the_window_due_and_it_takes_what_waits() -> None:
    clock = Clock()
    batcher = MicroBatcher(16, 10.0, clock, full_size=4)
    for offset in range(3):
        batcher.add(pending(offset))
    assert batcher.take() is None  # not a full request yet, and not waited long enough
    for offset in range(3, 10):
        batcher.add(pending(offset))
    batch = batcher.take()
    assert batch is not None
    assert [i.ticket.offset for i in batch.items] == list(range(10))  # whole look-ahead
    for offset in range(10, 40):
        batcher.add(pending(offset))
    batch = batcher.take()
    assert batch is not None and len(batch) == 16  # never more than the window
    assert [i.ticket.offset for i in batch.items] == list(range(10, 26))


# --- plan_requests ---------------------------------------------------------------


def cost(requests: list[PlannedRequest], overhead: int) -> int:
    return sum(len(r.indices) * r.width + overhead for r in requests)


def check_plan(
    requests: list[PlannedRequest], lengths: list[int], max_size: int, limit: int
) -> None:
    """Every text exactly once, no request too big, every row fits, widths a multiple of 8."""
    carried = sorted(i for r in requests for i in r.indices)
    assert carried == list(range(len(lengths)))
    for request in requests:
        assert 1 <= len(request.indices) <= max_size
        assert request.width % 8 == 0 or request.width == limit
        assert request.width <= limit
        assert max(min(lengths[i], limit) for i in request.indices) <= request.width
        assert request.width - max(lengths[i] for i in request.indices) < 8


def test_short_and_long_texts_go_in_separate_requests() -> None:
    lengths = [5, 60, 6, 61, 7, 62]
    requests = plan_requests(lengths, 32, limit=128, overhead_tokens=24)
    check_plan(requests, lengths, 32, 128)
    assert [(sorted(r.indices), r.width) for r in requests] == [([0, 2, 4], 8), ([1, 3, 5], 64)]


def test_a_large_request_overhead_keeps_one_request() -> None:
    lengths = [5, 60, 6, 61, 7, 62]
    requests = plan_requests(lengths, 32, limit=128, overhead_tokens=1000)
    assert [(r.indices, r.width) for r in requests] == [((0, 2, 4, 1, 3, 5), 64)]


def test_requests_never_exceed_the_model_batch_size() -> None:
    lengths = [20] * 100
    requests = plan_requests(lengths, 32, limit=128)
    check_plan(requests, lengths, 32, 128)
    assert [len(r.indices) for r in requests] == [4, 32, 32, 32]  # fewest requests at a tie


def test_widths_are_capped_at_the_model_limit() -> None:
    requests = plan_requests([99, 3], 8, limit=100, overhead_tokens=1000)
    assert [r.width for r in requests] == [100]


def test_arrival_order_chunks_when_not_bucketed() -> None:
    lengths = [5, 60, 6, 61, 7]
    requests = plan_requests(lengths, 2, limit=128, bucketed=False)
    assert [(r.indices, r.width) for r in requests] == [((0, 1), 64), ((2, 3), 64), ((4,), 8)]


def test_an_empty_batch_needs_no_request() -> None:
    assert plan_requests([], 32, limit=128) == []
    with pytest.raises(ValueError, match="max_size"):
        plan_requests([1], 0, limit=128)


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for partition in set_partitions(rest):
        yield [[first], *partition]
        for n in range(len(partition)):
            yield [*partition[:n], [first, *partition[n]], *partition[n + 1 :]]


@pytest.mark.parametrize("seed", range(30))
def test_the_plan_is_optimal_over_every_way_to_split(seed: int) -> None:
    """Against brute force over all set partitions (not only cuts of the sorted order)."""
    rng = random.Random(seed)
    count, max_size, overhead = rng.randint(1, 7), rng.randint(1, 4), rng.choice([0, 8, 24, 64])
    lengths = [rng.randint(1, 70) for _ in range(count)]
    requests = plan_requests(lengths, max_size, limit=64, overhead_tokens=overhead)
    check_plan(requests, lengths, max_size, 64)

    def width(group: list[int]) -> int:
        return min(64, -(-max(lengths[i] for i in group) // 8) * 8)

    brute = min(
        sum(len(g) * width(g) + overhead for g in partition)
        for partition in set_partitions(list(range(count)))
        if all(len(g) <= max_size for g in partition)
    )
    assert cost(requests, overhead) == brute


def test_bucketing_never_pads_more_than_arrival_order() -> None:
    rng = random.Random(7)
    for _ in range(50):
        lengths = [rng.randint(3, 90) for _ in range(rng.randint(1, 200))]
        sorted_plan = plan_requests(lengths, 32, limit=128)
        in_order = plan_requests(lengths, 32, limit=128, bucketed=False)
        check_plan(sorted_plan, lengths, 32, 128)
        check_plan(in_order, lengths, 32, 128)
        assert cost(sorted_plan, 24) <= cost(in_order, 24)
        assert list(itertools.chain.from_iterable(r.indices for r in in_order)) == list(
            range(len(lengths))
        )
