"""WorkerSettings: defaults, env names, validation messages naming the setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from emotion_stream.layout import REPOSITORY_ENV
from worker.settings import WorkerSettings, describe_validation_error, env_name


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EMOTION_STREAM_"):
            monkeypatch.delenv(name)


def error_text(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        WorkerSettings(**values)  # type: ignore[arg-type]
    return describe_validation_error(caught.value)


def test_defaults_match_the_names_other_tools_rely_on() -> None:
    s = WorkerSettings()
    assert s.kafka_bootstrap_servers == "localhost:9092"
    assert (s.input_topic, s.output_topic, s.dlq_topic) == ("tweets", "emotions", "tweets.dlq")
    assert s.consumer_group == "emotion-workers"
    assert s.triton_url == "localhost:8001"
    assert (s.model_name, s.model_version) == ("emotion-classifier", "")
    assert s.max_batch_size == 32
    assert s.max_sequence_length == 128
    assert s.padding == "bucketed"
    assert s.batch_window == 128
    assert s.max_in_flight_batches == 2
    assert s.metrics_port == 9100
    assert s.delivery == "at_least_once"
    assert s.worker_id


def test_reads_environment_with_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMOTION_STREAM_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("EMOTION_STREAM_INPUT_TOPIC", "in")
    monkeypatch.setenv(REPOSITORY_ENV, str(tmp_path))
    s = WorkerSettings()
    assert s.max_batch_size == 8
    assert s.input_topic == "in"
    assert s.model_repository == tmp_path
    assert s.layout.tokenizer_dir == tmp_path / "emotion-classifier" / "tokenizer"


def test_is_frozen() -> None:
    s = WorkerSettings()
    with pytest.raises(ValidationError):
        s.max_batch_size = 3  # type: ignore[misc]


def test_env_var_with_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_STREAM_MAX_BATCH_SIZE", "lots")
    with pytest.raises(ValidationError) as caught:
        WorkerSettings()
    message = describe_validation_error(caught.value)
    assert message.startswith("EMOTION_STREAM_MAX_BATCH_SIZE:")
    assert "'lots'" in message


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_sequence_length": 129}, "EMOTION_STREAM_MAX_SEQUENCE_LENGTH"),
        ({"padding": "ragged"}, "EMOTION_STREAM_PADDING"),
        ({"batch_window": 0}, "EMOTION_STREAM_BATCH_WINDOW"),
        ({"delivery": "exactly-once"}, "EMOTION_STREAM_DELIVERY"),
        ({"max_batch_size": 0}, "EMOTION_STREAM_MAX_BATCH_SIZE"),
        ({"max_in_flight_batches": 0}, "EMOTION_STREAM_MAX_IN_FLIGHT_BATCHES"),
        ({"metrics_port": 70000}, "EMOTION_STREAM_METRICS_PORT"),
        ({"model_version": "latest"}, "EMOTION_STREAM_MODEL_VERSION"),
        ({"input_topic": " "}, "EMOTION_STREAM_INPUT_TOPIC"),
        ({"output_topic": "tweets"}, "EMOTION_STREAM_OUTPUT_TOPIC"),
        ({"retry_backoff_initial_s": 5, "retry_backoff_max_s": 1}, "RETRY_BACKOFF_INITIAL_S"),
        ({"security_protocol": "SASL_SSL"}, "EMOTION_STREAM_SASL_MECHANISM"),
    ],
)
def test_bad_values_name_the_setting(values: dict[str, object], named: str) -> None:
    assert named in error_text(**values)


def test_secret_is_never_echoed() -> None:
    text = error_text(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_password="hunter2"
    )
    assert "EMOTION_STREAM_SASL_USERNAME" in text
    assert "hunter2" not in text
    s = WorkerSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u",
        sasl_password="hunter2",  # type: ignore[arg-type]
    )
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.redacted())
    assert s.kafka_security()["sasl_plain_password"] == "hunter2"


def test_metrics_port_minus_one_disables() -> None:
    assert not WorkerSettings(metrics_port=-1).metrics_enabled
    assert WorkerSettings(metrics_port=0).metrics_enabled


def test_env_name() -> None:
    assert env_name("dlq_topic") == "EMOTION_STREAM_DLQ_TOPIC"


def test_exactly_once_and_its_transactional_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "replica-a")
    s = WorkerSettings(delivery="exactly_once", consumer_group="workers")
    assert s.exactly_once
    assert s.effective_transactional_id == "workers-replica-a"  # stable across restarts
    named = WorkerSettings(delivery="exactly_once", transactional_id="  worker-2  ")
    assert named.effective_transactional_id == "worker-2"
    # Several workers on one host tell themselves apart by an explicit worker id.
    local = WorkerSettings(delivery="exactly_once", consumer_group="workers", worker_id="w-3")
    assert local.effective_transactional_id == "workers-w-3"
    assert not WorkerSettings().exactly_once
    assert "EMOTION_STREAM_DELIVERY" in error_text(delivery="exactly-once")


def test_a_transactional_id_without_exactly_once_stops_start_up() -> None:
    # Ignored, it would leave the operator believing results are written transactionally.
    message = error_text(transactional_id="worker-2")
    assert "EMOTION_STREAM_TRANSACTIONAL_ID" in message
    assert "EMOTION_STREAM_DELIVERY=at_least_once" in message
    assert WorkerSettings(transactional_id="  ").transactional_id == ""  # blank is unset


def test_transaction_timeout_outlasts_a_commit_interval_and_stays_within_the_broker_cap() -> None:
    assert WorkerSettings().transaction_timeout_ms == 60_000
    slow = WorkerSettings(commit_interval_ms=60_000, triton_timeout_s=60)
    assert slow.transaction_timeout_ms == 3 * 60_000 + 2 * 60_000
    assert WorkerSettings(triton_timeout_s=600).transaction_timeout_ms == 900_000
