"""Stage 3: onnxruntime's transformer fusions, before quantizing.

Measured on the target machine (MEASUREMENTS.md, roberta-base shape, batch 32, 2 threads):
INT8 with fusions 39.2 tweets/s against 29.3 without. The fusions run offline in Python
(``opt_level=0``), so the saved graph holds only standard and ``com.microsoft``
operators any onnxruntime (Triton's included) can load, not a session-specific layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import ExportError

log = logging.getLogger(__name__)

# The fusions this project relies on; the report records how many of each were made.
EXPECTED_FUSIONS = ("Attention", "SkipLayerNormalization", "BiasGelu")
# onnxruntime's BERT optimizer also handles RoBERTa (same encoder, other embeddings).
OPTIMIZER_MODEL_TYPE = "bert"


@dataclass(frozen=True)
class FusionResult:
    """The fused graph and the operator counts the optimizer reports."""

    path: Path
    fused: dict[str, int]


def fuse(fp32: Path, workdir: Path, num_heads: int, hidden_size: int) -> FusionResult:
    """Fuse attention, skip-layer-norm and bias-gelu subgraphs of ``fp32``.

    ``EmbedLayerNormalization`` stays off: it would hide the embedding tables inside one
    fused operator that dynamic quantization cannot touch, and they are a third of
    roberta-base's weights (50265 x 768 word embeddings).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions  # noqa: PLC0415
    from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415

    log.info("optimize: onnxruntime transformer fusions")
    options = FusionOptions(OPTIMIZER_MODEL_TYPE)
    options.enable_embed_layer_norm = False
    optimized = optimize_model(
        str(fp32),
        model_type=OPTIMIZER_MODEL_TYPE,
        num_heads=num_heads,
        hidden_size=hidden_size,
        optimization_options=options,
        opt_level=0,
        use_gpu=False,
    )
    statistics = {
        name: int(count) for name, count in optimized.get_fused_operator_statistics().items()
    }
    fused = {name: count for name, count in statistics.items() if count}
    if not fused.get("Attention"):
        raise ExportError(
            "optimize: no attention subgraph was fused; the graph does not look like a "
            "BERT/RoBERTa encoder the onnxruntime optimizer knows"
        )
    path = workdir / "fused.onnx"
    optimized.save_model_to_file(str(path))
    log.info("optimize: fused %s", ", ".join(f"{name} x{count}" for name, count in fused.items()))
    return FusionResult(path=path, fused=fused)
