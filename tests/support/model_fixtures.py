# mypy: disable-error-code="no-untyped-call"
# (transformers ships no type hints for its model and tokenizer constructors)
"""Tiny Hugging Face model + tokenizer, and a model repository exported from it.

A pytest plugin (registered in ``tests/conftest.py``). The building functions are
plain functions too, so benchmarks and other tests can call them without pytest:

- :func:`build_tiny_model` writes a 2-layer ``RobertaForSequenceClassification``
  (hidden size 64, labels anger/joy/optimism/sadness) and a byte-level BPE tokenizer
  trained on the fly, saved as ``RobertaTokenizerFast``.
- :func:`build_tiny_model_repository` runs the exporter's real code path on such a
  model and returns the Triton model repository it wrote.

The weights are random but seeded and scaled up so that the predicted label varies
from one text to the next (a model that always says "joy" would hide ordering bugs).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from emotion_stream.layout import DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION

if TYPE_CHECKING:
    from exporter.pipeline import ExportOptions

# torch, transformers and the exporter are imported inside the builders: this plugin is
# loaded by every test session, and most sessions never build a model.

TINY_LABELS = ("anger", "joy", "optimism", "sadness")
TINY_SEED = 20240611
TINY_HIDDEN_SIZE = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_VOCAB_SIZE = 1000
# The worker truncates to 128 tokens; RoBERTa's positions start after the padding
# index (1), so the model needs 128 + 2 positions.
MODEL_MAX_TOKENS = 128
TINY_MAX_POSITIONS = MODEL_MAX_TOKENS + 2

_SUBJECTS = ["I", "we", "my boss", "the team", "this city", "our coach", "everyone", "she"]
_VERBS = ["love", "hate", "miss", "fear", "can't stand", "hope for", "cried over", "laughed at"]
_OBJECTS = [
    "mondays",
    "the rain",
    "this game",
    "the new album",
    "traffic",
    "my exams",
    "the weekend",
    "that ending",
    "the referee",
    "sunny mornings",
]
_TAILS = ["!", " :(", " #blessed", " so much", " again...", " @friend", " 😡", " 😂", " lol", "."]


def sample_sentences(count: int = 400) -> list[str]:
    """Deterministic tweet-like sentences to train the tiny tokenizer and feed tests."""
    rng = random.Random(TINY_SEED)
    combos = list(itertools.product(_SUBJECTS, _VERBS, _OBJECTS))
    rng.shuffle(combos)
    return [
        f"{s} {v} {o}{rng.choice(_TAILS)}"
        for s, v, o in itertools.islice(itertools.cycle(combos), count)
    ]


def _train_tokenizer(path: Path) -> None:
    """Train a byte-level BPE on :func:`sample_sentences`; save it as RobertaTokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer  # noqa: PLC0415
    from transformers import RobertaTokenizerFast  # noqa: PLC0415

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        sample_sentences(),
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    raw = path / "bpe"
    raw.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(raw))
    tokenizer = RobertaTokenizerFast(
        vocab_file=str(raw / "vocab.json"),
        merges_file=str(raw / "merges.txt"),
        model_max_length=MODEL_MAX_TOKENS,
    )
    tokenizer.save_pretrained(str(path))
    for leftover in raw.iterdir():
        leftover.unlink()
    raw.rmdir()


def build_tiny_model(path: Path, *, with_labels: bool = True) -> Path:
    """Write a tiny RoBERTa sequence classifier and its tokenizer into ``path``.

    Parameters
    ----------
    path:
        Folder to create (parents too); returned for convenience.
    with_labels:
        ``False`` leaves ``id2label`` at transformers' default (``LABEL_0``…), to test the
        exporter's fallback.
    """
    import torch  # noqa: PLC0415
    from transformers import RobertaConfig, RobertaForSequenceClassification  # noqa: PLC0415

    path.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(path)
    labels = dict(enumerate(TINY_LABELS))
    config = RobertaConfig(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=TINY_HIDDEN_SIZE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=4 * TINY_HIDDEN_SIZE,
        max_position_embeddings=TINY_MAX_POSITIONS,
        type_vocab_size=1,
        num_labels=len(TINY_LABELS),
        **(
            {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
            if with_labels
            else {}
        ),
    )
    torch.manual_seed(TINY_SEED)
    model = RobertaForSequenceClassification(config).eval()
    with torch.no_grad():
        # The default init (std 0.02) gives near-uniform logits whose argmax barely
        # moves; a larger spread makes labels vary across inputs.
        for name, param in model.named_parameters():
            if param.dim() > 1 and "LayerNorm" not in name:
                param.normal_(0.0, 0.2)
    model.save_pretrained(str(path))
    return path


# Random weights say nothing about fidelity: the tiny exports pass any agreement, and
# the tests that exercise the gate set their own thresholds.
TINY_GATE = {"min_agreement": 0.0, "max_f1_drop": 100.0, "max_drift": 1.0}
TINY_PARITY_SAMPLE = 64


def tiny_export_options(model_dir: Path, repository: Path, **overrides: Any) -> ExportOptions:
    """The options the tiny repository is exported with; ``overrides`` replace any field."""
    from exporter.pipeline import ExportOptions  # noqa: PLC0415

    fields: dict[str, Any] = {
        "model": str(model_dir),
        "output": repository,
        "model_name": DEFAULT_MODEL_NAME,
        "version": DEFAULT_MODEL_VERSION,
        "parity_sample": TINY_PARITY_SAMPLE,
        **TINY_GATE,
        **overrides,
    }
    return ExportOptions(**fields)


def build_tiny_model_repository(model_dir: Path, repository: Path) -> Path:
    """Export ``model_dir`` through the exporter's real code path into ``repository``."""
    from exporter.pipeline import run_export  # noqa: PLC0415

    run_export(tiny_export_options(model_dir, repository))
    return repository


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local HF model dir: tiny RoBERTa classifier (4 emotion labels) + BPE tokenizer."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-hf-model"))


@pytest.fixture(scope="session")
def tiny_model_repository(tiny_hf_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton model repository (``emotion-classifier``, v1) exported from the tiny model."""
    return build_tiny_model_repository(tiny_hf_model, tmp_path_factory.mktemp("model-repository"))
