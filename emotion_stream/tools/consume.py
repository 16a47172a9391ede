"""``emotion-stream consume``: print the worker's results as they arrive.

One readable line per tweet (:mod:`emotion_stream.tools.formatting`) or the raw JSON, from
the output topic or any other (``--topic tweets.dlq`` shows dead letters and why). It
reads like any Kafka client with ``isolation_level=read_committed``; kcat does as well.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from kafka import KafkaConsumer
from kafka.errors import KafkaError

from emotion_stream.tools.command import (
    EXIT_FAILED,
    EXIT_OK,
    add_connection_options,
    positive_float,
    positive_int,
    run_tool,
    unreachable,
)
from emotion_stream.tools.formatting import render_record
from emotion_stream.topics import EMOTIONS_TOPIC
from worker.security import KafkaSecurity

POLL_TIMEOUT_MS = 500


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
        raise unreachable(args.bootstrap_servers, args.connect_timeout, security) from None


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
        return EXIT_OK
    except BrokenPipeError:
        return EXIT_OK  # `consume | head` is a normal way to stop
    finally:
        consumer.close()
    if args.max_messages is not None and shown < args.max_messages:
        print(f"{shown} of {args.max_messages} messages within the timeout", file=err)
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``emotion-stream consume`` (defaults read from the environment)."""
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
        "--max-messages", type=positive_int, metavar="N", help="stop after N messages"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help="stop after S seconds without a message",
    )
    parser.add_argument(
        "--group",
        help="consumer group: commits what was shown, so the next run resumes after it "
        "(default: none, nothing committed)",
    )
    add_connection_options(parser, "output_topic", EMOTIONS_TOPIC)
    return parser


def main(argv: Sequence[str]) -> int:
    """``emotion-stream consume [options]``."""

    def run(args: argparse.Namespace, security: KafkaSecurity) -> int:
        return consume(args, sys.stdout, sys.stderr, security=security)

    return run_tool("consume", argv, build_parser(), run)
