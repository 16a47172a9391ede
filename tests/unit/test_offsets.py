"""CommitTracker: watermarks never pass a gap; stale acks never count."""

from __future__ import annotations

import random

from worker.offsets import CommitTracker

P0 = ("tweets", 0)
P1 = ("tweets", 1)


def test_nothing_tracked_nothing_to_commit() -> None:
    assert CommitTracker().committable() == {}


def test_in_order_acks_advance_the_watermark() -> None:
    tracker = CommitTracker()
    tickets = [tracker.track(P0, offset) for offset in range(3)]
    assert tracker.committable() == {}  # nothing done yet: nothing worth committing
    tracker.done(tickets[0])
    assert tracker.committable() == {P0: 1}
    tracker.done(tickets[1])
    tracker.done(tickets[2])
    assert tracker.committable() == {P0: 3}


def test_out_of_order_acks_wait_for_the_gap() -> None:
    tracker = CommitTracker()
    tickets = [tracker.track(P0, offset) for offset in range(10, 15)]
    for ticket in tickets[1:]:
        tracker.done(ticket)
    assert tracker.committable() == {}  # offset 10 still pending: no commit past it
    tracker.done(tickets[0])
    assert tracker.committable() == {P0: 15}


def test_offset_gaps_in_the_log_are_not_gaps_in_work() -> None:
    # Compaction or transaction markers leave holes in offsets; only consumed ones count.
    tracker = CommitTracker()
    a, b = tracker.track(P0, 3), tracker.track(P0, 7)
    tracker.done(a)
    assert tracker.committable() == {P0: 7}
    tracker.done(b)
    assert tracker.committable() == {P0: 8}


def test_partitions_are_independent() -> None:
    tracker = CommitTracker()
    a = tracker.track(P0, 0)
    tracker.track(P1, 0)
    tracker.done(a)
    assert tracker.committable() == {P0: 1}


def test_committed_offsets_are_not_offered_again() -> None:
    tracker = CommitTracker()
    tracker.done(tracker.track(P0, 0))
    tracker.committed(tracker.committable())
    assert tracker.committable() == {}
    tracker.done(tracker.track(P0, 1))
    assert tracker.committable() == {P0: 2}


def test_random_ack_order_matches_a_model() -> None:
    rng = random.Random(7)
    tracker = CommitTracker()
    tickets = [tracker.track(P0, offset) for offset in range(200)]
    order = list(range(200))
    rng.shuffle(order)
    done: set[int] = set()
    for index in order:
        tracker.done(tickets[index])
        done.add(index)
        expected = next(i for i in range(201) if i not in done)
        assert tracker.committable() == ({P0: expected} if expected else {})


def test_revoked_partition_ignores_late_acks() -> None:
    tracker = CommitTracker()
    ticket = tracker.track(P0, 0)
    tracker.forget({P0})
    assert not tracker.done(ticket)
    assert not tracker.is_current(ticket)
    assert tracker.committable() == {}
    # Assigned again later: a fresh start, the old ticket still does not count.
    fresh = tracker.track(P0, 0)
    assert not tracker.done(ticket)
    assert tracker.committable() == {}
    assert tracker.done(fresh)
    assert tracker.committable() == {P0: 1}


def test_rewind_returns_the_watermark_and_starts_a_new_epoch() -> None:
    tracker = CommitTracker()
    tickets = [tracker.track(P0, offset) for offset in range(5)]
    tracker.done(tickets[0])
    tracker.done(tickets[2])
    assert tracker.rewind(P0) == 1
    assert not tracker.done(tickets[1])  # old epoch
    assert tracker.committable() == {P0: 1}
    again = [tracker.track(P0, offset) for offset in range(1, 5)]
    for ticket in again:
        tracker.done(ticket)
    assert tracker.committable() == {P0: 5}


def test_consumer_going_back_starts_over() -> None:
    tracker = CommitTracker()
    old = [tracker.track(P0, offset) for offset in range(3)]
    tracker.done(old[0])
    tracker.committed(tracker.committable())
    replay = tracker.track(P0, 1)  # e.g. an offset reset re-delivers from 1
    assert not tracker.done(old[1])
    assert tracker.done(replay)
    assert tracker.committable() == {P0: 2}


def test_pending_and_next_offsets() -> None:
    tracker = CommitTracker()
    tracker.track(P0, 4)
    done = tracker.track(P1, 9)
    tracker.done(done)
    assert tracker.pending_count() == 1
    assert tracker.next_offsets() == {P0: 5, P1: 10}
