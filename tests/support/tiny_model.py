# mypy: disable-error-code="no-untyped-call"
# (transformers ships no type hints for its model and tokenizer constructors)
"""RoBERTa sequence classifiers with a byte-level BPE tokenizer trained on the fly: the
tests' tiny one, and the benchmarks' roberta-base-shaped one, built by the same code.

- :func:`train_bpe_tokenizer` trains a byte-level BPE on given texts and saves it as
  ``RobertaTokenizerFast``;
- :func:`build_bpe_roberta` writes a seeded random-weights
  ``RobertaForSequenceClassification`` (labels anger/joy/optimism/sadness) and such a
  tokenizer;
- :func:`build_tiny_model` is that with 2 layers and hidden size 64, and
  :func:`build_tiny_model_repository` runs the exporter's real code path on it and
  returns the Triton model repository it wrote.

No pytest here: the fixtures are in :mod:`tests.support.model_fixtures`.

The weights are random but seeded and scaled up so that the predicted label varies
from one text to the next (a model that always says "joy" would hide ordering bugs).
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emotion_stream.layout import DEFAULT_MODEL_NAME, DEFAULT_MODEL_VERSION
from worker.settings import MODEL_MAX_TOKENS

if TYPE_CHECKING:
    from exporter.pipeline import ExportOptions

# torch, transformers and the exporter are imported inside the builders: every test
# session loads the fixtures plugin that imports this module, and most never build a model.

TINY_LABELS = ("anger", "joy", "optimism", "sadness")
TINY_SEED = 20240611
TINY_HIDDEN_SIZE = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_VOCAB_SIZE = 1000
# The worker truncates to MODEL_MAX_TOKENS (128); RoBERTa's positions start after the
# padding index (1), so the model needs 128 + 2 positions.
TINY_MAX_POSITIONS = MODEL_MAX_TOKENS + 2
TINY_WEIGHT_STD = 0.2

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


def train_bpe_tokenizer(
    path: Path, texts: list[str], vocab_size: int, max_tokens: int = MODEL_MAX_TOKENS
) -> Path:
    """Train a byte-level BPE on ``texts``; save it in ``path`` as RobertaTokenizerFast."""
    from tokenizers import ByteLevelBPETokenizer  # noqa: PLC0415
    from transformers import RobertaTokenizerFast  # noqa: PLC0415

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
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
        model_max_length=max_tokens,
    )
    tokenizer.save_pretrained(str(path))
    for leftover in raw.iterdir():
        leftover.unlink()
    raw.rmdir()
    return path


def train_tiny_tokenizer(path: Path) -> Path:
    """The tiny model's tokenizer: trained on :func:`sample_sentences`."""
    return train_bpe_tokenizer(path, sample_sentences(), TINY_VOCAB_SIZE)


def build_bpe_roberta(
    path: Path,
    texts: list[str],
    *,
    bpe_vocab_size: int,
    seed: int,
    weight_std: float | None = None,
    with_labels: bool = True,
    **config: Any,
) -> Path:
    """Write a random-weights RoBERTa sequence classifier and its tokenizer into ``path``.

    Parameters
    ----------
    path:
        Folder to create (parents too); returned for convenience.
    texts, bpe_vocab_size:
        What the tokenizer is trained on, and its vocabulary size.
    seed:
        ``torch.manual_seed`` before the weights are drawn: the same model every time.
    weight_std:
        Redraw every weight matrix (not LayerNorm) from N(0, weight_std); None keeps
        transformers' initialisation.
    with_labels:
        ``False`` leaves ``id2label`` at transformers' default (``LABEL_0``…), to test the
        exporter's fallback.
    config:
        ``RobertaConfig`` fields (sizes, positions, vocabulary).
    """
    import torch  # noqa: PLC0415
    from transformers import RobertaConfig, RobertaForSequenceClassification  # noqa: PLC0415

    path.mkdir(parents=True, exist_ok=True)
    train_bpe_tokenizer(path, texts, bpe_vocab_size)
    labels = dict(enumerate(TINY_LABELS))
    if with_labels:
        config |= {"id2label": labels, "label2id": {v: k for k, v in labels.items()}}
    model_config = RobertaConfig(type_vocab_size=1, num_labels=len(TINY_LABELS), **config)
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(model_config).eval()
    if weight_std is not None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.dim() > 1 and "LayerNorm" not in name:
                    param.normal_(0.0, weight_std)
    model.save_pretrained(str(path))
    return path


def build_tiny_model(path: Path, *, with_labels: bool = True) -> Path:
    """Write the tiny RoBERTa sequence classifier and its tokenizer into ``path``
    (``with_labels=False``: transformers' default label names)."""
    return build_bpe_roberta(
        path,
        sample_sentences(),
        bpe_vocab_size=TINY_VOCAB_SIZE,
        seed=TINY_SEED,
        # The default init (std 0.02) gives near-uniform logits whose argmax barely
        # moves; a larger spread makes labels vary across inputs.
        weight_std=TINY_WEIGHT_STD,
        with_labels=with_labels,
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=TINY_HIDDEN_SIZE,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=4 * TINY_HIDDEN_SIZE,
        max_position_embeddings=TINY_MAX_POSITIONS,
    )


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
