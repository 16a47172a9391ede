"""``emotion-stream produce`` → real broker → ``emotion-stream consume``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from worker.tools import main

pytestmark = pytest.mark.integration

CONSUME_IDLE_S = "20"


def _create_topic(servers: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics(
            {topic: {"num_partitions": 2, "replication_factor": 1}}, wait_for_metadata=True
        )
    finally:
        admin.close()


def _read_all(servers: str, topic: str, expected: int) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, p) for p in (0, 1)])
        consumer.seek_to_beginning()
        records: list[Any] = []
        for _ in range(100):  # bounded: 100 polls of at most 200 ms
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expected:
                break
        return records
    finally:
        consumer.close()


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
