"""The export, top-down: load → export → optimize → quantize → parity → write → report.

:func:`run_export` is the one entry point; the CLI and the test fixtures both call it.
Each stage lives in its own module; this one only orders them and carries results.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from emotion_stream.layout import (
    DEFAULT_HUB_MODEL,
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_VERSION,
    ModelLayout,
    default_repository,
)
from exporter.errors import ExportError
from exporter.loading import LoadedModel, load_model, resolve_model
from exporter.onnx_export import export_fp32, graph_facts
from exporter.optimizing import fuse
from exporter.parity import (
    DEFAULT_MAX_DRIFT,
    DEFAULT_MAX_F1_DROP,
    DEFAULT_MIN_AGREEMENT,
    ParityFigures,
    enforce_gate,
    measure_parity,
)
from exporter.quantizing import KeepFp32, quantize
from exporter.repository import (
    file_sha256,
    fingerprint,
    is_up_to_date,
    publish,
    read_report,
    recover,
    writable_repository,
)
from exporter.runtime import TRITON_MAX_BATCH, Threads, open_session
from exporter.speed import measure_speed
from exporter.texts import LabelledText, read_jsonl, sample_texts
from exporter.triton_config import DEFAULT_THREADS, config_pbtxt, labels_txt

log = logging.getLogger(__name__)

# Bumped when the exporter's output changes for the same inputs, so old exports redo.
# 2: the gate decides on a confidence bound and on drift, and the report says so.
REPORT_SCHEMA = 2
DEFAULT_PARITY_SAMPLE = 512
DEFAULT_BENCHMARK_BATCHES = 3
MIB = 1 << 20
TOOL_PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")


@dataclass(frozen=True)
class ExportOptions:
    """Everything a user can choose about an export (the CLI's flags)."""

    model: str = DEFAULT_HUB_MODEL
    """Hub id or local model folder."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for a local folder."""
    output: Path = field(default_factory=default_repository)
    """The Triton model repository to write into."""
    model_name: str = DEFAULT_MODEL_NAME
    version: int = DEFAULT_MODEL_VERSION
    max_batch_size: int = TRITON_MAX_BATCH
    threads: Threads = DEFAULT_THREADS
    """onnxruntime threads: in config.pbtxt and for the in-process measurements."""
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    """FP32-vs-INT8 label agreement (0-1) the gate requires: it fails when the one-sided
    95 % upper confidence bound of the measured agreement is below this."""
    max_drift: float = DEFAULT_MAX_DRIFT
    """Largest mean (over texts) of each text's largest class-probability change."""
    max_f1_drop: float = DEFAULT_MAX_F1_DROP
    """Largest macro-F1 drop (points, with --eval-file) that passes the gate."""
    eval_file: Path | None = None
    """JSON lines with text and label: accuracy and macro-F1 of FP32 and INT8."""
    parity_sample: int = DEFAULT_PARITY_SAMPLE
    """How many sample texts the parity check runs on (without an eval file)."""
    benchmark_batches: int = DEFAULT_BENCHMARK_BATCHES
    """Batches of 32 timed for the throughput figure."""
    keep_fp32: KeepFp32 = "none"
    """Nodes left in FP32: none, classifier, last-layer or embeddings (see quantizing)."""
    opset: int | None = None
    """ONNX opset; None takes optimum's default for the architecture."""
    force: bool = False
    """Rebuild even when the repository already holds this export."""

    def shaping_record(self) -> dict[str, Any]:
        """The options that decide the output (what the fingerprint covers)."""
        record = asdict(self)
        for volatile in ("output", "force"):
            record.pop(volatile)
        record["schema"] = REPORT_SCHEMA
        if self.eval_file is not None:
            record["eval_file"] = (
                file_sha256(self.eval_file) if self.eval_file.is_file() else str(self.eval_file)
            )
        return record

    def validate(self) -> None:
        """Raise :class:`ExportError` for values that cannot work."""
        if not self.max_batch_size >= 1:
            raise ExportError(f"--max-batch-size must be at least 1, not {self.max_batch_size}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ExportError(f"--min-agreement is a fraction in [0, 1], not {self.min_agreement}")
        if not 0.0 <= self.max_drift <= 1.0:
            raise ExportError(f"--max-drift is a probability in [0, 1], not {self.max_drift}")
        if self.parity_sample < 1 or self.benchmark_batches < 1:
            raise ExportError("--parity-sample and the benchmark batches must be at least 1")
        if self.threads.intra_op < 0 or self.threads.inter_op < 0:
            raise ExportError("thread counts cannot be negative")
        if "/" in self.model_name or not self.model_name.strip() or self.model_name.startswith("."):
            raise ExportError(f"--model-name {self.model_name!r} is not a usable folder name")


@dataclass(frozen=True)
class ExportOutcome:
    """What :func:`run_export` did."""

    layout: ModelLayout
    report: dict[str, Any]
    skipped: bool
    """True when the repository already held this export (no --force)."""


def run_export(options: ExportOptions) -> ExportOutcome:
    """Export ``options.model`` into ``options.output``, or do nothing if already there.

    Raises
    ------
    ExportError
        Any failure a user can act on, including a failed parity gate; the repository
        is then as it was before.
    """
    options.validate()
    layout = ModelLayout(options.output, options.model_name, options.version)
    # A bad eval file should fail before minutes of export, not after.
    eval_rows = read_jsonl(options.eval_file) if options.eval_file is not None else None
    with writable_repository(options.output):
        recover(layout)
        source = resolve_model(options.model, options.revision)
        expected = fingerprint(source.local_dir, options.shaping_record())
        if not options.force and is_up_to_date(layout, expected):
            log.info(
                "up to date: %s already holds this export (--force rebuilds)", layout.model_dir
            )
            return ExportOutcome(layout, read_report(layout) or {}, skipped=True)
        loaded = load_model(source)
        with tempfile.TemporaryDirectory(prefix="emotion-stream-export-") as scratch:
            report = _build(
                loaded, options, eval_rows, work=Path(scratch), layout=layout, expected=expected
            )
    return ExportOutcome(layout, report, skipped=False)


def _build(
    loaded: LoadedModel,
    options: ExportOptions,
    eval_rows: list[LabelledText] | None,
    *,
    work: Path,
    layout: ModelLayout,
    expected: str,
) -> dict[str, Any]:
    """The heavy stages, in a scratch folder; publishes only after the gate passed."""
    fp32_path = export_fp32(loaded, work, options.opset)
    fusion = fuse(fp32_path, work, loaded.num_heads, loaded.hidden_size)
    int8_path, choice, int8_ops = quantize(fusion.path, work, options.keep_fp32)

    fp32 = open_session(fp32_path, options.threads)
    int8 = open_session(int8_path, options.threads)
    texts, text_source = sample_texts(options.parity_sample)
    if eval_rows is not None:
        text_source = str(options.eval_file)
    parity = measure_parity(
        fp32,
        int8,
        loaded.tokenizer,
        texts=texts,
        text_source=text_source,
        labels=loaded.labels,
        eval_rows=eval_rows,
    )
    gate = enforce_gate(parity, options.min_agreement, options.max_f1_drop, options.max_drift)
    log.info("parity gate passed on %d texts: %s", parity.texts, gate["decided_by"])

    log.info("benchmark: latency at batch 1, throughput at batch %d", TRITON_MAX_BATCH)
    speed_texts = texts if eval_rows is None else [row.text for row in eval_rows]
    speed = {
        name: asdict(
            measure_speed(session, loaded.tokenizer, speed_texts, options.benchmark_batches)
        )
        for name, session in (("fp32", fp32), ("int8", int8))
    }
    facts = graph_facts(int8_path)
    fp32_bytes = _onnx_bytes(fp32_path)
    int8_bytes = int8_path.stat().st_size
    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "fingerprint": expected,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "id": loaded.source.model_id,
            "revision": loaded.source.revision,
            "commit": loaded.source.commit,
            "model_type": loaded.model_type,
            "labels": loaded.labels,
            "labels_defaulted": loaded.labels_defaulted,
        },
        "onnx": {
            "opset": facts.opset,
            "inputs": facts.inputs,
            "outputs": facts.outputs,
            "dynamic_axes": ["batch_size", "sequence_length"],
        },
        "fusions": fusion.fused,
        "quantization": {**choice.as_record(), "int8_operators": int8_ops},
        "sizes": {
            "fp32_bytes": fp32_bytes,
            "int8_bytes": int8_bytes,
            "fp32_mib": round(fp32_bytes / MIB, 2),
            "int8_mib": round(int8_bytes / MIB, 2),
            "reduction": round(fp32_bytes / int8_bytes, 2),
        },
        "parity": parity.as_record(),
        "gate": gate,
        "speed": {"threads": asdict(options.threads), "text_source": text_source, **speed},
        "triton": {
            "model_name": options.model_name,
            "version": options.version,
            "max_batch_size": options.max_batch_size,
        },
        "tools": {name: package_version(name) for name in TOOL_PACKAGES},
    }

    def build(staging: ModelLayout) -> None:
        staging.version_dir.mkdir(parents=True)
        shutil.copyfile(int8_path, staging.onnx)
        loaded.tokenizer.save_pretrained(str(staging.tokenizer_dir))
        staging.config.write_text(
            config_pbtxt(
                options.model_name, len(loaded.labels), options.max_batch_size, options.threads
            ),
            encoding="utf-8",
        )
        staging.labels.write_text(labels_txt(loaded.labels), encoding="utf-8")
        report["files"] = _file_hashes(staging.model_dir)
        staging.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    publish(layout, build)
    return report


def _onnx_bytes(path: Path) -> int:
    """Size of an ONNX model including its external-data file (optimum's ``*.onnx_data``)."""
    external = path.with_name(path.name + "_data")
    return path.stat().st_size + (external.stat().st_size if external.is_file() else 0)


def _file_hashes(model_dir: Path) -> dict[str, str]:
    """SHA-256 of every file in the model folder, by relative path."""
    return {
        str(path.relative_to(model_dir)): file_sha256(path)
        for path in sorted(model_dir.rglob("*"))
        if path.is_file()
    }


def summary(outcome: ExportOutcome) -> str:
    """A readable multi-line account of an export for stdout."""
    report = outcome.report
    if outcome.skipped:
        return f"{outcome.layout.model_dir}: already up to date (use --force to rebuild)"
    sizes, parity, gate = report["sizes"], report["parity"], report["gate"]
    speed = report["speed"]
    lines = [
        f"exported {report['model']['id']} -> {outcome.layout.model_dir}",
        f"  labels        {', '.join(report['model']['labels'])}",
        f"  onnx          opset {report['onnx']['opset']}, "
        f"inputs {', '.join(report['onnx']['inputs'])}",
        "  fusions       " + ", ".join(f"{k} x{v}" for k, v in report["fusions"].items()),
        f"  size          {sizes['fp32_mib']} MiB FP32 -> {sizes['int8_mib']} MiB INT8 "
        f"({sizes['reduction']}x smaller)",
        f"  parity        agreement {parity['label_agreement']:.2%} on {parity['texts']} texts "
        f"({parity['text_source']}); max |dp| {parity['max_abs_prob_diff']:.4f}, "
        f"mean drift {parity['mean_text_drift']:.4f}; "
        f"fixed-128 vs dynamic {parity['fixed_vs_dynamic_agreement']:.2%}",
        f"  gate          passed on {gate['texts']} texts: {gate['decided_by']}",
    ]
    evaluation: dict[str, Any] | None = parity.get("evaluation")
    if evaluation:
        lines.append(
            f"  eval          accuracy {evaluation['accuracy_fp32']:.3f} -> "
            f"{evaluation['accuracy_int8']:.3f}, "
            f"macro-F1 {evaluation['macro_f1_fp32']:.3f} -> {evaluation['macro_f1_int8']:.3f}"
        )
    for name in ("fp32", "int8"):
        lines.append(
            f"  speed {name:<7} {speed[name]['latency_ms_batch1']:.1f} ms at batch 1, "
            f"{speed[name]['throughput_batch32']:.1f} texts/s at batch 32 "
            f"({speed['threads']['intra_op']} threads)"
        )
    return "\n".join(lines)


__all__ = ["ExportOptions", "ExportOutcome", "ParityFigures", "run_export", "summary"]
