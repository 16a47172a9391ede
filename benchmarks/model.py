"""The roberta-base-shaped model every variant runs: reused if exported, else built here.

Random weights have the compute of ``cardiffnlp/twitter-roberta-base-emotion`` (RobertaConfig
defaults: 12 layers, hidden 768, 4 labels), which is all a speed benchmark needs. The
tokenizer is a byte-level BPE trained on the benchmark's own texts (the real one cannot be
downloaded here); on the tweets it gives 27.4 tokens per tweet against the real 26.9.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from emotion_stream.layout import DEFAULT_MODEL_NAME
from tests.support.tiny_model import build_bpe_roberta

ROBERTA_VOCAB_SIZE = 50265  # roberta-base's vocabulary (embedding table size)
BPE_VOCAB_SIZE = 8000  # what 1,421 tweets can train; ids stay inside the 50,265 rows
# roberta-base's positions: 512 tokens after the padding index (1).
ROBERTA_MAX_POSITIONS = 514
SEED = 6
# Random weights: agreement says nothing, so the exporter's gate is opened.
EXPORT_ARGS = ("--min-agreement", "0", "--max-drift", "1", "--parity-sample", "64")
EXPORT_TIMEOUT_S = 1800


def model_onnx(repository: Path) -> Path:
    return repository / DEFAULT_MODEL_NAME / "1" / "model.onnx"


def tokenizer_dir(repository: Path) -> Path:
    return repository / DEFAULT_MODEL_NAME / "tokenizer"


def exported_from(repository: Path) -> Path | None:
    """The local model folder the repository was exported from, per its export report."""
    report = repository / DEFAULT_MODEL_NAME / "export-report.json"
    try:
        source = json.loads(report.read_text(encoding="utf-8"))["model"]["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Path(source) if isinstance(source, str) and source.startswith("/") else None


def is_exported(repository: Path) -> bool:
    return model_onnx(repository).is_file() and tokenizer_dir(repository).is_dir()


def build_roberta_base(path: Path, texts: list[str]) -> Path:
    """Write a random-weights RobertaForSequenceClassification (roberta-base shape)."""
    return build_bpe_roberta(
        path,
        texts,
        bpe_vocab_size=BPE_VOCAB_SIZE,
        seed=SEED,
        vocab_size=ROBERTA_VOCAB_SIZE,
        max_position_embeddings=ROBERTA_MAX_POSITIONS,
    )


def ensure_repository(
    repository: Path, hf_dir: Path, texts: list[str], log: object = print
) -> Path:
    """``repository`` if it holds an export; else build ``hf_dir`` and export it there."""
    if is_exported(repository):
        return repository
    say = log if callable(log) else print
    if not (hf_dir / "config.json").is_file():
        say(f"building a roberta-base-shaped random-weights model in {hf_dir}")
        build_roberta_base(hf_dir, texts)
    say(f"exporting it with `emotion-stream export` into {repository} (about a minute)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--model",
            str(hf_dir),
            "--output",
            str(repository),
            *EXPORT_ARGS,
        ],
        check=True,
        timeout=EXPORT_TIMEOUT_S,
    )
    return repository
