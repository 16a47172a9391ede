"""Texts the parity check and the speed measurement run on.

The labelled TweetEval emotion test split lives outside the repository (it is research
data, see ``../shared/data/README.md``); it is used when present, and a small built-in
set of tweet-like sentences otherwise, so a user without that folder can still export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ExportError

# ``<checkout>/../shared/data/``: where the project's shared research data sits.
SHARED_TWEETS = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "tweeteval-emotion-test.jsonl"
)

BUILT_IN_TEXTS: tuple[str, ...] = (
    "I can't believe they cancelled the show again, absolutely furious",
    "Best day ever! Got the job!!! 🎉",
    "Tomorrow will be better, keep your head up",
    "Missing my grandma so much today 💔",
    "Why does the bus always come late when it rains #annoyed",
    "Just finished my first marathon, so proud of myself",
    "Things are tough but we'll get through this together",
    "Nobody showed up to my birthday party...",
    "The referee ruined the whole match, disgraceful",
    "Laughing so hard at this video 😂😂",
    "New week, new chances. Let's go!",
    "I feel so alone lately",
    "Stop sending me spam emails, this is the fifth time today",
    "Sunshine, coffee and a good book. Perfect morning",
    "Every setback is a setup for a comeback",
    "Lost my keys, my wallet and my patience",
    "@friend you are the best, thank you for everything",
    "Can't sleep, too many thoughts",
    "Traffic jam for two hours, I want to scream",
    "Our team won the championship!!!",
    "Hoping the new year brings peace to everyone",
    "The ending of that movie broke my heart",
    "They raised the rent again. Unbelievable.",
    "Dancing in the kitchen like nobody's watching",
    "I know things will work out in the end",
    "Rainy days make me miss summer",
    "How is customer service this bad in 2024",
    "Got a puppy today, I'm in love",
    "Stay positive, good things take time",
    "Funeral today. Rest in peace, uncle.",
    "Who approved this terrible update?",
    "Weekend trip with my best friends, can't wait",
)


@dataclass(frozen=True)
class LabelledText:
    """One text and, when known, its gold label name."""

    text: str
    label: str | None = None


def read_jsonl(path: Path) -> list[LabelledText]:
    """Read JSON lines with ``text`` and optional ``label`` (a label name or an id).

    Raises
    ------
    ExportError
        The file cannot be read or a line is not an object with a ``text``.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ExportError(f"cannot read eval file {path}: {error.strerror or error}") from error
    rows: list[LabelledText] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ExportError(f"{path}:{number}: expected a JSON object with 'text'") from error
        label = record.get("label")
        rows.append(LabelledText(str(text), None if label is None else str(label)))
    if not rows:
        raise ExportError(f"{path} holds no texts")
    return rows


def sample_texts(limit: int) -> tuple[list[str], str]:
    """Up to ``limit`` texts and a note saying where they came from."""
    if SHARED_TWEETS.is_file():
        rows = read_jsonl(SHARED_TWEETS)
        return [row.text for row in rows[:limit]], f"{SHARED_TWEETS.name} ({min(limit, len(rows))})"
    texts = list(BUILT_IN_TEXTS[:limit])
    return texts, f"built-in samples ({len(texts)})"
