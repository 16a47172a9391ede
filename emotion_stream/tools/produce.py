"""``emotion-stream produce``: send tweets to the input topic.

Each line becomes one record: a JSON object with ``text`` and an optional ``id`` (the
Kafka key; other fields pass through to the result's ``meta``) is sent as written, any
other line as ``{"text": line}``; from a file, stdin or the sample set
(:mod:`emotion_stream.tools.samples`). It speaks the same wire format as
``kafka-console-producer`` or kcat, so nothing here is needed to use the worker.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from kafka import KafkaProducer
from kafka.errors import KafkaError

from emotion_stream.tools.command import (
    EXIT_FAILED,
    EXIT_OK,
    ToolError,
    ToolSettingsError,
    add_connection_options,
    positive_float,
    positive_int,
    run_tool,
    unreachable,
)
from emotion_stream.tools.samples import load_sample_tweets
from emotion_stream.topics import TWEETS_TOPIC
from worker.security import KafkaSecurity

# How long produce waits at the end for the broker to acknowledge what was sent.
FLUSH_TIMEOUT_S = 60.0


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


# --------------------------------------------------------------------------- sending


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
        raise unreachable(servers, timeout_s, security) from None


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
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``emotion-stream produce`` (defaults read from the environment)."""
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
    parser.add_argument("--rate", type=positive_float, metavar="N", help="at most N msgs/s")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="send at most N")
    parser.add_argument(
        "--verbatim",
        action="store_true",
        help="send every line's bytes unchecked and unkeyed (to try the dead-letter topic)",
    )
    add_connection_options(parser, "input_topic", TWEETS_TOPIC)
    return parser


def main(argv: Sequence[str]) -> int:
    """``emotion-stream produce [options] [FILE]``."""

    def run(args: argparse.Namespace, security: KafkaSecurity) -> int:
        if args.sample and args.file != "-":
            raise ToolSettingsError("give a FILE or --sample, not both")
        return produce(args, sys.stdout, sys.stderr, sys.stdin.buffer, security=security)

    return run_tool("produce", argv, build_parser(), run)
