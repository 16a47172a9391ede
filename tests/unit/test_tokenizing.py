"""TweetTokenizer: truncation, dynamic vs fixed padding, with a small real fast tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tests.support.tiny_model import train_tiny_tokenizer
from worker.tokenizing import CUT_FIRST_PREFIX_CHARS, Padding, TweetTokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(path)
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


# --- long texts are cut before tokenizing, the tokens unchanged ----------------------

_PIECES = [
    "a",
    "word",
    " ",
    "   ",
    "\n\t ",
    "\u00a0",
    "😂",
    "👩\u200d👩\u200d👧",  # a ZWJ family
    "e\u0301",  # combining acute
    "\u0301\u0302\u0303",  # marks with no base
    "https://example.com/a/b?c=d&e=f#g",
    "#blessed",
    "@friend",
    "'s",
    "'ll",
    "<mask>",
    "<s>",
    "\u202e",  # bidi override
    "\u200b",  # zero-width space
    "ไทย",
    "مرحبا",
    "1234567890",
    "!!!",
]


def _adversarial(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["pieces", "one-word", "emoji", "spaces", "any"]))
    length = draw(st.integers(min_value=0, max_value=20_000))
    if kind == "one-word":  # no space anywhere: one pre-tokenizer word
        return draw(st.sampled_from(["x", "ab", "é", "1"])) * length
    if kind == "emoji":
        return "😂" * (length // 2) + draw(st.sampled_from(["", " ", "e\u0301", "x"]))
    if kind == "spaces":
        return draw(st.sampled_from(["hi", ""])) + " " * length + draw(st.sampled_from(["x", ""]))
    if kind == "any":
        return draw(st.text(min_size=0, max_size=3000))
    pieces = draw(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=400))
    return "".join(pieces) * draw(st.integers(min_value=1, max_value=20))


adversarial_texts = st.composite(_adversarial)


@given(
    st.lists(adversarial_texts(), min_size=1, max_size=4),
    st.sampled_from([16, 128]),
    st.sampled_from([1, 7, 64, 300, CUT_FIRST_PREFIX_CHARS]),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_cut_text_tokenizes_exactly_as_the_whole_text(
    tokenizer_dir: Path, reference: Any, texts: list[str], max_length: int, first_prefix: int
) -> None:
    """Whatever the text, the worker's ids (cut first) are those of transformers' fast
    tokenizer on the whole text, truncated. Short first prefixes put the cut next to the
    last kept token, where a wrong cut would show."""
    loaded = TweetTokenizer.from_directory(tokenizer_dir, max_length=max_length)
    tokenizer = TweetTokenizer(
        loaded._measure, loaded._pad_id, max_length, first_prefix_chars=first_prefix
    )
    whole = reference(texts, truncation=True, max_length=max_length)["input_ids"]
    assert tokenizer.token_ids(texts) == [list(ids) for ids in whole]


def test_a_long_text_is_cut_and_a_short_one_kept(tokenizer_dir: Path) -> None:
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, max_length=128)
    long_text = "the team laughed at that ending " * 3000  # ~96 kB
    one_word = "x" * 5000  # no cut can be proved inside one word
    cut = tokenizer.cut(["short", long_text, one_word])
    assert cut[0] == "short"
    assert long_text.startswith(cut[1]) and len(cut[1]) <= 4 * CUT_FIRST_PREFIX_CHARS
    assert cut[2] == one_word


@pytest.fixture(scope="module")
def reference(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer  # noqa: PLC0415 — the reference, test-side only

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)


def test_building_the_tokenizer_never_imports_torch(tokenizer_dir: Path) -> None:
    """In the development install torch is present and transformers would import it
    (~590 MiB); the worker's tokenizer module and the whole worker loop must not."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import emotion_stream.cli\n"
        "import worker.app\n"
        "from worker.tokenizing import TweetTokenizer\n"
        f"t = TweetTokenizer.from_directory(Path({str(tokenizer_dir)!r}), 128)\n"
        "assert t.token_ids(['hello there'])[0], 'no tokens'\n"
        "print(sorted(m for m in ('torch', 'transformers', 'tensorflow', 'jax') "
        "if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("USE_TORCH", "USE_TF")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
