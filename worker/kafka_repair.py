"""A repair of kafka-python 3.0.12's socket reads: bytes that arrive with the close are kept.

kafka-python's transports (``kafka.net.transport``) read a socket until it would block.
When that same read also meets the peer's close (EOF, a TLS ``close_notify``, a reset),
``_read_from_sock`` aborts the connection with ``socket disconnected`` and throws away
the bytes it read just before — the protocol never sees them.

Kafka 4.x refuses a SASL login by sending the ``SaslAuthenticate`` error and closing the
connection right after it (once ``connection.failed.authentication.delay.ms``, 100 ms by
default, has passed). A client that reads late finds the answer and the close together
and loses the answer: a wrong password then looks like a broker that hangs up, retried
until the bootstrap times out, again and again. Measured against the test broker (SCRAM,
TLS, a lightly loaded 2-core machine), five of six refused attempts lost the answer; with
the cores busy, every attempt of a bootstrap can lose it.

:func:`install` wraps each transport's ``_sock_recv``: when a read returns bytes *and*
the close, the bytes are returned now and the close on the next call. A closed socket
stays readable, so that next call comes at once — after the protocol has acted on the
bytes (kafka-python's loop runs the task the answer woke before the read task, which the
selector re-adds behind it), so a refused login ends the connection with the broker's
reason. Data before a close is never dropped; nothing else changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from kafka.net import transport

# Set on a transport between the read that returned bytes and the read that reports the
# close that came with them.
_PENDING_CLOSE = "_emotion_stream_pending_close"
# Marks a wrapped ``_sock_recv``, so installing twice wraps once.
_MARK = "__emotion_stream_keeps_data_before_close__"

Read = Callable[[Any], tuple[bytes, BaseException | None]]


def _keep_data_before_close(read: Read) -> Read:
    @functools.wraps(read)
    def sock_recv(self: Any) -> tuple[bytes, BaseException | None]:
        pending = getattr(self, _PENDING_CLOSE, None)
        if pending is not None:
            setattr(self, _PENDING_CLOSE, None)
            return b"", pending
        data, error = read(self)
        if data and error is not None:
            setattr(self, _PENDING_CLOSE, error)
            return data, None
        return data, error

    setattr(sock_recv, _MARK, True)
    return sock_recv


def install() -> None:
    """Wrap ``_sock_recv`` of kafka-python's TCP and TLS transports (idempotent)."""
    for cls in (transport.KafkaTCPTransport, transport.KafkaSSLTransport):
        read = cls.__dict__["_sock_recv"]
        if not getattr(read, _MARK, False):
            cls._sock_recv = _keep_data_before_close(read)


def installed() -> bool:
    """True when both transports keep the bytes that arrive with a close."""
    return all(
        getattr(cls.__dict__["_sock_recv"], _MARK, False)
        for cls in (transport.KafkaTCPTransport, transport.KafkaSSLTransport)
    )
