"""Fidelity of the worker's padding: FP32 labels with bucketed, multiple-of-8 requests
equal those with every row padded to 128 (the benchmark measures the real-sized model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import fidelity
from emotion_stream.layout import ModelLayout
from tests.support.tiny_model import sample_sentences
from worker.tokenizing import TweetTokenizer


@pytest.fixture(scope="module")
def tiny_fp32(tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's fused FP32 graph, exported once by the exporter's stages."""
    return fidelity.ensure_fp32(tiny_hf_model, tmp_path_factory.mktemp("fp32"), log=lambda _: None)


def texts() -> list[str]:
    """Short and long texts mixed, so requests differ in width and batch-mates."""
    short = sample_sentences(300)
    long = [" ".join(short[i : i + 6]) for i in range(0, 60, 6)]
    mixed = short + long * 2
    return [mixed[(i * 37) % len(mixed)] for i in range(len(mixed))]


def test_fp32_labels_with_worker_padding_equal_fixed_128(
    tiny_fp32: Path, tiny_model_repository: Path
) -> None:
    corpus = texts()
    tokenizer_dir = ModelLayout(tiny_model_repository).tokenizer_dir
    model = fidelity.session(tiny_fp32, threads=1)
    bucketed = TweetTokenizer.from_directory(tokenizer_dir, 128, "bucketed")
    fixed = TweetTokenizer.from_directory(tokenizer_dir, 128, "fixed")
    planned, padded_tokens = fidelity.worker_logits(model, bucketed, corpus, window=64)
    reference = fidelity.fixed_logits(model, fixed, corpus)
    assert padded_tokens < len(corpus) * 128 / 2  # the worker's inputs really are shorter

    result = fidelity.compare("FP32", reference, planned)
    top2 = np.sort(reference, axis=1)[:, -2:]
    closest = float((top2[:, 1] - top2[:, 0]).min())
    print(
        f"tiny FP32: {result.agreeing}/{result.tweets} labels agree, max |logit diff| "
        f"{result.max_abs_logit_diff:.2e}, closest top-2 margin {closest:.2e}"
    )
    assert result.tweets == len(corpus)
    assert result.agreement == 1.0
    # Padding changes FP32 logits only by rounding: far below the closest decision.
    assert result.max_abs_logit_diff < 1e-4
    assert len({int(i) for i in reference.argmax(axis=1)}) > 1  # labels vary: not vacuous
