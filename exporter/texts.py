"""Texts the parity check and the speed measurement run on.

The labelled TweetEval emotion test split lives outside the repository (it is research
data, see ``../shared/data/README.md``); it is used when present, and 640 built-in
tweet-like texts otherwise, so a user without that folder gets a parity verdict on as
many texts as the default sample (512).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exporter.builtin_tweets import built_in_tweets
from exporter.errors import ExportError

# ``<checkout>/../shared/data/``: where the project's shared research data sits.
SHARED_TWEETS = (
    Path(__file__).resolve().parent.parent.parent
    / "shared"
    / "data"
    / "tweeteval-emotion-test.jsonl"
)

# Tweet-like texts of the project's own making (exporter/builtin_tweets.py): enough for
# the parity gate's default sample of 512.
BUILT_IN_TEXTS: tuple[str, ...] = built_in_tweets()


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
    return texts, f"built-in tweets ({len(texts)})"
