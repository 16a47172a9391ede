"""Run every variant side by side on one machine; print a table, write JSON and a PNG.

    python -m benchmarks.run                  # the full run (1,421 tweets), about 4 minutes
    python -m benchmarks.run --quick          # a smoke check (96 tweets)
    python -m benchmarks.run --worker-env EMOTION_STREAM_MAX_BATCH_WAIT_MS=50   # a lever
    python -m benchmarks.run --compare-env EMOTION_STREAM_PADDING=dynamic         # A/B, one run
    python -m benchmarks.run --variants pipeline --soak-seconds 600               # memory soak

Variants: ``ceiling`` (in-process onnxruntime, batch 32, pad to batch max) and
``ceiling-sorted`` (the same, length-sorted in windows of 256), ``seed-baseline`` (the
original guide's client through our Triton), ``triton-batched`` (batches of 32 through
Triton, no Kafka: splits the gap), ``pipeline-max`` (Kafka → worker → Triton →
Kafka at full speed) and ``pipeline-half`` (the same at half of pipeline-max's rate);
``--compare-env`` adds ``pipeline-b-max``/``pipeline-b-half``: a second worker with those
settings on top, measured right after each of the first's phases; ``--soak-seconds`` adds
``soak`` (the half rate held that long, worker RSS sampled every 5 s); ``fidelity``
compares labels of the worker's padding with fixed-128 padding in-process (INT8 and FP32).
Outputs go to ``benchmarks/out/`` (git-ignored): ``<stamp>.json``, ``<stamp>.png``,
``<stamp>/`` (service and worker logs) and ``latest.json``/``latest.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import direct, fidelity, model, report
from benchmarks.measure import VariantResult, load_average
from benchmarks.pipeline import MeasuredPipeline, group_cpu_seconds, rss_verdict, services
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
        "--compare-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="also run pipeline-b: workers with these settings on top (repeatable)",
    )
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=0.0,
        help="after the pipeline phases, hold half load this long and sample worker RSS",
    )
    parser.add_argument("--soak-rate", type=float, help="tweets/s for the soak (default: half)")
    parser.add_argument(
        "--triton-threads",
        type=int,
        help="override intra_op_thread_count in the served config (a derived repository)",
    )
    parser.add_argument("--triton-instances", type=int, help="override the instance_group count")
    parser.add_argument("--ceiling-threads", type=int, default=2)
    parser.add_argument(
        "--variants",
        default="ceiling,ceiling-sorted,seed-baseline,triton-batched,pipeline,fidelity",
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


def triton_cores(result: VariantResult, cpu_seconds: float) -> None:
    """Record the cores Triton used during a direct variant (its wall time includes the
    client's warm-up-free timed part only, so this slightly overstates them)."""
    if result.seconds > 0:
        result.details["cores_used"] = {"triton": round(cpu_seconds / result.seconds, 2)}


def run_pipeline(
    args: argparse.Namespace,
    broker: Any,
    triton: Any,
    served: Path,
    logs_dir: Path,
    texts: list[str],
    worker_env: dict[str, str],
    results: dict[str, VariantResult],
    say: Any,
) -> tuple[
    tuple[list[tuple[float, float | None]], dict[str, Any]] | None,
    list[tuple[float, list[float | None]]],
]:
    """pipeline-max and -half (and pipeline-b's, interleaved), then the soak if asked.

    Returns the soak's RSS curve and verdict (None without a soak) and the first worker's
    RSS sampled every second during the max and half phases."""
    compare_env = dict(item.split("=", 1) for item in args.compare_env)
    with contextlib.ExitStack() as stack:
        pipelines = {"pipeline": worker_env}
        if compare_env:
            pipelines["pipeline-b"] = worker_env | compare_env
        started: dict[str, MeasuredPipeline] = {}
        for key, env in pipelines.items():
            say(f"{key}: starting {args.workers} worker(s) {env or ''}")
            started[key] = stack.enter_context(
                MeasuredPipeline(
                    broker, triton, served, logs_dir, workers=args.workers, worker_env=env
                )
            )
            started[key].start()
        for key, pipeline in started.items():
            say(f"{key}-max: every tweet produced at once")
            full = pipeline.phase("max", texts, rate=None)
            full.name = f"{key}-max"
            full.description = "Kafka → worker(s) → Triton → Kafka, all produced at once"
            results[full.name] = full
        for key, pipeline in started.items():
            rate = results[f"{key}-max"].throughput / 2
            half_count = min(len(texts), max(32, int(rate * HALF_LOAD_MAX_SECONDS)))
            say(f"{key}-half: {half_count} tweets at {rate:.1f}/s")
            half = pipeline.phase("half", texts[:half_count], rate=rate)
            half.name = f"{key}-half"
            half.description = f"the same at half of {key}-max's rate ({rate:.1f}/s)"
            results[half.name] = half
        rss_curve = [(round(t, 1), r) for t, r in started["pipeline"].rss]
        if args.soak_seconds <= 0:
            return None, rss_curve
        rate = args.soak_rate or results["pipeline-max"].throughput / 2
        say(f"soak: {args.soak_seconds:g} s at {rate:.1f} tweets/s")
        soak, curve = started["pipeline"].soak(texts, rate, args.soak_seconds)
        results["soak"] = soak
        return (curve, rss_verdict(curve)), rss_curve


def run_fidelity(
    args: argparse.Namespace, repository: Path, texts: list[str], say: Any
) -> list[dict[str, Any]]:
    """Labels under the worker's padding against fixed-128, INT8 and FP32."""
    tokenizer_dir = model.tokenizer_dir(repository)
    models = [("INT8", model.model_onnx(repository))]
    # The FP32 graph comes from the HF model: --hf-model, else the local folder the
    # repository was exported from (its export report names it).
    candidates = [args.hf_model, model.exported_from(repository)]
    hf_dir = next((c for c in candidates if c and (c / "config.json").is_file()), None)
    if hf_dir is not None:
        fp32_dir = OUT_DIR / "models" / f"fp32-{hf_dir.resolve().name}"
        models.append(("FP32", fidelity.ensure_fp32(hf_dir, fp32_dir, say)))
    else:
        say(f"fidelity: no HF model ({args.hf_model}) to export FP32 from; INT8 only")
    measured = []
    for name, path in models:
        say(f"fidelity {name}: worker padding (bucketed, windows of 128) vs fixed-128")
        measured.append(fidelity.measure(name, path, tokenizer_dir, texts).summary())
    return measured


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
    soak_curve: list[tuple[float, float | None]] = []
    rss_curve: list[tuple[float, list[float | None]]] = []
    soak_summary: dict[str, Any] = {}
    fidelity_summary: list[dict[str, Any]] = []

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
            triton_group = {triton.process.recorded_pid() or -1}
            if "seed-baseline" in variants:
                say(f"seed baseline: {len(seed_texts)} single requests padded to 128")
                before = group_cpu_seconds(triton_group)
                results["seed-baseline"] = direct.run_seed_baseline(
                    triton.grpc_url, DEFAULT_MODEL_NAME, tokenizer_dir, seed_texts
                )
                triton_cores(results["seed-baseline"], group_cpu_seconds(triton_group) - before)
            if "triton-batched" in variants:
                say("triton-batched: batch 32, pad to batch max, 2 in flight, no Kafka")
                before = group_cpu_seconds(triton_group)
                results["triton-batched"] = direct.run_triton_batched(
                    triton.grpc_url, DEFAULT_MODEL_NAME, tokenizer_dir, texts
                )
                triton_cores(results["triton-batched"], group_cpu_seconds(triton_group) - before)
            if "pipeline" in variants:
                soak, rss_curve = run_pipeline(
                    args, broker, triton, served, logs_dir, texts, worker_env, results, say
                )
                if soak is not None:
                    soak_curve, soak_summary = soak
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
            if "fidelity" in variants:
                fidelity_summary = run_fidelity(args, repository, texts, say)
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
        "worker_rss_mib_curve": rss_curve,
        "soak": {"rss_mib_curve": soak_curve, **soak_summary} if soak_curve else None,
        "fidelity": fidelity_summary,
    }
    json_path = OUT_DIR / f"{name}.json"
    report.write_json(json_path, run)
    shutil.copy2(json_path, OUT_DIR / "latest.json")
    png_path = OUT_DIR / f"{name}.png"
    title = (
        f"{run['machine']['cpu']} ×{run['machine']['cores']}, {len(texts)} tweets, "
        f"{stamp}, load {load_average()[0]:.2f}"
    )
    plotted = report.write_plot(png_path, results, title, soak_curve)
    if plotted:
        shutil.copy2(png_path, OUT_DIR / "latest.png")

    print(report.table(results))
    print()
    print(report.ratio_lines(computed))
    for entry in fidelity_summary:
        print(report.fidelity_line(entry))
    if soak_curve:
        print(report.soak_line(soak_summary))
    print(f"\nJSON: {json_path}")
    print(f"plot: {png_path}" if plotted else "plot: skipped (pip install -e '.[bench]')")
    print(f"logs: {logs_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
