"""Security settings fail closed; secrets come from the environment or a file, never argv.

The property over every combination: the settings either stop start-up with a message
naming the setting and the one it needs, or every security setting given reaches the
client that uses it — never silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from tests.support.fakes import (
    LABELS,
    FakeClassifier,
    FakePublisher,
    FakeSource,
    FakeTokenizer,
    tweets,
    wait_for,
)
from tests.support.fakes import settings as worker_settings
from worker.app import Worker
from worker.cli import EXIT_BAD_SETTINGS, build_settings, main
from worker.security import (
    KAFKA_SECURITY_FIELDS,
    KafkaSecurity,
    read_secret_file,
    triton_tls_problems,
)
from worker.settings import SECRET_FIELDS, WorkerSettings, describe_validation_error, env_name

PASSWORD = "hunter2-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EMOTION_STREAM_"):
            monkeypatch.delenv(name)


def rejection(**values: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        WorkerSettings(**values)
    return describe_validation_error(caught.value)


def named(text: str) -> set[str]:
    return set(re.findall(r"EMOTION_STREAM_[A-Z_]+", text))


SASL_OK = {"sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password": PASSWORD}


# --- each combination that cannot work, and what it names -------------------------


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"ssl_cafile": "/ca.pem"}, {"SSL_CAFILE", "SECURITY_PROTOCOL"}),
        ({"ssl_certfile": "/c.pem"}, {"SSL_CERTFILE", "SECURITY_PROTOCOL"}),
        ({"ssl_keyfile": "/k.pem"}, {"SSL_KEYFILE", "SECURITY_PROTOCOL"}),
        (
            {"security_protocol": "SASL_PLAINTEXT", "ssl_cafile": "/ca.pem", **SASL_OK},
            {"SSL_CAFILE", "SECURITY_PROTOCOL"},
        ),
        (
            {"security_protocol": "SSL", "ssl_keyfile": "/k.pem"},
            {"SSL_KEYFILE", "SSL_CERTFILE"},
        ),
        ({"sasl_mechanism": "PLAIN"}, {"SASL_MECHANISM", "SECURITY_PROTOCOL"}),
        ({"sasl_username": "u"}, {"SASL_USERNAME", "SECURITY_PROTOCOL"}),
        ({"sasl_password": PASSWORD}, {"SASL_PASSWORD", "SECURITY_PROTOCOL"}),
        (
            {"security_protocol": "SSL", "sasl_username": "u"},
            {"SASL_USERNAME", "SECURITY_PROTOCOL"},
        ),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
                "sasl_password": PASSWORD,
            },
            {"SECURITY_PROTOCOL", "SASL_MECHANISM", "ALLOW_CLEARTEXT_PASSWORD"},
        ),
        (
            {"security_protocol": "SASL_SSL", "allow_cleartext_password": True, **SASL_OK},
            {"ALLOW_CLEARTEXT_PASSWORD", "SECURITY_PROTOCOL"},
        ),
        ({"allow_cleartext_password": True}, {"ALLOW_CLEARTEXT_PASSWORD", "SECURITY_PROTOCOL"}),
        ({"triton_root_certificates": "/ca.pem"}, {"TRITON_ROOT_CERTIFICATES", "TRITON_SSL"}),
        (
            {"triton_private_key": "/k.pem", "triton_certificate_chain": "/c.pem"},
            {"TRITON_PRIVATE_KEY", "TRITON_CERTIFICATE_CHAIN", "TRITON_SSL"},
        ),
        (
            {"triton_ssl": True, "triton_private_key": "/k.pem"},
            {"TRITON_PRIVATE_KEY", "TRITON_CERTIFICATE_CHAIN"},
        ),
        (
            {"triton_ssl": True, "triton_certificate_chain": "/c.pem"},
            {"TRITON_PRIVATE_KEY", "TRITON_CERTIFICATE_CHAIN"},
        ),
    ],
)
def test_a_setting_without_the_one_it_needs_stops_start_up_naming_both(
    values: dict[str, Any], names: set[str]
) -> None:
    text = rejection(**values)
    assert {env_name(n) for n in names} <= named(text), text
    assert PASSWORD not in text


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"security_protocol": "SSL"},
        {"security_protocol": "SSL", "ssl_cafile": "/ca.pem"},
        {"security_protocol": "SSL", "ssl_certfile": "/c.pem"},  # key inside the PEM
        {"security_protocol": "SSL", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem"},
        {"security_protocol": "SASL_SSL", "ssl_cafile": "/ca.pem", **SASL_OK},
        {"security_protocol": "SASL_PLAINTEXT", **SASL_OK},  # SCRAM never sends the password
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": PASSWORD,
            "allow_cleartext_password": True,
        },
        {"triton_ssl": True},
        {"triton_ssl": True, "triton_root_certificates": "/ca.pem"},
        {"triton_ssl": True, "triton_private_key": "/k", "triton_certificate_chain": "/c"},
    ],
)
def test_complete_combinations_are_accepted(values: dict[str, Any]) -> None:
    WorkerSettings(**values)


TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
TRITON_FILES = ("triton_root_certificates", "triton_private_key", "triton_certificate_chain")


@st.composite
def security_values(draw: st.DrawFn) -> dict[str, Any]:
    values: dict[str, Any] = {
        "security_protocol": draw(
            st.sampled_from(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
        )
    }
    maybe = {
        "sasl_mechanism": st.sampled_from(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
        "sasl_username": st.just("user"),
        "sasl_password": st.just(PASSWORD),
        "allow_cleartext_password": st.just(True),
        "triton_ssl": st.just(True),
        **{name: st.just(f"/etc/{name}.pem") for name in TLS_FILES + TRITON_FILES},
    }
    for name, strategy in maybe.items():
        if draw(st.booleans()):
            values[name] = draw(strategy)
    return values


@settings(max_examples=400, deadline=None)
@given(security_values())
def test_every_combination_fails_closed(values: dict[str, Any]) -> None:
    """Accepted means nothing given is ignored; refused means a message naming two."""
    try:
        s = WorkerSettings(**values)
    except ValidationError as error:
        text = describe_validation_error(error)
        assert len(named(text)) >= 2, text
        assert PASSWORD not in text
        return
    options = s.kafka_security()
    for name in TLS_FILES:
        if name in values:
            assert options[name] == values[name]
    if "sasl_username" in values:
        assert options["sasl_plain_username"] == "user"
    if "sasl_password" in values:
        assert options["sasl_plain_password"] == PASSWORD
    if "sasl_mechanism" in values:
        assert options["sasl_mechanism"] == values["sasl_mechanism"]
    if options["security_protocol"] == "SASL_PLAINTEXT" and options["sasl_mechanism"] == "PLAIN":
        assert s.allow_cleartext_password and s.password_in_clear
    else:
        assert not s.allow_cleartext_password
    if any(name in values for name in TRITON_FILES):
        assert s.triton_ssl  # the files reach a TLS channel, not a plain one
    assert (s.triton_private_key is None) == (s.triton_certificate_chain is None)


def test_the_kafka_security_fields_are_the_workers_settings() -> None:
    """One list of Kafka security settings: each is a worker setting of the same default,
    and the worker hands every one of them to its clients' security value."""
    for field in dataclasses.fields(KafkaSecurity):
        assert WorkerSettings.model_fields[field.name].default == field.default, field.name
    given = {
        "security_protocol": "SASL_SSL",
        "ssl_cafile": Path("/ca.pem"),
        "ssl_certfile": Path("/c.pem"),
        "ssl_keyfile": Path("/k.pem"),
        **SASL_OK,
    }
    security = WorkerSettings(**given).kafka_client_security
    assert set(given) | {"allow_cleartext_password"} == set(KAFKA_SECURITY_FIELDS)
    for name, value in given.items():
        shown = getattr(security, name)
        assert (shown.get_secret_value() if name in SECRET_FIELDS else shown) == value, name


def test_the_tools_and_the_worker_share_the_rules() -> None:
    problems = KafkaSecurity(ssl_cafile=Path("/ca.pem")).problems(lambda f: f"--{f}")
    assert problems and "--ssl_cafile" in problems[0] and "--security_protocol" in problems[0]
    assert triton_tls_problems(
        ssl=False,
        root_certificates=Path("/ca"),
        private_key=None,
        certificate_chain=None,
        name=str,
    )


def test_a_password_in_clear_is_logged_as_a_warning_once() -> None:
    source, publisher = FakeSource({("tweets", 0): tweets(0, 5)}), FakePublisher()
    with structlog.testing.capture_logs() as logs:
        worker = Worker(
            worker_settings(
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism="PLAIN",
                sasl_username="u",
                sasl_password=PASSWORD,
                allow_cleartext_password=True,
            ),
            source=lambda s, handler: source,
            publisher=lambda s: publisher,
            classifier=lambda s: FakeClassifier(),
            tokenizer=lambda s: FakeTokenizer(),
            labels=LABELS,
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        wait_for(lambda: len(publisher.on("emotions")) == 5, "5 results")
        worker.stop()
        thread.join(20)
    warnings = [e for e in logs if "in clear" in e["event"]]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
    assert PASSWORD not in repr(logs)


# --- secrets from a file, never from the command line ------------------------------


def sasl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOTION_STREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EMOTION_STREAM_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("EMOTION_STREAM_SASL_USERNAME", "worker")


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_the_password_file_is_read_at_start_up_without_its_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ending: str
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + ending)
    sasl_env(monkeypatch)
    monkeypatch.setenv("EMOTION_STREAM_SASL_PASSWORD_FILE", str(secret))
    s = WorkerSettings()
    assert s.kafka_security()["sasl_plain_password"] == PASSWORD
    assert PASSWORD not in str(s.redacted())
    # Through the command line too: the file's path is not a secret.
    monkeypatch.delenv("EMOTION_STREAM_SASL_PASSWORD_FILE")
    s = build_settings(["--sasl-password-file", str(secret)])
    assert s.kafka_security()["sasl_plain_password"] == PASSWORD


@pytest.mark.parametrize("problem", ["missing", "unreadable", "empty", "both"])
def test_a_password_file_that_cannot_give_the_password_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    problem: str,
) -> None:
    secret = tmp_path / "password"
    if problem == "unreadable":
        secret.mkdir()  # a directory: unreadable as a file even for root
    elif problem == "empty":
        secret.write_text("\n")
    elif problem == "both":
        secret.write_text(PASSWORD)
        monkeypatch.setenv("EMOTION_STREAM_SASL_PASSWORD", PASSWORD)
    sasl_env(monkeypatch)
    monkeypatch.setenv("EMOTION_STREAM_SASL_PASSWORD_FILE", str(secret))
    assert main([]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert "EMOTION_STREAM_SASL_PASSWORD_FILE" in err
    if problem == "both":
        assert "EMOTION_STREAM_SASL_PASSWORD " in err
    assert PASSWORD not in err
    assert "Traceback" not in err


def test_read_secret_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MY_SETTING: cannot read"):
        read_secret_file(tmp_path / "nope", "MY_SETTING")


def test_every_secret_is_a_secret_field_and_has_a_file_variant() -> None:
    secrets = {
        name
        for name, field in WorkerSettings.model_fields.items()
        if field.annotation is not None and SecretStr in getattr(field.annotation, "__args__", ())
    }
    assert secrets == set(SECRET_FIELDS) == {"sasl_password"}
    for name in SECRET_FIELDS:
        assert f"{name}_file" in WorkerSettings.model_fields


@pytest.mark.parametrize(
    "argv",
    [
        ["--sasl-password", PASSWORD],
        [f"--sasl-password={PASSWORD}"],
        ["--max-batch-size", "4", "--sasl-password", PASSWORD],
    ],
)
def test_no_secret_is_accepted_on_the_command_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    sasl_env(monkeypatch)
    assert main(argv) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert "--sasl-password is not accepted" in err
    assert "EMOTION_STREAM_SASL_PASSWORD_FILE" in err
    assert PASSWORD not in err


def test_help_has_no_secret_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--sasl-password-file" in out
    assert not re.search(r"--sasl-password(?!-file)", out)


def test_an_abbreviated_option_is_not_taken_for_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # "--sasl-pass" must not become --sasl-password-file (and its value a path).
    with pytest.raises(SystemExit) as caught:
        build_settings(["--sasl-pass", "x"])
    assert caught.value.code == 2
