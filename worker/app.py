"""The Worker: poll → decode → batch → tokenize → infer → publish → commit.

One object with a visible lifecycle. ``run()`` acquires every resource in an
``ExitStack`` (health server, Triton channel, inference threads, producer, consumer)
and releases them in reverse; ``stop()`` only sets a flag (SIGTERM/SIGINT call it).

Threads:

- the *loop thread* (the caller of ``run()``) owns the consumer — poll, pause,
  resume, seek and commit happen only there — and does decoding, batching,
  tokenizing and handing results to the producer, in batch order;
- up to ``max_in_flight_batches`` *inference threads* each wait on one Triton call,
  so the loop polls and tokenizes the next batch while Triton works;
- the producer's I/O thread reports acknowledgements, which mark offsets done in the
  thread-safe :class:`~worker.offsets.CommitTracker`;
- kafka-python's I/O thread runs the rebalance listener (while the loop thread waits
  in ``poll()``).

Failure policy, by error type: a :class:`PoisonMessage` is dead-lettered and then
counts as done; a :class:`TransientError` keeps the batch in memory, pauses the
partitions (polling goes on, so the group keeps us) and retries after a capped
exponential backoff with jitter, readiness false meanwhile; a :class:`FatalError`
ends ``run()`` with nothing committed past what was delivered.

Exactly-once (``delivery = exactly_once``): every send since the last commit belongs
to one open Kafka transaction; a commit first reaches a *clean cut* (everything flushed
and acknowledged, every record sent lies below the offsets to commit — dead letters of
undecodable records are held back until every earlier record of their partition was
sent), then commits records and consumer offsets together. A failed send, a stale
group generation or a broker error aborts the transaction and re-reads every partition
from its last committed offset; losing a partition whose results are in the open
transaction aborts it too, so the old owner never commits work a new owner redoes.
Fencing by a newer producer with the same transactional id ends ``run()``
(:class:`ProducerFenced`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from worker import failpoints
from worker.backoff import Backoff
from worker.batching import MicroBatch, MicroBatcher, PendingTweet
from worker.errors import (
    FatalError,
    InferenceRejected,
    ModelChanged,
    ModelInputsChanged,
    ModelMismatch,
    PoisonMessage,
    ProducerFenced,
    TransactionAborted,
    TransientError,
    Unprocessable,
    WorkerError,
)
from worker.inference import (
    ModelSpec,
    Outcome,
    classify_planned,
    describe_change,
    label_scores,
)
from worker.messages import (
    DLQ_DROPPED,
    ClassifiedTweet,
    DeadLetter,
    InboundTweet,
    ModelRef,
    OutboundRecord,
    SourceRecord,
    bare_dead_letter,
    decode,
    result_record,
)
from worker.observability import (
    Health,
    HealthServer,
    LogRateLimit,
    ThroughputSummary,
    WorkerMetrics,
)
from worker.offsets import CommitTracker, Partition, Ticket
from worker.ports import (
    Classifier,
    ClassifierFactory,
    Publisher,
    PublisherFactory,
    Source,
    SourceFactory,
    Tokenizer,
    TokenizerFactory,
    Transactions,
    kafka_publisher,
    kafka_source,
    repository_tokenizer,
    triton_classifier,
)
from worker.settings import WorkerSettings
from worker.tokenizing import PlannedBatch

log = structlog.get_logger("worker")

# The loop never blocks longer than this in one poll, so stop() and due batches are
# noticed promptly.
IDLE_POLL_S = 0.2
# While batches are at Triton, the loop looks for finished ones this often.
BUSY_POLL_S = 0.005
# While the consumer joins its group, each poll waits this long. kafka-python 3.0 drives
# the JoinGroup/SyncGroup round trip only inside poll(); with polls that keep timing out
# mid-join we saw members never finish rejoining (partitions stuck unassigned until the
# session timed out). Long polls let the join complete within one call.
REBALANCE_POLL_S = 1.0
# On shutdown, in-flight batches get one Triton deadline to finish before being abandoned.
FLUSH_TIMEOUT_S = 30.0
# Exactly-once: how long a commit waits for the acknowledgement of what was sent (ms on
# a healthy broker) before it is postponed to the next commit interval.
CUT_FLUSH_TIMEOUT_S = 2.0
# Exactly-once: flush/release rounds to reach a clean cut before a commit. One round
# suffices unless sends beget sends (a too-large result re-sent as a dead letter, then
# slim); past this, the commit waits for the next interval.
MAX_CUT_ROUNDS = 4
# Dead letters logged in full per error class and summary interval; the rest are counted
# in one summary line per class (the metric counts every one), so poison cannot flood logs.
DEAD_LETTER_LOG_BURST = 5
# A failing poll is retried after a capped exponential backoff, capped here too: the loop
# waits in place (still beating, unlike a paused retry it cannot poll meanwhile), and
# must stay well inside the liveness timeout (60 s) and max.poll.interval.
POLL_RETRY_MAX_S = 5.0
# On revocation, sends already made get this long to be acknowledged before the commit
# (kafka-python's I/O thread waits meanwhile; acks=all on a healthy broker takes ms).
REVOKE_FLUSH_TIMEOUT_S = 10.0


# --- the loop's own bookkeeping -----------------------------------------------------


@dataclass
class InFlight:
    """A batch at Triton."""

    batch: MicroBatch
    future: Future[tuple[list[Outcome], str, float]]
    sent_at: float


def _without_key(record: OutboundRecord) -> OutboundRecord:
    """A slim dead letter without the original key either: its ``dlq.*`` headers locate
    the original. kafka-python needs a key or a value, so the value is empty (not null)."""
    headers = tuple((n, v) for n, v in record.headers if n != DLQ_DROPPED)
    return replace(
        record, key=None, value=b"", headers=(*headers, (DLQ_DROPPED, b"key,value,headers"))
    )


def _loggable(offsets: dict[Partition, int]) -> dict[str, int]:
    """``{"topic:partition": offset}``: JSON objects need string keys."""
    return {f"{topic}:{partition}": offset for (topic, partition), offset in offsets.items()}


class _StoppedWhileStartingError(Exception):
    """stop() arrived while starting up: leave quietly, nothing was consumed."""


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


class Worker:
    """Consumes tweets, classifies them through Triton, publishes results; see module doc."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        source: SourceFactory = kafka_source,
        publisher: PublisherFactory = kafka_publisher,
        classifier: ClassifierFactory = triton_classifier,
        tokenizer: TokenizerFactory = repository_tokenizer,
        labels: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self._make_source = source
        self._make_publisher = publisher
        self._make_classifier = classifier
        self._make_tokenizer = tokenizer
        self._labels = labels
        self.metrics = WorkerMetrics()
        self.health = Health()
        self.tracker = CommitTracker()
        self._stop = threading.Event()
        self._started = threading.Event()
        self.metrics_port: int | None = None
        self.max_batch_size = settings.max_batch_size
        self._log = log.bind(worker_id=settings.worker_id)

        # Loop-thread state (set up by run()).
        self._source: Source | None = None
        self._publisher: Publisher | None = None
        self._classifier: Classifier | None = None
        self._tokenizer: Tokenizer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batcher = MicroBatcher(
            settings.batch_window,
            settings.max_batch_wait_ms / 1000,
            full_size=settings.max_batch_size,
        )
        self._in_flight: deque[InFlight] = deque()
        self._retry: deque[MicroBatch] = deque()
        self._backoff = Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s)
        self._retry_at: float | None = None
        # Exactly-once: after an abort, partitions stay paused until this time (the loop
        # keeps polling meanwhile, so neither liveness nor max.poll.interval runs out).
        self._reread_at: float | None = None
        """While backing off: when the held batches may be tried again."""
        self._inference_failing = False
        self._model = ModelRef(name=settings.model_name, version=settings.model_version or "?")
        self._model_spec: ModelSpec | None = None
        """The served model's spec as last read (start-up, or a re-read after rejections)."""
        self._last_commit = 0.0
        self._summary = ThroughputSummary(settings.log_summary_interval_s)
        self._dead_letter_log = LogRateLimit(DEAD_LETTER_LOG_BURST)
        poll_retry_max_s = min(settings.retry_backoff_max_s, POLL_RETRY_MAX_S)
        self._poll_backoff = Backoff(
            min(settings.retry_backoff_initial_s, poll_retry_max_s), poll_retry_max_s
        )
        self._summary_lock = threading.Lock()

        # Filled by other threads, drained by the loop thread.
        # Exactly-once (loop thread only).
        self._transactions: Transactions | None = None
        self._held_poison: deque[tuple[SourceRecord, PoisonMessage, Ticket]] = deque()
        """Dead letters waiting until every earlier record of their partition was sent."""
        self._txn_partitions: set[Partition] = set()
        """Input partitions with records sent in the open transaction."""
        self._sends = 0
        self._abort_backoff = Backoff(
            settings.retry_backoff_initial_s, settings.retry_backoff_max_s
        )

        self._publish_failures: queue.SimpleQueue[PublishFailure] = queue.SimpleQueue()
        # Results and dead letters sent and not yet acknowledged (or failed): flow control
        # pauses at max_unacknowledged_records. Counted down on the producer's thread.
        self._unacknowledged = 0
        self._unacknowledged_lock = threading.Lock()
        self._revoked: queue.SimpleQueue[set[Partition]] = queue.SimpleQueue()
        self._resume_from: dict[Partition, int] = {}
        self._resume_lock = threading.Lock()

    # --- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to finish; safe from any thread and from signal handlers."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_started(self, timeout_s: float) -> bool:
        """True once the worker consumes (model checked, clients created)."""
        return self._started.wait(timeout_s)

    def run(self) -> None:
        """Run until :meth:`stop`; then finish in-flight work, flush, commit, close.

        Raises
        ------
        FatalError
            The worker cannot work as configured (model mismatch, refused writes...).
        """
        try:
            self._run()
        except _StoppedWhileStartingError:
            self._log.info("stopped before consuming")
        except ProducerFenced as exc:
            self._log.error(
                "fenced: a newer worker with the same transactional id took over; exiting",
                transactional_id=exc.transactional_id,
                error=str(exc),
            )
            raise

    def _run(self) -> None:
        s = self.settings
        with contextlib.ExitStack() as stack:
            if s.metrics_enabled:
                server = stack.enter_context(
                    HealthServer(s.metrics_host, s.metrics_port, self.metrics, self.health)
                )
                self.metrics_port = server.port
            self._log.info("starting", settings=s.redacted(), metrics_port=self.metrics_port)
            if s.password_in_clear:  # allowed by the operator, said once
                self._log.warning(
                    "the SASL password crosses the network in clear (SASL_PLAINTEXT with "
                    "PLAIN), as EMOTION_STREAM_ALLOW_CLEARTEXT_PASSWORD allows"
                )
            self._check_failpoint()
            self._tokenizer = self._make_tokenizer(s)
            labels = self._labels if self._labels is not None else self._read_labels()
            self._classifier = self._make_classifier(s)
            stack.callback(self._classifier.close)
            spec = self._wait_for_model()
            if spec is None:  # stopped while waiting
                return
            self._check_model(spec, labels)
            self._model_spec = spec
            self._labels = labels
            self._executor = stack.enter_context(
                ThreadPoolExecutor(s.max_in_flight_batches, thread_name_prefix="worker-infer")
            )
            stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
            self._publisher = stack.enter_context(self._connect(self._make_publisher, s))
            if s.exactly_once:
                if not isinstance(self._publisher, Transactions):
                    raise FatalError("delivery=exactly_once needs a transactional publisher")
                self._transactions = self._publisher
            self._source = stack.enter_context(self._connect(self._make_source, s, self))
            self._set_ready(True)
            self._started.set()
            self._log.info(
                "consuming",
                topic=s.input_topic,
                group=s.consumer_group,
                delivery=s.delivery,
                transactional_id=s.effective_transactional_id if s.exactly_once else None,
            )
            try:
                while not self._stop.is_set():
                    self._step()
            finally:
                self._set_ready(False, "stopping")
            self._drain()
            self._summarize_dead_letters()
        self._log.info("stopped")

    # --- startup ------------------------------------------------------------------

    def _check_failpoint(self) -> None:
        """Refuse a malformed test failpoint at startup; say loudly when one is armed."""
        try:
            point = failpoints.armed()
        except failpoints.FailpointSpecError as exc:
            raise FatalError(str(exc)) from exc
        if point is not None:
            self._log.warning(
                "test failpoint armed: this process will SIGKILL itself (or stall)",
                failpoint=point.name,
                on_hit=point.on_hit,
                sleep_s=point.sleep_s,
            )

    def _read_labels(self) -> list[str]:
        path = self.settings.layout.labels
        try:
            labels = self.settings.layout.read_labels()
        except OSError as exc:
            raise FatalError(f"cannot read the labels file {path}: {exc}") from exc
        if not labels:
            raise FatalError(f"the labels file {path} is empty")
        return labels

    def _wait_for_model(self) -> ModelSpec | None:
        """Wait (backing off, stop-aware) until Triton serves the model; its spec."""
        assert self._classifier is not None
        backoff = Backoff(self.settings.retry_backoff_initial_s, self.settings.retry_backoff_max_s)
        while not self._stop.is_set():
            self.health.beat()  # waiting is alive, not stuck: only readiness is false
            try:
                self._classifier.ensure_ready()
                return self._classifier.load_spec()
            except TransientError as exc:
                delay = backoff.next_delay()
                self._set_ready(False, f"waiting for Triton: {exc}")
                self._log.warning("waiting for model", error=str(exc), retry_in_s=round(delay, 2))
                self.metrics.retries.labels(reason=type(exc).__name__).inc()
                self._stop.wait(delay)
        return None

    def _check_model(self, spec: ModelSpec, labels: list[str]) -> None:
        if spec.num_labels != len(labels):
            raise ModelMismatch(
                spec.name,
                f"it outputs {spec.num_labels} logits but labels.txt lists {len(labels)} labels",
            )
        if 0 < spec.max_batch_size < self.settings.max_batch_size:
            self._log.warning(
                "max_batch_size clamped to the model's",
                requested=self.settings.max_batch_size,
                model_max_batch_size=spec.max_batch_size,
            )
            self.max_batch_size = spec.max_batch_size
            self._batcher = MicroBatcher(
                self._batcher.max_size, self._batcher.max_wait_s, full_size=spec.max_batch_size
            )
        self._log.info(
            "model ready", model=spec.name, max_batch_size=self.max_batch_size, labels=labels
        )

    @contextlib.contextmanager
    def _connect(self, factory: Callable[..., Any], *args: Any) -> Iterator[Any]:
        """Enter a Kafka client, retrying transient failures until it works or we stop."""
        backoff = Backoff(self.settings.retry_backoff_initial_s, self.settings.retry_backoff_max_s)
        while True:
            self.health.beat()
            client = factory(*args)
            try:
                entered = client.__enter__()
            except TransientError as exc:
                if self._stop.is_set():
                    raise _StoppedWhileStartingError from exc
                delay = backoff.next_delay()
                self._set_ready(False, f"waiting for Kafka: {exc}")
                self._log.warning("waiting for Kafka", error=str(exc), retry_in_s=round(delay, 2))
                self._stop.wait(delay)
                continue
            break
        try:
            yield entered
        finally:
            client.__exit__(None, None, None)

    # --- one turn of the loop -------------------------------------------------------

    def _step(self) -> None:
        self.health.beat()
        self._forget_revoked()
        self._handle_publish_failures()
        self._flow_control()
        records = self._poll()
        rewound = self._forget_revoked()
        if rewound:  # read before the rewind: those partitions are read again
            records = [r for r in records if (r.topic, r.partition) not in rewound]
        self._accept(records)
        self._dispatch()
        self._collect()
        self._release_poison()
        self._commit()
        self._report()

    def _poll_timeout(self) -> float:
        assert self._source is not None
        if self._source.rebalancing:
            return REBALANCE_POLL_S
        if self._in_flight or self._retry_at is not None:
            return BUSY_POLL_S
        due = self._batcher.due_in()
        return IDLE_POLL_S if due is None else min(due, IDLE_POLL_S)

    def _poll(self) -> list[SourceRecord]:
        assert self._source is not None
        timeout = self._poll_timeout()
        if (
            timeout < REBALANCE_POLL_S
            and len(self._in_flight) >= self.settings.max_in_flight_batches
        ):
            # Nothing can be sent until Triton answers: wake up the moment it does, rather
            # than spinning on short polls (a poll still follows, to keep the group).
            futures.wait([self._in_flight[0].future], timeout=IDLE_POLL_S)
            timeout = 0.0
        try:
            records = self._source.poll(timeout)
        except TransientError as exc:
            delay = self._poll_backoff.next_delay()
            self._log.warning("poll failed, will retry", error=str(exc), retry_in_s=round(delay, 2))
            self.metrics.retries.labels(reason=type(exc).__name__).inc()
            self._stop.wait(delay)
            return []
        self._poll_backoff.reset()
        return records

    def _flow_control(self) -> None:
        """Pause while backing off or while the backlog is full; resume otherwise."""
        assert self._source is not None
        backlog = len(self._batcher) + sum(len(b) for b in self._retry)
        full = backlog >= self._batcher.max_size * (self.settings.max_in_flight_batches + 1)
        full = full or self._awaiting_broker()
        if self._reread_at is not None and time.monotonic() >= self._reread_at:
            self._reread_at = None
        if self._retry_at is not None or self._reread_at is not None or full:
            self._source.pause_all()  # also pauses partitions assigned since
        elif self._source.paused:
            self._source.resume_all()

    def _accept(self, records: list[SourceRecord]) -> None:
        """Decode each record: tweets wait for a batch, poison goes to the DLQ."""
        now = time.monotonic()
        for record in records:
            ticket = self.tracker.track((record.topic, record.partition), record.offset)
            self.metrics.consumed.inc()
            with self._summary_lock:
                self._summary.consumed += 1
            tweet = self._decode(record)
            if isinstance(tweet, PoisonMessage):
                poison = tweet
                if self._transactions is not None:
                    # Sent now, it could run ahead of earlier records still at Triton and
                    # land in a transaction whose offsets stop below it: a duplicate
                    # after a crash. It waits for its turn instead.
                    self._held_poison.append((record, poison, ticket))
                else:
                    self._dead_letter(record, poison, ticket)
                continue
            self._batcher.add(PendingTweet(tweet=tweet, ticket=ticket, consumed_at=now))
        self._release_poison()

    def _decode(self, record: SourceRecord) -> InboundTweet | PoisonMessage:
        """The tweet, or why the record is poison; never raises."""
        try:
            return decode(record, max_text_bytes=self.settings.max_text_bytes)
        except PoisonMessage as poison:
            return poison
        except Exception as exc:  # the last line of defence: this record only
            return self._unprocessable("decoding", exc, record)

    def _unprocessable(self, stage: str, exc: BaseException, record: SourceRecord) -> Unprocessable:
        """Count and log a bug met on one record; the poison that dead-letters just it."""
        self.metrics.unprocessable.labels(stage=stage, exception=type(exc).__name__).inc()
        self._log.error(
            "unexpected error on one record, dead-lettering it",
            stage=stage,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            exc_info=exc,
        )
        return Unprocessable(stage, exc)

    def _release_poison(self) -> None:
        """Exactly-once: dead-letter held poison whose partition was sent up to it."""
        if not self._held_poison:
            return
        waiting: deque[tuple[SourceRecord, PoisonMessage, Ticket]] = deque()
        for record, poison, ticket in self._held_poison:  # consumption order
            if not self.tracker.is_current(ticket):
                continue  # its partition is read again
            if self.tracker.sent_before(ticket):
                self._dead_letter(record, poison, ticket)
            else:
                waiting.append((record, poison, ticket))
        self._held_poison = waiting

    def _note_sent(self, ticket: Ticket) -> None:
        self._sends += 1
        if self._transactions is not None:
            self.tracker.sent(ticket)
            self._txn_partitions.add(ticket.partition)

    def _awaiting_broker(self) -> bool:
        """True while max_unacknowledged_records sends wait for the broker."""
        with self._unacknowledged_lock:
            return self._unacknowledged >= self.settings.max_unacknowledged_records

    def _counted(
        self, on_done: Callable[[BaseException | None], None]
    ) -> Callable[[BaseException | None], None]:
        """Send ``on_done`` through the unacknowledged count (up now, down when it runs)."""
        with self._unacknowledged_lock:
            self._unacknowledged += 1

        def done(error: BaseException | None) -> None:
            with self._unacknowledged_lock:
                self._unacknowledged -= 1
            on_done(error)

        return done

    def _dispatch(self) -> None:
        """Tokenize and send batches while there is room in flight."""
        now = time.monotonic()
        while len(self._in_flight) < self.settings.max_in_flight_batches:
            if self._awaiting_broker():
                return  # its results would only wait for the broker too
            if self._retry_at is not None:
                # Backing off: one probe batch at a time, when the wait is over.
                if self._in_flight or now < self._retry_at or not self._retry:
                    return
                self._send(self._retry.popleft())
                return
            batch = self._retry.popleft() if self._retry else self._batcher.take()
            if batch is None:
                return
            self._send(batch)

    def _send(self, batch: MicroBatch) -> None:
        assert self._tokenizer is not None and self._executor is not None
        planned = self._tokenizer.plan(batch.texts, self.max_batch_size)
        future = self._executor.submit(self._infer, planned)
        self._in_flight.append(InFlight(batch, future, time.monotonic()))
        self.metrics.in_flight_batches.set(len(self._in_flight))

    def _infer(self, planned: PlannedBatch) -> tuple[list[Outcome], str, float]:
        """Runs on an inference thread."""
        assert self._classifier is not None
        for _, encoded in planned.requests:
            self.metrics.batch_size.observe(len(encoded))
        started = time.perf_counter()
        sent_with = self._model_spec
        outcomes, version = classify_planned(
            self._classifier.classify, planned, lambda: self._check_model_unchanged(sent_with)
        )
        return outcomes, version, time.perf_counter() - started

    def _check_model_unchanged(self, sent_with: ModelSpec | None) -> None:
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
        assert self._classifier is not None and sent_with is not None
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
                self._model_spec = now
                self._log.warning("model inputs changed under the worker; adapting", change=change)
                raise ModelInputsChanged(sent_with.name, change)
        self._log.error("model changed under the worker; stopping", change=change)
        raise ModelChanged(sent_with.name, change)

    def _collect(self) -> None:
        """Publish finished batches, strictly in the order they were sent."""
        while self._in_flight and self._in_flight[0].future.done():
            head = self._in_flight.popleft()
            self.metrics.in_flight_batches.set(len(self._in_flight))
            try:
                outcomes, version, seconds = head.future.result()
            except TransientError as exc:
                self._back_off(head, exc)
                return
            except WorkerError:
                raise
            except Exception as exc:  # a bug, not a policy: stop loudly, commit nothing more
                raise FatalError(f"inference failed unexpectedly: {exc!r}") from exc
            if self._inference_failing:
                self._recovered()
            failpoints.hit(failpoints.AFTER_INFERENCE)
            self._publish(head.batch, outcomes, version, seconds)

    def _back_off(self, failed: InFlight, error: TransientError) -> None:
        """Keep the failed batch and every later one in memory, in order; retry later."""
        later = [entry.batch for entry in self._in_flight]
        self._in_flight.clear()  # their threads finish on their own; results are dropped
        self.metrics.in_flight_batches.set(0)
        self._retry.extendleft(reversed([failed.batch, *later]))
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        self._inference_failing = True
        self.metrics.retries.labels(reason=type(error).__name__).inc()
        if self._set_ready(False, f"backing off: {error}"):
            self._log.warning(
                "inference unavailable, backing off",
                error=str(error),
                held_batches=len(self._retry),
                retry_in_s=round(delay, 2),
            )
        else:
            self._log.info("still unavailable", error=str(error), retry_in_s=round(delay, 2))
        self._flow_control()

    def _recovered(self) -> None:
        self._retry_at = None
        self._inference_failing = False
        self._backoff.reset()
        self._set_ready(True)
        self._log.info("inference recovered", held_batches=len(self._retry))

    def _publish(
        self, batch: MicroBatch, outcomes: list[Outcome], version: str, seconds: float
    ) -> None:
        assert self._labels is not None
        self.metrics.inference_latency.observe(seconds)
        model = ModelRef(name=self.settings.model_name, version=version or self._model.version)
        self._model = model
        processed_at = datetime.now(UTC)
        rejected = 0
        for item, outcome in zip(batch.items, outcomes, strict=True):
            if not self.tracker.is_current(item.ticket):
                continue  # partition revoked or rewound: its new reader will redo this
            if isinstance(outcome, InferenceRejected):
                rejected += 1
                self._dead_letter(item.tweet.source, outcome, item.ticket)
                continue
            try:
                result = ClassifiedTweet.from_scores(
                    item.tweet, label_scores(outcome, self._labels), model, processed_at
                )
            except Exception as exc:  # the last line of defence: this record only
                source = item.tweet.source
                poison = self._unprocessable("building its result", exc, source)
                self._dead_letter(source, poison, item.ticket)
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
        assert self._publisher is not None
        try:
            record = result_record(self.settings.output_topic, item.tweet, result)
        except Exception as exc:  # the last line of defence: this record only
            source = item.tweet.source
            self._dead_letter(
                source, self._unprocessable("serializing its result", exc, source), item.ticket
            )
            return
        consumed_at = item.consumed_at

        def acknowledged(error: BaseException | None) -> None:  # producer thread
            if error is not None:
                self._publish_failures.put(PublishFailure(item.ticket, error, item.tweet.source))
                return
            self.tracker.done(item.ticket)
            self.metrics.published.inc()
            self.metrics.end_to_end_latency.observe(time.monotonic() - consumed_at)
            with self._summary_lock:
                self._summary.published += 1

        self._note_sent(item.ticket)
        self._publisher.send(record, self._counted(acknowledged))

    def _dead_letter(
        self,
        record: SourceRecord,
        error: PoisonMessage,
        ticket: Ticket,
        *,
        slim: bool = False,
        bare: bool = False,
    ) -> None:
        assert self._publisher is not None
        topic, worker_id = self.settings.dlq_topic, self.settings.worker_id
        error_class = type(error).__name__
        try:
            letter = DeadLetter(record=record, error=error, worker_id=worker_id)
            outbound = letter.to_record(topic, slim=slim or bare)
            if bare:
                outbound = _without_key(outbound)
        except Exception as exc:  # the last line of defence: a bare one still goes out
            self._unprocessable("building its dead letter", exc, record)
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
                self._publish_failures.put(
                    PublishFailure(
                        ticket, failure, record, dead_letter_of=error, slim=slim, bare=bare
                    )
                )
                return
            self.tracker.done(ticket)
            self.metrics.dead_lettered.labels(error_class=error_class).inc()
            with self._summary_lock:
                self._summary.dead_lettered += 1

        self._note_sent(ticket)
        self._publisher.send(outbound, self._counted(acknowledged))

    def _handle_publish_failures(self) -> None:
        """A send that failed: dead-letter what is too large, re-read the partition from its
        watermark after a transient failure, stop on anything else."""
        rewound: set[Partition] = set()
        while True:
            try:
                failure = self._publish_failures.get_nowait()
            except queue.Empty:
                break
            ticket, error = failure.ticket, failure.error
            if not self.tracker.is_current(ticket):
                continue  # its partition is re-read anyway
            if isinstance(error, PoisonMessage) and not failure.bare:
                # Too large: a result becomes a dead letter; a dead letter goes out slim,
                # then also without the original key (a key can be as large as a value).
                self._log.warning("record too large", error=str(error)[:200])
                if failure.dead_letter_of is None:
                    self._dead_letter(failure.source, error, ticket)
                else:
                    slim, bare = True, failure.slim
                    self._dead_letter(
                        failure.source, failure.dead_letter_of, ticket, slim=slim, bare=bare
                    )
                continue
            if isinstance(error, PoisonMessage):
                raise FatalError(
                    f"the dead-letter topic {self.settings.dlq_topic!r} refuses even a dead "
                    f"letter of context headers only, as too large ({error}): raise its "
                    "max.message.bytes"
                )
            if not isinstance(error, TransientError):
                raise error if isinstance(error, FatalError) else FatalError(str(error))
            if self._transactions is not None:
                # The open transaction holds every partition's sends: all start over.
                self._abort_and_rewind(error)
                return
            if ticket.partition in rewound:
                continue
            rewound.add(ticket.partition)
            offset = self.tracker.rewind(ticket.partition)
            self.metrics.retries.labels(reason=type(error).__name__).inc()
            self._log.warning(
                "publish failed, re-reading partition",
                error=str(error),
                partition=ticket.partition,
                from_offset=offset,
            )
            self._drop_waiting({ticket.partition})
            if offset is not None and self._source is not None:
                self._source.seek(ticket.partition, offset)
            # Re-reading at once would resend into the same failure, a loop that multiplies
            # memory and duplicates: pause and keep polling until the backoff is over.
            delay = self._abort_backoff.next_delay()
            self._reread_at = max(self._reread_at or 0.0, time.monotonic() + delay)
            self._flow_control()

    # --- rebalance (called on kafka-python's I/O thread, inside poll) -----------------

    def on_assigned(self, partitions: set[Partition]) -> dict[Partition, int]:
        with self._resume_lock:
            seeks = {p: o for p, o in self._resume_from.items() if p in partitions}
            self._resume_from.clear()
        self._log.info(
            "partitions assigned", partitions=sorted(partitions), rereading=_loggable(seeks)
        )
        return seeks

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, int]:
        if self._publisher is not None and not self.settings.exactly_once:
            # Results sent a moment ago are not acknowledged yet: wait for them, or they
            # stay out of this commit and the next owner classifies them again.
            self._publisher.flush(REVOKE_FLUSH_TIMEOUT_S)
        complete = {p: o for p, o in self.tracker.committable().items() if p in partitions}
        if self.settings.exactly_once:
            # Offsets are committed only inside a transaction, with their results; the
            # loop aborts the open one if it holds results of these partitions.
            complete = {}
        self._remember_unfinished(partitions)
        self.tracker.forget(partitions)
        self._revoked.put(set(partitions))
        self._log.info(
            "partitions revoked", partitions=sorted(partitions), committing=_loggable(complete)
        )
        return complete

    def on_lost(self, partitions: set[Partition]) -> None:
        # No position to remember: kafka-python drops a lost partition's fetch position,
        # and if it comes back, reading starts from the group's committed offset, which
        # another member may have moved on meanwhile. Our old position would be stale:
        # seeking to it re-published what the other member had committed (duplicates even
        # with exactly-once) or skipped past what nobody had (losses).
        with self._resume_lock:
            for partition in partitions:
                self._resume_from.pop(partition, None)
        self.tracker.forget(partitions)
        self._revoked.put(set(partitions))
        self._log.warning("partitions lost", partitions=sorted(partitions))

    def _remember_unfinished(self, partitions: set[Partition]) -> None:
        """Where to re-read if these partitions come back to us (their work is dropped)."""
        if self.settings.exactly_once:
            # Uncommitted results may be aborted with the open transaction: from the commit.
            points = self.tracker.restart_points(partitions)
        else:
            points = self.tracker.unfinished(partitions)
        with self._resume_lock:
            self._resume_from.update(points)

    def _forget_revoked(self) -> set[Partition]:
        """Drop the work of partitions we lost; the partitions an abort rewound, if any."""
        gone: set[Partition] = set()
        while True:
            try:
                gone |= self._revoked.get_nowait()
            except queue.Empty:
                break
        if not gone:
            return set()
        self._drop_waiting(gone)
        if (
            self._transactions is not None
            and self._transactions.in_transaction
            and gone & self._txn_partitions
        ):
            lost = sorted(gone & self._txn_partitions)
            return self._abort_and_rewind(
                TransactionAborted("rebalance", f"partitions {lost} left us with results"),
                back_off=False,
            )
        return set()

    def _abort_and_rewind(self, error: TransientError, *, back_off: bool = True) -> set[Partition]:
        """Exactly-once: abort the open transaction, re-read every partition from its last
        commit, and drop what was in memory for them. The partitions rewound.

        Raises
        ------
        ProducerFenced
            The abort found a newer producer with our transactional id.
        FatalError
            The abort itself failed.
        """
        assert self._transactions is not None and self._source is not None
        self.metrics.retries.labels(reason=type(error).__name__).inc()
        self._transactions.abort_transaction()
        self._txn_partitions.clear()
        while True:  # failures of the aborted sends: moot now
            try:
                self._publish_failures.get_nowait()
            except queue.Empty:
                break
        points: dict[Partition, int] = {}
        for partition in self.tracker.partitions():
            point = self.tracker.rewind_to_committed(partition)
            if point is not None:
                self._source.seek(partition, point)
                points[partition] = point
        self._drop_waiting(set(points))
        delay = self._abort_backoff.next_delay() if back_off else 0.0
        self._log.warning(
            "transaction aborted, re-reading from the last commit",
            error=str(error),
            rereading=_loggable(points),
            retry_in_s=round(delay, 2),
        )
        if delay:
            # Not a sleep: a backoff of up to retry_backoff_max_s (≤ 600 s) would outlast
            # the liveness timeout and max.poll.interval. Pause and keep polling instead.
            self._reread_at = time.monotonic() + delay
            self._flow_control()
        return set(points)

    def _drop_waiting(self, partitions: set[Partition]) -> None:
        """Forget tweets of partitions we no longer read (in-flight ones are skipped later)."""
        dropped = self._batcher.drop(partitions)
        kept: deque[MicroBatch] = deque()
        for batch in self._retry:
            items = tuple(i for i in batch.items if i.ticket.partition not in partitions)
            dropped += len(batch) - len(items)
            if items:
                kept.append(MicroBatch(items))
        self._retry = kept
        held = len(self._held_poison)
        self._held_poison = deque(h for h in self._held_poison if h[2].partition not in partitions)
        dropped += held - len(self._held_poison)
        if not self._retry and self._retry_at is not None:
            # Nothing held any more: stop waiting, and let the next batch be the probe
            # (readiness stays false until an inference succeeds).
            self._retry_at = None
        if dropped:
            self._log.info("dropped unprocessed tweets", count=dropped)

    # --- commit, report, drain ----------------------------------------------------

    def _commit(self, *, force: bool = False) -> None:
        assert self._source is not None
        now = time.monotonic()
        if not force and now - self._last_commit < self.settings.commit_interval_ms / 1000:
            return
        self._last_commit = now
        if self._transactions is not None:
            self._commit_transaction(self._transactions)
            return
        offsets = self.tracker.committable()
        if not offsets:
            return
        failpoints.hit(failpoints.AFTER_SEND)  # acknowledged, not yet committed
        try:
            failpoints.hit(failpoints.DURING_COMMIT)
            if self._source.commit(offsets):
                self.tracker.committed(offsets)
                self._abort_backoff.reset()  # the publish failures are over
                self.metrics.commits.inc()
            else:
                self._log.warning(
                    "commit rejected: the group rebalanced", offsets=_loggable(offsets)
                )
        except TransientError as exc:
            self.metrics.retries.labels(reason=type(exc).__name__).inc()
            self._log.warning("commit failed, will retry", error=str(exc))

    def _commit_transaction(self, transactions: Transactions) -> None:
        """Exactly-once: commit the open transaction with the offsets below its clean cut."""
        assert self._source is not None
        if not transactions.in_transaction:
            return
        try:
            offsets = self._transaction_cut(transactions)
            if offsets is None:
                return
            failpoints.hit(failpoints.AFTER_SEND)  # flushed and acknowledged, not committed
            transactions.commit_transaction(offsets, self._source.membership())
        except TransientError as exc:
            self._abort_and_rewind(exc)
            return
        self.tracker.committed(offsets)
        self._txn_partitions.clear()
        self._abort_backoff.reset()
        self.metrics.commits.inc()

    def _transaction_cut(self, transactions: Transactions) -> dict[Partition, int] | None:
        """Flush until every send is acknowledged and no held dead letter can go out; the
        offsets to commit, or None when the transaction was aborted meanwhile or is not at
        a clean cut yet (tried again at the next commit).

        Raises
        ------
        TransactionAborted
            Nothing to commit for what was sent.
        """
        assert self._publisher is not None
        for _ in range(MAX_CUT_ROUNDS):
            sends = self._sends
            if not self._publisher.flush(CUT_FLUSH_TIMEOUT_S):
                # The broker is not acknowledging (e.g. a partition under min.insync.replicas).
                # Aborting would wait for those sends too (kafka-python finishes in-flight
                # batches first) and re-reading would only add more: commit later. Reading
                # stays paused at max_unacknowledged_records; sends that fail for good abort
                # the transaction, and the broker aborts one open past its timeout.
                self._log.info("commit postponed: sends not acknowledged yet")
                return None
            self._handle_publish_failures()
            if not transactions.in_transaction:
                return None  # a failed send aborted it
            self._release_poison()
            if self._sends == sends:
                break
        else:
            return None
        ragged = self.tracker.ragged()
        if ragged:
            self._log.info("commit postponed: sends past a gap", partitions=sorted(ragged))
            return None
        offsets = self.tracker.committable()
        if not offsets:
            raise TransactionAborted("commit", "records were sent but no offset moved")
        return offsets

    def _report(self) -> None:
        if not self._summary.due():
            return
        self._summarize_dead_letters()
        assert self._source is not None
        with contextlib.suppress(Exception):  # lag is informative; never fail the loop on it
            for (topic, partition), lag in self._source.lag(self.tracker.next_offsets()).items():
                self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        with self._summary_lock:
            self._summary.emit(
                self._log,
                pending=self.tracker.pending_count(),
                waiting=len(self._batcher),
                in_flight=len(self._in_flight),
                held_for_retry=sum(len(b) for b in self._retry),
                unacknowledged=self._unacknowledged,
                ready=self.health.ready,
            )

    def _summarize_dead_letters(self) -> None:
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

    def _drain(self) -> None:
        """Publish what Triton finishes soon, abandon the rest uncommitted, flush, commit."""
        deadline = time.monotonic() + min(self.settings.triton_timeout_s, FLUSH_TIMEOUT_S)
        abandoned = len(self._batcher) + sum(len(b) for b in self._retry)
        while self._in_flight and self._retry_at is None:
            head = self._in_flight[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(Exception):
                head.future.exception(timeout=remaining)
            if not head.future.done():
                break
            try:
                self._collect()
            except WorkerError as exc:
                self._log.warning("in-flight batch abandoned on shutdown", error=str(exc))
                break
        abandoned += sum(len(entry.batch) for entry in self._in_flight)
        self._in_flight.clear()
        assert self._publisher is not None
        flushed = self._publisher.flush(FLUSH_TIMEOUT_S)
        try:
            self._handle_publish_failures()
        except WorkerError as exc:  # shutting down anyway; say why less may be committed
            self._log.warning("publish failure while draining", error=str(exc))
        self._commit(force=True)
        self._log.info(
            "drained",
            flushed=flushed,
            abandoned_uncommitted=abandoned,
            still_pending=self.tracker.pending_count(),
        )

    def _set_ready(self, ready: bool, reason: str = "") -> bool:
        changed = self.health.set_ready(ready, reason)
        self.metrics.ready.set(1 if ready else 0)
        if changed:
            self._log.info("readiness", ready=ready, reason=self.health.reason)
        return changed
