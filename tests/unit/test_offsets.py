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


def test_sent_before_allows_a_contiguous_run_of_sends_only() -> None:
    tracker = CommitTracker()
    tickets = [tracker.track(P0, offset) for offset in range(4)]
    assert tracker.sent_before(tickets[0])  # nothing before it
    assert not tracker.sent_before(tickets[2])  # 0 and 1 not sent yet
    tracker.sent(tickets[0])
    tracker.done(tickets[0])
    tracker.sent(tickets[1])  # sent, not yet acknowledged
    assert tracker.sent_before(tickets[2])
    tracker.rewind(P0)
    assert not tracker.sent_before(tickets[3])  # stale epoch


def test_ragged_names_partitions_with_sends_past_a_record_not_done() -> None:
    tracker = CommitTracker()
    p0 = [tracker.track(P0, offset) for offset in range(3)]
    p1 = [tracker.track(P1, offset) for offset in range(3)]
    for ticket in (p0[0], p0[1], p1[0]):
        tracker.sent(ticket)
        tracker.done(ticket)
    assert tracker.ragged() == set()  # p0: 0-1 done, 2 unsent; p1: 0 done, rest unsent
    tracker.sent(p1[2])  # runs ahead of p1's offset 1
    assert tracker.ragged() == {P1}
    tracker.sent(p1[1])
    assert tracker.ragged() == {P1}  # sent, not acknowledged: still not a clean cut
    tracker.done(p1[1])
    tracker.done(p1[2])
    assert tracker.ragged() == set()
    assert tracker.committable() == {P0: 2, P1: 3}


def test_rewind_to_committed_goes_back_to_the_last_commit_or_the_start() -> None:
    tracker = CommitTracker()
    first = [tracker.track(P0, offset) for offset in range(10, 14)]
    for ticket in first[:2]:
        tracker.done(ticket)
    tracker.track(P1, 7)
    assert tracker.restart_points({P0, P1}) == {P0: 10, P1: 7}  # nothing committed: start
    tracker.committed(tracker.committable())  # P0 at 12
    tracker.done(first[2])  # done but not committed: aborted with its transaction
    assert tracker.restart_points({P0}) == {P0: 12}
    assert tracker.rewind_to_committed(P0) == 12
    assert not tracker.done(first[3])  # old epoch
    assert tracker.committable() == {}  # nothing new past the commit
    again = [tracker.track(P0, offset) for offset in range(12, 14)]
    for ticket in again:
        tracker.done(ticket)
    assert tracker.committable() == {P0: 14}
    assert tracker.rewind_to_committed(("tweets", 9)) is None


def test_rewind_before_anything_was_done_goes_back_to_the_first_pending() -> None:
    # A publish failing before the partition's first acknowledgement (the broker went
    # away at start): the failed records must be read again, not skipped.
    tracker = CommitTracker()
    tickets = [tracker.track(P0, offset) for offset in range(20, 23)]
    assert tracker.rewind(P0) == 20
    assert not tracker.done(tickets[0])  # old epoch
    again = [tracker.track(P0, offset) for offset in range(20, 23)]
    assert tracker.committable() == {P0: 20}  # nothing past the failed records
    for ticket in again:
        tracker.done(ticket)
    assert tracker.committable() == {P0: 23}
