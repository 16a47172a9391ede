"""The Compose stage's end-to-end check: tweets in, one result per tweet id out.

Run from the repository root as ``python -m compose.ci.stream_check`` (it reads the
output topic with the tests' :class:`tests.support.topics.TopicReader`).

``tweets OUT COUNT PREFIX`` writes COUNT JSON lines with unique ids for
``emotion-stream produce``. ``await`` reads ``emotions`` from the beginning (read
committed, as ``emotion-stream consume`` does) until every id of the given tweet files
has a result or the deadline passes, and exits 1 naming what is missing. Duplicates
are allowed (the pipeline is at-least-once); a lost id is not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emotion_stream.topics import EMOTIONS_TOPIC
from tests.support.topics import TopicReader

# The texts rotate through a few shapes so batches mix lengths.
SAMPLE_TEXTS = (
    "I love mondays!",
    "this queue is taking forever and nobody tells us why",
    "so proud of the team today, what a finish",
    "rain again. staying in with tea and a book",
    "cannot believe they cancelled the show after one season",
)
POLL_TIMEOUT_MS = 1000


def write_tweets(path: Path, count: int, prefix: str) -> None:
    """COUNT tweets ``{"id": "<prefix>-<n>", "text": ...}``, one JSON object per line."""
    with path.open("w", encoding="utf-8") as out:
        for number in range(count):
            text = f"{SAMPLE_TEXTS[number % len(SAMPLE_TEXTS)]} #{number}"
            out.write(json.dumps({"id": f"{prefix}-{number}", "text": text}) + "\n")


def expected_ids(paths: list[Path]) -> set[str]:
    """Every id of the given tweet files."""
    ids: set[str] = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.add(str(json.loads(line)["id"]))
    return ids


def await_results(
    bootstrap_servers: str, topic: str, wanted: set[str], deadline_s: float
) -> tuple[set[str], int]:
    """Ids of ``wanted`` still without a result at the deadline, and results read."""
    missing = set(wanted)
    seen = 0
    end = time.monotonic() + deadline_s
    with TopicReader(bootstrap_servers, topic, keep=False) as results:
        while missing and time.monotonic() < end:
            for record in results.fetch(timeout_ms=POLL_TIMEOUT_MS):
                seen += 1
                missing.discard(str(json.loads(record.value)["id"]))
    return missing, seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tweets = commands.add_parser("tweets", help="write COUNT tweets with unique ids")
    tweets.add_argument("out", type=Path)
    tweets.add_argument("count", type=int)
    tweets.add_argument("prefix")
    wait = commands.add_parser("await", help="wait until every tweet id has a result")
    wait.add_argument("tweet_files", type=Path, nargs="+")
    wait.add_argument("--bootstrap-servers", required=True)
    wait.add_argument("--topic", default=EMOTIONS_TOPIC)
    wait.add_argument("--deadline", type=float, default=180.0, help="seconds")
    args = parser.parse_args(argv)
    if args.command == "tweets":
        write_tweets(args.out, args.count, args.prefix)
        return 0
    wanted = expected_ids(args.tweet_files)
    started = time.monotonic()
    missing, seen = await_results(args.bootstrap_servers, args.topic, wanted, args.deadline)
    took = time.monotonic() - started
    if missing:
        sample = ", ".join(sorted(missing)[:10])
        print(
            f"stream check FAILED: {len(missing)} of {len(wanted)} ids without a result "
            f"after {took:.0f} s ({seen} results read), e.g. {sample}",
            file=sys.stderr,
        )
        return 1
    print(
        f"stream check ok: all {len(wanted)} ids have a result ({seen} results read, "
        f"{seen - len(wanted)} duplicates or earlier results) in {took:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
