"""The worker's own costs, outside the pipeline: start RSS, and tokenizing long texts.

    python -m benchmarks.worker_costs                        # prints a table
    python -m benchmarks.worker_costs --tokenizer-dir DIR --rounds 5 --json out.json

Without ``--tokenizer-dir`` it trains the benchmark's tokenizer (a byte-level BPE of 8,000
tokens on the benchmark's tweets, as benchmarks/model.py does; no torch needed).

*Start RSS*: a fresh interpreter imports the worker's modules (``worker.app``) and builds
the tokenizer, as ``emotion-stream worker`` does before it connects; then the RSS from
/proc. Once as the worker does it (the ``tokenizers`` library only), once as it did before
(``transformers.AutoTokenizer``, which imports torch when installed: the development
install has it), and whether torch ended up loaded.

*Long texts*: one batch of 32 texts at the default cap (100 kB each) tokenized to the
model's 128 tokens, the text cut first (the worker, :meth:`TweetTokenizer.cut`) or whole
(before), per kind of text: words, one 100 kB word without a space (no cut can be proved
inside it: tokenized whole either way), emoji; and a batch of 32 tweets for scale. The
ids are compared, not assumed: a difference fails the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.model import BPE_VOCAB_SIZE
from benchmarks.tweets import load_corpus
from tests.support.tiny_model import train_bpe_tokenizer
from worker.settings import DEFAULT_MAX_TEXT_BYTES, MODEL_MAX_TOKENS
from worker.tokenizing import TweetTokenizer

BATCH = 32

_START = """
import resource, sys, json
from pathlib import Path
import worker.app
{build}
rss = 0
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        rss = int(line.split()[1]) / 1024
print(json.dumps({{"rss_mib": round(rss, 1), "torch_loaded": "torch" in sys.modules}}))
"""
_BUILD_NOW = (
    "from worker.tokenizing import TweetTokenizer\n"
    "TweetTokenizer.from_directory(Path({path!r}), 128).token_ids(['warm up'])"
)
_BUILD_BEFORE = (
    "from transformers import AutoTokenizer\n"
    "AutoTokenizer.from_pretrained({path!r}, use_fast=True)(['warm up'], truncation=True)"
)


def train_tokenizer(path: Path) -> Path:
    """The benchmark's tokenizer (see benchmarks/model.py), saved as transformers does."""
    return train_bpe_tokenizer(path, load_corpus().texts, BPE_VOCAB_SIZE)


def start_rss(tokenizer_dir: Path) -> dict[str, Any]:
    """Start RSS of the worker's process, now and with the old transformers path."""
    out = {}
    for name, build in (("tokenizers (now)", _BUILD_NOW), ("transformers (before)", _BUILD_BEFORE)):
        code = _START.format(build=build.format(path=str(tokenizer_dir)))
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def long_texts() -> dict[str, list[str]]:
    """Batches of 32 texts at the cap (UTF-8 bytes), by kind; and tweets for scale."""
    words = "the team laughed at that ending, again and again! "
    emoji = "😂"  # 4 bytes
    return {
        "words, 100 kB": [(words * 2100)[: DEFAULT_MAX_TEXT_BYTES - i] for i in range(BATCH)],
        "one word, 100 kB": ["x" * (DEFAULT_MAX_TEXT_BYTES - i) for i in range(BATCH)],
        "emoji, 100 kB": [emoji * (DEFAULT_MAX_TEXT_BYTES // 4 - i) for i in range(BATCH)],
        "tweets (for scale)": [
            f"tweet number {i}, I love mondays so much #blessed" for i in range(BATCH)
        ],
    }


def tokenize_cost(tokenizer_dir: Path, rounds: int) -> dict[str, dict[str, float]]:
    """Best-of-``rounds`` seconds per batch of 32, cut first vs whole; ids must agree."""
    tokenizer = TweetTokenizer.from_directory(tokenizer_dir, MODEL_MAX_TOKENS)
    whole = tokenizer._tokenizer  # the same truncating backend, without the cut
    out = {}
    for kind, texts in long_texts().items():
        cut_s, whole_s = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            cut_ids = tokenizer.token_ids(texts)
            cut_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            whole_ids = [e.ids for e in whole.encode_batch(texts, add_special_tokens=True)]
            whole_s.append(time.perf_counter() - started)
        if cut_ids != [list(ids) for ids in whole_ids]:
            raise SystemExit(f"{kind}: the cut changed the tokens")
        out[kind] = {"cut_s": round(min(cut_s), 4), "whole_s": round(min(whole_s), 4)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_costs", description=__doc__)
    parser.add_argument("--tokenizer-dir", type=Path, help="default: train the benchmark's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="worker-costs-") as scratch:
        tokenizer_dir = args.tokenizer_dir or train_tokenizer(Path(scratch))
        # Measured first, before this process imports more than the worker would.
        figures: dict[str, Any] = {"start_rss": start_rss(tokenizer_dir)}
        figures["tokenize_batch_of_32"] = tokenize_cost(tokenizer_dir, args.rounds)
    print("worker start RSS (imports + tokenizer built):")
    for name, row in figures["start_rss"].items():
        print(f"  {name:24} {row['rss_mib']:7.1f} MiB   torch loaded: {row['torch_loaded']}")
    print(f"tokenizing a batch of {BATCH} to {MODEL_MAX_TOKENS} tokens (best of {args.rounds}):")
    for kind, row in figures["tokenize_batch_of_32"].items():
        print(
            f"  {kind:20} cut first {row['cut_s'] * 1000:9.1f} ms"
            f"   whole {row['whole_s'] * 1000:9.1f} ms"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
