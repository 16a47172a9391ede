"""TweetTokenizer: truncation, dynamic vs fixed padding, with a small real fast tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.model_fixtures import _train_tokenizer
from worker.tokenizing import Padding, TweetTokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    _train_tokenizer(path)
    return path


def test_dynamic_padding_pads_to_the_longest_rounded_up_to_8(tokenizer_dir: Path) -> None:
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, max_length=128)
    batch = tokenizer.encode(["I love mondays!", "we hate traffic so much again..."])
    assert batch.input_ids.shape == batch.attention_mask.shape
    longest = int(batch.attention_mask.sum(axis=1).max())
    assert int(batch.attention_mask[1].sum()) == longest  # the second text is the longest
    assert batch.tokens % 8 == 0 and 0 <= batch.tokens - longest < 8
    assert not batch.attention_mask[0].all()


TEXTS = [
    "ok",
    "I love mondays " * 6,
    "no",
    "we hate traffic so much again, every single day of the week...",
    "yes!",
    "the team laughed at that ending " * 3,
    "hm",
    "she cried over my exams and the rain",
    "lol",
    "fine",
]


@pytest.mark.parametrize("padding", ["bucketed", "dynamic", "fixed"])
def test_a_plan_carries_every_text_once_with_its_own_tokens(
    tokenizer_dir: Path, padding: Padding
) -> None:
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, max_length=128, padding=padding)
    expected = tokenizer.token_ids(TEXTS)
    planned = tokenizer.plan(TEXTS, 4)
    assert planned.size == len(TEXTS)
    assert sorted(i for indices, _ in planned.requests for i in indices) == list(range(10))
    for indices, encoded in planned.requests:
        assert 1 <= len(encoded) <= 4 and len(encoded) == len(indices)
        assert encoded.tokens == 128 if padding == "fixed" else encoded.tokens % 8 == 0
        for row, index in enumerate(indices):
            length = int(encoded.attention_mask[row].sum())
            assert encoded.input_ids[row, :length].tolist() == expected[index]
            assert encoded.attention_mask[row, :length].all()


def test_bucketed_plans_pad_less_than_arrival_order(tokenizer_dir: Path) -> None:
    bucketed = TweetTokenizer.from_directory(tokenizer_dir, max_length=128).plan(TEXTS, 4)
    dynamic = TweetTokenizer.from_directory(tokenizer_dir, max_length=128, padding="dynamic")
    in_order = dynamic.plan(TEXTS, 4)
    assert [indices for indices, _ in in_order.requests] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert bucketed.padded_tokens < in_order.padded_tokens


def test_fixed_padding_is_always_max_length(tokenizer_dir: Path) -> None:
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, max_length=128, padding="fixed")
    assert tokenizer.encode(["hi"]).tokens == 128


def test_truncates_at_max_length(tokenizer_dir: Path) -> None:
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, max_length=16)
    batch = tokenizer.encode(["I love mondays " * 200, "😂" * 10_000])
    assert batch.tokens == 16
    assert batch.attention_mask.all()


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TweetTokenizer.from_directory(tmp_path / "nope", max_length=128)
