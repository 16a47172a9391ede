"""Running an ONNX classifier in process, as Triton's onnxruntime backend would."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from exporter.loading import MODEL_MAX_TOKENS

# Triton's ``max_batch_size`` in config.pbtxt, and the worker's micro-batch limit.
TRITON_MAX_BATCH = 32
Padding = Literal["longest", "max_length"]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Threads:
    """onnxruntime thread counts, the same in the benchmark and in config.pbtxt."""

    intra_op: int
    inter_op: int


def open_session(path: Path, threads: Threads) -> Any:
    """An onnxruntime CPU session on ``path`` with explicit thread counts."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads.intra_op
    options.inter_op_num_threads = threads.inter_op
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def encode(
    tokenizer: Any, texts: Sequence[str], padding: Padding
) -> dict[str, npt.NDArray[np.int64]]:
    """Tokenize like the worker: truncate to 128 tokens, pad to the longest or to 128."""
    encoded = tokenizer(
        list(texts),
        padding=padding,
        truncation=True,
        max_length=MODEL_MAX_TOKENS,
        return_tensors="np",
    )
    return {name: np.asarray(values, dtype=np.int64) for name, values in encoded.items()}


def softmax(logits: FloatArray) -> FloatArray:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


def classify(
    session: Any,
    tokenizer: Any,
    texts: Sequence[str],
    padding: Padding = "longest",
    batch_size: int = TRITON_MAX_BATCH,
) -> FloatArray:
    """Class probabilities for ``texts``, in batches of ``batch_size``."""
    chunks: list[FloatArray] = []
    for start in range(0, len(texts), batch_size):
        feeds = encode(tokenizer, texts[start : start + batch_size], padding)
        (logits,) = session.run(["logits"], feeds)
        chunks.append(softmax(np.asarray(logits, dtype=np.float32)))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
