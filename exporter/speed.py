"""In-process speed of a model file: latency at batch 1, throughput at batch 32.

Figures are indicative (one short run on a machine that may be busy); the ratios
FP32 vs INT8 are what count.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Any

from exporter.runtime import TRITON_MAX_BATCH, classify

LATENCY_RUNS = 16
WARMUP_RUNS = 2


@dataclass(frozen=True)
class SpeedFigures:
    """Median single-text latency and batch-32 throughput (pad to the batch's longest)."""

    latency_ms_batch1: float
    throughput_batch32: float
    batches: int


def measure_speed(session: Any, tokenizer: Any, texts: list[str], batches: int) -> SpeedFigures:
    """Time ``session`` on ``texts`` (cycled when fewer than needed)."""
    needed = max(LATENCY_RUNS, batches * TRITON_MAX_BATCH)
    pool = list(itertools.islice(itertools.cycle(texts), needed))
    for text in pool[:WARMUP_RUNS]:
        classify(session, tokenizer, [text])
    latencies = []
    for text in pool[:LATENCY_RUNS]:
        started = time.perf_counter()
        classify(session, tokenizer, [text])
        latencies.append(time.perf_counter() - started)
    batched = pool[: batches * TRITON_MAX_BATCH]
    started = time.perf_counter()
    classify(session, tokenizer, batched, batch_size=TRITON_MAX_BATCH)
    elapsed = time.perf_counter() - started
    return SpeedFigures(
        latency_ms_batch1=1000 * statistics.median(latencies),
        throughput_batch32=len(batched) / elapsed,
        batches=batches,
    )
