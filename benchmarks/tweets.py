"""The tweets every variant classifies: TweetEval's test split, or look-alike text.

The research data lives outside the repository (``../shared/data/``) and must never be
copied into it; users without it get generated text with about the same length
distribution (mean 27 tokens, p95 42 with RoBERTa's BPE, counting ``<s>`` and ``</s>``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from emotion_stream.layout import project_root

TWEETEVAL_FILE = project_root().parent / "shared" / "data" / "tweeteval-emotion-test.jsonl"
TWEETEVAL_COUNT = 1421  # the test split's size, also the generated corpus's size
GENERATED_SEED = 6
# Words per generated tweet: ~0.75 BPE tokens per word plus 2 special tokens gives a mean
# near 27 tokens and a p95 near 42 (data/README.md).
WORDS_MEAN = 19.0
WORDS_SD = 7.5
WORDS_MIN, WORDS_MAX = 2, 110
_VOCABULARY = [
    "i",
    "we",
    "you",
    "they",
    "love",
    "hate",
    "miss",
    "fear",
    "today",
    "tonight",
    "mondays",
    "rain",
    "game",
    "album",
    "traffic",
    "exams",
    "weekend",
    "ending",
    "referee",
    "morning",
    "so",
    "much",
    "again",
    "lol",
    "omg",
    "really",
    "never",
    "always",
    "happy",
    "sad",
    "angry",
    "hope",
    "can't",
    "stand",
    "this",
    "that",
    "the",
    "a",
    "to",
    "of",
    "and",
    "but",
    "why",
    "what",
    "when",
    "#blessed",
    "#fail",
    "@user",
    "😂",
    "😡",
    "!",
]


@dataclass(frozen=True)
class Corpus:
    texts: list[str]
    source: str  # where the texts came from, for the report


def load_corpus(path: Path = TWEETEVAL_FILE, count: int | None = None) -> Corpus:
    """The tweets of ``path`` (``count`` first ones), else generated text."""
    if path.is_file():
        with path.open(encoding="utf-8") as lines:
            texts = [str(json.loads(line)["text"]) for line in lines if line.strip()]
        source = f"{path.name} ({len(texts)} tweets)"
    else:
        texts = generated_texts(TWEETEVAL_COUNT)
        source = f"generated text ({len(texts)}; {path} absent)"
    return Corpus(texts[:count] if count else texts, source)


def generated_texts(count: int, seed: int = GENERATED_SEED) -> list[str]:
    """Deterministic tweet-like texts with a tweet-like length distribution."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        words = round(rng.gauss(WORDS_MEAN, WORDS_SD))
        words = min(WORDS_MAX, max(WORDS_MIN, words))
        texts.append(" ".join(rng.choice(_VOCABULARY) for _ in range(words)))
    return texts
