"""What one variant measured, and the machine state around it."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def process_cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    times = os.times()
    return times.user + times.system


def percentiles_ms(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    values = np.asarray(latencies_s) * 1000.0
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)} | {
        "max": round(float(values.max()), 1)
    }


@dataclass
class VariantResult:
    """One variant's throughput, optional per-tweet latencies and the load around it."""

    name: str
    description: str
    tweets: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.tweets / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "tweets": self.tweets,
            "seconds": round(self.seconds, 3),
            "tweets_per_s": round(self.throughput, 2),
            "latency_ms": percentiles_ms(self.latencies_s),
            "load_average_before": self.load_before,
            "load_average_after": self.load_after,
            "details": self.details,
        }


class Stopwatch:
    """Load average and wall time around a measured block."""

    def __enter__(self) -> Stopwatch:
        self.load_before = load_average()
        self.cpu_started = process_cpu_seconds()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = process_cpu_seconds() - self.cpu_started
        self.load_after = load_average()

    @property
    def cores_used(self) -> float:
        """This process's CPU time over wall time: how many cores it kept busy."""
        return round(self.cpu_seconds / self.seconds, 2) if self.seconds > 0 else 0.0
