"""Texts to the two tensors the model takes, with the exported fast tokenizer.

Truncation at ``max_length`` (the model's 128-token limit or lower). :meth:`TweetTokenizer.plan`
tokenizes a whole batch once and cuts it into requests (:func:`~worker.planning.plan_requests`):
``bucketed`` sorts texts by length so each request holds similar lengths, padded to its
longest rounded up to a multiple of 8 (the fast path); ``dynamic`` keeps arrival order and
pads each request to its longest the same way; ``fixed`` always pads to ``max_length`` (the
original guide's behaviour, kept for comparison).

Only the ``tokenizers`` library (Rust) is used, never ``transformers``: importing
``transformers`` imports torch whenever it is installed (~590 MiB of RSS for a worker
that needs none of it). The exporter saves ``tokenizer.json`` (the whole fast tokenizer)
next to the model; the pad token comes from ``tokenizer_config.json``. Encoding with the
backend directly is what ``transformers``' fast tokenizer does for
``truncation=True, max_length=N`` (tests/unit/test_tokenizing.py checks the ids agree).

Long texts are cut before tokenizing (:meth:`TweetTokenizer.cut`) so that a 100 kB text
costs about what a tweet does, with the tokens unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from worker.planning import PAD_MULTIPLE, padded_width, plan_requests

Padding = Literal["bucketed", "dynamic", "fixed"]
TokenArray = npt.NDArray[np.int64]

# A text this short is tokenized whole; a longer one is first tokenized as a prefix this
# long (then 4x longer, ...) until the prefix provably holds the first max_length tokens.
# 1 kB holds 128 tokens of any ordinary text (a token is rarely under 2 characters).
CUT_FIRST_PREFIX_CHARS = 1024
CUT_GROWTH = 4
# With a pre-tokenizer, a text whose first prefix held too few tokens is looked at this
# many prefix lengths far for the end of its first max_length + 4 words; none: whole.
CUT_WORD_WINDOW = 8
# The last word-level segments of a prefix may tokenize differently once the text goes
# on (a word or a whitespace run cut short; a lookahead of the pre-tokenizer's regex;
# an added token's lstrip): tokens of this many trailing segments are never trusted.
CUT_UNTRUSTED_SEGMENTS = 3


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


class EncodedRequest(NamedTuple):
    """One inference request of a batch, encoded."""

    indices: tuple[int, ...]
    """Positions in the batch (arrival order) of the request's rows, in row order."""
    encoded: EncodedBatch


@dataclass(frozen=True)
class PlannedBatch:
    """A batch cut into encoded requests; each request's ``indices`` map its rows to the batch."""

    size: int
    requests: tuple[EncodedRequest, ...]

    @property
    def padded_tokens(self) -> int:
        """Tokens sent, padding included (for logs and benchmarks)."""
        return sum(len(encoded) * encoded.tokens for _, encoded in self.requests)


class TweetTokenizer:
    """Batch-encodes texts; wraps a Hugging Face fast (Rust) tokenizer, ``tokenizers.Tokenizer``."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        pad_id: int,
        max_length: int,
        padding: Padding = "bucketed",
        *,
        first_prefix_chars: int = CUT_FIRST_PREFIX_CHARS,
    ) -> None:
        # A private copy: truncation is set on it, and padding is ours (right, see _pad).
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        # Prefixes are measured without truncation or special tokens: a plain copy.
        self._measure = Tokenizer.from_str(tokenizer.to_str())
        self._measure.no_padding()
        self._measure.no_truncation()
        # Word boundaries straight from the pre-tokenizer, where its offsets are the
        # text's own (no normalizer in front of it, as in RoBERTa's byte-level BPE).
        self._words = self._measure.pre_tokenizer if self._measure.normalizer is None else None
        self._pad_id = pad_id
        self._first_prefix_chars = max(1, first_prefix_chars)
        self.max_length = max_length
        self.padding: Padding = padding

    @classmethod
    def from_directory(
        cls, path: Path, max_length: int, padding: Padding = "bucketed"
    ) -> TweetTokenizer:
        """Load the tokenizer the exporter saved next to the model (``save_pretrained``).

        Raises
        ------
        FileNotFoundError
            No tokenizer folder, or no ``tokenizer.json`` in it (a slow-only tokenizer).
        ValueError
            The saved tokenizer names no pad token, or one it does not know.
        """
        if not path.is_dir():
            raise FileNotFoundError(f"no tokenizer folder at {path} (was the model exported?)")
        backend = path / "tokenizer.json"
        if not backend.is_file():
            raise FileNotFoundError(f"no {backend}: a fast (Rust) tokenizer is required")
        tokenizer = Tokenizer.from_file(str(backend))
        pad = _pad_token(path)
        pad_id = tokenizer.token_to_id(pad) if pad is not None else None
        if pad_id is None:
            raise ValueError(f"the tokenizer in {path} has no pad token (or an unknown one)")
        return cls(tokenizer, int(pad_id), max_length, padding)

    def cut(self, texts: list[str]) -> list[str]:
        """Each text, or a prefix of it whose first ``max_length`` tokens are the text's own.

        Tokenizing a 100 kB text costs ~1000x a tweet, for 128 tokens. A prefix is
        tokenized (no special tokens, no truncation) and split into *segments*: runs of
        tokens of one pre-tokenizer word (an added token is a segment alone). Normalizing,
        pre-tokenizing and the model (BPE, WordPiece, Unigram) all work within a word, and
        a word ending before the prefix's last ones is split the same whatever follows
        (the pre-tokenizer's patterns look at most one character ahead), so every token
        before the last :data:`CUT_UNTRUSTED_SEGMENTS` segments is the full text's token
        too. Once at least ``max_length`` tokens are trusted, the prefix is the cut text:
        truncated to ``max_length``, it encodes exactly as the whole text does. Otherwise
        a longer prefix is tried once: one ending after the first ``max_length`` + 4 words of
        the pre-tokenizer (a word gives a token at least) if they end within
        :data:`CUT_WORD_WINDOW` prefix lengths, else the text is tokenized whole (without a
        pre-tokenizer whose offsets are the text's: prefixes :data:`CUT_GROWTH` times longer,
        up to the whole text). One word of 100 kB (no space, or only emoji) is tokenized
        whole: no cut can be proved inside a word.
        tests/unit/test_tokenizing.py checks the identity over adversarial texts.
        """
        out = list(texts)
        lengths = {i: self._first_prefix_chars for i, t in enumerate(texts) if len(t) > 0}
        pending = [i for i in lengths if len(texts[i]) > lengths[i]]
        while pending:
            prefixes = [texts[i][: lengths[i]] for i in pending]
            encodings = self._measure.encode_batch(prefixes, add_special_tokens=False)
            still = []
            for i, prefix, encoding in zip(pending, prefixes, encodings, strict=True):
                if _trusted_tokens(encoding.word_ids) >= self.max_length:
                    out[i] = prefix
                    continue
                longer = self._longer_prefix(texts[i], lengths[i])
                if longer is not None:
                    lengths[i] = longer
                    still.append(i)
                # else: the next prefix would be the whole text; it stays whole
            pending = still
        return out

    def _longer_prefix(self, text: str, length: int) -> int | None:
        """The next prefix length to measure (> ``length``), None for the whole text."""
        if self._words is not None:
            # Where the pre-tokenizer's words run out of the first prefix (long words,
            # emoji runs): a cut just after enough words, found without the model's cost,
            # in a window of the text (a pass over a 100 kB word costs half its BPE).
            window = text[: length * CUT_WORD_WINDOW]
            words = self._words.pre_tokenize_str(window)
            enough = self.max_length + CUT_UNTRUSTED_SEGMENTS + 1
            if len(words) > enough:
                end = int(words[enough - 1][1][1])
                if length < end < len(text):
                    return end
            return None  # no cut proved within the window: tokenized whole
        longer = length * CUT_GROWTH
        return longer if longer < len(text) else None

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, truncated to ``max_length``, unpadded."""
        encoded = self._tokenizer.encode_batch(self.cut(texts), add_special_tokens=True)
        return [list(encoding.ids) for encoding in encoded]

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
                EncodedRequest(
                    request.indices, self._pad([ids[i] for i in request.indices], request.width)
                )
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


def _trusted_tokens(word_ids: list[int | None]) -> int:
    """How many leading tokens lie before the last :data:`CUT_UNTRUSTED_SEGMENTS` segments
    (a segment: consecutive tokens of one word; a token of no word is one alone)."""
    segments = 0
    previous: int | None = None
    for index in range(len(word_ids) - 1, -1, -1):
        word = word_ids[index]
        if index == len(word_ids) - 1 or word is None or word != previous:
            segments += 1
            if segments > CUT_UNTRUSTED_SEGMENTS:
                return index + 1
        previous = word
    return 0


def _pad_token(path: Path) -> str | None:
    """The pad token ``save_pretrained`` recorded (a string, or ``{"content": ...}``)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            config = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        pad = config.get("pad_token") if isinstance(config, dict) else None
        if isinstance(pad, dict):
            pad = pad.get("content")
        if isinstance(pad, str):
            return pad
    return None
