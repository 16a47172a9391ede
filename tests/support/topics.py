"""Reading topics back and feeding them at a steady rate: the one reader and the one
paced feed of the tests, the benchmarks and the Compose stage's check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError, NotCoordinatorError

from tests.support.waiting import wait_until

FETCH_TIMEOUT_MS = 200
# A topic has been read to its end once a poll finds nothing new this many times in a row
# with every partition at its end offset.
QUIET_POLLS = 3
FEED_FLUSH_TIMEOUT_S = 60.0


@dataclass
class TopicReader:
    """Reads one topic from the beginning (``read_committed`` unless told otherwise).

    ``keep=True`` keeps every record in :attr:`records`; a long run that only counts
    (a benchmark's soak) passes ``keep=False`` and handles what :meth:`fetch` returns.
    """

    bootstrap_servers: str
    topic: str
    isolation_level: str = "read_committed"
    keep: bool = True
    records: list[Any] = field(default_factory=list)
    _consumer: Any = None

    def _ensure(self) -> Any:
        """The consumer, assigned every partition of the topic once the topic is known."""
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=self.isolation_level,
            )
        if not self._consumer.assignment():
            partitions = self._consumer.partitions_for_topic(self.topic) or set()
            if partitions:
                self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
                self._consumer.seek_to_beginning()
        return self._consumer

    def fetch(self, timeout_ms: int = FETCH_TIMEOUT_MS) -> list[Any]:
        """Whatever arrived since the last call (kept too, with ``keep``); nothing while the
        topic does not exist yet (the wait a poll would have made, then empty)."""
        consumer = self._ensure()
        if not consumer.assignment():
            time.sleep(timeout_ms / 1000)  # what a poll would have waited
            return []
        batches = consumer.poll(timeout_ms=timeout_ms)
        new = [record for batch in batches.values() for record in batch]
        if self.keep:
            self.records.extend(new)
        return new

    def poll(self) -> int:
        """Fetch whatever arrived; return how many new records."""
        return len(self.fetch())

    def at_end(self) -> bool:
        """Whether every partition has been read up to its current end offset.

        With read_committed the end is the last stable offset: an open transaction's
        records are not counted as readable yet (the broker holds them back).
        """
        consumer = self._ensure()
        partitions = list(consumer.assignment())
        ends = consumer.end_offsets(partitions)
        return all(consumer.position(tp) >= int(ends[tp]) for tp in partitions)

    def drain(self, timeout_s: float) -> list[Any]:
        """Read until the topic's end (and nothing new for a few polls); every record."""
        quiet = 0

        def drained() -> bool:
            nonlocal quiet
            quiet = quiet + 1 if self.poll() == 0 and self.at_end() else 0
            return quiet >= QUIET_POLLS

        wait_until(drained, timeout_s, f"{self.topic} not read to its end")
        return self.records

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pace(started: float, index: int, rate: float) -> None:
    """Hold the ``index``-th send of a feed at ``rate``/s begun at ``started`` (monotonic)
    until its time: pacing a feed, not waiting for an outcome."""
    delay = started + index / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class Feeder(threading.Thread):
    """Sends tweets at ``rate``/s from a background thread, so faults land mid-stream.

    The ``index``-th tweet's id is ``tweet_id(index)``; ``limit`` sends at most. With a
    ``tail``, the feed is timed by the fault instead, not by a guess at how long a broker
    takes to come back on a loaded machine: it stops ``tail`` sends after
    :meth:`fault_over`, and :meth:`finish` asserts the tail went out.
    """

    def __init__(
        self,
        tweet_id: Callable[[int], str],
        rate: float,
        send: Callable[[str], None],
        flush: Callable[[float], object],
        *,
        limit: int,
        tail: int | None = None,
    ) -> None:
        super().__init__(name="feeder", daemon=True)
        self.rate = rate
        self.limit = limit
        self.tail = tail
        self.ids: list[str] = []
        """The ids sent so far, in order."""
        self.sent_when_over: int | None = None
        self.error: BaseException | None = None
        self._tweet_id = tweet_id
        self._send = send
        self._flush = flush

    @property
    def sent(self) -> int:
        return len(self.ids)

    def fault_over(self) -> int:
        """The fault is over: send ``tail`` more, then stop. How many were sent so far."""
        assert self.tail is not None, "a feed without a tail is not timed by a fault"
        self.sent_when_over = self.sent
        return self.sent_when_over

    def _done(self, index: int) -> bool:
        over = self.sent_when_over
        return over is not None and self.tail is not None and index >= over + self.tail

    def run(self) -> None:
        try:
            started = time.monotonic()
            for index in range(self.limit):
                if self._done(index):
                    break
                pace(started, index, self.rate)
                tweet_id = self._tweet_id(index)
                self._send(tweet_id)
                self.ids.append(tweet_id)
            self._flush(FEED_FLUSH_TIMEOUT_S)
        except BaseException as error:
            self.error = error

    def finish(self, timeout_s: float = 120.0) -> None:
        """Wait for the feed to end; with a tail, assert it outlasted the fault."""
        self.join(timeout_s)
        assert not self.is_alive(), f"feeder still sending after {timeout_s:g} s"
        if self.error is not None:
            raise self.error
        if self.tail is not None:
            assert self.sent_when_over is not None, "fault_over() was never called"
            assert self.sent == self.sent_when_over + self.tail, "the feed ended before the fault"


def end_offsets(bootstrap_servers: str, partitions: list[TopicPartition]) -> dict[int, int]:
    """Each partition's log-end offset."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None)
    try:
        ends = consumer.end_offsets(partitions)
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        consumer.close()


def committed_offsets(
    bootstrap_servers: str, group: str, partitions: list[TopicPartition]
) -> dict[int, int]:
    """``group``'s committed offset per partition (absent: never committed)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        offsets = admin.list_group_offsets({group: partitions})
    except (CoordinatorNotAvailableError, NotCoordinatorError):
        return {}  # the group has no coordinator yet (nothing committed, ever)
    finally:
        admin.close()
    committed = offsets.get(group, {})
    return {
        tp.partition: int(meta.offset)
        for tp, meta in committed.items()
        if meta is not None and meta.offset is not None and meta.offset >= 0
    }
