"""Generate the Python-backend twin of an exporter-written Triton model repository.

The exporter writes ``platform: "onnxruntime_onnx"`` models; pytriton's ``tritonserver``
has no onnxruntime backend, only the Python one. The twin keeps everything a client can
see — model name, inputs, outputs, dims, labels, ``max_batch_size``, dynamic batching,
parameters — and swaps the platform for ``backend: "python"`` with
:mod:`compose.triton_twin.model`, which runs onnxruntime on the *same* ``model.onnx``
(symlinked, never copied).

Limits the twin enforces (vocabulary size, longest sequence) are read from the ONNX graph
when the ``onnx`` package is installed; the exporter's own config parameters win when it
sets them.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format  # type: ignore[import-untyped]
from tritonclient.grpc import model_config_pb2 as mc

from compose.triton_twin import model as twin_model
from emotion_stream.layout import CONFIG_FILE, INPUT_IDS, ONNX_FILE, TOKENIZER_DIR

ONNX_PLATFORM = "onnxruntime_onnx"
PYTHON_BACKEND = "python"
TWIN_MODEL_FILE = "model.py"
TWIN_MODEL_SOURCE = Path(twin_model.__file__)
# Ops that carry token ids unchanged in value (only in shape or type), between the graph
# input and the embedding lookup.
_ID_PRESERVING_OPS = frozenset({"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten"})
# RoBERTa-family models number positions from padding_idx + 1 (= 2), so a table of N
# position embeddings holds N - 2 tokens (512 + 2 in roberta-base).
_ROBERTA_MODEL_TYPES = frozenset({"roberta", "xlm-roberta", "camembert"})
_ROBERTA_POSITION_OFFSET = 2
_ROBERTA_TOKENIZER_PREFIXES = ("Roberta", "XLMRoberta", "Camembert")
_log = logging.getLogger(__name__)


class TwinError(Exception):
    """The source repository cannot be mirrored (no ONNX model, unreadable config)."""


@dataclass(frozen=True)
class TwinModel:
    """One model of the twin repository and where it came from."""

    name: str
    source_dir: Path
    twin_dir: Path
    versions: tuple[int, ...]


def read_config(path: Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` with Triton's own schema (unknown fields are errors)."""
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    except (OSError, text_format.ParseError) as error:
        raise TwinError(f"cannot read Triton config {path}: {error}") from error


def discover_limits(onnx_path: Path, model_dir: Path) -> twin_model.InputLimits:
    """The vocabulary size and longest sequence the ONNX model accepts, when knowable.

    Reads the embedding tables' shapes from the graph (weights stay on disk) and, for
    RoBERTa-family models, subtracts the position offset. Unknown without ``onnx``.
    """
    try:
        import onnx  # noqa: PLC0415 - optional: the `local` extra does not install it
    except ImportError:
        return twin_model.InputLimits()
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as error:  # unreadable here: Triton's load reports it properly
        _log.warning("cannot read input limits from %s: %s", onnx_path, error)
        return twin_model.InputLimits()
    rows = {init.name: int(init.dims[0]) for init in graph.initializer if init.dims}
    token_ids = {INPUT_IDS}
    vocab_size: int | None = None
    positions: int | None = None
    for node in graph.node:
        inputs = list(node.input)
        if node.op_type in _ID_PRESERVING_OPS and inputs and inputs[0] in token_ids:
            token_ids.update(node.output)
        elif node.op_type == "Gather" and len(inputs) == 2 and inputs[0] in rows:
            if inputs[1] in token_ids and vocab_size is None:
                vocab_size = rows[inputs[0]]
            elif "position" in inputs[0].lower() and positions is None:
                positions = rows[inputs[0]]
        elif node.op_type == "EmbedLayerNormalization" and inputs and inputs[0] in token_ids:
            # Fused embeddings: word table, then position table (onnxruntime contrib op).
            vocab_size = rows.get(inputs[2], vocab_size)
            positions = rows.get(inputs[3], positions)
    if positions is not None and _numbers_positions_like_roberta(model_dir):
        positions -= _ROBERTA_POSITION_OFFSET
    return twin_model.InputLimits(vocab_size=vocab_size, max_sequence_length=positions)


def _numbers_positions_like_roberta(model_dir: Path) -> bool:
    """Whether the model (by its HF config or tokenizer class) is RoBERTa-family."""
    for candidate in (model_dir / "config.json", model_dir / TOKENIZER_DIR / "config.json"):
        if candidate.is_file():
            model_type = str(read_json_object(candidate).get("model_type", ""))
            return model_type in _ROBERTA_MODEL_TYPES
    tokenizer_config = model_dir / TOKENIZER_DIR / "tokenizer_config.json"
    if tokenizer_config.is_file():
        tokenizer_class = str(read_json_object(tokenizer_config).get("tokenizer_class", ""))
        return tokenizer_class.startswith(_ROBERTA_TOKENIZER_PREFIXES)
    return False


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file's top-level object; ``{}`` when it is missing, unreadable or not an object."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def twin_config(
    source: mc.ModelConfig,
    limits: twin_model.InputLimits,
    *,
    intra_op_threads: int = 0,
) -> mc.ModelConfig:
    """The Python-backend config mirroring an ``onnxruntime_onnx`` config.

    Parameters
    ----------
    source:
        The exporter's config.
    limits:
        Input limits for the twin to enforce (exporter parameters with the same keys win).
    intra_op_threads:
        onnxruntime intra-op threads when the source config does not set them
        (0: onnxruntime's default, one per core).
    """
    twin = mc.ModelConfig()
    twin.CopyFrom(source)
    twin.platform = ""
    twin.backend = PYTHON_BACKEND
    twin.ClearField("default_model_filename")
    # GPU/TensorRT accelerators belong to the onnxruntime backend; the twin runs on CPU.
    twin.ClearField("optimization")
    del twin.instance_group[:]
    twin.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=_instance_count(source))
    defaults = {
        twin_model.PARAM_INTRA_OP_THREADS: str(intra_op_threads),
        twin_model.PARAM_INTER_OP_THREADS: "1",
        twin_model.PARAM_VOCAB_SIZE: "" if limits.vocab_size is None else str(limits.vocab_size),
        twin_model.PARAM_MAX_SEQUENCE_LENGTH: (
            "" if limits.max_sequence_length is None else str(limits.max_sequence_length)
        ),
    }
    for key, value in defaults.items():
        if key not in twin.parameters and value:
            twin.parameters[key].string_value = value
    return twin


def _instance_count(source: mc.ModelConfig) -> int:
    """As many instances as the source asks for in total (one when unspecified)."""
    return max(1, sum(int(group.count) for group in source.instance_group))


def generate_twin_repository(
    source_repository: Path,
    twin_repository: Path,
    *,
    intra_op_threads: int = 0,
) -> list[TwinModel]:
    """Write a twin of every ``onnxruntime_onnx`` model of ``source_repository``.

    Each twin model folder is rebuilt from scratch: ``config.pbtxt``, the label files the
    outputs name (copied: a few bytes), and per version ``model.py`` plus a symbolic link
    ``model.onnx`` to the source file's absolute path.

    Raises
    ------
    TwinError
        No ONNX model to mirror, or an unreadable config.
    """
    source_repository = source_repository.resolve()
    twins: list[TwinModel] = []
    for config_path in sorted(source_repository.glob(f"*/{CONFIG_FILE}")):
        model_dir = config_path.parent
        source = read_config(config_path)
        if source.platform != ONNX_PLATFORM and source.backend != "onnxruntime":
            continue
        versions = sorted(
            int(child.name)
            for child in model_dir.iterdir()
            if child.name.isdigit() and (child / ONNX_FILE).is_file()
        )
        if not versions:
            continue
        name = source.name or model_dir.name
        twin_dir = twin_repository / model_dir.name
        if twin_dir.exists():
            shutil.rmtree(twin_dir)
        twin_dir.mkdir(parents=True)
        limits = discover_limits(model_dir / str(versions[-1]) / ONNX_FILE, model_dir)
        config = twin_config(source, limits, intra_op_threads=intra_op_threads)
        config.name = name
        (twin_dir / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
        for output in source.output:
            if output.label_filename:
                shutil.copyfile(model_dir / output.label_filename, twin_dir / output.label_filename)
        for version in versions:
            version_dir = twin_dir / str(version)
            version_dir.mkdir()
            shutil.copyfile(TWIN_MODEL_SOURCE, version_dir / TWIN_MODEL_FILE)
            (version_dir / ONNX_FILE).symlink_to(model_dir / str(version) / ONNX_FILE)
        twins.append(TwinModel(name, model_dir, twin_dir, tuple(versions)))
    if not twins:
        raise TwinError(
            f"no ONNX model in {source_repository} (expected <model>/{CONFIG_FILE} with "
            f'platform "{ONNX_PLATFORM}" and <model>/<version>/{ONNX_FILE}); '
            "run `emotion-stream export` first"
        )
    return twins
