"""Kafka over SASL_SSL (SCRAM-SHA-512), ACLs, and Triton gRPC over TLS, with the real worker.

The broker is the embedded Kafka with a SASL_SSL listener and certificates generated for
the test (tests/support/secure_fixtures.py); Triton is the session's server. The harness
seeds and reads over the broker's PLAINTEXT listener; only the worker uses SASL_SSL.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import AuthorizationError
from tritonclient.utils import InferenceServerException

from compose.certificates import make_ca
from tests.support.pipeline import Pipeline
from tests.support.secure_fixtures import (
    ADMIN_USER,
    WORKER_USER,
    SecureKafka,
    SecureKafkaFactory,
    TlsTriton,
)
from tests.support.waiting import wait_until
from tests.support.worker_process import WORKER_START_TIMEOUT_S, WorkerRun
from worker.cli import EXIT_BAD_SETTINGS, EXIT_FATAL, EXIT_OK

pytestmark = pytest.mark.integration

SEEDED = 60
RESULTS_TIMEOUT_S = 180.0
COMMIT_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0
# Triton with a certificate from another CA: start-up, then the first failed model wait.
FAIL_FAST_TIMEOUT_S = 150.0
CLIENT_TIMEOUT_S = 30.0
# A refused login, stage by stage. Start-up (imports, tokenizer, waiting for Triton) ends
# with "model ready" within the harness's start bound, WORKER_START_TIMEOUT_S; the Kafka
# clients come next. A refusal seen during a kafka-python bootstrap (30 s) is fatal when
# that bootstrap times out; a bootstrap in which a loaded broker answered no attempt is
# retried after a backoff (RETRY_BACKOFF_MAX_S below) — so the exit comes within two
# bootstraps, plus the backoff, plus a margin for closing on a loaded 2-core machine.
KAFKA_BOOTSTRAP_S = 30.0
RETRY_BACKOFF_MAX_S = 2.0
CLOSE_MARGIN_S = 20.0
REFUSED_LOGIN_EXIT_S = 2 * KAFKA_BOOTSTRAP_S + RETRY_BACKOFF_MAX_S + CLOSE_MARGIN_S


@pytest.fixture
def secure_pipeline(
    triton_server: Any,
    tiny_model_repository: Path,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Callable[[SecureKafka], Pipeline]]:
    built: list[Pipeline] = []

    def build(secure: SecureKafka) -> Pipeline:
        pipeline = Pipeline(
            bootstrap_servers=secure.bootstrap_servers,
            triton_url=triton_server.grpc_url,
            model_repository=tiny_model_repository,
            name=unique_name("secure"),
            workdir=tmp_path,
            partitions=2,
            worker_env={
                "EMOTION_STREAM_RETRY_BACKOFF_INITIAL_S": "0.2",
                "EMOTION_STREAM_RETRY_BACKOFF_MAX_S": str(RETRY_BACKOFF_MAX_S),
            },
        )
        built.append(pipeline)
        return pipeline

    yield build
    for pipeline in built:
        pipeline.close()


def _assert_no_secret(text: str, secrets_: list[str], where: str) -> None:
    for secret in secrets_:
        assert secret not in text, f"a secret appears in {where}"
    assert "PRIVATE KEY" not in text, f"key material appears in {where}"


def test_worker_classifies_every_tweet_over_sasl_ssl(
    secure_kafka_broker: SecureKafkaFactory, secure_pipeline: Callable[[SecureKafka], Pipeline]
) -> None:
    secure = secure_kafka_broker()
    pipeline = secure_pipeline(secure)
    ids = pipeline.seed(SEEDED)
    worker = pipeline.start_worker(**secure.worker_env(WORKER_USER))

    counts = pipeline.wait_for_results(ids, RESULTS_TIMEOUT_S)

    assert set(counts) == set(ids)
    assert pipeline.dead_letter_count() == 0, pipeline.describe()
    wait_until(
        lambda: sum(pipeline.committed_offsets().values()) == SEEDED,
        COMMIT_TIMEOUT_S,
        pipeline.describe,
    )
    # The worker had only the secure listener's address, and the broker advertises only
    # that listener's endpoints to clients arriving on it.
    log = worker.log()
    assert f'"kafka_bootstrap_servers": "{secure.secure_bootstrap_servers}"' in log
    assert '"security_protocol": "SASL_SSL"' in log
    _assert_no_secret(log, [secure.password(WORKER_USER)], "the worker's log")
    worker.terminate()
    assert worker.wait(EXIT_TIMEOUT_S) == EXIT_OK, worker.log_tail()
    _assert_no_secret(worker.log(), [secure.password(WORKER_USER)], "the worker's log")
    # Nor did the users' creation put a password into the broker's log.
    broker_log = secure.broker.log_file.read_text(encoding="utf-8", errors="replace")
    passwords = [secure.password(WORKER_USER), secure.password(ADMIN_USER)]
    _assert_no_secret(broker_log, passwords, "the broker's log")


def _exit_after_reaching_kafka(
    worker: WorkerRun, on_the_way: Callable[[], None] = lambda: None
) -> tuple[int, float, float]:
    """Wait for a worker that must stop at its Kafka login, one bounded stage at a time.

    Returns the exit code, the seconds start-up took (up to "model ready", after which
    the Kafka clients start) and the seconds from there to the exit. ``on_the_way`` runs
    every poll of both stages. A failure says which stage overran: "never reached Kafka"
    (start-up) or "kept retrying" (the login was not recognised as refused).
    """
    started = time.monotonic()

    def reached_kafka() -> bool:
        on_the_way()
        return bool(worker.events("model ready")) or not worker.alive()

    wait_until(
        reached_kafka,
        WORKER_START_TIMEOUT_S,
        lambda: (
            "never reached Kafka: start-up (imports, tokenizer, Triton) did not end "
            "with 'model ready'"
            + ("" if worker.log().strip() else " (no log line yet: still importing)")
            + f"\n{worker.log_tail()}"
        ),
    )
    assert worker.events("model ready"), f"died before reaching Kafka\n{worker.log_tail()}"
    at_kafka = time.monotonic()

    def exited() -> bool:
        on_the_way()
        return not worker.alive()

    def kept_retrying() -> str:
        retries = worker.events("waiting for Kafka")
        return (
            f"reached Kafka {at_kafka - started:.0f} s after start but kept retrying "
            f"({len(retries)} 'waiting for Kafka'): the refused login was not recognised"
            f"\n{worker.log_tail()}"
        )

    wait_until(exited, REFUSED_LOGIN_EXIT_S, kept_retrying)
    code = worker.wait(EXIT_TIMEOUT_S)
    return code, at_kafka - started, time.monotonic() - at_kafka


def _the_cause(log: str) -> list[str]:
    """The log lines that name why the worker stopped."""
    return [line for line in log.splitlines() if "refused the login" in line]


def test_wrong_password_stops_the_worker_with_a_clear_message_never_ready(
    secure_kafka_broker: SecureKafkaFactory, secure_pipeline: Callable[[SecureKafka], Pipeline]
) -> None:
    secure = secure_kafka_broker()
    pipeline = secure_pipeline(secure)
    pipeline.seed(5)
    wrong = "wrong-" + secrets.token_urlsafe(12)
    worker = pipeline.start_worker(**secure.worker_env(WORKER_USER, password=wrong))

    # Readiness is sampled all along and must never be 200.
    readiness: set[int | None] = set()
    code, start_s, kafka_s = _exit_after_reaching_kafka(
        worker, lambda: readiness.add(worker.http_status("/readyz"))
    )

    assert code == EXIT_FATAL, worker.log_tail()
    assert 200 not in readiness, readiness
    assert 503 in readiness, f"readiness never sampled while running: {readiness}"
    log = worker.log()
    cause = _the_cause(log)
    assert len(cause) == 1, log[-3000:]
    assert "EMOTION_STREAM_SASL_PASSWORD" in cause[0], cause
    assert "invalid credentials" in cause[0], cause
    _assert_no_secret(log, [wrong, secure.password(WORKER_USER)], "the failed worker's log")
    # It never joined the group, so it cannot have committed anything.
    assert '"partitions assigned"' not in log
    assert pipeline.result_ids() == {}
    print(f"\nstart-up {start_s:.1f} s, then exit after {kafka_s:.1f} s at Kafka: {cause[0]}")


def test_broker_certificate_from_another_ca_stops_the_worker_clearly(
    secure_kafka_broker: SecureKafkaFactory,
    secure_pipeline: Callable[[SecureKafka], Pipeline],
    tmp_path: Path,
) -> None:
    secure = secure_kafka_broker()
    pipeline = secure_pipeline(secure)
    other_ca, _ = make_ca(tmp_path / "other-ca", "other-ca")
    env = {**secure.worker_env(WORKER_USER), "EMOTION_STREAM_SSL_CAFILE": str(other_ca)}
    worker = pipeline.start_worker(**env)

    code, start_s, kafka_s = _exit_after_reaching_kafka(worker)

    log = worker.log()
    assert code == EXIT_FATAL, worker.log_tail()
    cause = _the_cause(log)
    assert len(cause) == 1 and "certificate verify failed" in cause[0], log[-3000:]
    _assert_no_secret(log, [secure.password(WORKER_USER)], "the failed worker's log")
    print(f"\nstart-up {start_s:.1f} s, then exit after {kafka_s:.1f} s at Kafka: {cause[0]}")


def test_settings_errors_never_echo_the_password(tmp_path: Path) -> None:
    """Bad settings beside a password: the error names settings, never shows the secret."""
    password = "s3cret-" + secrets.token_urlsafe(12)
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_STREAM_")}
    cases = {
        # The password given, the user name missing: a model-level error.
        "no user": {
            "EMOTION_STREAM_SECURITY_PROTOCOL": "SASL_SSL",
            "EMOTION_STREAM_SASL_MECHANISM": "SCRAM-SHA-512",
            "EMOTION_STREAM_SASL_PASSWORD": password,
        },
        # A bad value elsewhere while the password is set.
        "bad mechanism": {
            "EMOTION_STREAM_SECURITY_PROTOCOL": "SASL_SSL",
            "EMOTION_STREAM_SASL_MECHANISM": password,
            "EMOTION_STREAM_SASL_USERNAME": "worker",
            "EMOTION_STREAM_SASL_PASSWORD": password,
        },
    }
    for case, env in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "emotion_stream.cli", "worker"],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == EXIT_BAD_SETTINGS, (case, output)
        assert "EMOTION_STREAM_" in output, (case, output)
        if case == "no user":
            _assert_no_secret(output, [password], f"the settings error ({case})")
        else:
            # The bad value is shown for the field it was given to (not a secret field)...
            assert "EMOTION_STREAM_SASL_MECHANISM" in output, output
            # ...but never through the password field.
            assert "EMOTION_STREAM_SASL_PASSWORD" not in output, output


def test_acls_let_a_user_read_the_input_but_not_write_the_outputs(
    secure_kafka_broker: SecureKafkaFactory, unique_name: Callable[[str], str]
) -> None:
    secure = secure_kafka_broker(authorizer=True)
    tweets, emotions, dlq = (unique_name(n) for n in ("tweets", "emotions", "dlq"))
    group = unique_name("group")
    secure.broker.create_topics({tweets: 1, emotions: 1, dlq: 1})
    seed = KafkaProducer(bootstrap_servers=secure.bootstrap_servers, acks="all")  # super user
    try:
        seed.send(tweets, value=b'{"id": "1", "text": "hello"}').get(timeout=30)
    finally:
        seed.close()
    secure.allow_worker(WORKER_USER, input_topic=tweets, group=group, output_topics=[])
    secure.deny(WORKER_USER, ["write"], "topic", emotions)
    secure.deny(WORKER_USER, ["write"], "topic", dlq)

    consumer = KafkaConsumer(
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **secure.client_options(WORKER_USER),
    )
    try:
        consumer.subscribe([tweets])
        records: list[Any] = []
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while not records and time.monotonic() < deadline:
            records = [r for rs in consumer.poll(timeout_ms=1000).values() for r in rs]
        assert [r.value for r in records] == [b'{"id": "1", "text": "hello"}']
        consumer.commit()  # the group is the worker's: committing is allowed
    finally:
        consumer.close()

    for topic in (emotions, dlq):
        producer = KafkaProducer(acks="all", max_block_ms=20_000, **secure.client_options())
        try:
            with pytest.raises(AuthorizationError):
                producer.send(topic, value=b"{}").get(timeout=CLIENT_TIMEOUT_S)
        finally:
            producer.close(timeout=5)
    # The same user with the right to write may: the denial is the ACL, not the setup.
    secure.allow(ADMIN_USER, ["write"], "topic", emotions)
    producer = KafkaProducer(acks="all", **secure.client_options(ADMIN_USER))
    try:
        producer.send(emotions, value=b"{}").get(timeout=CLIENT_TIMEOUT_S)
    finally:
        producer.close(timeout=5)


# ----------------------------------------------------------------- Triton gRPC over TLS


@pytest.fixture
def plain_pipeline(
    kafka_broker: Any,
    tls_triton_server: TlsTriton,
    tiny_model_repository: Path,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[Pipeline]:
    pipeline = Pipeline(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        triton_url=tls_triton_server.grpc_url,
        model_repository=tiny_model_repository,
        name=unique_name("tls"),
        workdir=tmp_path,
    )
    try:
        yield pipeline
    finally:
        pipeline.close()


def test_worker_classifies_over_triton_grpc_tls(
    tls_triton_server: TlsTriton, plain_pipeline: Pipeline
) -> None:
    ids = plain_pipeline.seed(SEEDED)
    worker = plain_pipeline.start_worker(**tls_triton_server.worker_env())
    counts = plain_pipeline.wait_for_results(ids, RESULTS_TIMEOUT_S)
    assert set(counts) == set(ids)
    assert plain_pipeline.dead_letter_count() == 0, plain_pipeline.describe()
    assert '"triton_ssl": true' in worker.log()
    _assert_no_secret(worker.log(), [], "the worker's log")
    # TLS is not optional on that port: a plain gRPC client gets no answer.
    plain = grpcclient.InferenceServerClient(tls_triton_server.grpc_url)
    try:
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=10)
    finally:
        plain.close()


def test_triton_certificate_from_another_ca_is_refused_clearly(
    tls_triton_server: TlsTriton, plain_pipeline: Pipeline, tmp_path: Path
) -> None:
    other_ca, _ = make_ca(tmp_path / "other-ca", "other-ca")
    ids = plain_pipeline.seed(5)
    worker = plain_pipeline.start_worker(**tls_triton_server.worker_env(other_ca))

    # The worker waits for Triton (gRPC reports a failed handshake as UNAVAILABLE, the
    # same as a server that is down), names the certificate failure and is never ready.
    wait_until(
        lambda: "CERTIFICATE_VERIFY_FAILED" in worker.log() or not worker.alive(),
        FAIL_FAST_TIMEOUT_S,
        worker.log_tail,
    )
    assert worker.alive(), worker.log_tail()
    assert "CERTIFICATE_VERIFY_FAILED" in worker.log(), worker.log_tail()
    assert worker.http_status("/readyz") == 503
    assert not set(plain_pipeline.result_ids()) & set(ids)
