"""Kafka errors, translated once, here: retriable ones become :class:`BrokerUnavailable`,
a record over a limit :class:`RecordTooLarge`, others :class:`FatalError`; a refused login
(SASL credentials, TLS certificate) is told apart from a broker outage.
"""

from __future__ import annotations

import logging
import ssl
import time

import kafka.errors

from worker import kafka_repair
from worker.errors import BrokerUnavailable, FatalError, RecordTooLarge, WorkerError

# The producer's own size check and the broker's answers for a record over its limits.
_TOO_LARGE = (kafka.errors.MessageSizeTooLargeError, kafka.errors.RecordListTooLargeError)


class _LoginFailureWatch(logging.Filter):
    """Remembers the last refused login (SASL credentials, TLS certificate) kafka-python saw.

    kafka-python 3.0.12 retries a bootstrap whose login the broker refused until its
    bootstrap timeout and then reports only "Unable to bootstrap"; the refusal itself is
    only logged, with the exception as a log argument. Wrong credentials are not a broker
    outage: :func:`translate_kafka_error` turns that timeout into a :class:`FatalError`
    carrying the refusal. The broker's message names the mechanism, never the password.
    """

    def __init__(self) -> None:
        super().__init__()
        # (refusal, when): one reference, replaced whole, so the loop thread reading it
        # never sees one refusal's error with another's time (it is written on
        # kafka-python's I/O thread).
        self._last: tuple[BaseException, float] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:
            if not isinstance(arg, BaseException):
                continue
            # A failed TLS handshake comes wrapped: KafkaConnectionError raised while
            # handling the ssl error, which stays reachable as its context.
            for error in (arg, arg.__cause__, arg.__context__):
                if isinstance(error, _LOGIN_REFUSED):
                    self._last = (arg, time.monotonic())
        # Watches only: the record goes on as the root logger's level would let it (the
        # watched logger's own level is pinned low so that the watch sees every refusal).
        return record.levelno >= logging.getLogger().getEffectiveLevel()

    def recent(self, within_s: float) -> BaseException | None:
        last = self._last
        if last is not None and time.monotonic() - last[1] <= within_s:
            return last[0]
        return None

    def forget(self) -> None:
        self._last = None


_LOGIN_REFUSED = (kafka.errors.SaslAuthenticationFailedError, ssl.SSLCertVerificationError)
# Longer than kafka-python's bootstrap timeout (30 s): a refusal during this bootstrap.
_LOGIN_FAILURE_WINDOW_S = 90.0
# Only a client's start waits for a bootstrap; later timeouts (a send's metadata wait, a
# commit) during a broker restart that briefly refused a login stay retriable.
CONSUMER_START = "consumer start"
PRODUCER_START = "producer start"
_login_failures = _LoginFailureWatch()
# kafka-python logs a refused bootstrap at WARNING. Left to inherit the root's level, the
# watch went blind whenever that was higher (EMOTION_STREAM_LOG_LEVEL=error, or any code in
# the process raising it): a wrong password was then retried forever as an outage.
_WATCHED = logging.getLogger("kafka.net.manager")
_WATCHED.setLevel(logging.WARNING)
_WATCHED.addFilter(_login_failures)
# Without it the broker's refusal is often read together with its close and dropped, so
# the watch never sees it (worker/kafka_repair.py).
kafka_repair.install()


def translate_kafka_error(exc: BaseException, operation: str) -> WorkerError:
    """The worker error for an exception from kafka-python."""
    if isinstance(exc, WorkerError):
        return exc
    refused = (
        _login_failures.recent(_LOGIN_FAILURE_WINDOW_S)
        if operation in (CONSUMER_START, PRODUCER_START)
        else None
    )
    if isinstance(exc, kafka.errors.KafkaTimeoutError) and refused is not None:
        return FatalError(
            f"Kafka {operation} failed: the broker refused the login ({refused}); check "
            "EMOTION_STREAM_SASL_USERNAME, EMOTION_STREAM_SASL_PASSWORD (or the file "
            "EMOTION_STREAM_SASL_PASSWORD_FILE names), EMOTION_STREAM_SASL_MECHANISM and "
            "EMOTION_STREAM_SSL_CAFILE"
        )
    if isinstance(exc, _TOO_LARGE):
        return RecordTooLarge(operation, str(exc))
    if isinstance(exc, kafka.errors.KafkaError) and exc.retriable:
        return BrokerUnavailable(operation, str(exc))
    if isinstance(exc, kafka.errors.KafkaError | OSError):
        if isinstance(exc, OSError):
            return BrokerUnavailable(operation, str(exc))
        return FatalError(f"Kafka {operation} failed: {exc}")
    return FatalError(f"Kafka {operation} failed unexpectedly: {exc!r}")
