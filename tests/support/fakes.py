"""The Worker on in-memory parts: a source, a publisher, a tokenizer and a classifier that
implement the worker's Protocols, and a :class:`Harness` running the real ``Worker`` on
them in a thread.

The unit tests of the loop (``tests/unit/test_app*.py``, the security, failpoint and
poison-property tests) build on these; ``tests/unit/conftest.py`` turns
:func:`start_worker_on_fakes` into the ``run_worker`` fixture.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.support.waiting import wait_until
from worker.app import Worker
from worker.errors import InferenceRejected, InferenceUnavailable, RecordTooLarge
from worker.inference import Classified, ModelSpec, softmax
from worker.messages import OutboundRecord, SourceRecord
from worker.offsets import Partition
from worker.planning import plan_requests
from worker.settings import WorkerSettings
from worker.tokenizing import EncodedBatch, EncodedRequest, PlannedBatch

LABELS = ["anger", "joy", "optimism", "sadness"]
POISON_TOKEN = 666
DEADLINE_S = 20.0


# A worker on fakes reacts within milliseconds: poll often.
FAKES_POLL_INTERVAL_S = 0.005


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    """:func:`tests.support.waiting.wait_until` with the fakes' deadline and poll interval."""
    wait_until(condition, timeout_s, what, interval_s=FAKES_POLL_INTERVAL_S)


class NoRebalanceWork:
    """Rebalance callbacks for a transport used on its own: no work to keep or drop."""

    def on_assigned(self, partitions: set[Partition]) -> dict[Partition, int]:
        return {}

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, int]:
        return {}

    def on_lost(self, partitions: set[Partition]) -> None:
        pass


class FakeSource:
    def __init__(self, records: dict[Partition, list[SourceRecord]], per_poll: int = 7) -> None:
        self.records = records
        self.position = {p: 0 for p in records}
        self.per_poll = per_poll
        self._paused = False
        self.commits: list[dict[Partition, int]] = []
        self.paused_polls = 0
        self.lock = threading.Lock()

    def __enter__(self) -> FakeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def revoke(self, worker: Worker, partition: Partition) -> dict[Partition, int]:
        """As kafka-python does: inside poll, the listener runs, the partition goes."""
        with self.lock:
            complete = worker.on_revoked({partition})
            del self.records[partition]
            return complete

    def rebalance_keeping(self, worker: Worker, partition: Partition) -> None:
        """Revoke and assign the same partition again; like kafka-python 3, the fetch
        position survives unless the worker seeks."""
        with self.lock:
            worker.on_revoked({partition})
            for sought, offset in worker.on_assigned({partition}).items():
                self.position[sought] = offset

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        with self.lock:
            return self._poll(timeout_s)

    def _poll(self, timeout_s: float) -> list[SourceRecord]:
        if self._paused:
            self.paused_polls += 1
            time.sleep(min(timeout_s, 0.001))
            return []
        out: list[SourceRecord] = []
        for partition, records in self.records.items():
            start = self.position[partition]
            chunk = records[start : start + self.per_poll]
            self.position[partition] = start + len(chunk)
            out.extend(chunk)
        if not out:
            time.sleep(min(timeout_s, 0.001))
        return out

    def assignment(self) -> set[Partition]:
        return set(self.records)

    @property
    def rebalancing(self) -> bool:
        return False

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_all(self) -> None:
        self._paused = True

    def resume_all(self) -> None:
        self._paused = False

    def seek(self, partition: Partition, offset: int) -> None:
        self.position[partition] = offset

    def commit(self, offsets: dict[Partition, int]) -> bool:
        self.commits.append(dict(offsets))
        return True

    def committed(self) -> dict[Partition, int]:
        merged: dict[Partition, int] = {}
        for commit in self.commits:
            merged.update(commit)
        return merged

    def committed_offsets(self, partitions: set[Partition]) -> dict[Partition, int]:
        """The group's committed offsets of ``partitions``, as the broker would answer."""
        return {p: o for p, o in self.committed().items() if p in partitions}

    def lag(self, next_offsets: dict[Partition, int]) -> dict[Partition, int]:
        return {}

    def membership(self) -> Any:
        """The group metadata exactly-once sends offsets with (the transactional fakes
        override it; at least once never asks)."""
        return None


class FakePublisher:
    def __init__(self, max_bytes: int | None = None) -> None:
        self.sent: list[OutboundRecord] = []
        self.lock = threading.Lock()
        self.max_bytes = max_bytes
        # When set, acknowledgements wait for flush(), like a broker round trip in progress.
        self.ack_on_flush = False
        self.unacknowledged: list[Callable[[BaseException | None], None]] = []

    def __enter__(self) -> FakePublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def send(self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]) -> None:
        size = len(record.value or b"") + sum(len(n) + len(v) for n, v in record.headers)
        if self.max_bytes is not None and size > self.max_bytes:
            on_done(RecordTooLarge(record.topic, f"{size} bytes"))
            return
        with self.lock:
            self.sent.append(record)
            if self.ack_on_flush:
                self.unacknowledged.append(on_done)
                return
        on_done(None)

    def flush(self, timeout_s: float) -> bool:
        with self.lock:
            waiting, self.unacknowledged = self.unacknowledged, []
        for on_done in waiting:
            on_done(None)
        return True

    def on(self, topic: str) -> list[OutboundRecord]:
        with self.lock:
            return [r for r in self.sent if r.topic == topic]


class FakeTokenizer:
    """Plans like the real one (sorted by length, here the text's), so requests carry the
    batch's tweets out of arrival order and the worker has to put them back."""

    def plan(self, texts: list[str], max_request_size: int) -> PlannedBatch:
        requests = plan_requests([len(t) for t in texts], max_request_size, limit=10_000)
        return PlannedBatch(
            len(texts),
            tuple(
                EncodedRequest(r.indices, self.encode([texts[i] for i in r.indices]))
                for r in requests
            ),
        )

    def encode(self, texts: list[str]) -> EncodedBatch:
        ids = np.array(
            [[POISON_TOKEN if "POISON" in t else len(t), 1, 2] for t in texts], dtype=np.int64
        )
        return EncodedBatch(ids, np.ones_like(ids))


class FakeClassifier:
    model_name = "emotion-classifier"

    def __init__(self, max_batch_size: int = 64, failures: int = 0) -> None:
        self.max_batch_size = max_batch_size
        self.failures = failures
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def ensure_ready(self) -> None:
        pass

    def load_spec(self) -> ModelSpec:
        return ModelSpec("emotion-classifier", self.max_batch_size, {}, len(LABELS))

    def classify(self, batch: EncodedBatch) -> Classified:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise InferenceUnavailable("StatusCode.UNAVAILABLE", "down for a moment")
            self.batch_sizes.append(len(batch))
        if (batch.input_ids[:, 0] == POISON_TOKEN).any():
            raise InferenceRejected("StatusCode.INVALID_ARGUMENT", "bad input")
        logits = np.stack([batch.input_ids[:, 0] % k for k in (2, 3, 5, 7)], axis=1)
        return Classified(softmax(logits.astype(np.float32)), "1")

    def close(self) -> None:
        pass


def record(
    partition: int, offset: int, value: bytes | None, key: bytes | None = None
) -> SourceRecord:
    return SourceRecord("tweets", partition, offset, 1_700_000_000_000 + offset, key, value)


def settings(**overrides: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "metrics_port": -1,
        "max_batch_size": 8,
        "max_batch_wait_ms": 5,
        "commit_interval_ms": 0,
        "retry_backoff_initial_s": 0.01,
        "retry_backoff_max_s": 0.05,
        "worker_id": "test-worker",
    }
    return WorkerSettings(**{**base, **overrides})


class Harness:
    def __init__(self, worker: Worker, source: FakeSource, publisher: FakePublisher) -> None:
        self.worker, self.source, self.publisher = worker, source, publisher
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def outputs(self) -> list[dict[str, Any]]:
        return [json.loads(r.value or b"") for r in self.publisher.on("emotions")]

    def dead_letters(self) -> list[OutboundRecord]:
        return self.publisher.on("tweets.dlq")

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


def tweets(partition: int, count: int, start: int = 0) -> list[SourceRecord]:
    return [
        record(
            partition,
            start + i,
            json.dumps(
                {"id": f"p{partition}-{start + i}", "text": f"tweet {i}" * (i % 4 + 1)}
            ).encode(),
            key=f"user{i % 3}".encode(),
        )
        for i in range(count)
    ]


def start_worker_on_fakes(
    records: dict[Partition, list[SourceRecord]],
    classifier: FakeClassifier | None = None,
    publisher_max_bytes: int | None = None,
    *,
    source: FakeSource | None = None,
    publisher: FakePublisher | None = None,
    **overrides: Any,
) -> Harness:
    """A worker on fakes, running on its own thread; ``source``/``publisher`` replace
    the default fakes (for example with their transactional variants)."""
    chosen_source = source or FakeSource(records)
    chosen_publisher = publisher or FakePublisher(publisher_max_bytes)
    worker = Worker(
        settings(**overrides),
        source=lambda s, handler: chosen_source,
        publisher=lambda s: chosen_publisher,
        classifier=lambda s: classifier or FakeClassifier(),
        tokenizer=lambda s: FakeTokenizer(),
        labels=LABELS,
    )
    harness = Harness(worker, chosen_source, chosen_publisher)
    harness.thread.start()
    return harness
