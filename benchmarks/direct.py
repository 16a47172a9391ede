"""Variants without Kafka: the in-process ceiling and the original guide's Triton client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import Stopwatch, VariantResult

BATCH_SIZE = 32  # Triton's max_batch_size in the exported config, the worker's default
FIXED_LENGTH = 128  # the model's token limit; the guide padded every tweet to it
WARMUP_BATCHES = 2
WARMUP_REQUESTS = 5


def load_tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), use_fast=True)  # type: ignore[no-untyped-call]


def _encode(tokenizer: Any, texts: list[str], padding: str) -> dict[str, np.ndarray]:
    encoded = tokenizer(
        texts,
        truncation=True,
        max_length=FIXED_LENGTH,
        padding=padding,
        return_attention_mask=True,
        return_token_type_ids=False,
        return_tensors="np",
    )
    return {
        "input_ids": np.asarray(encoded["input_ids"], dtype=np.int64),
        "attention_mask": np.asarray(encoded["attention_mask"], dtype=np.int64),
    }


def token_lengths(tokenizer: Any, texts: list[str]) -> list[int]:
    encoded = tokenizer(texts, truncation=True, max_length=FIXED_LENGTH)
    return [len(ids) for ids in encoded["input_ids"]]


def length_sorted(texts: list[str], lengths: list[int], window: int) -> list[str]:
    """Sort by token count inside consecutive windows of ``window`` texts (0: no sorting)."""
    if window <= 0:
        return list(texts)
    ordered: list[str] = []
    for start in range(0, len(texts), window):
        chunk = list(
            zip(lengths[start : start + window], texts[start : start + window], strict=True)
        )
        ordered.extend(text for _, text in sorted(chunk, key=lambda pair: pair[0]))
    return ordered


def run_ceiling(
    onnx_path: Path,
    tokenizer_dir: Path,
    texts: list[str],
    *,
    sort_window: int = 0,
    intra_op_threads: int = 2,
    name: str = "ceiling",
) -> VariantResult:
    """In-process onnxruntime, batches of 32 padded to their longest member.

    Tokenization is inside the timed block, as in the worker. With ``sort_window`` the
    texts are length-sorted within windows first (the sort is timed too).
    """
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(tokenizer_dir)
    for start in range(0, WARMUP_BATCHES * BATCH_SIZE, BATCH_SIZE):
        session.run(None, _encode(tokenizer, texts[start : start + BATCH_SIZE], "longest"))
    padded_tokens = 0
    with Stopwatch() as watch:
        ordered = texts
        if sort_window:
            ordered = length_sorted(texts, token_lengths(tokenizer, texts), sort_window)
        for start in range(0, len(ordered), BATCH_SIZE):
            feed = _encode(tokenizer, ordered[start : start + BATCH_SIZE], "longest")
            padded_tokens += int(feed["input_ids"].size)
            session.run(None, feed)
    description = "in-process onnxruntime, batch 32, pad to batch max"
    if sort_window:
        description += f", length-sorted in windows of {sort_window}"
    return VariantResult(
        name=name,
        description=description,
        tweets=len(texts),
        seconds=watch.seconds,
        load_before=watch.load_before,
        load_after=watch.load_after,
        details={
            "intra_op_threads": intra_op_threads,
            "cores_used": watch.cores_used,
            "mean_padded_tokens_per_tweet": round(padded_tokens / len(texts), 1),
            "sort_window": sort_window,
        },
    )


def run_seed_baseline(
    triton_url: str, model_name: str, tokenizer_dir: Path, texts: list[str]
) -> VariantResult:
    """The original guide's client: one gRPC request per tweet, padded to 128, one at a time."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    tokenizer = load_tokenizer(tokenizer_dir)
    client = grpcclient.InferenceServerClient(url=triton_url)

    def classify(text: str) -> None:
        feed = _encode(tokenizer, [text], "max_length")
        inputs = []
        for name, array in feed.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput("logits")]
        client.infer(model_name, inputs, outputs=outputs).as_numpy("logits")

    try:
        for text in texts[:WARMUP_REQUESTS]:
            classify(text)
        latencies: list[float] = []
        with Stopwatch() as watch:
            for text in texts:
                started = time.perf_counter()
                classify(text)
                latencies.append(time.perf_counter() - started)
    finally:
        client.close()
    return VariantResult(
        name="seed-baseline",
        description="original guide's client: 1 Triton gRPC request per tweet, padded to 128",
        tweets=len(texts),
        seconds=watch.seconds,
        latencies_s=latencies,
        load_before=watch.load_before,
        load_after=watch.load_after,
        details={
            "triton_url": triton_url,
            "sequential": True,
            "client_cores_used": watch.cores_used,
        },
    )


def run_triton_batched(
    triton_url: str,
    model_name: str,
    tokenizer_dir: Path,
    texts: list[str],
    *,
    in_flight: int = 2,
) -> VariantResult:
    """Batches of 32 padded to batch max through Triton, ``in_flight`` at once; no Kafka.

    Isolates what Triton (here the Python-backend twin) costs against the in-process ceiling,
    and what Kafka and the worker cost against this.
    """
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    tokenizer = load_tokenizer(tokenizer_dir)
    client = grpcclient.InferenceServerClient(url=triton_url)

    def infer(feed: dict[str, np.ndarray]) -> None:
        inputs = []
        for name, array in feed.items():
            tensor = grpcclient.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        client.infer(model_name, inputs, outputs=[grpcclient.InferRequestedOutput("logits")])

    try:
        infer(_encode(tokenizer, texts[:BATCH_SIZE], "longest"))
        with Stopwatch() as watch, ThreadPoolExecutor(in_flight) as pool:
            pending = []
            for start in range(0, len(texts), BATCH_SIZE):
                feed = _encode(tokenizer, texts[start : start + BATCH_SIZE], "longest")
                pending.append(pool.submit(infer, feed))
                if len(pending) >= in_flight:
                    pending.pop(0).result()
            for future in pending:
                future.result()
    finally:
        client.close()
    return VariantResult(
        name="triton-batched",
        description=f"batch 32, pad to batch max, through Triton gRPC, {in_flight} in flight",
        tweets=len(texts),
        seconds=watch.seconds,
        load_before=watch.load_before,
        load_after=watch.load_after,
        details={"in_flight": in_flight, "client_cores_used": watch.cores_used},
    )
