"""Results and dead letters out to Kafka, each send counted until the broker answers.

:class:`Publishing` turns a classified batch into result records, dead-letters what
cannot become one, and hands both to the publisher. Acknowledgements arrive on the
producer's thread: a success marks the record's offset done in the
:class:`~worker.offsets.CommitTracker`; a failure is queued as a :class:`PublishFailure`
for the loop thread, which settles it (:meth:`Publishing.settle_failures`): what is too
large goes out again as a (slimmer) dead letter, a transient failure is handed to the
delivery mode to re-read, anything else stops the worker.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from worker.batching import MicroBatch, PendingTweet
from worker.errors import (
    FatalError,
    InferenceRejected,
    PoisonMessage,
    TransientError,
    Unprocessable,
)
from worker.inference import label_scores
from worker.inflight import Inferred
from worker.messages import (
    DLQ_DROPPED,
    ClassifiedTweet,
    DeadLetter,
    ModelRef,
    OutboundRecord,
    SourceRecord,
    bare_dead_letter,
    result_record,
)
from worker.observability import LogRateLimit, ThroughputSummary, WorkerMetrics
from worker.offsets import CommitTracker, Ticket
from worker.ports import Publisher
from worker.settings import WorkerSettings

# Dead letters logged in full per error class and summary interval; the rest are counted
# in one summary line per class (the metric counts every one), so poison cannot flood logs.
DEAD_LETTER_LOG_BURST = 5

AckCallback = Callable[[BaseException | None], None]


@dataclass(frozen=True)
class PublishFailure:
    """A send the broker did not acknowledge, and what can still be done for its record."""

    ticket: Ticket
    error: BaseException
    source: SourceRecord
    dead_letter_of: PoisonMessage | None = None
    """For a failed dead letter: why the record was being dead-lettered."""
    slim: bool = False
    bare: bool = False
    """Slim and without the original key: the last resort for a dead letter too large."""


def without_key(record: OutboundRecord) -> OutboundRecord:
    """A slim dead letter without the original key either: its ``dlq.*`` headers locate
    the original. kafka-python needs a key or a value, so the value is empty (not null)."""
    headers = tuple((n, v) for n, v in record.headers if n != DLQ_DROPPED)
    return replace(
        record, key=None, value=b"", headers=(*headers, (DLQ_DROPPED, b"key,value,headers"))
    )


def unprocessable(
    metrics: WorkerMetrics, log: Any, stage: str, exc: BaseException, record: SourceRecord
) -> Unprocessable:
    """Count and log a bug met on one record; the poison that dead-letters just it."""
    metrics.unprocessable.labels(stage=stage, exception=type(exc).__name__).inc()
    log.error(
        "unexpected error on one record, dead-lettering it",
        stage=stage,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        exc_info=exc,
    )
    return Unprocessable(stage, exc)


class Publishing:
    """The outbound side of the loop: results, dead letters, their acknowledgements."""

    def __init__(
        self,
        settings: WorkerSettings,
        publisher: Publisher,
        tracker: CommitTracker,
        metrics: WorkerMetrics,
        log: Any,
        *,
        labels: list[str],
        summary: ThroughputSummary,
        summary_lock: threading.Lock,
        on_sent: Callable[[Ticket], None],
    ) -> None:
        self._settings = settings
        self._publisher = publisher
        self._tracker = tracker
        self._metrics = metrics
        self._log = log
        self._labels = labels
        self._summary = summary
        self._summary_lock = summary_lock
        self._on_sent = on_sent
        """Called before each send (the delivery mode notes it)."""
        self._model = ModelRef(name=settings.model_name, version=settings.model_version or "?")
        self._dead_letter_log = LogRateLimit(DEAD_LETTER_LOG_BURST)
        self._failures: queue.SimpleQueue[PublishFailure] = queue.SimpleQueue()
        # Results and dead letters sent and not yet acknowledged (or failed): flow control
        # pauses at max_unacknowledged_records. Counted down on the producer's thread.
        self._unacknowledged = 0
        self._unacknowledged_lock = threading.Lock()

    # --- sending ------------------------------------------------------------------

    def publish(self, batch: MicroBatch, inferred: Inferred) -> None:
        """Send each tweet's result, or its dead letter when Triton rejected it."""
        outcomes, version, seconds = inferred
        self._metrics.inference_latency.observe(seconds)
        model = ModelRef(name=self._settings.model_name, version=version or self._model.version)
        self._model = model
        processed_at = datetime.now(UTC)
        rejected = 0
        for item, outcome in zip(batch.items, outcomes, strict=True):
            if not self._tracker.is_current(item.ticket):
                continue  # partition revoked or rewound: its new reader will redo this
            if isinstance(outcome, InferenceRejected):
                rejected += 1
                self.dead_letter(item.tweet.source, outcome, item.ticket)
                continue
            try:
                result = ClassifiedTweet.from_scores(
                    item.tweet, label_scores(outcome, self._labels), model, processed_at
                )
            except Exception as exc:  # the last line of defence: this record only
                source = item.tweet.source
                poison = self.unprocessable("building its result", exc, source)
                self.dead_letter(source, poison, item.ticket)
                continue
            self._send_result(item, result)
        with self._summary_lock:
            self._summary.batches += 1
        self._log.debug(
            "batch",
            size=len(batch),
            rejected=rejected,
            inference_ms=round(seconds * 1000, 1),
            model_version=version,
        )

    def _send_result(self, item: PendingTweet, result: ClassifiedTweet) -> None:
        try:
            record = result_record(self._settings.output_topic, item.tweet, result)
        except Exception as exc:  # the last line of defence: this record only
            source = item.tweet.source
            self.dead_letter(
                source, self.unprocessable("serializing its result", exc, source), item.ticket
            )
            return
        consumed_at = item.consumed_at

        def acknowledged(error: BaseException | None) -> None:  # producer thread
            if error is not None:
                self._failures.put(PublishFailure(item.ticket, error, item.tweet.source))
                return
            self._tracker.done(item.ticket)
            self._metrics.published.inc()
            self._metrics.end_to_end_latency.observe(time.monotonic() - consumed_at)
            with self._summary_lock:
                self._summary.published += 1

        self._on_sent(item.ticket)
        self._publisher.send(record, self._counted(acknowledged))

    def dead_letter(
        self,
        record: SourceRecord,
        error: PoisonMessage,
        ticket: Ticket,
        *,
        slim: bool = False,
        bare: bool = False,
    ) -> None:
        """Send ``record`` to the dead-letter topic with why; its offset is done once sent."""
        topic, worker_id = self._settings.dlq_topic, self._settings.worker_id
        error_class = type(error).__name__
        try:
            letter = DeadLetter(record=record, error=error, worker_id=worker_id)
            outbound = letter.to_record(topic, slim=slim or bare)
            if bare:
                outbound = without_key(outbound)
        except Exception as exc:  # the last line of defence: a bare one still goes out
            self.unprocessable("building its dead letter", exc, record)
            outbound = bare_dead_letter(topic, record, error, exc, worker_id)
            error_class = Unprocessable.__name__
        if self._dead_letter_log.admit(error_class):
            self._log.info(
                "dead-lettered",
                error_class=error_class,
                error=str(error)[:200],
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                slim=slim,
            )

        def acknowledged(failure: BaseException | None) -> None:  # producer thread
            if failure is not None:
                self._failures.put(
                    PublishFailure(
                        ticket, failure, record, dead_letter_of=error, slim=slim, bare=bare
                    )
                )
                return
            self._tracker.done(ticket)
            self._metrics.dead_lettered.labels(error_class=error_class).inc()
            with self._summary_lock:
                self._summary.dead_lettered += 1

        self._on_sent(ticket)
        self._publisher.send(outbound, self._counted(acknowledged))

    def unprocessable(self, stage: str, exc: BaseException, record: SourceRecord) -> Unprocessable:
        return unprocessable(self._metrics, self._log, stage, exc, record)

    def _counted(self, on_done: AckCallback) -> AckCallback:
        """Send ``on_done`` through the unacknowledged count (up now, down when it runs)."""
        with self._unacknowledged_lock:
            self._unacknowledged += 1

        def done(error: BaseException | None) -> None:
            with self._unacknowledged_lock:
                self._unacknowledged -= 1
            on_done(error)

        return done

    # --- waiting for the broker -----------------------------------------------------

    @property
    def unacknowledged(self) -> int:
        return self._unacknowledged

    def awaiting_broker(self) -> bool:
        """True while max_unacknowledged_records sends wait for the broker."""
        with self._unacknowledged_lock:
            return self._unacknowledged >= self._settings.max_unacknowledged_records

    def flush(self, timeout_s: float) -> bool:
        """Wait for every send to be acknowledged or failed; False on timeout."""
        return self._publisher.flush(timeout_s)

    def settle_failures(self, reread: Callable[[Ticket, TransientError], None]) -> None:
        """A send that failed: dead-letter what is too large, hand a transient failure to
        ``reread`` (the delivery mode re-reads from its last safe point), stop on anything
        else."""
        while True:
            try:
                failure = self._failures.get_nowait()
            except queue.Empty:
                break
            ticket, error = failure.ticket, failure.error
            if not self._tracker.is_current(ticket):
                continue  # its partition is re-read anyway
            if isinstance(error, PoisonMessage) and not failure.bare:
                # Too large: a result becomes a dead letter; a dead letter goes out slim,
                # then also without the original key (a key can be as large as a value).
                self._log.warning("record too large", error=str(error)[:200])
                if failure.dead_letter_of is None:
                    self.dead_letter(failure.source, error, ticket)
                else:
                    slim, bare = True, failure.slim
                    self.dead_letter(
                        failure.source, failure.dead_letter_of, ticket, slim=slim, bare=bare
                    )
                continue
            if isinstance(error, PoisonMessage):
                raise FatalError(
                    f"the dead-letter topic {self._settings.dlq_topic!r} refuses even a dead "
                    f"letter of context headers only, as too large ({error}): raise its "
                    "max.message.bytes"
                )
            if not isinstance(error, TransientError):
                raise error if isinstance(error, FatalError) else FatalError(str(error))
            reread(ticket, error)

    def discard_failures(self) -> None:
        """Forget the failures queued so far (their sends were aborted: moot)."""
        while True:
            try:
                self._failures.get_nowait()
            except queue.Empty:
                break

    def summarize_dead_letters(self) -> None:
        """One line per error class whose dead letters went past the per-interval burst."""
        seconds, suppressed = self._dead_letter_log.take_suppressed()
        for error_class, count in sorted(suppressed.items()):
            self._log.info(
                "dead-lettered, not logged one by one",
                error_class=error_class,
                count=count,
                seconds=round(seconds, 1),
                logged_in_full=DEAD_LETTER_LOG_BURST,
            )
