"""The pipeline variant: tweets → Kafka → worker process(es) → Triton → Kafka → here.

Services are the embedded stack's own classes (:mod:`compose.embedded`) on free loopback
ports in a state folder of this run, stopped through the objects that started them; workers
are ``emotion-stream worker`` processes signalled through their own ``Popen`` handles.

Throughput runs from the first produce to the last result; a tweet's end-to-end latency is
its result record's timestamp (the worker's producer stamps it when publishing) minus its
input record's timestamp (stamped by our producer when sending), both CreateTime on this
machine's clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka import KafkaProducer

from benchmarks.measure import VariantResult, load_average, process_cpu_seconds
from compose.embedded import (
    KafkaBroker,
    KafkaPorts,
    TritonPorts,
    TritonServer,
    fetch_kafka_jars,
)
from tests.support.network import free_ports
from tests.support.topics import TopicReader, pace
from tests.support.waiting import wait_until
from tests.support.worker_process import WorkerRun, WorkerTopics, worker_environment

PARTITIONS = 3  # as `emotion-stream local up` creates `tweets`
WORKER_START_TIMEOUT_S = 120.0
WARMUP_TWEETS = 64
POLL_S = 0.05
WORKER_STOP_TIMEOUT_S = 30.0
RSS_SAMPLE_S = 1.0
SOAK_SAMPLE_S = 5.0
# "Flat": the second half's RSS slope within this (0.2 MiB/min = 12 MiB an hour).
SOAK_FLAT_MIB_PER_MIN = 0.2
# A JVM keeps compiling for seconds after Kafka answers, and Triton's stub loads the model:
# the direct variants would pay for it. Settled = our services use < 10% of a core.
SETTLE_MAX_CORES = 0.1
SETTLE_WINDOW_S = 1.0
SETTLE_TIMEOUT_S = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RESULT_FETCH_MS = 100
# The benchmark's workers: no metrics server, a throughput line every 10 s.
BENCHMARK_WORKER_SETTINGS = {
    "EMOTION_STREAM_METRICS_PORT": "-1",
    "EMOTION_STREAM_LOG_SUMMARY_INTERVAL_S": "10",
}


@contextlib.contextmanager
def services(
    state_dir: Path, repository: Path, log: Callable[[str], None]
) -> Iterator[tuple[KafkaBroker, TritonServer]]:
    """Kafka and Triton on free ports; both stopped on exit, whatever happened."""
    kafka_port, controller, grpc, http, metrics = free_ports(5)
    broker = KafkaBroker(state_dir, KafkaPorts(kafka_port, controller), die_with_parent=True)
    triton = TritonServer(
        state_dir,
        repository,
        TritonPorts(grpc=grpc, http=http, metrics=metrics),
        die_with_parent=True,
    )
    try:
        fetch_kafka_jars()
        log(f"starting Kafka on {broker.bootstrap_servers}")
        broker.start()
        log(f"starting Triton on {triton.grpc_url} (model {repository})")
        triton.start()
        pgids = {
            pid for pid in (broker.process.recorded_pid(), triton.process.recorded_pid()) if pid
        }
        waited = settle(pgids, log)
        log(f"services settled after {waited:.0f} s")
        yield broker, triton
    finally:
        triton.stop()
        broker.stop()


def group_cpu_seconds(pgids: set[int]) -> float:
    """CPU time (user + system) of every live process in the process groups ``pgids``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "(comm)": state ppid pgrp session tty tpgid flags minflt cminflt majflt
        # cmajflt utime stime
        if int(fields[2]) in pgids:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def pid_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of one live process (0 when gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def settle(pgids: set[int], log: Callable[[str], None]) -> float:
    """Wait until the services' CPU use falls below SETTLE_MAX_CORES; return seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_TIMEOUT_S:
        before = group_cpu_seconds(pgids)
        time.sleep(SETTLE_WINDOW_S)  # measuring a rate needs a window
        cores = (group_cpu_seconds(pgids) - before) / SETTLE_WINDOW_S
        if cores < SETTLE_MAX_CORES:
            return time.monotonic() - started
    log(f"services still busy after {SETTLE_TIMEOUT_S:g} s; measuring anyway")
    return time.monotonic() - started


@dataclass
class Outcome:
    source_ms: int
    published_ms: int
    received_s: float


@dataclass
class ResultCollector:
    """Reads the output topic in a background thread; keeps the first result per id."""

    bootstrap_servers: str
    topic: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="results", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with TopicReader(self.bootstrap_servers, self.topic, keep=False) as reader:
                while not self._stop.is_set():
                    records = reader.fetch(timeout_ms=RESULT_FETCH_MS)
                    now = time.time()
                    with self._lock:
                        for record in records:
                            result = json.loads(record.value)
                            self.outcomes.setdefault(
                                str(result["id"]),
                                Outcome(int(result["source"]["timestamp"]), record.timestamp, now),
                            )
        except BaseException as error:
            self.error = error

    def count(self, ids: set[str]) -> int:
        if self.error is not None:
            raise RuntimeError(f"result reader failed: {self.error}") from self.error
        with self._lock:
            return sum(1 for tweet_id in ids if tweet_id in self.outcomes)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


class MeasuredPipeline:
    """Unique topics and group on the broker, N workers, a producer and a result reader;
    phases that feed it and time every result."""

    def __init__(
        self,
        broker: KafkaBroker,
        triton: TritonServer,
        repository: Path,
        workdir: Path,
        *,
        workers: int = 1,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        self.run_id = f"bench-{uuid.uuid4().hex[:8]}"
        self.bootstrap = broker.bootstrap_servers
        self.input_topic = f"{self.run_id}-tweets"
        self.output_topic = f"{self.run_id}-emotions"
        broker.create_topics(
            {self.input_topic: PARTITIONS, self.output_topic: PARTITIONS, f"{self.run_id}-dlq": 1}
        )
        topics = WorkerTopics(
            self.input_topic, self.output_topic, f"{self.run_id}-dlq", f"{self.run_id}-workers"
        )
        self.worker_env = dict(worker_env or {})
        self.workers = [
            WorkerRun.start(
                f"worker-{n}",
                worker_environment(
                    topics,
                    bootstrap_servers=self.bootstrap,
                    triton_url=triton.grpc_url,
                    model_repository=repository,
                    worker_id=f"{self.run_id}-{n}",
                    **{**BENCHMARK_WORKER_SETTINGS, **self.worker_env},
                ),
                workdir / f"{self.run_id}-worker-{n}.log",
            )
            for n in range(1, workers + 1)
        ]
        self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        self.results = ResultCollector(self.bootstrap, self.output_topic)
        self.rss: list[tuple[float, list[float | None]]] = []
        self.service_groups = {
            "kafka": broker.process.recorded_pid(),
            "triton": triton.process.recorded_pid(),
        }

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far of each component (services by process group)."""
        snapshot = {
            name: group_cpu_seconds({pgid}) for name, pgid in self.service_groups.items() if pgid
        }
        snapshot["workers"] = sum(pid_cpu_seconds(w.pid) for w in self.workers)
        snapshot["benchmark (producer + result reader)"] = process_cpu_seconds()
        return snapshot

    def __enter__(self) -> MeasuredPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(WORKER_STOP_TIMEOUT_S)
        self.results.stop()
        self.producer.close(timeout=10)

    def start(self) -> None:
        self.results.start()
        wait_until(
            lambda: all(w.ready_with_partitions() for w in self.workers),
            WORKER_START_TIMEOUT_S,
            "workers ready with partitions assigned",
            interval_s=POLL_S,
        )
        self.phase("warmup", [f"warm-up tweet {n}" for n in range(WARMUP_TWEETS)], rate=None)

    def phase(
        self, name: str, texts: list[str], rate: float | None, timeout_s: float | None = None
    ) -> VariantResult:
        """Send ``texts`` (as fast as possible, or at ``rate``/s); wait for every result."""
        ids = [f"{self.run_id}-{name}-{n:05d}" for n in range(len(texts))]
        wanted = set(ids)
        timeout_s = timeout_s or max(120.0, len(texts) * 0.5)
        load_before = load_average()
        cpu_before = self.cpu_snapshot()
        started_wall = time.time()
        started = time.monotonic()
        for index, (tweet_id, text) in enumerate(zip(ids, texts, strict=True)):
            if rate:
                pace(started, index, rate)
            value = json.dumps({"id": tweet_id, "text": text}).encode()
            self.producer.send(self.input_topic, key=tweet_id.encode(), value=value)
        self.producer.flush(timeout=60)
        next_sample = 0.0

        def complete() -> bool:
            nonlocal next_sample
            if time.monotonic() >= next_sample:
                self.rss.append((time.time(), [w.rss_mib() for w in self.workers]))
                next_sample = time.monotonic() + RSS_SAMPLE_S
            return self.results.count(wanted) >= len(wanted)

        wait_until(
            complete,
            max(0.0, started + timeout_s - time.monotonic()),
            lambda: (
                f"{name}: {self.results.count(wanted)}/{len(wanted)} results after "
                f"{timeout_s:g} s; worker logs in {self.workers[0].log_path.parent}"
            ),
            interval_s=POLL_S,
        )
        load_after = load_average()
        cpu_after = self.cpu_snapshot()
        elapsed = time.monotonic() - started
        outcomes = [self.results.outcomes[tweet_id] for tweet_id in ids]
        last_published = max(o.published_ms for o in outcomes) / 1000.0
        latencies = [max(0.0, (o.published_ms - o.source_ms) / 1000.0) for o in outcomes]
        return VariantResult(
            name=name,
            description="",
            tweets=len(texts),
            seconds=last_published - started_wall,
            latencies_s=latencies,
            load_before=load_before,
            load_after=load_after,
            details={
                "offered_rate_per_s": round(rate, 2) if rate else "max",
                "workers": len(self.workers),
                "cores_used": {
                    name: round((cpu_after[name] - cpu_before[name]) / elapsed, 2)
                    for name in cpu_after
                },
                "worker_env": self.worker_env,
                "worker_rss_mib": [round(r, 1) if r else None for r in self.rss[-1][1]]
                if self.rss
                else [],
            },
        )

    def soak(
        self, texts: list[str], rate: float, seconds: float, sample_s: float = SOAK_SAMPLE_S
    ) -> tuple[VariantResult, list[tuple[float, float | None]]]:
        """Feed ``texts`` (cycled, unique ids) at ``rate``/s for ``seconds``; sample the first
        worker's RSS every ``sample_s`` from /proc; then wait for every result.

        Returns the phase's result and the RSS curve as ``(seconds since start, MiB)``.
        """
        count = max(1, int(rate * seconds))
        ids = [f"{self.run_id}-soak-{n:07d}" for n in range(count)]
        curve: list[tuple[float, float | None]] = []
        load_before = load_average()
        cpu_before = self.cpu_snapshot()
        started_wall = time.time()
        started = time.monotonic()
        next_sample = started
        worker = self.workers[0]
        for index, tweet_id in enumerate(ids):
            now = time.monotonic()
            if now >= next_sample:
                curve.append((round(now - started, 1), worker.rss_mib()))
                next_sample += sample_s
            pace(started, index, rate)
            value = json.dumps({"id": tweet_id, "text": texts[index % len(texts)]}).encode()
            self.producer.send(self.input_topic, key=tweet_id.encode(), value=value)
        self.producer.flush(timeout=60)
        wanted = set(ids)
        wait_until(
            lambda: self.results.count(wanted) >= len(wanted),
            max(120.0, count / rate),
            lambda: (
                f"soak: {self.results.count(wanted)}/{len(wanted)} results; worker logs in "
                f"{worker.log_path.parent}"
            ),
            interval_s=POLL_S,
        )
        curve.append((round(time.monotonic() - started, 1), worker.rss_mib()))
        elapsed = time.monotonic() - started
        cpu_after = self.cpu_snapshot()
        outcomes = [self.results.outcomes[tweet_id] for tweet_id in ids]
        result = VariantResult(
            name="soak",
            description=f"{seconds:g} s at {rate:.1f} tweets/s, worker RSS every {sample_s:g} s",
            tweets=count,
            seconds=max(o.published_ms for o in outcomes) / 1000.0 - started_wall,
            latencies_s=[max(0.0, (o.published_ms - o.source_ms) / 1000.0) for o in outcomes],
            load_before=load_before,
            load_after=load_average(),
            details={
                "offered_rate_per_s": round(rate, 2),
                "cores_used": {
                    name: round((cpu_after[name] - cpu_before[name]) / elapsed, 2)
                    for name in cpu_after
                },
                "worker_env": self.worker_env,
            },
        )
        return result, curve


def rss_verdict(curve: list[tuple[float, float | None]]) -> dict[str, float | int | str]:
    """Summary of a soak's RSS curve: range, and the least-squares slope over its second half
    (the first half includes warm-up: allocator pools, tokenizer caches filling)."""
    points = [(t, r) for t, r in curve if r is not None]
    if len(points) < 4:
        return {"verdict": "too few samples"}
    values = [r for _, r in points]
    end = points[-1][0]
    second = [(t, r) for t, r in points if t >= end / 2]
    if len(second) < 2:
        second = points[-2:]
    times = np.asarray([t for t, _ in second]) / 60.0
    slope = float(np.polyfit(times, np.asarray([r for _, r in second]), 1)[0])
    return {
        "samples": len(points),
        "first_mib": round(values[0], 1),
        "last_mib": round(values[-1], 1),
        "min_mib": round(min(values), 1),
        "max_mib": round(max(values), 1),
        "max_minus_min_mib": round(max(values) - min(values), 1),
        "second_half_slope_mib_per_min": round(slope, 3),
        "verdict": "flat" if abs(slope) <= SOAK_FLAT_MIB_PER_MIN else "growing",
    }
