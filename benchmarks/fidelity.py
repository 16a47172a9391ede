"""Fidelity: do the worker's padding and bucketing change any label against fixed-128?

Both sides run in-process onnxruntime on the same model file: *fixed* is the original
guide's input (batches of 32 in arrival order, every row padded to 128 tokens); *worker*
is what the worker sends (windows of ``batch_window`` tweets planned by
:meth:`worker.tokenizing.TweetTokenizer.plan`: sorted by length, cut into requests of at
most 32, each padded to a multiple of 8). Agreement is the share of tweets whose argmax
label is the same. FP32 should agree exactly (masked positions cannot change the result
beyond rounding); dynamically quantized INT8 may move a near-tie, because a row's
activation scale depends on its batch-mates and on the padded width.

The FP32 graph is exported once with the exporter's own stages (ONNX export + fusions,
the graph the INT8 model is quantized from) and kept beside the benchmark's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.planning import PAD_MULTIPLE
from worker.tokenizing import EncodedBatch, TweetTokenizer

FIXED_LENGTH = 128
REQUEST_SIZE = 32
DEFAULT_WINDOW = 128
Logits = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Agreement:
    """Labels of one model under both paddings."""

    model: str
    tweets: int
    agreeing: int
    max_abs_logit_diff: float
    smallest_margin_of_a_disagreement: float | None
    """Top-1 minus top-2 logit (fixed side) of the closest disagreeing tweet: a near-tie?"""

    @property
    def agreement(self) -> float:
        return self.agreeing / self.tweets if self.tweets else 1.0

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tweets": self.tweets,
            "agreeing": self.agreeing,
            "agreement": round(self.agreement, 5),
            "max_abs_logit_diff": float(f"{self.max_abs_logit_diff:.3g}"),
            "smallest_margin_of_a_disagreement": self.smallest_margin_of_a_disagreement,
        }


def session(onnx_path: Path, threads: int = 2) -> Any:
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def _run(model: Any, encoded: EncodedBatch) -> Logits:
    feeds = {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}
    logits: Logits = np.asarray(model.run(["logits"], feeds)[0], dtype=np.float32)
    return logits


def fixed_logits(model: Any, fixed: TweetTokenizer, texts: list[str]) -> Logits:
    """Batches of 32 in arrival order, padded to ``FIXED_LENGTH`` (a ``fixed`` tokenizer)."""
    parts = [
        _run(model, fixed.encode(texts[start : start + REQUEST_SIZE]))
        for start in range(0, len(texts), REQUEST_SIZE)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def worker_logits(
    model: Any, tokenizer: TweetTokenizer, texts: list[str], window: int = DEFAULT_WINDOW
) -> tuple[Logits, int]:
    """As the worker plans them; also returns the padded tokens sent."""
    rows: list[Logits | None] = [None] * len(texts)
    padded = 0
    for start in range(0, len(texts), window):
        planned = tokenizer.plan(texts[start : start + window], REQUEST_SIZE)
        padded += planned.padded_tokens
        for indices, encoded in planned.requests:
            assert encoded.tokens % PAD_MULTIPLE == 0 or encoded.tokens == tokenizer.max_length
            for index, row in zip(indices, _run(model, encoded), strict=True):
                rows[start + index] = row
    return np.stack([row for row in rows if row is not None]), padded


def compare(name: str, fixed: Logits, planned: Logits) -> Agreement:
    same = fixed.argmax(axis=1) == planned.argmax(axis=1)
    top2 = np.sort(fixed, axis=1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    disagreeing = margins[~same]
    return Agreement(
        model=name,
        tweets=len(fixed),
        agreeing=int(same.sum()),
        max_abs_logit_diff=float(np.abs(fixed - planned).max()) if len(fixed) else 0.0,
        smallest_margin_of_a_disagreement=(
            float(f"{disagreeing.min():.3g}") if len(disagreeing) else None
        ),
    )


def measure(
    name: str, onnx_path: Path, tokenizer_dir: Path, texts: list[str], window: int = DEFAULT_WINDOW
) -> Agreement:
    model = session(onnx_path)
    bucketed = TweetTokenizer.from_directory(tokenizer_dir, FIXED_LENGTH, "bucketed")
    fixed = TweetTokenizer.from_directory(tokenizer_dir, FIXED_LENGTH, "fixed")
    planned, _ = worker_logits(model, bucketed, texts, window)
    return compare(name, fixed_logits(model, fixed, texts), planned)


def ensure_fp32(hf_dir: Path, target_dir: Path, log: Any = print) -> Path:
    """The fused FP32 graph of ``hf_dir`` (exported once by the exporter's stages)."""
    target = target_dir / "model.onnx"
    if target.is_file():
        return target
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from exporter.loading import load_model, resolve_model  # noqa: PLC0415
    from exporter.onnx_export import export_fp32  # noqa: PLC0415
    from exporter.optimizing import fuse  # noqa: PLC0415

    log(f"exporting the FP32 graph of {hf_dir} once, into {target_dir}")
    loaded = load_model(resolve_model(str(hf_dir), None))
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fp32-", dir=target_dir) as scratch:
        work = Path(scratch)
        fused = fuse(export_fp32(loaded, work), work, loaded.num_heads, loaded.hidden_size)
        staged = target_dir / "model.onnx.partial"
        shutil.copy2(fused.path, staged)
        staged.rename(target)
    return target
