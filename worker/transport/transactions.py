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
from collections.abc import Callable
from typing import Any

import kafka.errors

from worker import failpoints
from worker.errors import (
    BrokerUnavailable,
    FatalError,
    ProducerFenced,
    TransactionAborted,
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
# (60 s) so the worker stops itself with a message rather than hang until killed.
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


class _CallTimedOut(FatalError):
    def __init__(self, operation: str, timeout_s: float) -> None:
        super().__init__(
            f"Kafka transaction {operation} got no answer within {timeout_s:g} s (broker or "
            "coordinator unreachable); its outcome is unknown and this producer cannot go "
            "on: stopping, a restart settles the transaction (init_transactions)"
        )


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
        TransactionAborted
            This transaction cannot commit (stale group generation, failed send, broker
            trouble): abort it and re-read from the last commit.
        FatalError
            Anything else (e.g. not authorized for the group), or no answer within
            :data:`TRANSACTION_CALL_TIMEOUT_S`: the outcome is then unknown and this
            producer unusable; a restart's ``init_transactions`` settles it.
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
        except Exception as exc:
            raise self._translate(exc, "commit") from exc
        self._open = False

    def abort_transaction(self) -> None:
        """Throw the open transaction away (its records stay invisible to read_committed).

        Raises
        ------
        ProducerFenced
            A newer producer took over (which aborted it already).
        FatalError
            The producer is in a state no abort can mend, or the abort got no answer
            within :data:`TRANSACTION_CALL_TIMEOUT_S`.
        """
        if not self._open:
            return
        if self._poisoned:
            self._open = False
            self._replace_producer(
                transactional_id=self.transactional_id,
                transaction_timeout_ms=self._settings.transaction_timeout_ms,
            )
            try:  # fences the old producer; its open transaction is aborted by the broker
                self._producer.init_transactions()
            except Exception as exc:
                raise FatalError(f"cannot restart the transactional producer: {exc}") from exc
            return
        try:
            _call_bounded(self._producer.abort_transaction, "abort", TRANSACTION_CALL_TIMEOUT_S)
        except Exception as exc:
            error = self._translate(exc, "abort")
            if isinstance(error, ProducerFenced):
                raise error from exc
            raise FatalError(f"cannot abort the Kafka transaction: {exc}") from exc
        finally:
            self._open = False
