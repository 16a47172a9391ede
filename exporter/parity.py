"""Stage 5: does the INT8 model still say what the FP32 model says?

Figures: label agreement FP32 vs INT8, max and mean absolute difference of class
probabilities, and label agreement of the INT8 model between padding to 128 and padding
to the batch's longest text (the worker pads dynamically). With an eval file (JSON lines
with ``text`` and ``label``), accuracy and macro-F1 of both models too.

The gate decides on what the texts can show, not on a raw percentage of a sample:

- **agreement**: it fails when the one-sided 95 % Wilson *upper* bound on the label
  agreement is below ``min_agreement`` — when the texts show, at 95 % confidence, that
  the INT8 model agrees less often than required. One unlucky text in a small sample
  cannot do that (31 of 32 agreeing: upper bound 99.3 %), a model that disagrees often
  does (460 of 512, 89.8 %: upper bound 91.8 %);
- **drift**: it fails when the INT8 model moves the class probabilities too far on
  average: the mean over the texts of each text's largest class-probability change must
  not exceed ``max_drift``. One text can move this mean by at most 1/n, so it catches a
  damaged model (wrong scales, broken weights) whose labels a small sample cannot
  convict, and spares a good one whose single text flipped;
- **macro-F1** (with an eval file): the drop must not exceed ``max_f1_drop`` points.

The report records the number of texts, both bounds and which check decided.
"""

from __future__ import annotations

import logging
import math
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
# Mean over texts of the largest class-probability change. A faithful INT8 model moves
# probabilities by a few hundredths (the real-weights model's largest single change on 32
# texts was 0.163); a model quantized with broken scales moves them by tenths.
DEFAULT_MAX_DRIFT = 0.10
# The normal quantile of a one-sided 95 % bound.
CONFIDENCE_Z = 1.6449
AGREEMENT_BOUND = "one-sided 95% Wilson upper bound"
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
    mean_text_drift: float
    """Mean over the texts of each text's largest class-probability change."""
    padding_texts: int
    fixed_vs_dynamic_agreement: float
    evaluation: EvalFigures | None

    @property
    def agreeing(self) -> int:
        """How many texts got the same label from both models."""
        return round(self.label_agreement * self.texts)

    @property
    def agreement_upper_bound(self) -> float:
        """The one-sided 95 % upper confidence bound on the label agreement."""
        return wilson_upper_bound(self.agreeing, self.texts)

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready dict (eval figures nested, F1 drop and the agreement bound included)."""
        record = asdict(self)
        record["agreement_upper_bound"] = round(self.agreement_upper_bound, 4)
        if self.evaluation is not None:
            record["evaluation"]["f1_drop_points"] = round(self.evaluation.f1_drop_points, 3)
        return record


def wilson_upper_bound(successes: int, trials: int, z: float = CONFIDENCE_Z) -> float:
    """The Wilson score upper bound of a binomial proportion (1.0 without trials).

    Unlike the normal approximation it stays inside [0, 1] and is honest at the edges:
    32 of 32 gives 1.0, 31 of 32 gives 0.993.
    """
    if trials <= 0 or successes >= trials:
        return 1.0  # no evidence against, or none of it (exact, not 0.9999999999999998)
    share = successes / trials
    z2 = z * z
    centre = share + z2 / (2 * trials)
    spread = z * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials))
    return min(1.0, max(share, (centre + spread) / (1 + z2 / trials)))


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
        mean_text_drift=float(diff.max(axis=1).mean()) if texts else 0.0,
        padding_texts=len(padding_sample),
        fixed_vs_dynamic_agreement=float(np.mean(fixed == dynamic)),
        evaluation=evaluation,
    )


def enforce_gate(
    figures: ParityFigures,
    min_agreement: float,
    max_f1_drop: float,
    max_drift: float = DEFAULT_MAX_DRIFT,
) -> dict[str, Any]:
    """The gate's verdict for the report; raise when the INT8 model strays too far.

    Returns
    -------
    dict
        Texts, the agreement and its bound, the drift, the thresholds and ``decided_by``.

    Raises
    ------
    ParityGateError
        With every check that failed, its bound, its threshold and the number of texts,
        in one line.
    """
    upper = figures.agreement_upper_bound
    evaluation = figures.evaluation
    failures = []
    if upper < min_agreement:
        failures.append(
            f"label agreement {figures.label_agreement:.2%} on {figures.texts} texts "
            f"({figures.agreeing} agree): its {AGREEMENT_BOUND} {upper:.2%} < "
            f"{min_agreement:.2%} (max |dp| {figures.max_abs_prob_diff:.3f})"
        )
    if figures.mean_text_drift > max_drift:
        failures.append(
            f"mean probability drift {figures.mean_text_drift:.3f} > {max_drift:.3f} "
            f"on {figures.texts} texts (per text, the largest class-probability change)"
        )
    if evaluation is not None and evaluation.f1_drop_points > max_f1_drop:
        failures.append(
            f"macro-F1 drop {evaluation.f1_drop_points:.2f} points > {max_f1_drop:.2f} "
            f"(FP32 {evaluation.macro_f1_fp32:.3f}, INT8 {evaluation.macro_f1_int8:.3f})"
        )
    if failures:
        raise ParityGateError("parity gate failed, nothing written: " + "; ".join(failures))
    decided_by = (
        f"{AGREEMENT_BOUND} {upper:.2%} >= {min_agreement:.2%} and mean drift "
        f"{figures.mean_text_drift:.3f} <= {max_drift:.3f}"
    )
    if evaluation is not None:
        decided_by += f" and macro-F1 drop {evaluation.f1_drop_points:.2f} <= {max_f1_drop:.2f}"
    return {
        "passed": True,
        "texts": figures.texts,
        "text_source": figures.text_source,
        "agreement": round(figures.label_agreement, 4),
        "agreement_bound": AGREEMENT_BOUND,
        "agreement_upper_bound": round(upper, 4),
        "min_agreement": min_agreement,
        "mean_text_drift": round(figures.mean_text_drift, 4),
        "max_drift": max_drift,
        "max_f1_drop": max_f1_drop,
        "decided_by": decided_by,
    }
