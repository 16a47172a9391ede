"""Stage 5: does the INT8 model still say what the FP32 model says?

Figures: label agreement FP32 vs INT8, max and mean absolute difference of class
probabilities, and label agreement of the INT8 model between padding to 128 and padding
to the batch's longest text (the worker pads dynamically). With an eval file (JSON lines
with ``text`` and ``label``), accuracy and macro-F1 of both models too.

The gate fails the export when agreement is below ``min_agreement`` or macro-F1 drops
by more than ``max_f1_drop`` points.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from exporter.errors import ExportError, ParityGateError
from exporter.runtime import classify
from exporter.texts import LabelledText

log = logging.getLogger(__name__)

DEFAULT_MIN_AGREEMENT = 0.97
DEFAULT_MAX_F1_DROP = 1.0  # macro-F1 points (0-100 scale)
# Padding to 128 costs ~3x the compute of dynamic padding; a sample of this many texts
# is enough to see whether the two disagree (measured: 99.8-99.9% agreement).
PADDING_CHECK_TEXTS = 128


@dataclass(frozen=True)
class EvalFigures:
    """Accuracy and macro-F1 of both models on labelled texts."""

    examples: int
    accuracy_fp32: float
    accuracy_int8: float
    macro_f1_fp32: float
    macro_f1_int8: float

    @property
    def f1_drop_points(self) -> float:
        """How many macro-F1 points INT8 lost (negative: gained)."""
        return 100.0 * (self.macro_f1_fp32 - self.macro_f1_int8)


@dataclass(frozen=True)
class ParityFigures:
    """FP32 vs INT8 on the same texts."""

    texts: int
    text_source: str
    label_agreement: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    padding_texts: int
    fixed_vs_dynamic_agreement: float
    evaluation: EvalFigures | None

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready dict (eval figures nested, F1 drop included)."""
        record = asdict(self)
        if self.evaluation is not None:
            record["evaluation"]["f1_drop_points"] = round(self.evaluation.f1_drop_points, 3)
        return record


def macro_f1(gold: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64]) -> float:
    """Unweighted mean F1 over the classes seen in gold or predictions (sklearn's default)."""
    scores = []
    for label in np.union1d(gold, predicted):
        true_positive = float(np.sum((predicted == label) & (gold == label)))
        predicted_count = float(np.sum(predicted == label))
        gold_count = float(np.sum(gold == label))
        denominator = predicted_count + gold_count
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def gold_ids(rows: list[LabelledText], labels: list[str]) -> npt.NDArray[np.int64]:
    """Label ids of ``rows``, whose labels may be names or ids.

    Raises
    ------
    ExportError
        A row has no label, or one the model does not know.
    """
    index = {name: i for i, name in enumerate(labels)}
    ids = []
    for number, row in enumerate(rows, start=1):
        if row.label in index:
            ids.append(index[row.label])
        elif row.label is not None and row.label.isdigit() and int(row.label) < len(labels):
            ids.append(int(row.label))
        else:
            raise ExportError(
                f"eval file line {number}: label {row.label!r} is not one of {labels}"
            )
    return np.asarray(ids, dtype=np.int64)


def measure_parity(
    fp32: Any,
    int8: Any,
    tokenizer: Any,
    *,
    texts: list[str],
    text_source: str,
    labels: list[str],
    eval_rows: list[LabelledText] | None = None,
) -> ParityFigures:
    """Run both sessions on ``texts`` (or the eval rows' texts) and compare them."""
    if eval_rows is not None:
        texts = [row.text for row in eval_rows]
    log.info("parity: FP32 vs INT8 on %d texts from %s", len(texts), text_source)
    probs_fp32 = classify(fp32, tokenizer, texts)
    probs_int8 = classify(int8, tokenizer, texts)
    labels_fp32 = probs_fp32.argmax(axis=1)
    labels_int8 = probs_int8.argmax(axis=1)
    diff = np.abs(probs_fp32 - probs_int8)

    padding_sample = texts[:PADDING_CHECK_TEXTS]
    log.info("parity: INT8 padded to 128 vs to the longest, %d texts", len(padding_sample))
    fixed = classify(int8, tokenizer, padding_sample, padding="max_length").argmax(axis=1)
    dynamic = labels_int8[: len(padding_sample)]

    evaluation = None
    if eval_rows is not None:
        gold = gold_ids(eval_rows, labels)
        evaluation = EvalFigures(
            examples=len(gold),
            accuracy_fp32=float(np.mean(labels_fp32 == gold)),
            accuracy_int8=float(np.mean(labels_int8 == gold)),
            macro_f1_fp32=macro_f1(gold, labels_fp32),
            macro_f1_int8=macro_f1(gold, labels_int8),
        )
    return ParityFigures(
        texts=len(texts),
        text_source=text_source,
        label_agreement=float(np.mean(labels_fp32 == labels_int8)),
        max_abs_prob_diff=float(diff.max()),
        mean_abs_prob_diff=float(diff.mean()),
        padding_texts=len(padding_sample),
        fixed_vs_dynamic_agreement=float(np.mean(fixed == dynamic)),
        evaluation=evaluation,
    )


def enforce_gate(figures: ParityFigures, min_agreement: float, max_f1_drop: float) -> None:
    """Raise when the INT8 model strays further from FP32 than allowed.

    Raises
    ------
    ParityGateError
        With every figure that failed and its threshold, in one line.
    """
    failures = []
    if figures.label_agreement < min_agreement:
        failures.append(
            f"label agreement {figures.label_agreement:.2%} < {min_agreement:.2%} "
            f"({figures.texts} texts, max |dp| {figures.max_abs_prob_diff:.3f})"
        )
    evaluation = figures.evaluation
    if evaluation is not None and evaluation.f1_drop_points > max_f1_drop:
        failures.append(
            f"macro-F1 drop {evaluation.f1_drop_points:.2f} points > {max_f1_drop:.2f} "
            f"(FP32 {evaluation.macro_f1_fp32:.3f}, INT8 {evaluation.macro_f1_int8:.3f})"
        )
    if failures:
        raise ParityGateError("parity gate failed, nothing written: " + "; ".join(failures))
