"""``emotion-stream produce`` → real broker → ``emotion-stream consume``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer

from compose.embedded import SCRAM_MECHANISM
from emotion_stream.cli import main
from tests.support.secure_fixtures import WORKER_USER, SecureKafkaFactory
from tests.support.topics import TopicReader
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

CONSUME_IDLE_S = "20"
# Reading back what a tool produced: seconds when idle, with room for a loaded machine.
READ_TIMEOUT_S = 60.0
# A refused login is only seen as a bootstrap that never completes: the tool gives up at
# its connect timeout; the margin covers closing the client on a busy machine.
WRONG_LOGIN_TIMEOUT_S = "10"
WRONG_LOGIN_MARGIN_S = 20.0


def _create_topic(servers: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics(
            {topic: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()


def _read_all(servers: str, topic: str, expected: int) -> list[Any]:
    """Every record of ``topic`` once ``expected`` have arrived."""
    with TopicReader(servers, topic) as reader:
        wait_until(
            lambda: reader.poll() >= 0 and len(reader.records) >= expected,
            READ_TIMEOUT_S,
            lambda: f"{len(reader.records)} of {expected} records on {topic}",
        )
        return reader.records


def test_produce_sends_json_and_plain_lines_keyed_by_id(
    kafka_broker: Any,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servers = kafka_broker.bootstrap_servers
    topic = unique_name("tools-in")
    _create_topic(servers, topic)
    lines = tmp_path / "tweets.jsonl"
    lines.write_text(
        '{"id": "a-1", "text": "I love mondays", "lang": "en"}\n'
        "\n"
        "plain text tweet :(\n"
        '{"id": "no-text"}\n'
        '{"id": 7, "text": "numbered"}\n',
        encoding="utf-8",
    )

    assert main(["produce", str(lines), "--bootstrap-servers", servers, "--topic", topic]) == 0
    captured = capsys.readouterr()
    assert "3 sent, 3 acknowledged" in captured.out
    assert "1 lines skipped" in captured.out
    assert "line 4 skipped" in captured.err

    records = _read_all(servers, topic, 3)
    by_value = {json.loads(r.value)["text"]: r for r in records}
    assert set(by_value) == {"I love mondays", "plain text tweet :(", "numbered"}
    assert by_value["I love mondays"].key == b"a-1"
    assert json.loads(by_value["I love mondays"].value)["lang"] == "en"
    assert by_value["plain text tweet :("].key is None
    assert by_value["numbered"].key == b"7"


def test_consume_prints_results_one_line_each_and_stops_after_max_messages(
    kafka_broker: Any, unique_name: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    servers = kafka_broker.bootstrap_servers
    topic = unique_name("tools-out")
    _create_topic(servers, topic)
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    for number, label in enumerate(["joy", "anger", "sadness"]):
        result = {"id": f"r-{number}", "text": f"tweet {number}", "label": label, "score": 0.5}
        producer.send(topic, key=f"r-{number}".encode(), value=json.dumps(result).encode())
    producer.flush(timeout=30)
    producer.close()

    args = ["--bootstrap-servers", servers, "--topic", topic, "--from-beginning"]
    assert main(["consume", *args, "--max-messages", "3", "--timeout", CONSUME_IDLE_S]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["anger", "joy", "sadness"]

    assert main(["consume", *args, "--json", "--max-messages", "3", "--timeout", "20"]) == 0
    raw = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(result["id"] for result in raw) == ["r-0", "r-1", "r-2"]


def test_consume_never_shows_results_of_an_aborted_transaction(
    kafka_broker: Any, unique_name: Callable[[str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    servers = kafka_broker.bootstrap_servers
    topic = unique_name("tools-txn")
    _create_topic(servers, topic)
    producer = KafkaProducer(
        bootstrap_servers=servers, transactional_id=unique_name("txn"), acks="all"
    )
    try:
        producer.init_transactions()
        producer.begin_transaction()
        aborted = {"id": "aborted", "text": "never shown", "label": "anger", "score": 1.0}
        producer.send(topic, key=b"aborted", value=json.dumps(aborted).encode(), partition=0)
        producer.flush(timeout=30)
        producer.abort_transaction()
        producer.begin_transaction()
        kept = {"id": "kept", "text": "shown", "label": "joy", "score": 1.0}
        producer.send(topic, key=b"kept", value=json.dumps(kept).encode(), partition=0)
        producer.commit_transaction()
    finally:
        producer.close(timeout=10)

    args = ["--bootstrap-servers", servers, "--topic", topic, "--from-beginning", "--json"]
    # Asking for two: only one exists for a read_committed reader, so consume gives up
    # after the idle timeout and says so.
    assert main(["consume", *args, "--max-messages", "2", "--timeout", "5"]) == 1
    captured = capsys.readouterr()
    assert [json.loads(line)["id"] for line in captured.out.splitlines()] == ["kept"]
    assert "1 of 2 messages" in captured.err


def test_produce_and_consume_over_sasl_ssl_with_the_workers_settings(
    secure_kafka_broker: SecureKafkaFactory,
    unique_name: Callable[[str], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tools feed and read a SASL_SSL listener: produce with the password in a file
    (given as an option), consume with the worker's variables alone."""
    secure = secure_kafka_broker()
    topic = unique_name("tools-secure")
    _create_topic(secure.bootstrap_servers, topic)  # over the harness's PLAINTEXT listener
    password = secure.password(WORKER_USER)
    secret = tmp_path / "password"
    secret.write_text(password + "\n")
    lines = tmp_path / "tweets.jsonl"
    lines.write_text('{"id": "s-1", "text": "over TLS"}\n{"id": "s-2", "text": "and SCRAM"}\n')
    for name in [n for n in os.environ if n.startswith("EMOTION_STREAM_")]:
        monkeypatch.delenv(name)

    security = [
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        SCRAM_MECHANISM,
        "--sasl-username",
        WORKER_USER,
        "--ssl-cafile",
        str(secure.tls.ca_cert),
    ]
    produce = ["produce", str(lines), "--topic", topic, *security]
    servers = ["--bootstrap-servers", secure.secure_bootstrap_servers]
    assert main([*produce, *servers, "--sasl-password-file", str(secret)]) == 0
    assert "2 sent, 2 acknowledged" in capsys.readouterr().out
    records = _read_all(secure.bootstrap_servers, topic, 2)
    assert sorted(r.key for r in records) == [b"s-1", b"s-2"]

    for name, value in {
        "EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS": secure.secure_bootstrap_servers,
        "EMOTION_STREAM_SECURITY_PROTOCOL": "SASL_SSL",
        "EMOTION_STREAM_SASL_MECHANISM": SCRAM_MECHANISM,
        "EMOTION_STREAM_SASL_USERNAME": WORKER_USER,
        "EMOTION_STREAM_SASL_PASSWORD": password,
        "EMOTION_STREAM_SSL_CAFILE": str(secure.tls.ca_cert),
    }.items():
        monkeypatch.setenv(name, value)
    consume = ["consume", "--topic", topic, "--from-beginning", "--json", "--max-messages", "2"]
    assert main([*consume, "--timeout", CONSUME_IDLE_S]) == 0
    captured = capsys.readouterr()
    assert sorted(json.loads(line)["id"] for line in captured.out.splitlines()) == ["s-1", "s-2"]
    assert password not in captured.out + captured.err

    # A wrong password: one clear line, exit 1, within the connect timeout (plus start-up).
    secret.write_text("not-the-password\n")
    monkeypatch.delenv("EMOTION_STREAM_SASL_PASSWORD")
    monkeypatch.setenv("EMOTION_STREAM_SASL_PASSWORD_FILE", str(secret))
    started = time.monotonic()
    assert main([*consume, "--timeout", "5", "--connect-timeout", WRONG_LOGIN_TIMEOUT_S]) == 1
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "refused the SASL_SSL connection" in err, err
    assert "not-the-password" not in err and password not in err
    assert elapsed < float(WRONG_LOGIN_TIMEOUT_S) + WRONG_LOGIN_MARGIN_S
