"""Texts to the two tensors the model takes, with the exported fast tokenizer.

Truncation at ``max_length`` (the model's 128-token limit or lower). :meth:`TweetTokenizer.plan`
tokenizes a whole batch once and cuts it into requests (:func:`~worker.batching.plan_requests`):
``bucketed`` sorts texts by length so each request holds similar lengths, padded to its
longest rounded up to a multiple of 8 (the fast path); ``dynamic`` keeps arrival order and
pads each request to its longest the same way; ``fixed`` always pads to ``max_length`` (the
original guide's behaviour, kept for comparison).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from transformers import AutoTokenizer

from worker.batching import PAD_MULTIPLE, padded_width, plan_requests

Padding = Literal["bucketed", "dynamic", "fixed"]
TokenArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EncodedBatch:
    """``input_ids`` and ``attention_mask``, both ``[batch, tokens]`` int64."""

    input_ids: TokenArray
    attention_mask: TokenArray
    fixed_length: bool = False
    pad_multiple: int = 1
    """Dynamic widths are rounded up to this (re-trimmed sub-batches too)."""

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
            longest = int(mask.sum(axis=1).max())
            width = padded_width(longest, self.tokens, self.pad_multiple)
            ids, mask = ids[:, :width], mask[:, :width]
        return EncodedBatch(
            np.ascontiguousarray(ids),
            np.ascontiguousarray(mask),
            self.fixed_length,
            self.pad_multiple,
        )


@dataclass(frozen=True)
class PlannedBatch:
    """A batch cut into encoded requests; ``indices`` map each request's rows to the batch."""

    size: int
    requests: tuple[tuple[tuple[int, ...], EncodedBatch], ...]

    @property
    def padded_tokens(self) -> int:
        """Tokens sent, padding included (for logs and benchmarks)."""
        return sum(len(encoded) * encoded.tokens for _, encoded in self.requests)


class TweetTokenizer:
    """Batch-encodes texts; wraps a Hugging Face fast tokenizer."""

    def __init__(self, tokenizer: Any, max_length: int, padding: Padding = "bucketed") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("a fast (Rust) tokenizer is required for batch encoding")
        if tokenizer.padding_side != "right":
            raise ValueError("right padding is required (trimming sub-batches relies on it)")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        self._tokenizer = tokenizer
        self._pad_id = int(tokenizer.pad_token_id)
        self.max_length = max_length
        self.padding: Padding = padding

    @classmethod
    def from_directory(
        cls, path: Path, max_length: int, padding: Padding = "bucketed"
    ) -> TweetTokenizer:
        """Load the tokenizer the exporter saved next to the model."""
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer folder at {path} (was the model exported?)")
        loaded = AutoTokenizer.from_pretrained(str(path), use_fast=True)  # type: ignore[no-untyped-call]
        return cls(loaded, max_length, padding)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, truncated to ``max_length``, unpadded."""
        encoded = self._tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> EncodedBatch:
        """All texts as one request, in order (padded as ``padding`` says, never sorted)."""
        ids = self.token_ids(texts)
        return self._pad(ids, self._width(ids))

    def plan(self, texts: list[str], max_request_size: int) -> PlannedBatch:
        """Tokenize a batch once and cut it into requests of at most ``max_request_size``."""
        ids = self.token_ids(texts)
        fixed = self.padding == "fixed"
        requests = plan_requests(
            [self.max_length if fixed else len(row) for row in ids],
            max_request_size,
            limit=self.max_length,
            bucketed=self.padding == "bucketed",
        )
        return PlannedBatch(
            size=len(texts),
            requests=tuple(
                (request.indices, self._pad([ids[i] for i in request.indices], request.width))
                for request in requests
            ),
        )

    def _width(self, ids: list[list[int]]) -> int:
        if self.padding == "fixed":
            return self.max_length
        return padded_width(max((len(row) for row in ids), default=1), self.max_length)

    def _pad(self, rows: list[list[int]], width: int) -> EncodedBatch:
        """Rows right-padded with the pad token to ``width`` (rows are never longer)."""
        input_ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        fixed = self.padding == "fixed"
        return EncodedBatch(input_ids, attention_mask, fixed, 1 if fixed else PAD_MULTIPLE)
