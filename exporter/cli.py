"""``emotion-stream export`` (and ``python -m exporter``): the exporter's command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emotion_stream.layout import DEFAULT_HUB_MODEL, DEFAULT_MODEL_NAME, default_repository
from exporter.errors import ExportError
from exporter.parity import DEFAULT_MAX_DRIFT, DEFAULT_MAX_F1_DROP, DEFAULT_MIN_AGREEMENT
from exporter.runtime import TRITON_MAX_BATCH, Threads
from exporter.triton_config import DEFAULT_THREADS


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; defaults come from the modules that own them."""
    from exporter.pipeline import DEFAULT_PARITY_SAMPLE  # noqa: PLC0415 - see main()

    parser = argparse.ArgumentParser(
        prog="emotion-stream export",
        description="Hugging Face sequence classifier -> ONNX -> fused INT8 -> Triton model "
        "repository, gated on FP32-vs-INT8 parity.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_HUB_MODEL,
        help="hub id or local model folder (a folder touches no network); "
        f"default {DEFAULT_HUB_MODEL}",
    )
    parser.add_argument("--revision", help="hub revision: branch, tag or commit")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"model repository folder; default {default_repository()}",
    )
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="Triton model name")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=TRITON_MAX_BATCH,
        help="Triton max_batch_size (the worker batches up to 32)",
    )
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="FP32-vs-INT8 label agreement required, 0-1: the gate fails when the one-sided "
        "95%% upper confidence bound of the measured agreement is below it (so one unlucky "
        "text in a small sample cannot fail it)",
    )
    parser.add_argument(
        "--max-drift",
        type=float,
        default=DEFAULT_MAX_DRIFT,
        help="largest mean, over the texts, of each text's largest class-probability "
        "change FP32 -> INT8 that passes, 0-1",
    )
    parser.add_argument(
        "--max-f1-drop",
        type=float,
        default=DEFAULT_MAX_F1_DROP,
        help="largest macro-F1 drop in points that passes (with --eval-file)",
    )
    parser.add_argument(
        "--eval-file", type=Path, help="JSON lines with text and label: adds accuracy and macro-F1"
    )
    parser.add_argument(
        "--parity-sample",
        type=int,
        default=DEFAULT_PARITY_SAMPLE,
        help="sample texts for the parity check (without --eval-file)",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=DEFAULT_THREADS.intra_op,
        help="onnxruntime intra-op threads (config.pbtxt and measurements)",
    )
    parser.add_argument(
        "--inter-op-threads",
        type=int,
        default=DEFAULT_THREADS.inter_op,
        help="onnxruntime inter-op threads (config.pbtxt and measurements)",
    )
    parser.add_argument(
        "--keep-fp32",
        choices=["none", "classifier", "last-layer", "embeddings"],
        default="none",
        help="leave these nodes in FP32 (docs/exporter.md; what each did: benchmarks/RESULTS.md)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    return parser


def _show_progress() -> None:
    """Progress lines of the exporter's stages on stderr; other libraries' chatter muted.

    onnxruntime's quantizer logs advice through the root logger at WARNING level.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress = logging.getLogger("exporter")
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    logging.getLogger().setLevel(logging.ERROR)


def main(argv: list[str]) -> int:
    """Run an export; returns the process exit code (0 ok, 1 export error, 2 usage)."""
    # The pipeline imports onnx/numpy; importing it here keeps `--help` light.
    from exporter.pipeline import ExportOptions, run_export, summary  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    _show_progress()
    options = ExportOptions(
        model=args.model,
        revision=args.revision,
        output=args.output if args.output is not None else default_repository(),
        model_name=args.model_name,
        max_batch_size=args.max_batch_size,
        threads=Threads(intra_op=args.intra_op_threads, inter_op=args.inter_op_threads),
        min_agreement=args.min_agreement,
        max_drift=args.max_drift,
        max_f1_drop=args.max_f1_drop,
        eval_file=args.eval_file,
        parity_sample=args.parity_sample,
        keep_fp32=args.keep_fp32,
        force=args.force,
    )
    try:
        outcome = run_export(options)
    except ExportError as error:
        print(f"emotion-stream export: {error}", file=sys.stderr)
        return 1
    print(summary(outcome))
    return 0
