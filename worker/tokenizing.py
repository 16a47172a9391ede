"""Texts to the two tensors the model takes, with the exported fast tokenizer.

Truncation at ``max_length`` (the model's 128-token limit or lower); padding either to
the longest text of the batch (``dynamic``: short tweets make short tensors, the
fast path) or always to ``max_length`` (``fixed``: the original guide's behaviour,
kept for comparison).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from transformers import AutoTokenizer

Padding = Literal["dynamic", "fixed"]
TokenArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EncodedBatch:
    """``input_ids`` and ``attention_mask``, both ``[batch, tokens]`` int64."""

    input_ids: TokenArray
    attention_mask: TokenArray
    fixed_length: bool = False

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def rows(self, start: int, stop: int) -> EncodedBatch:
        """A sub-batch (for isolating a rejected item); dynamic padding is re-trimmed."""
        ids = self.input_ids[start:stop]
        mask = self.attention_mask[start:stop]
        if not self.fixed_length and len(mask):
            width = max(1, int(mask.sum(axis=1).max()))
            ids, mask = ids[:, :width], mask[:, :width]
        return EncodedBatch(
            np.ascontiguousarray(ids), np.ascontiguousarray(mask), self.fixed_length
        )


class TweetTokenizer:
    """Batch-encodes texts; wraps a Hugging Face fast tokenizer."""

    def __init__(self, tokenizer: Any, max_length: int, padding: Padding = "dynamic") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("a fast (Rust) tokenizer is required for batch encoding")
        if tokenizer.padding_side != "right":
            raise ValueError("right padding is required (trimming sub-batches relies on it)")
        self._tokenizer = tokenizer
        self.max_length = max_length
        self.padding: Padding = padding

    @classmethod
    def from_directory(
        cls, path: Path, max_length: int, padding: Padding = "dynamic"
    ) -> TweetTokenizer:
        """Load the tokenizer the exporter saved next to the model."""
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer folder at {path} (was the model exported?)")
        loaded = AutoTokenizer.from_pretrained(str(path), use_fast=True)  # type: ignore[no-untyped-call]
        return cls(loaded, max_length, padding)

    def encode(self, texts: list[str]) -> EncodedBatch:
        encoded = self._tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding="max_length" if self.padding == "fixed" else "longest",
            return_attention_mask=True,
            return_token_type_ids=False,
            return_tensors="np",
        )
        return EncodedBatch(
            input_ids=np.asarray(encoded["input_ids"], dtype=np.int64),
            attention_mask=np.asarray(encoded["attention_mask"], dtype=np.int64),
            fixed_length=self.padding == "fixed",
        )
