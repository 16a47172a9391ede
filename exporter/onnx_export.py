"""Stage 2: the PyTorch classifier → an FP32 ONNX graph, with optimum.

Batch and sequence axes stay dynamic (optimum's default for text classification), so
Triton can take any batch up to ``max_batch_size`` and the worker can pad to the
longest tweet of a batch instead of to 128.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx

from exporter.errors import ExportError
from exporter.loading import WORKER_INPUTS, LoadedModel

log = logging.getLogger(__name__)

ONNX_TASK = "text-classification"
OUTPUT_NAME = "logits"
# optimum's file name inside its output folder.
OPTIMUM_ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class OnnxGraphFacts:
    """What the exported graph declares."""

    opset: int
    inputs: list[str]
    outputs: list[str]


def export_fp32(loaded: LoadedModel, workdir: Path, opset: int | None = None) -> Path:
    """Export ``loaded.model`` to ``workdir/model.onnx`` and check its interface.

    Raises
    ------
    ExportError
        optimum cannot export the model, or the graph's inputs are not exactly the
        worker's (``input_ids``, ``attention_mask``) or its output is not ``logits``.
    """
    from optimum.exporters.onnx import onnx_export_from_model  # noqa: PLC0415 - imports torch

    log.info("export: PyTorch -> ONNX (optimum, dynamic batch and sequence axes)")
    target = workdir / "fp32"
    try:
        with warnings.catch_warnings():
            # torch.jit's TracerWarnings about constants are expected for this graph.
            warnings.simplefilter("ignore")
            onnx_export_from_model(
                loaded.model, target, opset=opset, task=ONNX_TASK, do_validation=False
            )
    except (ValueError, KeyError, RuntimeError) as error:
        raise ExportError(
            f"{loaded.source.model_id}: optimum cannot export it ({error})"
        ) from error
    path = target / OPTIMUM_ONNX_FILE
    facts = graph_facts(path)
    if sorted(facts.inputs) != sorted(WORKER_INPUTS) or facts.outputs != [OUTPUT_NAME]:
        raise ExportError(
            f"{loaded.source.model_id}: exported graph takes {facts.inputs} and returns "
            f"{facts.outputs}; the worker needs {list(WORKER_INPUTS)} -> ['{OUTPUT_NAME}']"
        )
    return path


def graph_facts(path: Path) -> OnnxGraphFacts:
    """Opset (default domain), input and output names of the ONNX file at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    opset = next(
        (entry.version for entry in model.opset_import if entry.domain in {"", "ai.onnx"}), 0
    )
    return OnnxGraphFacts(
        opset=int(opset),
        inputs=[tensor.name for tensor in model.graph.input],
        outputs=[tensor.name for tensor in model.graph.output],
    )
