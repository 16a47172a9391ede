"""``emotion-stream worker``: a bad setting stops startup with one clear message, exit 2."""

from __future__ import annotations

import os

import pytest

from worker.cli import EXIT_BAD_SETTINGS, build_settings, main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EMOTION_STREAM_"):
            monkeypatch.delenv(name)


def test_bad_env_value_exits_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMOTION_STREAM_MAX_BATCH_SIZE", "many")
    assert main([]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert "EMOTION_STREAM_MAX_BATCH_SIZE" in err
    assert "Traceback" not in err


def test_bad_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--padding", "ragged"]) == EXIT_BAD_SETTINGS
    assert "EMOTION_STREAM_PADDING" in capsys.readouterr().err


def test_password_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMOTION_STREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EMOTION_STREAM_SASL_PASSWORD", "s3cr3t-value")
    assert main([]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert "EMOTION_STREAM_SASL_MECHANISM" in err
    assert "s3cr3t-value" not in err


def test_options_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_STREAM_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("EMOTION_STREAM_INPUT_TOPIC", "from-env")
    settings = build_settings(["--max-batch-size", "4"])
    assert settings.max_batch_size == 4
    assert settings.input_topic == "from-env"


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "--max-in-flight-batches" in out
    assert "EMOTION_STREAM_DLQ_TOPIC" in out
