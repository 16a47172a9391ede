"""Every failure the worker knows about, rooted in one exception.

The type decides the policy, not the message:

- :class:`TransientError` — the world is briefly unable (Triton down or loading the
  model, a deadline passed, the broker unreachable). Back off and retry the same
  records; never commit them, never dead-letter them.
- :class:`PoisonMessage` — this record can never be classified (bad bytes, no text,
  too large, rejected by the model). Dead-letter it with context and move on.
- :class:`FatalError` — the worker cannot do its job as configured (the model does
  not match what the worker sends, the output topic refuses our writes). Stop with a
  clear message; commit nothing that was not delivered.

Each subclass builds its message from its arguments, so call sites stay short and
messages stay uniform.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


# --- retryable --------------------------------------------------------------------


class TransientError(WorkerError):
    """Retry later: backing off and trying the same records again may succeed."""


class InferenceUnavailable(TransientError):
    """Triton cannot answer now (unreachable, model not ready, deadline, overloaded)."""

    def __init__(self, status: str, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"Triton unavailable ({status}): {detail}")


class BrokerUnavailable(TransientError):
    """A Kafka operation failed with an error the broker says is retriable."""

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__(f"Kafka {operation} failed, will retry: {detail}")


class ModelInputsChanged(TransientError):
    """The served model's inputs changed under the worker to ones it can send (e.g. INT64
    to INT32): the rejected request is retried with them, never dead-lettered."""

    def __init__(self, model: str, change: str) -> None:
        self.model = model
        self.change = change
        super().__init__(f"model {model!r} changed while the worker ran ({change}); retrying")


class TransactionAborted(TransientError):
    """Exactly-once: the open transaction cannot commit (a send failed, the group moved on).

    Abort it and re-read every partition from its last committed offset.
    """

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        super().__init__(f"Kafka transaction {operation} failed, aborting: {detail}")


class TransactionOutcomeUnknown(TransactionAborted):
    """Exactly-once: a transactional call (offsets into the transaction, commit, abort) got
    no answer, so whether the transaction committed is unknown.

    The producer that made the call is replaced by one with the same transactional id,
    whose ``init_transactions`` settles the transaction on the broker (rolled forward if it
    had reached prepare-commit, else aborted). Re-read every partition from the offsets the
    group has committed *on the broker*, not from the last commit the worker saw: the
    commit may have gone through.
    """

    def __init__(self, operation: str, detail: str) -> None:
        self.operation = operation
        self.detail = detail
        TransientError.__init__(
            self,
            f"Kafka transaction {operation} got no answer, its outcome is unknown ({detail}); "
            "settled by a new producer, re-reading from the offsets committed on the broker",
        )


# --- dead-letter ------------------------------------------------------------------


class PoisonMessage(WorkerError):
    """This record can never be classified; it goes to the dead-letter topic."""


class NullValue(PoisonMessage):
    """The record has no value (a tombstone)."""

    def __init__(self) -> None:
        super().__init__("record value is null")


class InvalidUtf8(PoisonMessage):
    """The value is neither valid UTF-8 text nor JSON."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"value is not valid UTF-8: {reason}")


class MalformedJson(PoisonMessage):
    """The value starts like a JSON object (``{"``) but does not parse."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"value looks like a JSON object but does not parse: {reason}")


class MissingText(PoisonMessage):
    """A JSON object without a ``text`` field."""

    def __init__(self, fields: list[str]) -> None:
        shown = ", ".join(fields[:10]) or "no fields"
        super().__init__(f"JSON object has no 'text' field (fields: {shown})")


class InvalidTweet(PoisonMessage):
    """A JSON object whose ``text`` or ``id`` has the wrong type."""

    def __init__(self, field: str, found: str) -> None:
        super().__init__(f"field {field!r} must be a string, found {found}")


class EmptyText(PoisonMessage):
    """The text is empty or only whitespace."""

    def __init__(self) -> None:
        super().__init__("text is empty or whitespace only")


class TextTooLarge(PoisonMessage):
    """The text is over the configured size cap."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"text is {size} bytes, over the {limit}-byte cap (max_text_bytes)")


class NestingTooDeep(PoisonMessage):
    """A JSON value nests arrays/objects deeper than the worker decodes (its recursion
    and every serializer after it are bounded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"value nests JSON arrays/objects more than {limit} levels deep")


class LoneSurrogate(PoisonMessage):
    """A JSON string escape names half a UTF-16 surrogate pair (``"\\ud800"``): not a
    Unicode character, so no UTF-8 encoding of it exists."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} holds a lone surrogate escape (\\ud800-\\udfff), not text")


class DuplicateKey(PoisonMessage):
    """A JSON object names the same key twice: readers disagree on which one counts."""

    def __init__(self, key: str) -> None:
        shown = key.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        super().__init__(f"JSON object has the key {shown[:100]!r} more than once")


class SchemaFramed(PoisonMessage):
    """A Confluent Schema Registry framed value (byte 0, a 4-byte schema id, the payload):
    the worker does not read that format yet."""

    def __init__(self, schema_id: int) -> None:
        self.schema_id = schema_id
        super().__init__(
            f"value is Schema Registry framed (magic byte 0, schema id {schema_id}); "
            "only JSON or plain UTF-8 text is read"
        )


class CorruptRecord(PoisonMessage):
    """kafka-python could not parse the record itself (e.g. a header name that is not
    UTF-8): its key, value and headers are unknown; only its position is."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the Kafka client cannot parse this record: {detail}")


class Unprocessable(PoisonMessage):
    """The last line of defence: an unexpected exception in one record's own work
    (decoding, building or serializing its result or dead letter). That record is
    dead-lettered and the loop goes on; the exception type says which bug to fix."""

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        super().__init__(f"unexpected {type(error).__name__} while {stage}: {_safe_str(error)}")


def _safe_str(error: BaseException) -> str:
    """``str(error)``, whatever its ``__str__`` does."""
    try:
        return str(error)
    except Exception:  # a broken __str__ must not break the dead letter that reports it
        return object.__repr__(error)


class RecordTooLarge(PoisonMessage):
    """The broker (or the producer's size check) refused a record as too large.

    For a result, the input is dead-lettered instead; for a dead letter, it is sent again
    without the original headers and value (the ``dlq.source.*`` headers still point to it).
    """

    def __init__(self, topic: str, detail: str) -> None:
        self.topic = topic
        super().__init__(f"record for {topic!r} too large: {detail}")


class InferenceRejected(PoisonMessage):
    """Triton refused this input (INVALID_ARGUMENT): retrying will never help."""

    def __init__(self, status: str, detail: str) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"Triton rejected the input ({status}): {detail}")


# --- stop ------------------------------------------------------------------------


class FatalError(WorkerError):
    """The worker cannot continue as configured; it stops with this message."""


class ModelMismatch(FatalError):
    """The served model does not accept what the worker sends, or labels disagree."""

    def __init__(self, model: str, problem: str) -> None:
        super().__init__(f"model {model!r} does not fit the worker: {problem}")


class ModelChanged(ModelMismatch):
    """The served model changed under the worker to one it cannot use as it runs (other
    inputs, labels or batch limit): every text was being rejected. Stop instead of
    dead-lettering the stream; a restart reads the new model and checks it."""

    def __init__(self, model: str, change: str) -> None:
        self.model = model
        self.change = change
        FatalError.__init__(
            self,
            f"model {model!r} changed while the worker ran: {change}; stopping instead of "
            "dead-lettering every text it rejects (a restart checks the new model)",
        )


class PublishFailed(FatalError):
    """The broker refused a write for a reason retrying will not fix."""

    def __init__(self, topic: str, detail: str) -> None:
        self.topic = topic
        super().__init__(f"cannot publish to {topic!r}: {detail}")


class ProducerFenced(FatalError):
    """Exactly-once: a newer producer with our transactional id took over (a restarted or
    duplicated replica). This instance must stop: its open transaction is already aborted."""

    def __init__(self, transactional_id: str, detail: str) -> None:
        self.transactional_id = transactional_id
        super().__init__(
            f"fenced: another worker with transactional id {transactional_id!r} took over, "
            f"so this one stops (its uncommitted work is aborted; the newer one redoes it): "
            f"{detail}"
        )
