"""``emotion-stream produce`` and ``emotion-stream consume``: the user's tools for trying it.

``produce`` sends tweets to the input topic: JSON lines (an object with ``text`` and an
optional ``id``, which becomes the Kafka key; other fields pass through to the result's
``meta``) or plain text lines, from a file, stdin or the sample set. ``consume`` prints
the worker's results from the output topic as they arrive, one readable line per tweet
or the raw JSON.

Both are thin: they speak the same wire format as ``kafka-console-producer`` or kcat,
so nothing here is needed to use the worker. They take the worker's Kafka security
settings (the same ``EMOTION_STREAM_*`` variables, or options), checked by the same
rules (:mod:`worker.security`); the password only from the environment or a file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from pydantic import SecretStr

from worker.messages import DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE
from worker.sample_tweets import load_sample_tweets
from worker.security import (
    KafkaSecurity,
    SecretOnCommandLineError,
    option,
    refuse_secret_options,
    secret_from,
)
from worker.settings import SECRET_FIELDS, env_name

BOOTSTRAP_ENV = "EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS"
INPUT_TOPIC_ENV = "EMOTION_STREAM_INPUT_TOPIC"
OUTPUT_TOPIC_ENV = "EMOTION_STREAM_OUTPUT_TOPIC"
DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
DEFAULT_INPUT_TOPIC = "tweets"
DEFAULT_OUTPUT_TOPIC = "emotions"
# How long to wait for the broker before saying it is unreachable: long enough for a
# broker that is still starting, short enough that a typo in the address shows quickly.
DEFAULT_CONNECT_TIMEOUT_S = 15.0
# How long produce waits at the end for the broker to acknowledge what was sent.
FLUSH_TIMEOUT_S = 60.0
# Readable output: the tweet text is cut to keep one result on one terminal line.
TEXT_WIDTH = 72
POLL_TIMEOUT_MS = 500


class ToolError(Exception):
    """A failure the user can act on; printed as one line, exit status 1."""


class ToolSettingsError(Exception):
    """Options or variables that cannot work together; printed as given, exit status 2."""


class LineError(ValueError):
    """An input line that cannot be sent as a tweet (its reason is the message)."""


@dataclass(frozen=True)
class OutgoingTweet:
    """One Kafka record for the input topic: the key (the tweet's id) and the value."""

    key: bytes | None
    value: bytes


# --------------------------------------------------------------------------- parsing


def _strip_line_end(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


def _key_for(tweet_id: object) -> bytes | None:
    if tweet_id is None:
        return None
    # The worker accepts what JSON gives for a string or a whole number, nothing else.
    if isinstance(tweet_id, bool) or not isinstance(tweet_id, str | int):
        raise LineError(f'"id" must be a string or an integer, not {type(tweet_id).__name__}')
    return str(tweet_id).encode("utf-8")


def parse_line(raw: bytes, *, verbatim: bool = False) -> OutgoingTweet | None:
    """Turn one input line into a record for the input topic.

    Parameters
    ----------
    raw:
        The line as read, with or without its line ending.
    verbatim:
        Send the line's bytes as they are, without a key and without checks (how to
        feed the worker poison messages on purpose).

    Returns
    -------
    OutgoingTweet or None
        ``None`` for a blank line, which is skipped. A JSON object is sent as written,
        keyed by its ``id`` when it has one; any other line is the tweet's text and is
        sent as ``{"text": line}`` so that a tweet such as ``42`` or ``null`` stays text.

    Raises
    ------
    LineError
        The line is not UTF-8, or is a JSON object without a non-empty ``text`` string
        or with an ``id`` that is not a string or number.
    """
    line = _strip_line_end(raw)
    if verbatim:
        return OutgoingTweet(key=None, value=line)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LineError(f"not valid UTF-8 ({error.reason}); --verbatim sends it anyway") from None
    if not text.strip():
        return None
    if text.lstrip().startswith("{"):
        try:
            obj: object = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # a tweet that merely starts with "{" is text
        if isinstance(obj, dict):
            tweet_text = obj.get("text")
            if not isinstance(tweet_text, str) or not tweet_text.strip():
                raise LineError('JSON object without a non-empty "text" string')
            return OutgoingTweet(key=_key_for(obj.get("id")), value=text.strip().encode("utf-8"))
    return OutgoingTweet(key=None, value=json.dumps({"text": text}, ensure_ascii=False).encode())


def sample_records(expected_field: str = "expected") -> Iterator[OutgoingTweet]:
    """The sample tweets as records; the human label rides along under ``expected``."""
    for tweet in load_sample_tweets():
        value = {"id": tweet.id, "text": tweet.text, expected_field: tweet.label}
        yield OutgoingTweet(
            key=tweet.id.encode("utf-8"), value=json.dumps(value, ensure_ascii=False).encode()
        )


# Characters that drive a terminal rather than show: C0 and C1 controls (ESC starts the
# sequences that retitle a terminal or write its clipboard), the bidi controls that
# reorder what is shown (Trojan Source, CVE-2021-42574) and the line/paragraph separators.
_BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_TERMINAL_CONTROLS = (*range(0x20), *range(0x7F, 0xA0), *_BIDI_CONTROLS, 0x2028, 0x2029)
_ESCAPES = {
    code: (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}") for code in _TERMINAL_CONTROLS
}


def escape_controls(text: str) -> str:
    """``text`` with every terminal-driving character written as a visible escape
    (``\\x1b``, ``\\u202e``): tweets and dead-letter headers are untrusted — anyone who can
    write to the topics chooses them — and must never reach an operator's terminal raw."""
    return text.translate(_ESCAPES)


def render_record(
    value: bytes, headers: Sequence[tuple[str, bytes]] = (), *, as_json: bool = False
) -> str:
    """What ``consume`` prints for one record: the readable line (escaped), or with
    ``as_json`` the value exactly as sent (invalid UTF-8 replaced), for programs to read."""
    if as_json:
        return value.decode("utf-8", errors="replace")
    return format_result(value, headers)


def format_result(
    value: bytes, headers: Sequence[tuple[str, bytes]] = (), width: int = TEXT_WIDTH
) -> str:
    """One readable line for one output record: label, score, id and the text, cut short.

    A dead letter (read with ``--topic tweets.dlq``) shows its error class and message
    from the worker's ``dlq.*`` headers; anything else that is not a result is shown as
    its raw value rather than dropped. Control characters are escapes
    (:func:`escape_controls`).
    """
    return escape_controls(_readable(value, headers, width))


def _readable(value: bytes, headers: Sequence[tuple[str, bytes]], width: int) -> str:
    context = {name: raw.decode("utf-8", errors="replace") for name, raw in headers}
    if DLQ_ERROR_CLASS in context:
        raw_value = value.decode("utf-8", errors="replace")
        return (
            f"DEAD-LETTER {context[DLQ_ERROR_CLASS]}: {context.get(DLQ_ERROR_MESSAGE, '')}"
            f"  <- {raw_value[:width]!r}"
        )
    try:
        result: object = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        result = None
    if not isinstance(result, dict) or "label" not in result:
        return f"(not a result) {value.decode('utf-8', errors='replace')}"
    text = " ".join(str(result.get("text", "")).split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    score = result.get("score")
    score_text = f"{score:.2f}" if isinstance(score, int | float) else "  ? "
    line = f"{result['label']!s:<9} {score_text}  {result.get('id', '')!s:<12} {text}"
    meta = result.get("meta")
    if isinstance(meta, dict) and "expected" in meta:
        line += f"  (expected {meta['expected']})"
    return line


# --------------------------------------------------------------------------- Kafka


def _unreachable(servers: str, timeout_s: float, security: KafkaSecurity) -> ToolError:
    refused = ""
    if security.security_protocol != "PLAINTEXT":
        refused = (
            f", or it refused the {security.security_protocol} connection: check the CA file, "
            "user name and password"
        )
    return ToolError(
        f"cannot reach Kafka at {servers} within {timeout_s:g} s "
        f"(is a broker running? 'emotion-stream local up' starts one; "
        f"--bootstrap-servers or ${BOOTSTRAP_ENV} picks another{refused})"
    )


def _make_producer(servers: str, timeout_s: float, security: KafkaSecurity) -> Any:
    try:
        return KafkaProducer(
            **security.client_options(),
            bootstrap_servers=servers,
            client_id="emotion-stream-produce",
            acks="all",
            linger_ms=5,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            # send() blocks on metadata: a missing topic on a broker that does not
            # create topics must fail in bounded time too.
            max_block_ms=int(timeout_s * 1000),
        )
    except KafkaError:
        raise _unreachable(servers, timeout_s, security) from None


def _make_consumer(args: argparse.Namespace, security: KafkaSecurity) -> Any:
    try:
        return KafkaConsumer(
            args.topic,
            **security.client_options(),
            bootstrap_servers=args.bootstrap_servers,
            client_id="emotion-stream-consume",
            group_id=args.group,
            auto_offset_reset="earliest" if args.from_beginning else "latest",
            enable_auto_commit=args.group is not None,
            # Results written inside a transaction that is later aborted must never be
            # shown: the worker's exactly-once mode relies on readers doing this.
            isolation_level="read_committed",
            bootstrap_timeout_ms=int(args.connect_timeout * 1000),
        )
    except KafkaError:
        raise _unreachable(args.bootstrap_servers, args.connect_timeout, security) from None


@dataclass
class ProduceReport:
    """What happened to the records handed to the producer."""

    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    skipped: int = 0
    first_failure: str | None = None

    def on_ack(self, _metadata: object) -> None:
        self.acknowledged += 1

    def on_failure(self, error: BaseException) -> None:
        self.failed += 1
        self.first_failure = self.first_failure or f"{type(error).__name__}: {error}"


def _open_input(source: str, stdin: BinaryIO, stack: ExitStack) -> BinaryIO:
    """The lines to send; opened before connecting so a wrong path fails fast."""
    if source == "-":
        return stdin
    try:
        return stack.enter_context(Path(source).open("rb"))
    except OSError as error:
        raise ToolError(f"cannot read {source}: {error.strerror}") from None


def _parsed(
    lines: Iterable[bytes], *, verbatim: bool, report: ProduceReport, err: TextIO
) -> Iterator[OutgoingTweet]:
    for number, raw in enumerate(lines, start=1):
        try:
            record = parse_line(raw, verbatim=verbatim)
        except LineError as error:
            report.skipped += 1
            print(f"line {number} skipped: {error}", file=err)
            continue
        if record is not None:
            yield record


def produce(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stdin: BinaryIO,
    *,
    security: KafkaSecurity | None = None,
) -> int:
    """Send records to the input topic; print how many were sent and acknowledged."""
    with ExitStack() as stack:
        return _produce(args, out, err, stdin, stack, security=security or KafkaSecurity())


def _produce(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    stdin: BinaryIO,
    stack: ExitStack,
    *,
    security: KafkaSecurity,
) -> int:
    report = ProduceReport()
    if args.sample:
        records: Iterable[OutgoingTweet] = sample_records()
    else:
        lines = _open_input(args.file, stdin, stack)
        if lines.isatty():
            print("type tweets, one per line (plain text or JSON); Ctrl-D sends", file=err)
        records = _parsed(lines, verbatim=args.verbatim, report=report, err=err)
    producer = _make_producer(args.bootstrap_servers, args.connect_timeout, security)
    started = time.monotonic()
    interrupted = False
    try:
        for record in records:
            if args.limit is not None and report.sent >= args.limit:
                break
            if args.rate:
                # Pace against the start time, not the previous send, so drift never adds up.
                delay = started + report.sent / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                future = producer.send(args.topic, key=record.key, value=record.value)
            except KafkaError as error:
                raise ToolError(
                    f"cannot send to topic {args.topic!r} at {args.bootstrap_servers}: "
                    f"{type(error).__name__}: {error}"
                ) from None
            report.sent += 1
            future.add_callback(report.on_ack)
            future.add_errback(report.on_failure)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            producer.flush(timeout=FLUSH_TIMEOUT_S)
        except KafkaError as error:
            report.first_failure = report.first_failure or f"flush: {error}"
        producer.close(timeout=5)
    unacknowledged = report.sent - report.acknowledged
    summary = f"{report.sent} sent, {report.acknowledged} acknowledged → {args.topic}"
    if report.skipped:
        summary += f", {report.skipped} lines skipped"
    if interrupted:
        summary += " (interrupted)"
    print(summary, file=out, flush=True)
    if unacknowledged:
        reason = report.first_failure or "no answer from the broker"
        print(f"{unacknowledged} not acknowledged: {reason}", file=err)
        return 1
    return 0


def consume(
    args: argparse.Namespace, out: TextIO, err: TextIO, *, security: KafkaSecurity | None = None
) -> int:
    """Print records from the output topic until told to stop."""
    consumer = _make_consumer(args, security or KafkaSecurity())
    shown = 0
    idle_since = time.monotonic()
    try:
        while args.max_messages is None or shown < args.max_messages:
            batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
            records = [record for batch in batches.values() for record in batch]
            if not records:
                if args.timeout is not None and time.monotonic() - idle_since >= args.timeout:
                    break
                continue
            idle_since = time.monotonic()
            for record in records:
                if args.max_messages is not None and shown >= args.max_messages:
                    break
                value: bytes = record.value or b""
                line = render_record(value, list(record.headers or ()), as_json=args.json)
                print(line, file=out, flush=True)
                shown += 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0  # `consume | head` is a normal way to stop
    finally:
        consumer.close()
    if args.max_messages is not None and shown < args.max_messages:
        print(f"{shown} of {args.max_messages} messages within the timeout", file=err)
        return 1
    return 0


# --------------------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value:g}")
    return value


def _common_options(parser: argparse.ArgumentParser, topic_env: str, topic: str) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(BOOTSTRAP_ENV, DEFAULT_BOOTSTRAP_SERVERS),
        help=f"Kafka address (default: ${BOOTSTRAP_ENV} or {DEFAULT_BOOTSTRAP_SERVERS})",
    )
    parser.add_argument(
        "--topic",
        default=os.environ.get(topic_env, topic),
        help=f"topic (default: ${topic_env} or {topic})",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="give up when the broker does not answer within S seconds "
        f"(default {DEFAULT_CONNECT_TIMEOUT_S:g})",
    )


_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TRUE = frozenset({"1", "true", "yes", "on"})


def _security_options(parser: argparse.ArgumentParser) -> None:
    """The worker's Kafka security settings, each defaulting to the worker's variable."""
    group = parser.add_argument_group(
        "security",
        "as the worker's settings; each defaults to its EMOTION_STREAM_* variable. The "
        f"password has no option (a command line shows in ps): ${env_name('sasl_password')} "
        f"or a file holding it, --sasl-password-file / ${env_name('sasl_password_file')}",
    )

    def add(field: str, help_: str, **kwargs: Any) -> None:
        group.add_argument(
            option(field),
            dest=field,
            default=os.environ.get(env_name(field)) or None,
            help=f"{help_} [${env_name(field)}]",
            **kwargs,
        )

    add("security_protocol", "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL")
    add("sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", metavar="MECHANISM")
    add("sasl_username", "SASL user name", metavar="USER")
    add("sasl_password_file", "file holding the SASL password", metavar="FILE")
    add("ssl_cafile", "PEM file of the CA that signed the brokers' certificates", metavar="FILE")
    add("ssl_certfile", "PEM client certificate (mutual TLS)", metavar="FILE")
    add("ssl_keyfile", "PEM private key of --ssl-certfile", metavar="FILE")
    group.add_argument(
        option("allow_cleartext_password"),
        dest="allow_cleartext_password",
        action="store_true",
        default=os.environ.get(env_name("allow_cleartext_password"), "").lower() in _TRUE,
        help="accept SASL_PLAINTEXT with PLAIN, which sends the password in clear "
        f"[${env_name('allow_cleartext_password')}]",
    )


def _setting_name(field: str) -> str:
    """How the tools name a setting: its option (if any) and its variable."""
    if field in SECRET_FIELDS:
        return f"${env_name(field)}"
    return f"{option(field)} (${env_name(field)})"


def client_security(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> KafkaSecurity:
    """The Kafka security settings from the options and the environment, checked.

    Raises
    ------
    ToolSettingsError
        A value is not one of the choices, a setting lacks the one it needs, or the
        password file cannot give the password; one line each, naming them.
    """
    protocol = (args.security_protocol or "PLAINTEXT").upper()
    mechanism = args.sasl_mechanism.upper() if args.sasl_mechanism else None
    problems = []
    if protocol not in _PROTOCOLS:
        problems.append(f"{_setting_name('security_protocol')}: not one of {', '.join(_PROTOCOLS)}")
    if mechanism is not None and mechanism not in _MECHANISMS:
        problems.append(f"{_setting_name('sasl_mechanism')}: not one of {', '.join(_MECHANISMS)}")
    try:
        password = secret_from(
            environ.get(env_name("sasl_password")) or None,
            args.sasl_password_file,
            name=_setting_name,
            field="sasl_password",
        )
    except ValueError as error:
        problems.append(str(error))
        password = None
    if problems:
        raise ToolSettingsError("\n".join(problems))

    def path(value: str | None) -> Path | None:
        return Path(value) if value else None

    security = KafkaSecurity(
        security_protocol=protocol,
        sasl_mechanism=mechanism,
        sasl_username=args.sasl_username,
        sasl_password=SecretStr(password) if isinstance(password, str) else password,
        ssl_cafile=path(args.ssl_cafile),
        ssl_certfile=path(args.ssl_certfile),
        ssl_keyfile=path(args.ssl_keyfile),
        allow_cleartext_password=args.allow_cleartext_password,
    )
    problems = security.problems(_setting_name)
    if problems:
        raise ToolSettingsError("\n".join(problems))
    return security


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of ``emotion-stream produce`` or ``emotion-stream consume``."""
    if command == "produce":
        parser = argparse.ArgumentParser(
            prog="emotion-stream produce",
            allow_abbrev=False,  # --sasl-password must never pass for --sasl-password-file
            description="Send tweets to the input topic. Each line is a JSON object with "
            '"text" and an optional "id" (the Kafka key; other fields reach the result\'s '
            '"meta"), or plain text. Blank lines are skipped.',
        )
        parser.add_argument(
            "file", nargs="?", default="-", help="JSON lines or text lines; - for stdin (default)"
        )
        parser.add_argument(
            "--sample",
            action="store_true",
            help="send the sample tweets (the shared TweetEval file when present, else a "
            "built-in set) instead of reading lines",
        )
        parser.add_argument("--rate", type=_positive_float, metavar="N", help="at most N msgs/s")
        parser.add_argument("--limit", type=_positive_int, metavar="N", help="send at most N")
        parser.add_argument(
            "--verbatim",
            action="store_true",
            help="send every line's bytes unchecked and unkeyed (to try the dead-letter topic)",
        )
        _common_options(parser, INPUT_TOPIC_ENV, DEFAULT_INPUT_TOPIC)
        _security_options(parser)
        return parser
    parser = argparse.ArgumentParser(
        prog="emotion-stream consume",
        allow_abbrev=False,
        description="Print classified tweets from the output topic as they arrive: "
        "label, score, id and text, one line each (--json for the raw results). "
        "Ctrl-C stops.",
    )
    parser.add_argument("--json", action="store_true", help="print each result's raw JSON")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the earliest result (with --group: only when the group has no offset)",
    )
    parser.add_argument(
        "--max-messages", type=_positive_int, metavar="N", help="stop after N messages"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds without a message",
    )
    parser.add_argument(
        "--group",
        help="consumer group: commits what was shown, so the next run resumes after it "
        "(default: none, nothing committed)",
    )
    _common_options(parser, OUTPUT_TOPIC_ENV, DEFAULT_OUTPUT_TOPIC)
    _security_options(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point: ``main(["produce", *args])`` or ``main(["consume", *args])``."""
    if not argv or argv[0] not in {"produce", "consume"}:
        print("usage: emotion-stream produce|consume [options]", file=sys.stderr)
        return 2
    command, rest = argv[0], list(argv[1:])
    prog = f"emotion-stream {command}"
    try:
        refuse_secret_options(rest, SECRET_FIELDS, env_name)
        args = build_parser(command).parse_args(rest)
        security = client_security(args)
    except (SecretOnCommandLineError, ToolSettingsError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    if security.password_in_clear:
        print(f"{prog}: warning: the SASL password crosses the network in clear", file=sys.stderr)
    try:
        if command == "produce":
            if args.sample and args.file != "-":
                print(f"{prog}: give a FILE or --sample, not both", file=sys.stderr)
                return 2
            return produce(args, sys.stdout, sys.stderr, sys.stdin.buffer, security=security)
        return consume(args, sys.stdout, sys.stderr, security=security)
    except ToolError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
