"""Batches at Triton: the job an inference thread runs, what it hands back, and the
batches in flight or held for a retry.

The loop tokenizes a batch and submits an :class:`InferenceJob` call to the pool of
inference threads; :class:`InFlightBatches` keeps each batch with its future in the order
sent, so results go out in consumption order whatever order Triton answers, and holds
them in memory while Triton is unavailable.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

from worker.backoff import Backoff
from worker.batching import MicroBatch, MicroBatcher
from worker.errors import (
    InferenceRejected,
    ModelChanged,
    ModelInputsChanged,
    ModelMismatch,
    TransientError,
)
from worker.inference import ModelSpec, Outcome, classify_planned, describe_change
from worker.observability import WorkerMetrics
from worker.offsets import Partition
from worker.ports import Classifier
from worker.settings import WorkerSettings
from worker.tokenizing import PlannedBatch


class Inferred(NamedTuple):
    """What Triton made of one batch."""

    outcomes: list[Outcome]
    """Per tweet, in the batch's order: its probabilities, or why Triton rejected it."""
    model_version: str
    """The version that answered ("" when Triton did not say)."""
    seconds: float
    """Wall time of the batch's requests, for the inference-latency histogram."""


@dataclass
class InFlight:
    """A batch at Triton."""

    batch: MicroBatch
    future: Future[Inferred]
    sent_at: float


class InferenceJob:
    """Classifies planned batches on the inference threads, and notices when the model
    changed under the worker (every text of a request rejected)."""

    def __init__(
        self, classifier: Classifier, spec: ModelSpec, metrics: WorkerMetrics, log: Any
    ) -> None:
        self._classifier = classifier
        self.spec = spec
        """The served model's spec as last read (start-up, or a re-read after rejections)."""
        self._metrics = metrics
        self._log = log

    def __call__(self, planned: PlannedBatch) -> Inferred:
        """Runs on an inference thread."""
        for _, encoded in planned.requests:
            self._metrics.batch_size.observe(len(encoded))
        started = time.perf_counter()
        sent_with = self.spec
        outcomes, version = classify_planned(
            self._classifier.classify, planned, lambda: self._check_unchanged(sent_with)
        )
        if self.spec is not sent_with and any(isinstance(o, InferenceRejected) for o in outcomes):
            # Another thread adapted to new inputs while this batch was at Triton: its
            # rejections may be the old inputs', not the texts'. Send it again as it is now.
            describe = describe_change(sent_with, self.spec) or "inputs re-read"
            raise ModelInputsChanged(sent_with.name, describe)
        return Inferred(outcomes, version, time.perf_counter() - started)

    def _check_unchanged(self, sent_with: ModelSpec) -> None:
        """Every text of a request was rejected: re-read the model's metadata before
        dead-lettering them. Runs on an inference thread; returns if the model is the one
        the request was sent for (the texts are poison).

        Raises
        ------
        ModelInputsChanged
            Only input types changed to ones the classifier now sends: retry (transient).
        ModelChanged
            Anything else changed: stop (a restart checks the new model at start-up).
        InferenceUnavailable
            Triton cannot say now: the batch is retried, nothing dead-lettered.
        """
        try:
            now = self._classifier.load_spec()  # the classifier sends what it says from now on
        except ModelMismatch as exc:
            change = f"it no longer fits the worker ({exc})"
        else:
            differs = describe_change(sent_with, now)
            if differs is None:
                return
            change = differs
            compatible = (now.num_labels, now.max_batch_size) == (
                sent_with.num_labels,
                sent_with.max_batch_size,
            )
            if compatible:
                self.spec = now
                self._log.warning("model inputs changed under the worker; adapting", change=change)
                raise ModelInputsChanged(sent_with.name, change)
        self._log.error("model changed under the worker; stopping", change=change)
        raise ModelChanged(sent_with.name, change)


class InFlightBatches:
    """Batches at Triton, in the order sent, and the batches held while Triton fails.

    A transient failure keeps the failed batch and every later one in memory, in order,
    and retries after a capped exponential backoff: one probe batch at a time until an
    inference succeeds (readiness false meanwhile).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        log: Any,
        set_ready: Callable[[bool, str], bool],
    ) -> None:
        self._max = settings.max_in_flight_batches
        self._metrics = metrics
        self._log = log
        self._set_ready = set_ready
        self._sent: deque[InFlight] = deque()
        self._held: deque[MicroBatch] = deque()
        self._backoff = Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s)
        self.retry_at: float | None = None
        """While backing off: when the held batches may be tried again."""
        self._failing = False

    def __len__(self) -> int:
        return len(self._sent)

    @property
    def full(self) -> bool:
        return len(self._sent) >= self._max

    @property
    def oldest(self) -> InFlight | None:
        return self._sent[0] if self._sent else None

    @property
    def held(self) -> int:
        """Tweets held for a retry."""
        return sum(len(batch) for batch in self._held)

    def next_batch(self, batcher: MicroBatcher, now: float) -> MicroBatch | None:
        """The batch to send next, held ones first; while backing off, one probe batch
        at a time once the wait is over."""
        if self.retry_at is not None:
            if self._sent or now < self.retry_at or not self._held:
                return None
            return self._held.popleft()
        return self._held.popleft() if self._held else batcher.take()

    def sent(self, batch: MicroBatch, future: Future[Inferred]) -> None:
        self._sent.append(InFlight(batch, future, time.monotonic()))
        self._metrics.in_flight_batches.set(len(self._sent))

    def take_finished(self) -> InFlight | None:
        """The oldest batch if Triton is done with it (later ones wait their turn)."""
        if not (self._sent and self._sent[0].future.done()):
            return None
        head = self._sent.popleft()
        self._metrics.in_flight_batches.set(len(self._sent))
        return head

    def back_off(self, failed: InFlight, error: TransientError) -> None:
        """Keep the failed batch and every later one in memory, in order; retry later
        (reading pauses meanwhile, at the loop's next flow control)."""
        later = [entry.batch for entry in self._sent]
        self._sent.clear()  # their threads finish on their own; results are dropped
        self._metrics.in_flight_batches.set(0)
        self._held.extendleft(reversed([failed.batch, *later]))
        delay = self._backoff.next_delay()
        self.retry_at = time.monotonic() + delay
        self._failing = True
        self._metrics.retries.labels(reason=type(error).__name__).inc()
        if self._set_ready(False, f"backing off: {error}"):
            self._log.warning(
                "inference unavailable, backing off",
                error=str(error),
                held_batches=len(self._held),
                retry_in_s=round(delay, 2),
            )
        else:
            self._log.info("still unavailable", error=str(error), retry_in_s=round(delay, 2))

    def succeeded(self) -> None:
        """An inference succeeded: end a backoff, if one was on."""
        if not self._failing:
            return
        self.retry_at = None
        self._failing = False
        self._backoff.reset()
        self._set_ready(True, "")
        self._log.info("inference recovered", held_batches=len(self._held))

    def drop(self, partitions: set[Partition]) -> int:
        """Forget held tweets of ``partitions`` (in-flight ones are skipped on publish);
        how many were dropped."""
        dropped = 0
        kept: deque[MicroBatch] = deque()
        for batch in self._held:
            items = tuple(i for i in batch.items if i.ticket.partition not in partitions)
            dropped += len(batch) - len(items)
            if items:
                kept.append(MicroBatch(items))
        self._held = kept
        if not self._held and self.retry_at is not None:
            # Nothing held any more: stop waiting, and let the next batch be the probe
            # (readiness stays false until an inference succeeds).
            self.retry_at = None
        return dropped

    def oldest_done_by(self, deadline: float) -> bool:
        """Shutting down: wait until ``deadline`` (monotonic) for the oldest batch; True
        once it is done (never while backing off: held batches are not retried now)."""
        head = self.oldest
        if head is None or self.retry_at is not None:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(Exception):
            head.future.exception(timeout=remaining)
        return head.future.done()

    def abandon(self) -> int:
        """Shutting down: forget the batches still at Triton; how many tweets they held."""
        abandoned = sum(len(entry.batch) for entry in self._sent)
        self._sent.clear()
        return abandoned
