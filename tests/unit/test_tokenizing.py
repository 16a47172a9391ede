"""TweetTokenizer: truncation, dynamic vs fixed padding, with a small real fast tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.model_fixtures import _train_tokenizer
from worker.tokenizing import TweetTokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    _train_tokenizer(path)
    return path


def test_dynamic_padding_pads_to_the_longest(tokenizer_dir: Path) -> None:
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, max_length=128)
    batch = tokenizer.encode(["I love mondays!", "we hate traffic so much again..."])
    assert batch.input_ids.shape == batch.attention_mask.shape
    assert batch.tokens < 128
    assert batch.attention_mask[1].all()  # the longest text has no padding
    assert not batch.attention_mask[0].all()


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
