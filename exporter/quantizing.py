"""Stage 4: dynamic INT8 quantization with onnxruntime's ``quantize_dynamic``.

Choices, and why (MEASUREMENTS.md, AVX2 without VNNI):

- signed 8-bit weights: faster than unsigned on this CPU kind;
- per-channel weights: no speed cost (40.8 tweets/s either way on the roberta-base shape)
  and label agreement with FP32 96.4% → 98.1% on a real-weights model;
- no ``reduce_range``: it cost accuracy (0.812 → 0.807) for +0.1 point agreement;
- activations: uint8, quantized at run time (``DynamicQuantizeLinear`` is uint8 only);
- operators: ``MatMul``, the fused ``Attention`` (→ ``QAttention``) and ``Gather`` (the
  embedding tables), so roberta-base shrinks about 4x, not only its MatMuls;
- ``DefaultTensorType`` FLOAT: without it the quantizer cannot type some tensors of the
  fused graph ("Unable to find data type for weight_name"; optimum's quantizer fails so).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx

log = logging.getLogger(__name__)

OPS_TO_QUANTIZE = ("MatMul", "Attention", "Gather")
KeepFp32 = Literal["none", "classifier", "last-layer", "embeddings"]


@dataclass(frozen=True)
class QuantizationChoice:
    """Everything that decides the INT8 graph; recorded in the report and the fingerprint."""

    weight_type: str = "QInt8"
    activation_type: str = "QUInt8 (dynamic, per tensor, computed at run time)"
    per_channel: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = OPS_TO_QUANTIZE
    keep_fp32: KeepFp32 = "none"
    nodes_kept_fp32: tuple[str, ...] = field(default=())

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        record = asdict(self)
        record["op_types"] = list(self.op_types)
        record["nodes_kept_fp32"] = list(self.nodes_kept_fp32)
        return record


def _quantizer_name(node: onnx.NodeProto) -> str:
    """The name the quantizer knows ``node`` by.

    ``quantize_dynamic`` first rewrites each ``Gemm`` (the classifier head) into
    ``MatMul`` + ``Add`` and names the ``MatMul`` ``<gemm name>_MatMul``; exclusions
    must use that name.
    """
    return f"{node.name}_MatMul" if node.op_type == "Gemm" else node.name


def nodes_to_keep_fp32(fused: Path, keep: KeepFp32) -> tuple[str, ...]:
    """Names of the weight-carrying nodes ``keep`` selects in the fused graph.

    ``classifier``: the classification head (dense + out_proj), whose small matrices
    decide the label directly and cost almost nothing to run in FP32.
    ``last-layer``: the head and the last encoder layer (everything after the
    second-to-last layer's closing ``SkipLayerNormalization``; two per layer).
    ``embeddings``: the embedding tables (``Gather`` on an initializer). A lookup costs
    the same in FP32, but roberta-base's word embeddings alone are 147 MiB in FP32.
    """
    if keep == "none":
        return ()
    graph = onnx.load(str(fused), load_external_data=False).graph
    nodes = list(graph.node)
    weighted = {*OPS_TO_QUANTIZE, "Gemm"}
    if keep == "embeddings":
        tables = {initializer.name for initializer in graph.initializer}
        chosen = [n for n in nodes if n.op_type == "Gather" and n.input[0] in tables]
    elif keep == "classifier":
        chosen = [n for n in nodes if n.op_type in weighted and "classifier" in n.name]
    else:
        closings = [i for i, n in enumerate(nodes) if n.op_type == "SkipLayerNormalization"]
        start = closings[-3] + 1 if len(closings) >= 3 else 0
        chosen = [n for n in nodes[start:] if n.op_type in weighted]
    return tuple(_quantizer_name(node) for node in chosen)


def quantize(
    fused: Path, workdir: Path, keep: KeepFp32 = "none"
) -> tuple[Path, QuantizationChoice, dict[str, int]]:
    """Quantize ``fused`` to INT8; returns the file, the choice made and the INT8 op counts."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    choice = QuantizationChoice(keep_fp32=keep, nodes_kept_fp32=nodes_to_keep_fp32(fused, keep))
    log.info(
        "quantize: dynamic INT8 (s8 weights, per-channel) on %s%s",
        ", ".join(choice.op_types),
        f"; keeping {len(choice.nodes_kept_fp32)} node(s) FP32" if choice.nodes_kept_fp32 else "",
    )
    path = workdir / "int8.onnx"
    quantize_dynamic(
        str(fused),
        str(path),
        weight_type=QuantType.QInt8,
        per_channel=choice.per_channel,
        reduce_range=choice.reduce_range,
        op_types_to_quantize=list(choice.op_types),
        nodes_to_exclude=list(choice.nodes_kept_fp32),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(node.op_type for node in graph.node)
    int8_ops = {
        name: counts[name]
        for name in ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "DequantizeLinear")
        if counts[name]
    }
    return path, choice, int8_ops
