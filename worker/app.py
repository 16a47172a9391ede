"""The Worker: poll → decode → batch → tokenize → infer → publish → commit.

One object with a visible lifecycle. ``run()`` acquires every resource in an
``ExitStack`` (health server, Triton channel, inference threads, producer, consumer)
and releases them in reverse; ``stop()`` only sets a flag (SIGTERM/SIGINT call it).
Each turn of the loop is one :meth:`Worker._step`: poll, accept, dispatch, collect,
publish, commit.

Threads:

- the *loop thread* (the caller of ``run()``) owns the consumer — poll, pause,
  resume, seek and commit happen only there — and does decoding, batching,
  tokenizing and handing results to the producer, in batch order;
- up to ``max_in_flight_batches`` *inference threads* each wait on one Triton call
  (:mod:`worker.inflight`), so the loop polls and tokenizes the next batch while
  Triton works;
- the producer's I/O thread reports acknowledgements (:mod:`worker.publishing`), which
  mark offsets done in the thread-safe :class:`~worker.offsets.CommitTracker`;
- kafka-python's I/O thread runs the rebalance callbacks (:mod:`worker.rebalance`)
  while the loop thread waits in ``poll()``.

Failure policy, by error type: a :class:`PoisonMessage` is dead-lettered and then
counts as done; a :class:`TransientError` keeps the batch in memory, pauses the
partitions (polling goes on, so the group keeps us) and retries after a capped
exponential backoff with jitter, readiness false meanwhile; a :class:`FatalError`
ends ``run()`` with nothing committed past what was delivered. What a send, a failed
send, a commit and a lost partition mean — at least once or exactly once — is the
delivery mode's (:mod:`worker.delivery`): the loop never asks which one it runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from worker import failpoints
from worker.batching import MicroBatch, MicroBatcher, PendingTweet
from worker.delivery import Delivery, DeliveryParts, HeldDeadLetter, LoopHooks, delivery_for
from worker.errors import (
    FatalError,
    PoisonMessage,
    ProducerFenced,
    TransientError,
    WorkerError,
)
from worker.inflight import InferenceJob, InFlightBatches
from worker.messages import InboundTweet, SourceRecord, decode
from worker.observability import Health, HealthServer, ThroughputSummary, WorkerMetrics
from worker.offsets import CommitTracker, Partition, Ticket
from worker.polling import Poller
from worker.ports import (
    ClassifierFactory,
    Publisher,
    PublisherFactory,
    Source,
    SourceFactory,
    Tokenizer,
    TokenizerFactory,
    kafka_publisher,
    kafka_source,
    repository_tokenizer,
    triton_classifier,
)
from worker.publishing import Publishing, unprocessable
from worker.rebalance import Rebalance
from worker.settings import WorkerSettings
from worker.startup import (
    StoppedWhileStartingError,
    Waiting,
    announce,
    fitting_batch_size,
    read_labels,
)

log = structlog.get_logger("worker")

# On shutdown, in-flight batches get one Triton deadline to finish before being abandoned.
FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _Running:
    """What ``run()`` builds once, before the first poll; all of it lives until the end."""

    source: Source
    tokenizer: Tokenizer
    executor: ThreadPoolExecutor
    inference: InferenceJob
    delivery: Delivery
    out: Publishing
    rebalance: Rebalance


class Worker:
    """Consumes tweets, classifies them through Triton, publishes results; see module doc."""

    _running: _Running
    """Set by run() before the first poll (the rebalance callbacks come only from poll)."""

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

        # Loop-thread state.
        self._batcher = MicroBatcher(
            settings.batch_window,
            settings.max_batch_wait_ms / 1000,
            full_size=settings.max_batch_size,
        )
        self._batches = InFlightBatches(settings, self.metrics, self._log, self._set_ready)
        self._summary = ThroughputSummary(settings.log_summary_interval_s)
        self._summary_lock = threading.Lock()
        self._waiting = Waiting(
            settings, self._stop, self.health, self._set_ready, self.metrics, self._log
        )
        self._poller = Poller(settings, self._stop, self.metrics, self._log)

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
        except StoppedWhileStartingError:
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
            announce(s, self.metrics_port, self._log)
            tokenizer = self._make_tokenizer(s)
            labels = self._labels if self._labels is not None else read_labels(s)
            classifier = self._make_classifier(s)
            stack.callback(classifier.close)
            spec = self._waiting.for_model(classifier)
            if spec is None:  # stopped while waiting
                return
            self.max_batch_size = fitting_batch_size(spec, labels, self.max_batch_size, self._log)
            self._batcher = MicroBatcher(
                self._batcher.max_size, self._batcher.max_wait_s, full_size=self.max_batch_size
            )
            self._labels = labels
            executor = stack.enter_context(
                ThreadPoolExecutor(s.max_in_flight_batches, thread_name_prefix="worker-infer")
            )
            stack.callback(executor.shutdown, wait=False, cancel_futures=True)
            publisher = stack.enter_context(self._waiting.connected(self._make_publisher, s))
            source = stack.enter_context(self._waiting.connected(self._make_source, s, self))
            delivery = delivery_for(
                DeliveryParts(
                    s,
                    source=source,
                    publisher=publisher,
                    tracker=self.tracker,
                    metrics=self.metrics,
                    log=self._log,
                    loop=LoopHooks(
                        dead_letter=self._dead_letter_held,
                        settle_sends=self._settle_sends,
                        discard_failed_sends=self._discard_failed_sends,
                        drop_waiting=self._drop_waiting,
                    ),
                )
            )
            self._running = _Running(
                source=source,
                tokenizer=tokenizer,
                executor=executor,
                inference=InferenceJob(classifier, spec, self.metrics, self._log),
                delivery=delivery,
                out=self._publishing(publisher, labels, delivery.note_sent),
                rebalance=Rebalance(self.tracker, delivery, self._log),
            )
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
            self._running.out.summarize_dead_letters()
        self._log.info("stopped")

    # --- what run() builds -----------------------------------------------------------

    def _publishing(
        self, publisher: Publisher, labels: list[str], on_sent: Callable[[Ticket], None]
    ) -> Publishing:
        return Publishing(
            self.settings,
            publisher,
            self.tracker,
            self.metrics,
            self._log,
            labels=labels,
            summary=self._summary,
            summary_lock=self._summary_lock,
            on_sent=on_sent,
        )

    # --- rebalance callbacks (kafka-python's I/O thread, inside poll) -----------------

    def on_assigned(self, partitions: set[Partition]) -> dict[Partition, int]:
        return self._running.rebalance.on_assigned(partitions)

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, int]:
        return self._running.rebalance.on_revoked(partitions)

    def on_lost(self, partitions: set[Partition]) -> None:
        self._running.rebalance.on_lost(partitions)

    # --- one turn of the loop -------------------------------------------------------

    def _step(self) -> None:
        self.health.beat()
        self._flow_control()
        records = self._without_gone(
            self._poller.poll(self._running.source, self._batcher, self._batches)
        )
        self._accept(records)
        self._dispatch()
        self._collect()
        self._settle_sends()
        self._running.delivery.release_held()
        self._running.delivery.commit()
        self._report()

    def _without_gone(self, records: list[SourceRecord]) -> list[SourceRecord]:
        """Drop the work of partitions revoked or lost during the poll, and the records the
        poll read before a rewind that this caused (those partitions are read again)."""
        gone = self._running.rebalance.take_gone()
        if not gone:
            return records
        self._drop_waiting(gone)
        rewound = self._running.delivery.partitions_gone(gone)
        return [r for r in records if (r.topic, r.partition) not in rewound]

    def _flow_control(self) -> None:
        """Pause while backing off or while the backlog is full; resume otherwise."""
        source = self._running.source
        backlog = len(self._batcher) + self._batches.held
        full = backlog >= self._batcher.max_size * (self.settings.max_in_flight_batches + 1)
        full = full or self._running.out.awaiting_broker()
        rereading = self._running.delivery.rereading_paused()
        if self._batches.retry_at is not None or rereading or full:
            source.pause_all()  # also pauses partitions assigned since
        elif source.paused:
            source.resume_all()

    def _accept(self, records: list[SourceRecord]) -> None:
        """Decode each record: tweets wait for a batch, poison goes to the DLQ."""
        now = time.monotonic()
        delivery = self._running.delivery
        for record in records:
            ticket = self.tracker.track((record.topic, record.partition), record.offset)
            self.metrics.consumed.inc()
            with self._summary_lock:
                self._summary.consumed += 1
            tweet = self._decode(record)
            if isinstance(tweet, PoisonMessage):
                delivery.dead_letter_in_turn(HeldDeadLetter(record, tweet, ticket))
                continue
            self._batcher.add(PendingTweet(tweet=tweet, ticket=ticket, consumed_at=now))
        delivery.release_held()

    def _decode(self, record: SourceRecord) -> InboundTweet | PoisonMessage:
        """The tweet, or why the record is poison; never raises."""
        try:
            return decode(record, max_text_bytes=self.settings.max_text_bytes)
        except PoisonMessage as poison:
            return poison
        except Exception as exc:  # the last line of defence: this record only
            return unprocessable(self.metrics, self._log, "decoding", exc, record)

    def _dispatch(self) -> None:
        """Start inference on batches while there is room in flight."""
        now = time.monotonic()
        while not self._batches.full:
            if self._running.out.awaiting_broker():
                return  # its results would only wait for the broker too
            batch = self._batches.next_batch(self._batcher, now)
            if batch is None:
                return
            self._start_inference(batch)

    def _start_inference(self, batch: MicroBatch) -> None:
        """Tokenize ``batch`` here and hand its requests to an inference thread."""
        planned = self._running.tokenizer.plan(batch.texts, self.max_batch_size)
        self._batches.sent(batch, self._running.executor.submit(self._running.inference, planned))

    def _collect(self) -> None:
        """Publish finished batches, strictly in the order they were sent."""
        while (head := self._batches.take_finished()) is not None:
            try:
                inferred = head.future.result()
            except TransientError as exc:
                self._batches.back_off(head, exc)
                return
            except WorkerError:
                raise
            except Exception as exc:  # a bug, not a policy: stop loudly, commit nothing more
                raise FatalError(f"inference failed unexpectedly: {exc!r}") from exc
            self._batches.succeeded()
            failpoints.hit(failpoints.AFTER_INFERENCE)
            self._running.out.publish(head.batch, inferred)

    def _settle_sends(self) -> None:
        """Settle the sends that failed: the one path for them, reached from the step, the
        drain, and (through the delivery mode's hooks) an exactly-once commit's cut."""
        self._running.out.settle_failures(self._running.delivery.send_failed)

    def _discard_failed_sends(self) -> None:
        self._running.out.discard_failures()

    def _dead_letter_held(self, letter: HeldDeadLetter) -> None:
        self._running.out.dead_letter(letter.record, letter.poison, letter.ticket)

    def _drop_waiting(self, partitions: set[Partition]) -> None:
        """Forget tweets of partitions we no longer read (in-flight ones are skipped later)."""
        dropped = self._batcher.drop(partitions) + self._batches.drop(partitions)
        dropped += self._running.delivery.drop(partitions)
        if dropped:
            self._log.info("dropped unprocessed tweets", count=dropped)

    # --- report, drain ------------------------------------------------------------

    def _report(self) -> None:
        if not self._summary.due():
            return
        self._running.out.summarize_dead_letters()
        source = self._running.source
        with contextlib.suppress(Exception):  # lag is informative; never fail the loop on it
            for (topic, partition), lag in source.lag(self.tracker.next_offsets()).items():
                self.metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        with self._summary_lock:
            self._summary.emit(
                self._log,
                pending=self.tracker.pending_count(),
                waiting=len(self._batcher),
                in_flight=len(self._batches),
                held_for_retry=self._batches.held,
                unacknowledged=self._running.out.unacknowledged,
                ready=self.health.ready,
            )

    def _drain(self) -> None:
        """Publish what Triton finishes soon, abandon the rest uncommitted, flush, commit."""
        deadline = time.monotonic() + min(self.settings.triton_timeout_s, FLUSH_TIMEOUT_S)
        abandoned = len(self._batcher) + self._batches.held
        while self._batches.oldest_done_by(deadline):
            try:
                self._collect()
            except WorkerError as exc:
                self._log.warning("in-flight batch abandoned on shutdown", error=str(exc))
                break
        abandoned += self._batches.abandon()
        flushed = self._running.out.flush(FLUSH_TIMEOUT_S)
        try:
            self._settle_sends()
        except WorkerError as exc:  # shutting down anyway; say why less may be committed
            self._log.warning("publish failure while draining", error=str(exc))
        self._running.delivery.commit(force=True)
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
