"""A refused SASL login is recognised however the broker ends the connection.

A fake broker on loopback answers ApiVersions and SaslHandshake, refuses the
SaslAuthenticate like Kafka 4.x (error 58, SASL_AUTHENTICATION_FAILED) and ends the
connection in one of the ways a broker can. "Answer and close in one segment"
(``TCP_CORK``) puts the answer and the close into the client's socket together, as a
client that reads late on a busy machine finds them: the case kafka-python 3.0.12 loses
without :mod:`worker.kafka_repair`.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kafka
import kafka.errors
import pytest
from kafka.net import transport as kafka_transport
from kafka.protocol.broker_version_data import BROKER_API_VERSIONS
from kafka.protocol.metadata.api_versions import ApiVersionsResponse
from kafka.protocol.sasl import SaslAuthenticateResponse, SaslHandshakeResponse

from compose.certificates import make_server_certificate
from worker import kafka_repair
from worker.errors import BrokerUnavailable, FatalError
from worker.transport.translation import PRODUCER_START, _login_failures, translate_kafka_error

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_AUTHENTICATION_FAILED = 58
REFUSAL = "Authentication failed during authentication due to invalid credentials"
# Long enough for several refused attempts, short enough for a unit test.
BOOTSTRAP_TIMEOUT_MS = 3_000
SERVER_TIMEOUT_S = 10.0


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _answer(api_key: int, version: int, correlation_id: int) -> bytes:
    """The framed response a Kafka 4.x broker sends to a refused login's requests."""
    if api_key == API_VERSIONS:
        newest = BROKER_API_VERSIONS[max(BROKER_API_VERSIONS)]
        response = ApiVersionsResponse[version](
            error_code=0,
            api_keys=[(key, low, high) for key, (low, high) in sorted(newest.items())],
        )
    elif api_key == SASL_HANDSHAKE:
        response = SaslHandshakeResponse[version](error_code=0, mechanisms=["PLAIN"])
    else:
        response = SaslAuthenticateResponse[version](
            error_code=SASL_AUTHENTICATION_FAILED,
            error_message=f"{REFUSAL} with SASL mechanism PLAIN",
            auth_bytes=b"",
        )
    response.with_header(correlation_id=correlation_id)
    return bytes(response.encode(header=True, framed=True))


# How the broker ends a refused login's connection. ``wire`` is the connection as the
# broker writes to it (a TLS socket wraps and owns the TCP socket).
Ending = Callable[[socket.socket, bytes], None]


def _answer_then_close_later(wire: socket.socket, answer: bytes) -> None:
    wire.sendall(answer)
    time.sleep(0.3)  # the client has read the answer long before the close
    wire.shutdown(socket.SHUT_RDWR)


def _answer_and_close_together(wire: socket.socket, answer: bytes) -> None:
    # Corked, the answer waits in the kernel; the close then leaves in the same segment,
    # so the client finds both in its socket at once.
    wire.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    wire.sendall(answer)
    wire.shutdown(socket.SHUT_RDWR)


def _answer_then_reset(wire: socket.socket, answer: bytes) -> None:
    wire.sendall(answer)
    time.sleep(0.05)
    # Closing with a zero linger time sends a reset instead of an orderly close.
    wire.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


ENDINGS: dict[str, Ending] = {
    "answer, close later": _answer_then_close_later,
    "answer and close in one segment": _answer_and_close_together,
    "answer, then reset": _answer_then_reset,
}


@dataclass
class RefusingBroker:
    """Accepts connections until closed; refuses every login, ending as ``ending`` says."""

    ending: Ending
    tls: ssl.SSLContext | None = None
    refusals: int = 0

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                raw, _ = self._listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(SERVER_TIMEOUT_S)
            wire = raw
            with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                if self.tls is not None:
                    wire = self.tls.wrap_socket(raw, server_side=True)
                self._refuse(wire)
            wire.close()

    def _refuse(self, wire: socket.socket) -> None:
        while True:
            (size,) = struct.unpack(">i", _read_exactly(wire, 4))
            request = _read_exactly(wire, size)
            api_key, version, correlation_id = struct.unpack(">hhi", request[:8])
            answer = _answer(api_key, version, correlation_id)
            if api_key != SASL_AUTHENTICATE:
                wire.sendall(answer)
                continue
            self.refusals += 1
            self.ending(wire, answer)
            return

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=SERVER_TIMEOUT_S)
        self._listener.close()


@pytest.fixture(autouse=True)
def no_earlier_refusal() -> Iterator[None]:
    """The watch remembers refusals for a while; each test starts with none seen."""
    _login_failures.forget()
    yield
    _login_failures.forget()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("tls"))


def _start_producer(port: int, protocol: str, ca_file: Path | None) -> BaseException:
    """Start a producer with a refused login; what its start raised."""
    options: dict[str, object] = {
        "bootstrap_servers": [f"127.0.0.1:{port}"],
        "security_protocol": protocol,
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "wrong",
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }
    if ca_file is not None:
        options["ssl_cafile"] = str(ca_file)
    with pytest.raises(kafka.errors.KafkaError) as raised:
        kafka.KafkaProducer(**options)
    return raised.value


@contextlib.contextmanager
def _refusing_broker(
    ending: Ending, tls_dir: Path | None
) -> Iterator[tuple[RefusingBroker, Path | None]]:
    context, ca_file = None, None
    if tls_dir is not None:
        made = make_server_certificate(tls_dir / ending.__name__)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(made.cert, made.key)
        ca_file = made.ca_cert
    broker = RefusingBroker(ending, context)
    try:
        yield broker, ca_file
    finally:
        broker.close()


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("ending", list(ENDINGS), ids=list(ENDINGS))
def test_a_refused_login_is_fatal_however_the_broker_ends_the_connection(
    protocol: str, ending: str, certificates: Path
) -> None:
    assert kafka_repair.installed()  # importing worker.transport installed it
    tls_dir = certificates if protocol == "SASL_SSL" else None
    with _refusing_broker(ENDINGS[ending], tls_dir) as (broker, ca_file):
        raised = _start_producer(broker.port, protocol, ca_file)
    assert broker.refusals >= 1, "the client never got as far as the login"

    error = translate_kafka_error(raised, PRODUCER_START)

    assert isinstance(error, FatalError), (ending, error)
    assert "refused the login" in str(error) and REFUSAL in str(error), error
    assert "EMOTION_STREAM_SASL_PASSWORD" in str(error)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_without_the_repair_an_answer_that_comes_with_the_close_is_lost(
    protocol: str, certificates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case the repair exists for: kafka-python's own reads drop the refusal."""
    for cls in (kafka_transport.KafkaTCPTransport, kafka_transport.KafkaSSLTransport):
        monkeypatch.setattr(cls, "_sock_recv", cls.__dict__["_sock_recv"].__wrapped__)
    assert not kafka_repair.installed()
    tls_dir = certificates if protocol == "SASL_SSL" else None
    ending = ENDINGS["answer and close in one segment"]
    with _refusing_broker(ending, tls_dir) as (broker, ca_file):
        raised = _start_producer(broker.port, protocol, ca_file)
    assert broker.refusals >= 1

    error = translate_kafka_error(raised, PRODUCER_START)

    # Seen as a broker that hangs up: retried like an outage, never named.
    assert isinstance(error, BrokerUnavailable), error


def test_install_is_idempotent() -> None:
    before = kafka_transport.KafkaSSLTransport.__dict__["_sock_recv"]
    kafka_repair.install()
    assert kafka_transport.KafkaSSLTransport.__dict__["_sock_recv"] is before
    assert kafka_repair.installed()
