"""The parity gate's verdict: a confidence bound on label agreement and a bound on drift.

First the decision on figures; then on real ONNX sessions of the tiny model: a candidate
that differs from FP32 on one text only (an unlucky text) and the INT8 model with its
weight scales broken — through ``measure_parity`` and through ``run_export``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import numpy_helper

from emotion_stream.layout import ModelLayout
from exporter import pipeline
from exporter.errors import ParityGateError
from exporter.loading import LoadedModel, load_model, resolve_model
from exporter.onnx_export import export_fp32
from exporter.optimizing import fuse
from exporter.parity import (
    AGREEMENT_BOUND,
    DEFAULT_MAX_DRIFT,
    DEFAULT_MAX_F1_DROP,
    DEFAULT_MIN_AGREEMENT,
    ParityFigures,
    enforce_gate,
    measure_parity,
    wilson_upper_bound,
)
from exporter.quantizing import quantize
from exporter.runtime import Threads, open_session
from exporter.texts import BUILT_IN_TEXTS
from tests.support.tiny_model import TINY_PARITY_SAMPLE, tiny_export_options

# A faithful INT8 model moves probabilities by a few hundredths on average.
GOOD_DRIFT = 0.02
THREADS = Threads(intra_op=1, inter_op=1)
# The tiny model has random weights and near-uniform probabilities (mean top probability
# 0.37), so its faithful INT8 export flips many labels (74 % agreement on the built-in
# tweets); the broken one is judged at a threshold the faithful one passes.
TINY_MIN_AGREEMENT = 0.6
# "Quantized with a broken scale": every weight scale off by this factor.
BROKEN_SCALE_FACTOR = 2.0


def figures(*, texts: int, agreeing: int, drift: float = GOOD_DRIFT) -> ParityFigures:
    return ParityFigures(
        texts=texts,
        text_source="test",
        label_agreement=agreeing / texts,
        max_abs_prob_diff=0.2,
        mean_abs_prob_diff=drift / 2,
        mean_text_drift=drift,
        padding_texts=min(texts, 128),
        fixed_vs_dynamic_agreement=1.0,
        evaluation=None,
    )


def default_gate(parity: ParityFigures) -> dict[str, Any]:
    return enforce_gate(parity, DEFAULT_MIN_AGREEMENT, DEFAULT_MAX_F1_DROP, DEFAULT_MAX_DRIFT)


# ------------------------------------------------------------------ the decision


def test_wilson_upper_bound_at_the_edges() -> None:
    assert wilson_upper_bound(32, 32) == 1.0
    assert wilson_upper_bound(31, 32) == pytest.approx(0.993, abs=0.001)
    assert wilson_upper_bound(460, 512) == pytest.approx(0.918, abs=0.001)
    assert wilson_upper_bound(0, 0) == 1.0  # no texts: no evidence against the model


@given(st.integers(min_value=1, max_value=5000), st.data())
def test_wilson_upper_bound_lies_between_the_share_and_one_and_grows_with_it(
    trials: int, data: st.DataObject
) -> None:
    successes = data.draw(st.integers(min_value=0, max_value=trials))
    bound = wilson_upper_bound(successes, trials)
    assert successes / trials <= bound <= 1.0
    if successes < trials:
        assert bound <= wilson_upper_bound(successes + 1, trials)


@pytest.mark.parametrize("texts", [32, 64, 128, 512, 1421])
def test_one_unlucky_text_cannot_fail_a_good_model(texts: int) -> None:
    # The flipped text's probabilities move by at most 1: the mean drift by at most 1/n.
    verdict = default_gate(figures(texts=texts, agreeing=texts - 1, drift=GOOD_DRIFT + 1 / texts))
    assert verdict["passed"]
    assert verdict["texts"] == texts


def test_the_issues_31_of_32_passes_where_a_raw_percentage_failed() -> None:
    parity = figures(texts=32, agreeing=31)
    assert parity.label_agreement < DEFAULT_MIN_AGREEMENT  # 96.88 % < 97 %: failed before
    verdict = default_gate(parity)
    assert verdict["agreement_upper_bound"] == pytest.approx(0.993, abs=0.001)
    assert verdict["agreement_bound"] == AGREEMENT_BOUND
    assert AGREEMENT_BOUND in verdict["decided_by"] and "mean drift" in verdict["decided_by"]


def test_a_model_that_disagrees_often_fails_on_the_bound_with_the_count() -> None:
    with pytest.raises(ParityGateError) as caught:
        default_gate(figures(texts=512, agreeing=460))
    message = str(caught.value)
    assert "label agreement 89.84% on 512 texts (460 agree)" in message
    assert f"its {AGREEMENT_BOUND} 91.8" in message and "< 97.00%" in message
    assert "drift" not in message


def test_drift_fails_a_damaged_model_whose_labels_a_small_sample_cannot_convict() -> None:
    with pytest.raises(ParityGateError) as caught:
        default_gate(figures(texts=8, agreeing=8, drift=0.3))
    message = str(caught.value)
    assert "mean probability drift 0.300 > 0.100 on 8 texts" in message
    assert "label agreement" not in message


def test_every_failed_check_is_named_in_one_line() -> None:
    with pytest.raises(ParityGateError) as caught:
        default_gate(figures(texts=100, agreeing=60, drift=0.4))
    message = str(caught.value)
    assert "label agreement 60.00% on 100 texts" in message and "mean probability drift" in message
    assert "\n" not in message


# ---------------------------------------------------- on the tiny model's real sessions


@dataclass(frozen=True)
class TinyStages:
    loaded: LoadedModel
    fp32: Path
    int8: Path


@pytest.fixture(scope="module")
def tiny_stages(tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TinyStages:
    """The tiny model's FP32 and INT8 graphs, through the exporter's own stages."""
    work = tmp_path_factory.mktemp("parity-stages")
    loaded = load_model(resolve_model(str(tiny_hf_model), None))
    fp32 = export_fp32(loaded, work)
    int8, _, _ = quantize(fuse(fp32, work, loaded.num_heads, loaded.hidden_size).path, work)
    return TinyStages(loaded, fp32, int8)


def break_scales(int8: Path, target: Path) -> Path:
    """A copy of ``int8`` whose weight scales are all off by BROKEN_SCALE_FACTOR."""
    model = onnx.load(str(int8))
    broken = 0
    for initializer in model.graph.initializer:
        if initializer.name.endswith("_scale"):
            scale = numpy_helper.to_array(initializer) * np.float32(BROKEN_SCALE_FACTOR)
            initializer.CopyFrom(numpy_helper.from_array(scale, initializer.name))
            broken += 1
    assert broken > 0, "no weight scale found: the INT8 graph changed shape"
    onnx.save(model, str(target))
    return target


class OneUnluckyText:
    """A session that answers like ``session`` except on the first text it ever sees,
    whose two largest logits it swaps: a label flip on one text, nothing else."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._flipped = False

    def run(self, outputs: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
        (logits,) = self._session.run(outputs, feeds)
        if not self._flipped:
            top, second = np.argsort(logits[0])[-1], np.argsort(logits[0])[-2]
            logits[0, [top, second]] = logits[0, [second, top]]
            self._flipped = True
        return [logits]


def test_a_candidate_that_differs_on_one_text_passes_the_default_gate(
    tiny_stages: TinyStages,
) -> None:
    texts = list(BUILT_IN_TEXTS[:32])
    fp32 = open_session(tiny_stages.fp32, THREADS)
    candidate = OneUnluckyText(open_session(tiny_stages.fp32, THREADS))

    parity = measure_parity(
        fp32,
        candidate,
        tiny_stages.loaded.tokenizer,
        texts=texts,
        text_source="built-in",
        labels=tiny_stages.loaded.labels,
    )

    assert parity.texts == 32 and parity.agreeing == 31
    assert default_gate(parity)["passed"]


@pytest.mark.parametrize("texts", [32, 512])
def test_int8_with_broken_scales_fails_where_the_faithful_export_passes(
    tiny_stages: TinyStages, tmp_path: Path, texts: int
) -> None:
    sample = list(BUILT_IN_TEXTS[:texts])
    fp32 = open_session(tiny_stages.fp32, THREADS)
    broken_path = break_scales(tiny_stages.int8, tmp_path / "broken.onnx")

    def parity_of(int8: Path) -> ParityFigures:
        return measure_parity(
            fp32,
            open_session(int8, THREADS),
            tiny_stages.loaded.tokenizer,
            texts=sample,
            text_source="built-in",
            labels=tiny_stages.loaded.labels,
        )

    faithful = enforce_gate(
        parity_of(tiny_stages.int8), TINY_MIN_AGREEMENT, DEFAULT_MAX_F1_DROP, DEFAULT_MAX_DRIFT
    )
    assert faithful["passed"]
    broken = parity_of(broken_path)
    with pytest.raises(ParityGateError, match=f"on {texts} texts"):
        enforce_gate(broken, TINY_MIN_AGREEMENT, DEFAULT_MAX_F1_DROP, DEFAULT_MAX_DRIFT)
    assert broken.mean_text_drift > DEFAULT_MAX_DRIFT  # the drift alone would fail it


def test_export_with_broken_scales_fails_and_writes_nothing(
    tiny_hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_quantize = pipeline.quantize

    def quantize_with_broken_scales(fused: Path, workdir: Path, keep: Any) -> Any:
        int8, choice, ops = real_quantize(fused, workdir, keep)
        return break_scales(int8, int8), choice, ops

    monkeypatch.setattr(pipeline, "quantize", quantize_with_broken_scales)
    options = tiny_export_options(
        tiny_hf_model,
        tmp_path / "fresh" / "repo",
        min_agreement=TINY_MIN_AGREEMENT,
        max_drift=DEFAULT_MAX_DRIFT,
    )
    with pytest.raises(ParityGateError, match=f"on {TINY_PARITY_SAMPLE} texts"):
        pipeline.run_export(options)
    assert not (tmp_path / "fresh").exists()


def test_the_report_says_how_many_texts_and_which_bound_decided(
    tiny_model_repository: Path,
) -> None:
    report = json.loads(ModelLayout(tiny_model_repository).report.read_text())
    gate = report["gate"]
    assert gate["passed"] is True
    assert gate["texts"] == report["parity"]["texts"] == TINY_PARITY_SAMPLE
    assert gate["agreement_bound"] == AGREEMENT_BOUND
    assert AGREEMENT_BOUND in gate["decided_by"]
    assert report["parity"]["agreement_upper_bound"] >= report["parity"]["label_agreement"]
