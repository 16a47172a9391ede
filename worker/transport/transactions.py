"""Exactly-once: :class:`TransactionalPublisher` is one transactional producer per worker.

Its transaction opens with the first send after a commit and ends with
:meth:`~TransactionalPublisher.commit_transaction`, which adds the consumer offsets with
the consumer's group metadata (KIP-447: the broker rejects offsets from a member whose
generation is over; see :func:`~worker.transport.source.not_a_member`) and commits records
and offsets together. Fencing by a newer producer with the same transactional id becomes
:class:`ProducerFenced`; anything that dooms only the open transaction becomes
:class:`TransactionAborted`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kafka.errors

from worker import failpoints
from worker.errors import (
    BrokerUnavailable,
    FatalError,
    ProducerFenced,
    TransactionAborted,
    TransactionOutcomeUnknown,
    WorkerError,
)
from worker.messages import OutboundRecord
from worker.offsets import Partition
from worker.settings import WorkerSettings
from worker.transport.publisher import AckCallback, KafkaPublisher
from worker.transport.source import _offsets
from worker.transport.translation import PRODUCER_START, translate_kafka_error

log = logging.getLogger(__name__)

# On shutdown after a fatal error, an open transaction gets this long to abort; the
# broker aborts it anyway after the transaction timeout, or when the replica restarts.
ABORT_ON_EXIT_TIMEOUT_S = 10.0
# kafka-python 3.0.12's send_offsets_to_transaction, commit_transaction and
# abort_transaction wait for the broker with no timeout (its sender retries while the
# coordinator is away). The loop waits this long, under the worker's liveness timeout
# (60 s); then the call's outcome is unknown and the producer is replaced (see
# TransactionalPublisher._settle).
TRANSACTION_CALL_TIMEOUT_S = 30.0


def _is_fenced(exc: BaseException | None) -> bool:
    """Fencing, however kafka-python reports it: the error itself, or a generic KafkaError
    ("...in an error state") carrying it as an argument or cause."""
    fenced = (kafka.errors.ProducerFencedError, kafka.errors.InvalidProducerEpochError)
    seen = 0
    while exc is not None and seen < 5:  # bounded walk down args/causes
        if isinstance(exc, fenced):
            return True
        if any(isinstance(arg, fenced) for arg in getattr(exc, "args", ())):
            return True
        exc = exc.__cause__
        seen += 1
    return False


class _CallTimedOut(Exception):
    """A transactional call got no answer in time; the publisher settles the transaction.
    Internal: it never leaves this module."""

    def __init__(self, operation: str, timeout_s: float) -> None:
        self.operation = operation
        super().__init__(f"no answer within {timeout_s:g} s (broker or coordinator unreachable)")


def _call_bounded(call: Callable[[], None], operation: str, timeout_s: float) -> None:
    """Run a kafka-python call that may wait forever; raise what it raised, or
    :class:`_CallTimedOut` after ``timeout_s`` (the call goes on, on a daemon thread
    that ends with the producer or the process)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"worker-txn-{operation}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise _CallTimedOut(operation, timeout_s)
    if failure:
        raise failure[0]


class TransactionalPublisher(KafkaPublisher):
    """Exactly-once: one transactional producer; a transaction per commit of the worker.

    ``send`` opens a transaction when none is open; :meth:`commit_transaction` adds the
    consumer offsets and commits; :meth:`abort_transaction` throws the open one away.
    Call these from the worker's loop thread only (acknowledgements still arrive on the
    producer's thread).
    """

    def __init__(
        self, settings: WorkerSettings, limits: Callable[[list[str]], dict[str, int]] | None = None
    ) -> None:
        super().__init__(settings, limits)
        self.transactional_id = settings.effective_transactional_id
        self._open = False

    def __enter__(self) -> TransactionalPublisher:
        try:
            self.limits.refresh()
            self._producer = self._new_producer(
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self._settings.transaction_timeout_ms,
            )
            # Fences every older producer with this id and aborts what it left open;
            # bounded by max_block_ms (a KafkaTimeoutError, retried like any start).
            self._producer.init_transactions()
        except Exception as exc:
            self._close_now()
            raise self._translate(exc, PRODUCER_START) from exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self._producer is not None and self._open:
            self._abort_bounded()
        self._close_now()

    def _close_now(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close(timeout=5)
            self._producer = None

    def _abort_bounded(self) -> None:
        """Abort on exit, without hanging on a broker that is gone; failures are logged
        (the broker aborts the transaction anyway, see ABORT_ON_EXIT_TIMEOUT_S)."""
        try:
            _call_bounded(self._producer.abort_transaction, "abort", ABORT_ON_EXIT_TIMEOUT_S)
        except Exception as exc:
            log.warning("abort on exit failed; the broker aborts on timeout: %s", exc)
        self._open = False

    def _settle(self, reason: str) -> None:
        """Replace the producer by a new one with the same transactional id, retrying its
        ``init_transactions`` with backoff while the broker is away.

        That call fences the old producer (a hung call of it can never complete the
        transaction later) and returns once the broker has settled the transaction the old
        one left open: rolled forward if it had reached prepare-commit, else aborted. Until
        then nothing is sent and nothing committed; the loop waits here.

        Raises
        ------
        FatalError
            The new producer is refused for a reason retrying will not fix (e.g. the
            transactional id is not authorized).
        """
        self._open = False
        self._poisoned = False
        old, self._producer = self._producer, None
        with contextlib.suppress(Exception):
            old.close(timeout=0)
        log.warning("transactional producer replaced: %s", reason)
        s = self._settings
        delay = s.retry_backoff_initial_s
        while True:
            try:
                if self._producer is None:
                    self._producer = self._new_producer(
                        transactional_id=self.transactional_id,
                        transaction_timeout_ms=s.transaction_timeout_ms,
                    )
                # After a timeout, a second call waits on for the first one's answer.
                self._producer.init_transactions()
                return
            except Exception as exc:
                error = translate_kafka_error(exc, PRODUCER_START)
                if not isinstance(error, BrokerUnavailable):
                    raise FatalError(f"cannot restart the transactional producer: {error}") from exc
                log.warning(
                    "cannot settle the transaction yet, retrying in %.1f s: %s", delay, error
                )
            time.sleep(delay)  # a pause between attempts, not a wait for an outcome
            delay = min(delay * 2, s.retry_backoff_max_s)

    @property
    def in_transaction(self) -> bool:
        """True from the first send after a commit or abort until the next one."""
        return self._open

    def _transaction_state(self) -> Any:
        # kafka-python 3.0's TransactionManager (pinned): the only place that says whether
        # the producer is fenced or only its open transaction is doomed.
        return getattr(self._producer, "_transaction_manager", None)

    def _translate(self, exc: BaseException, operation: str) -> WorkerError:
        if isinstance(exc, WorkerError):
            return exc
        state = self._transaction_state() if self._producer is not None else None
        if _is_fenced(exc) or (state is not None and _is_fenced(state.last_error)):
            return ProducerFenced(self.transactional_id, f"{operation}: {exc}")
        if self._poisoned and operation != PRODUCER_START:
            return TransactionAborted(operation, f"after a refusal as too large: {exc}")
        plain = translate_kafka_error(exc, operation)
        if operation == PRODUCER_START:
            return plain  # a start is retried (or refused) like any client's
        if isinstance(exc, kafka.errors.CommitFailedError) or (
            state is not None and state.has_abortable_error()
        ):
            return TransactionAborted(operation, str(exc))
        if isinstance(plain, BrokerUnavailable):
            # Inside a transaction, retrying means aborting it and doing the work again.
            return TransactionAborted(operation, str(exc))
        return plain

    def _refused_too_large(self, exc: BaseException, topic: str) -> WorkerError:
        # kafka-python 3.0.12 makes this abortable for a transactional producer, but a
        # refused batch of several records is split and re-sent, which it then fails with
        # OutOfOrderSequenceNumber while bumping its epoch, a state no abort leaves. The
        # transaction is doomed either way: the abort replaces the producer instead
        # (init_transactions with the same id aborts the open transaction on the broker).
        self.limits.refused()
        self._poisoned = True
        return TransactionAborted(topic, f"the broker refused a record as too large ({exc})")

    def _before_send(self) -> None:
        # Inside a transaction the producer is replaced only by the abort.
        if self.limits.stale:
            self.limits.refresh()

    def send(self, record: OutboundRecord, on_done: AckCallback) -> None:
        """As :meth:`KafkaPublisher.send`, inside the open transaction (opened if needed)."""
        if not self._open:
            try:
                self._producer.begin_transaction()  # local state only: never waits
            except Exception as exc:
                on_done(self._translate(exc, "begin transaction"))
                return
            self._open = True
        super().send(record, on_done)

    def commit_transaction(self, offsets: dict[Partition, int], membership: Any) -> None:
        """Add ``offsets`` (next offset to read, per input partition) for the consumer whose
        group metadata is ``membership``, then commit records and offsets atomically.

        Raises
        ------
        ProducerFenced
            A newer producer with this transactional id exists: stop.
        TransactionOutcomeUnknown
            No answer within :data:`TRANSACTION_CALL_TIMEOUT_S`: the transaction is now
            settled by a new producer (see :meth:`_settle`), committed or not; re-read
            from the offsets committed on the broker.
        TransactionAborted
            This transaction cannot commit (stale group generation, failed send, broker
            trouble): abort it and re-read from the last commit.
        FatalError
            Anything else (e.g. not authorized for the group).
        """
        if not self._open:
            return
        try:
            if offsets:
                kafka_offsets = _offsets(offsets)
                _call_bounded(
                    lambda: self._producer.send_offsets_to_transaction(kafka_offsets, membership),
                    "offset commit",
                    TRANSACTION_CALL_TIMEOUT_S,
                )
            failpoints.hit(failpoints.DURING_COMMIT)
            _call_bounded(self._producer.commit_transaction, "commit", TRANSACTION_CALL_TIMEOUT_S)
        except _CallTimedOut as exc:
            self._settle(f"the transaction's {exc.operation} got {exc}")
            raise TransactionOutcomeUnknown(exc.operation, str(exc)) from exc
        except Exception as exc:
            raise self._translate(exc, "commit") from exc
        self._open = False

    def abort_transaction(self) -> None:
        """Throw the open transaction away (its records stay invisible to read_committed).

        An abort that gets no answer within :data:`TRANSACTION_CALL_TIMEOUT_S` is completed
        by :meth:`_settle`, which can only abort here: the worker aborts a transaction whose
        commit was never sent or was refused (kafka-python retries a retriable refusal
        itself), so it never reached prepare-commit.

        Raises
        ------
        ProducerFenced
            A newer producer took over (which aborted it already).
        FatalError
            The producer is in a state no abort can mend.
        """
        if not self._open:
            return
        if self._poisoned:
            self._settle("the broker refused a record as too large")
            return
        try:
            _call_bounded(self._producer.abort_transaction, "abort", TRANSACTION_CALL_TIMEOUT_S)
        except _CallTimedOut as exc:
            self._settle(f"the transaction's abort got {exc}")
        except Exception as exc:
            error = self._translate(exc, "abort")
            if isinstance(error, ProducerFenced):
                raise error from exc
            raise FatalError(f"cannot abort the Kafka transaction: {exc}") from exc
        finally:
            self._open = False
