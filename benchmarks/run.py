"""Run every variant side by side on one machine; print a table, write JSON and a PNG.

    python -m benchmarks.run                  # the full run (1,421 tweets), about 4 minutes
    python -m benchmarks.run --quick          # a smoke check (96 tweets)
    python -m benchmarks.run --worker-env EMOTION_STREAM_MAX_BATCH_WAIT_MS=50   # a lever

Variants: ``ceiling`` (in-process onnxruntime, batch 32, pad to batch max) and
``ceiling-sorted`` (the same, length-sorted in windows of 256), ``seed-baseline`` (the
original guide's client through our Triton), ``triton-batched`` (batches of 32 through
Triton, no Kafka: splits the gap), ``pipeline-max`` (Kafka → worker → Triton →
Kafka at full speed) and ``pipeline-half`` (the same at half of pipeline-max's rate).
Outputs go to ``benchmarks/out/`` (git-ignored): ``<stamp>.json``, ``<stamp>.png``,
``<stamp>/`` (service and worker logs) and ``latest.json``/``latest.png``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import direct, model, report
from benchmarks.measure import VariantResult, load_average
from benchmarks.pipeline import Pipeline, services
from benchmarks.tweets import load_corpus
from emotion_stream.layout import DEFAULT_MODEL_NAME

OUT_DIR = Path(__file__).resolve().parent / "out"
DEFAULT_REPOSITORY = OUT_DIR / "models" / "repository"
DEFAULT_HF_MODEL = OUT_DIR / "models" / "roberta-base-random"
QUICK_TWEETS = 96
SEED_TWEETS = 400  # one at a time, padded to 128: enough for a stable rate
SORT_WINDOW = 256
HALF_LOAD_MAX_SECONDS = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_TWEETS} tweets only")
    parser.add_argument("--tweets", type=int, help="tweets per variant (default: all)")
    parser.add_argument("--seed-tweets", type=int, default=SEED_TWEETS)
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help="exported model repository; built and exported there when absent",
    )
    parser.add_argument("--hf-model", type=Path, default=DEFAULT_HF_MODEL)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an EMOTION_STREAM_* setting for the workers (repeatable)",
    )
    parser.add_argument(
        "--triton-threads",
        type=int,
        help="override intra_op_thread_count in the served config (a derived repository)",
    )
    parser.add_argument("--triton-instances", type=int, help="override the instance_group count")
    parser.add_argument("--ceiling-threads", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="ceiling,ceiling-sorted,seed-baseline,triton-batched,pipeline",
        help="comma-separated subset",
    )
    parser.add_argument("--label", default="", help="a name for this run in the outputs")
    return parser.parse_args(argv)


def derived_repository(
    source: Path, target: Path, threads: int | None, instances: int | None
) -> Path:
    """A repository like ``source`` whose config differs in threads/instances (files linked)."""
    model_dir = source.resolve() / DEFAULT_MODEL_NAME
    derived = target / DEFAULT_MODEL_NAME
    derived.mkdir(parents=True)
    for child in model_dir.iterdir():
        if child.name != "config.pbtxt":
            (derived / child.name).symlink_to(child)
    config = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    if threads is not None:
        config = re.sub(
            r'(key: "intra_op_thread_count"\s*value: \{ string_value: )"\d+"',
            rf'\g<1>"{threads}"',
            config,
        )
    if instances is not None:
        config = re.sub(r"count: \d+", f"count: {instances}", config, count=1)
    (derived / "config.pbtxt").write_text(config, encoding="utf-8")
    return target


def machine() -> dict[str, Any]:
    cpu = ""
    flags = ""
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx512_vnni": "avx512_vnni" in flags,
        "avx2": "avx2" in flags,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}{'-' + args.label if args.label else ''}"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    logs_dir = OUT_DIR / name
    logs_dir.mkdir()
    variants = {v.strip() for v in args.variants.split(",") if v.strip()}

    def say(text: str) -> None:
        print(
            f"[bench {dt.datetime.now(dt.UTC):%H:%M:%S} load {load_average()[0]:.2f}] {text}",
            file=sys.stderr,
            flush=True,
        )

    count = QUICK_TWEETS if args.quick else args.tweets
    corpus = load_corpus(count=count)
    texts = corpus.texts
    seed_texts = texts[: min(len(texts), QUICK_TWEETS // 2 if args.quick else args.seed_tweets)]
    say(f"{len(texts)} tweets from {corpus.source}")
    repository = model.ensure_repository(
        args.repository, args.hf_model, load_corpus().texts, log=say
    )
    results: dict[str, VariantResult] = {}
    worker_env = dict(item.split("=", 1) for item in args.worker_env)

    # Services run (idle) during the direct variants too, so every variant shares one
    # machine state; the state folder is this run's own and deleted afterwards.
    state_dir = Path(tempfile.mkdtemp(prefix="emotion-bench-"))
    try:
        served = repository
        if args.triton_threads is not None or args.triton_instances is not None:
            served = derived_repository(
                repository, state_dir / "repository", args.triton_threads, args.triton_instances
            )
        with services(state_dir, served, say) as (broker, triton):
            onnx_path = model.model_onnx(repository)
            tokenizer_dir = model.tokenizer_dir(repository)
            if "ceiling" in variants:
                say("ceiling: in-process onnxruntime, batch 32, pad to batch max")
                results["ceiling"] = direct.run_ceiling(
                    onnx_path, tokenizer_dir, texts, intra_op_threads=args.ceiling_threads
                )
            if "ceiling-sorted" in variants:
                say(f"ceiling-sorted: the same, length-sorted in windows of {SORT_WINDOW}")
                results["ceiling-sorted"] = direct.run_ceiling(
                    onnx_path,
                    tokenizer_dir,
                    texts,
                    sort_window=SORT_WINDOW,
                    intra_op_threads=args.ceiling_threads,
                    name="ceiling-sorted",
                )
            if "seed-baseline" in variants:
                say(f"seed baseline: {len(seed_texts)} single requests padded to 128")
                results["seed-baseline"] = direct.run_seed_baseline(
                    triton.grpc_url, DEFAULT_MODEL_NAME, tokenizer_dir, seed_texts
                )
            if "triton-batched" in variants:
                say("triton-batched: batch 32, pad to batch max, 2 in flight, no Kafka")
                results["triton-batched"] = direct.run_triton_batched(
                    triton.grpc_url, DEFAULT_MODEL_NAME, tokenizer_dir, texts
                )
            if "pipeline" in variants:
                say(f"pipeline: starting {args.workers} worker(s) {worker_env or ''}")
                with Pipeline(
                    broker, triton, served, logs_dir, workers=args.workers, worker_env=worker_env
                ) as pipeline:
                    pipeline.start()
                    say("pipeline-max: every tweet produced at once")
                    full = pipeline.phase("max", texts, rate=None)
                    full.name = "pipeline-max"
                    full.description = "Kafka → worker(s) → Triton → Kafka, all produced at once"
                    results["pipeline-max"] = full
                    rate = full.throughput / 2
                    half_count = min(len(texts), max(32, int(rate * HALF_LOAD_MAX_SECONDS)))
                    say(f"pipeline-half: {half_count} tweets at {rate:.1f}/s")
                    half = pipeline.phase("half", texts[:half_count], rate=rate)
                    half.name = "pipeline-half"
                    half.description = f"the same at half of pipeline-max's rate ({rate:.1f}/s)"
                    results["pipeline-half"] = half
                    rss_curve = [(round(t, 1), r) for t, r in pipeline.rss]
            if "ceiling" in variants and "pipeline" in variants:
                # The machine is shared: a second ceiling after the pipeline brackets it, and
                # the ratio uses the mean of the two.
                say("ceiling-after: the ceiling again, after the pipeline")
                results["ceiling-after"] = direct.run_ceiling(
                    onnx_path,
                    tokenizer_dir,
                    texts,
                    intra_op_threads=args.ceiling_threads,
                    name="ceiling-after",
                )
            for log_file in (broker.log_file, triton.log_file):
                if log_file.is_file():
                    shutil.copy2(log_file, logs_dir / log_file.name)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)

    computed = report.ratios(results)
    run = {
        "name": name,
        "date_utc": stamp,
        "machine": machine(),
        "corpus": corpus.source,
        "tweets": len(texts),
        "model_repository": str(repository.resolve()),
        "served_repository_changes": {
            "triton_intra_op_threads": args.triton_threads,
            "triton_instances": args.triton_instances,
        },
        "workers": args.workers,
        "worker_env": worker_env,
        "variants": {key: result.summary() for key, result in results.items()},
        "ratios": computed,
        "worker_rss_mib_curve": locals().get("rss_curve", []),
    }
    json_path = OUT_DIR / f"{name}.json"
    report.write_json(json_path, run)
    shutil.copy2(json_path, OUT_DIR / "latest.json")
    png_path = OUT_DIR / f"{name}.png"
    title = (
        f"{run['machine']['cpu']} ×{run['machine']['cores']}, {len(texts)} tweets, "
        f"{stamp}, load {load_average()[0]:.2f}"
    )
    plotted = report.write_plot(png_path, results, title)
    if plotted:
        shutil.copy2(png_path, OUT_DIR / "latest.png")

    print(report.table(results))
    print()
    print(report.ratio_lines(computed))
    print(f"\nJSON: {json_path}")
    print(f"plot: {png_path}" if plotted else "plot: skipped (pip install -e '.[bench]')")
    print(f"logs: {logs_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
