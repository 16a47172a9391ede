"""The built-in tweets: enough, distinct, the same everywhere, and tweet-like."""

from __future__ import annotations

import re

from exporter.builtin_tweets import BUILT_IN_TWEET_COUNT, built_in_tweets
from exporter.pipeline import DEFAULT_PARITY_SAMPLE
from exporter.texts import BUILT_IN_TEXTS


def test_enough_distinct_texts_for_the_default_sample() -> None:
    assert len(BUILT_IN_TEXTS) == BUILT_IN_TWEET_COUNT >= DEFAULT_PARITY_SAMPLE
    assert len(set(BUILT_IN_TEXTS)) == len(BUILT_IN_TEXTS)


def test_the_same_texts_on_every_run() -> None:
    assert built_in_tweets() == BUILT_IN_TEXTS
    assert built_in_tweets(10) == BUILT_IN_TEXTS[:10]


def test_they_look_like_tweets() -> None:
    texts = BUILT_IN_TEXTS
    share = len(texts) / 100  # texts per percent

    def count(pattern: str) -> int:
        return sum(1 for text in texts if re.search(pattern, text))

    assert count(r"@\w+") > 10 * share  # mentions
    assert count(r"#\w+") > 20 * share  # hashtags
    assert count(r"https?://") > 5 * share  # links
    assert count(r"[\U0001F300-\U0001FAFF❤]") > 20 * share  # emoji
    assert count(r"\b[A-Z]{3,}\b") > 5 * share  # shouting
    assert count(r"([aeiou])\1\1") > 5 * share  # stretched words
    lengths = sorted(len(text.split()) for text in texts)
    assert lengths[0] >= 3 and lengths[-1] <= 40  # short, like tweets
    assert len({" ".join(text.split()[:3]) for text in texts}) > 100  # varied openings
