"""Stage 1: find the model (hub id or local folder) and load it with its tokenizer.

Resolving and loading are separate so that the repository writer can tell whether an
export would be a no-op (same input files, same options) before anything heavy runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import ExportError

log = logging.getLogger(__name__)

# The tensors the worker sends Triton, and so the only inputs the exported model may take.
WORKER_INPUTS = ("input_ids", "attention_mask")
# The worker truncates every tweet to 128 tokens (DESIGN.md: "tokenize (truncate 128)").
MODEL_MAX_TOKENS = 128
# Hub files that are never needed to export a PyTorch checkpoint.
HUB_IGNORE = ("*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "*.tflite", "*.mlmodel", "*.gguf")


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files on local disk and where they came from."""

    model_id: str
    """What the user named: a hub id or a local folder."""
    local_dir: Path
    """The folder holding config.json, the weights and the tokenizer files."""
    revision: str | None
    """The revision asked for (hub only)."""
    commit: str | None
    """The hub commit the revision resolved to (hub only)."""


@dataclass(frozen=True)
class LoadedModel:
    """A sequence classifier ready to export, with its tokenizer and labels."""

    source: ResolvedModel
    model: Any
    """A ``transformers`` ``*ForSequenceClassification`` in eval mode."""
    tokenizer: Any
    """The matching fast tokenizer."""
    labels: list[str]
    """Label names in id order."""
    labels_defaulted: bool
    """True when the model had no ``id2label`` and ``LABEL_<i>`` names were made up."""
    model_type: str
    num_heads: int
    hidden_size: int


def looks_like_path(model: str) -> bool:
    """A name the user meant as a folder (hub ids are ``owner/name``, never these)."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).exists()


def resolve_model(model: str, revision: str | None) -> ResolvedModel:
    """Find the model's files: a local folder as is, a hub id through the hub cache.

    A local folder touches no network. A hub id is downloaded (or taken from the cache)
    with ``huggingface_hub``, which shows its own progress bars.

    Raises
    ------
    ExportError
        The folder does not exist, or the hub cannot provide the model (unknown id,
        no network, ``HF_HUB_OFFLINE`` and not cached): one line naming the model and
        suggesting a local path.
    """
    if looks_like_path(model):
        local = Path(model).expanduser()
        if not (local / "config.json").is_file():
            raise ExportError(f"{model}: not a Hugging Face model folder (no config.json there)")
        if revision is not None:
            log.warning("warning: --revision %s ignored: %s is a local folder", revision, model)
        return ResolvedModel(model_id=model, local_dir=local.resolve(), revision=None, commit=None)

    from huggingface_hub import snapshot_download  # noqa: PLC0415 - only hub ids need it

    log.info("download: %s%s from the Hugging Face Hub", model, f"@{revision}" if revision else "")
    try:
        snapshot = Path(
            snapshot_download(model, revision=revision, ignore_patterns=list(HUB_IGNORE))
        )
    except Exception as error:  # the hub raises many types (HTTP, offline, not found, OSError)
        reason = _first_sentence(str(error))
        raise ExportError(
            f"cannot get model {model!r} from the Hugging Face Hub ({type(error).__name__}"
            f"{': ' + reason if reason else ''}); download it elsewhere and pass its folder: "
            "--model /path/to/model"
        ) from error
    return ResolvedModel(
        model_id=model, local_dir=snapshot, revision=revision, commit=snapshot.name
    )


def _first_sentence(message: str, limit: int = 160) -> str:
    """The first sentence of a (possibly multi-line) library message, for a one-line error."""
    first = message.strip().split("\n", 1)[0].split(". ", 1)[0].strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


def load_model(source: ResolvedModel) -> LoadedModel:
    """Load the classifier and tokenizer from ``source.local_dir`` without network.

    Raises
    ------
    ExportError
        Not a sequence classifier; a tokenizer that produces ``token_type_ids``
        (BERT family: the worker sends only ``input_ids`` and ``attention_mask``).
    """
    from transformers import (  # noqa: PLC0415 - torch is heavy; --help must stay fast
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    where = source.model_id
    try:
        config = AutoConfig.from_pretrained(source.local_dir, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ExportError(f"{where}: cannot read its config.json ({error})") from error
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(architectures) or "no architectures in config.json"
        raise ExportError(
            f"{where} is not a sequence classifier ({found}); the exporter needs a "
            "*ForSequenceClassification checkpoint"
        )

    log.info("load: %s (%s)", where, architectures[0])
    try:
        tokenizer = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            source.local_dir, local_files_only=True
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            source.local_dir, local_files_only=True
        ).eval()
    except (OSError, ValueError) as error:
        raise ExportError(f"{where}: cannot load model or tokenizer ({error})") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{where}: the worker needs a fast (Rust) tokenizer; none found")

    extra = [name for name in tokenizer.model_input_names if name not in WORKER_INPUTS]
    if extra:
        raise ExportError(
            f"{where} ({config.model_type}) takes {', '.join(extra)} besides input_ids and "
            "attention_mask (BERT family); the worker sends exactly input_ids and "
            "attention_mask, so only RoBERTa-family models are supported"
        )

    count = int(config.num_labels)
    labels = [str(config.id2label[i]) for i in range(count)]
    defaulted = labels == [f"LABEL_{i}" for i in range(count)]
    if defaulted:
        log.warning(
            "warning: %s has no id2label; labels.txt will say LABEL_0..LABEL_%d", where, count - 1
        )

    max_positions = int(getattr(config, "max_position_embeddings", 0))
    # RoBERTa's positions start after the padding index, so 128 tokens need 130 positions.
    if max_positions and max_positions - 2 < MODEL_MAX_TOKENS and config.model_type == "roberta":
        raise ExportError(
            f"{where} has only {max_positions} positions; the worker sends up to "
            f"{MODEL_MAX_TOKENS} tokens"
        )
    tokenizer.model_max_length = MODEL_MAX_TOKENS
    return LoadedModel(
        source=source,
        model=model,
        tokenizer=tokenizer,
        labels=labels,
        labels_defaulted=defaulted,
        model_type=str(config.model_type),
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
    )
