"""``emotion-stream produce`` line parsing and ``consume`` formatting, without a broker."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emotion_stream.cli import main
from emotion_stream.tools import consume, produce
from emotion_stream.tools.command import client_security
from emotion_stream.tools.formatting import format_result, render_record
from emotion_stream.tools.produce import LineError, OutgoingTweet, parse_line, sample_records
from emotion_stream.tools.samples import BUILT_IN_SAMPLE, SampleTweet, load_sample_tweets
from worker.security import KAFKA_SECURITY_FIELDS, KafkaSecurity, option
from worker.settings import SECRET_FIELDS, env_name


def test_json_object_is_sent_as_written_and_keyed_by_its_id() -> None:
    line = b'{"id": "t-1", "text": "I love mondays", "lang": "en"}\n'
    assert parse_line(line) == OutgoingTweet(key=b"t-1", value=line.rstrip(b"\n"))


def test_numeric_id_becomes_a_text_key() -> None:
    record = parse_line(b'{"id": 42, "text": "hi"}')
    assert record is not None
    assert record.key == b"42"


def test_json_object_without_id_has_no_key() -> None:
    assert parse_line(b'{"text": "hi"}\r\n') == OutgoingTweet(key=None, value=b'{"text": "hi"}')


@pytest.mark.parametrize(
    "line", [b"I hate traffic :(", "naïve café 😂".encode(), b"42", b"null", b"[1, 2]"]
)
def test_plain_line_is_the_text(line: bytes) -> None:
    record = parse_line(line + b"\n")
    assert record is not None
    assert record.key is None
    # Wrapped, so a tweet that happens to be valid JSON (42, null) stays a tweet.
    assert json.loads(record.value) == {"text": line.decode()}


def test_line_starting_with_a_brace_that_is_not_json_is_text() -> None:
    record = parse_line(b"{sarcasm} love waiting in line")
    assert record is not None
    assert json.loads(record.value) == {"text": "{sarcasm} love waiting in line"}


@pytest.mark.parametrize("line", [b"", b"\n", b"   \t \r\n"])
def test_blank_lines_are_skipped(line: bytes) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"id": "x"}', '"text"'),
        (b'{"text": "   "}', '"text"'),
        (b'{"text": 5}', '"text"'),
        (b'{"id": [1], "text": "hi"}', '"id"'),
        (b'{"id": true, "text": "hi"}', '"id"'),
        (b'{"id": 1.5, "text": "hi"}', '"id"'),
        (b"caf\xe9", "UTF-8"),
    ],
)
def test_unusable_lines_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(LineError, match=reason):
        parse_line(line)


def test_verbatim_sends_the_bytes_unchecked() -> None:
    assert parse_line(b"caf\xe9\n", verbatim=True) == OutgoingTweet(key=None, value=b"caf\xe9")
    assert parse_line(b"\n", verbatim=True) == OutgoingTweet(key=None, value=b"")


def test_built_in_sample_covers_every_emotion_with_unique_ids() -> None:
    assert len(BUILT_IN_SAMPLE) >= 12
    assert {tweet.label for tweet in BUILT_IN_SAMPLE} == {"anger", "joy", "optimism", "sadness"}
    assert len({tweet.id for tweet in BUILT_IN_SAMPLE}) == len(BUILT_IN_SAMPLE)


def test_sample_falls_back_to_the_built_in_set(tmp_path: Path) -> None:
    assert load_sample_tweets(tmp_path / "absent.jsonl") == list(BUILT_IN_SAMPLE)


def test_sample_reads_the_shared_file_when_present(tmp_path: Path) -> None:
    shared = tmp_path / "tweets.jsonl"
    shared.write_text('{"id": "te-0", "text": "so sad", "label": "sadness"}\n\n', "utf-8")
    assert load_sample_tweets(shared) == [SampleTweet("te-0", "so sad", "sadness")]


def test_sample_records_are_keyed_json_tweets() -> None:
    first = next(sample_records())
    assert first.key is not None
    assert json.loads(first.value)["id"] == first.key.decode()
    # What produce sends is what produce would accept from a file.
    assert parse_line(first.value) == first


def _result(**fields: object) -> bytes:
    base: dict[str, object] = {"id": "t-1", "text": "I love mondays", "label": "joy", "score": 0.91}
    return json.dumps({**base, **fields}).encode()


def test_result_line_shows_label_score_id_and_text() -> None:
    line = format_result(_result())
    assert line.split()[:3] == ["joy", "0.91", "t-1"]
    assert line.endswith("I love mondays")


def test_long_text_is_cut_to_one_line() -> None:
    line = format_result(_result(text="word\n" * 100), width=20)
    assert "\n" not in line
    assert line.endswith("…")
    assert len(line.split(maxsplit=3)[3]) == 20


def test_expected_label_of_a_sample_is_shown() -> None:
    assert format_result(_result(meta={"expected": "sadness"})).endswith("(expected sadness)")


@pytest.mark.parametrize("value", [b"not json", b"\xff\xfe", b'{"text": "no label"}'])
def test_anything_else_is_shown_raw(value: bytes) -> None:
    assert format_result(value).startswith("(not a result)")


def test_sample_and_file_together_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--sample", "tweets.jsonl"]) == 2
    assert "not both" in capsys.readouterr().err


def test_missing_file_fails_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    # An unroutable broker address: reaching it would take the connect timeout.
    assert main(["produce", "/nonexistent/tweets.jsonl", "--bootstrap-servers", "127.0.0.1:1"]) == 1
    assert "cannot read /nonexistent/tweets.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["produce", "consume"])
def test_unreachable_broker_is_one_clear_line(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, "--bootstrap-servers", "127.0.0.1:1", "--connect-timeout", "0.5"]
    if command == "produce":
        args.append("--sample")
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"emotion-stream {command}: cannot reach Kafka at 127.0.0.1:1" in err


def test_dead_letter_shows_its_error_and_original_value() -> None:
    headers = [("dlq.error.class", b"MissingText"), ("dlq.error.message", b"no 'text' field")]
    line = format_result(b'{"id": "x"}', headers)
    assert line.startswith("DEAD-LETTER MissingText: no 'text' field")
    assert '{"id": "x"}' in line


# --- security settings: the worker's, by the same rules -----------------------------

PASSWORD = "tool-s3cret-value"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EMOTION_STREAM_"):
            monkeypatch.delenv(name)


def security_of(command: str, *args: str, env: dict[str, str] | None = None) -> KafkaSecurity:
    build_parser = {"produce": produce.build_parser, "consume": consume.build_parser}[command]
    parsed = build_parser().parse_args(list(args))
    return client_security(parsed, env or {})


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", ["produce", "consume"])
def test_the_tools_take_the_workers_security_settings(
    command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv("EMOTION_STREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EMOTION_STREAM_SSL_CAFILE", "/etc/ca.pem")
    security = security_of(
        command,
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        "reader",
        "--sasl-password-file",
        str(secret),
    )
    assert security.client_options() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "reader",
        "sasl_plain_password": PASSWORD,
        "ssl_cafile": "/etc/ca.pem",
    }
    # The password from the worker's variable works too.
    security = security_of(
        command,
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        "reader",
        env={"EMOTION_STREAM_SASL_PASSWORD": PASSWORD},
    )
    assert security.client_options()["sasl_plain_password"] == PASSWORD


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["--ssl-cafile", "/ca.pem"], {}, ["--ssl-cafile", "--security-protocol"]),
        (["--sasl-username", "u"], {}, ["--sasl-username", "--security-protocol"]),
        (
            ["--security-protocol", "SASL_PLAINTEXT", "--sasl-mechanism", "PLAIN"],
            {"EMOTION_STREAM_SASL_USERNAME": "u", "EMOTION_STREAM_SASL_PASSWORD": PASSWORD},
            ["--allow-cleartext-password"],
        ),
        (["--security-protocol", "SASL_SSL"], {}, ["--sasl-mechanism"]),
        (["--security-protocol", "TLS"], {}, ["--security-protocol"]),
        (
            ["--security-protocol", "SASL_SSL", "--sasl-password-file", "/nonexistent/pw"],
            {},
            ["--sasl-password-file", "cannot read"],
        ),
    ],
)
def test_tool_security_mistakes_exit_2_naming_the_settings(
    args: list[str],
    env: dict[str, str],
    names: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # An unroutable broker: reaching the connect step would take the timeout.
    common = ["--bootstrap-servers", "127.0.0.1:1", "--connect-timeout", "0.5"]
    assert main(["consume", *common, *args]) == 2
    err = capsys.readouterr().err
    for name in names:
        assert name in err, err
    assert PASSWORD not in err


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", ["produce", "consume"])
def test_the_tools_offer_every_kafka_security_setting_a_secret_by_its_file(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out

    def offered(flag: str) -> bool:
        return re.search(re.escape(flag) + r"(?![\w-])", help_text) is not None

    for field in KAFKA_SECURITY_FIELDS:
        if field in SECRET_FIELDS:
            assert offered(f"{option(field)}-file") and not offered(option(field)), field
        else:
            assert offered(option(field)), field
        assert env_name(field) in help_text


@pytest.mark.parametrize("command", ["produce", "consume"])
@pytest.mark.parametrize("arg", [["--sasl-password", PASSWORD], [f"--sasl-password={PASSWORD}"]])
def test_the_tools_refuse_a_password_on_the_command_line(
    command: str, arg: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *arg]) == 2
    err = capsys.readouterr().err
    assert "--sasl-password is not accepted" in err
    assert "EMOTION_STREAM_SASL_PASSWORD_FILE" in err
    assert PASSWORD not in err


@pytest.mark.usefixtures("clean_env")
def test_a_cleartext_password_is_allowed_only_when_asked_and_then_warned(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EMOTION_STREAM_SASL_PASSWORD", PASSWORD)
    args = [
        "consume",
        "--bootstrap-servers",
        "127.0.0.1:1",
        "--connect-timeout",
        "0.5",
        "--security-protocol",
        "SASL_PLAINTEXT",
        "--sasl-mechanism",
        "PLAIN",
        "--sasl-username",
        "u",
        "--allow-cleartext-password",
    ]
    assert main(args) == 1  # past the settings, to the unreachable broker
    err = capsys.readouterr().err
    assert err.count("password crosses the network in clear") == 1
    assert "cannot reach Kafka" in err and "refused the SASL_PLAINTEXT connection" in err
    assert PASSWORD not in err


# --- untrusted text never drives the operator's terminal ----------------------------

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def drives_a_terminal(char: str) -> bool:
    """C0, DEL, C1, the bidi controls, the line/paragraph separators."""
    return unicodedata.category(char) in {"Cc", "Zl", "Zp"} or char in BIDI


HOSTILE = [
    "\x1b]0;pwned\x07",  # OSC: retitle the terminal
    "\x1b]52;c;cm0gLXJmIH4=\x07",  # OSC 52: write the clipboard
    "\x1b[2J\x1b[H",  # CSI: clear the screen
    "\x9b31m",  # C1 CSI
    "safe\u202egnp.exe",  # right-to-left override
    "\u2066isolated\u2069\u200f",
    "line\u2028break\x85next",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_known_terminal_sequences_are_shown_escaped(hostile: str) -> None:
    lines = [
        format_result(_result(text=hostile, id=hostile, label=hostile, meta={"expected": hostile})),
        format_result(
            hostile.encode(),
            [("dlq.error.class", hostile.encode()), ("dlq.error.message", hostile.encode())],
        ),
        format_result(hostile.encode()),  # not a result: shown raw, but escaped
    ]
    for line in lines:
        assert not any(drives_a_terminal(c) for c in line), repr(line)


def test_escapes_are_visible_and_ordinary_text_is_left_alone() -> None:
    assert format_result(_result(text="\x1b]0;pwned\x07")).endswith("\\x1b]0;pwned\\x07")
    assert format_result(_result(text="a\u202eb")).endswith("a\\u202eb")
    # Emoji (with their zero-width joiners), accents and CJK are text, not controls.
    family = "naïve café 👨\u200d👩\u200d👧 日本"
    assert format_result(_result(text=family)).endswith(family)


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(),
    tweet_id=st.text(max_size=20),
    label=st.text(max_size=12),
    error_class=st.binary(max_size=40) | st.text(max_size=40).map(str.encode),
    error_message=st.binary(max_size=80) | st.text(max_size=80).map(str.encode),
)
def test_no_control_or_bidi_character_survives_in_readable_output(
    text: str, tweet_id: str, label: str, error_class: bytes, error_message: bytes
) -> None:
    result = _result(text=text, id=tweet_id, label=label, meta={"expected": text})
    dead_letter = [("dlq.error.class", error_class), ("dlq.error.message", error_message)]
    for line in (
        render_record(result),
        render_record(text.encode(), dead_letter),
        render_record(text.encode()),
    ):
        assert not any(drives_a_terminal(c) for c in line), repr(line)


@settings(max_examples=300, deadline=None)
@given(text=st.text(), meta=st.dictionaries(st.text(max_size=5), st.text(max_size=20)))
def test_json_output_stays_exact(text: str, meta: dict[str, str]) -> None:
    result = {"id": text[:5], "text": text, "label": "joy", "score": 0.5, "meta": meta}
    for value in (json.dumps(result).encode(), json.dumps(result, ensure_ascii=False).encode()):
        line = render_record(value, [("dlq.error.class", b"\x1b")], as_json=True)
        assert line.encode() == value
        assert json.loads(line) == result
