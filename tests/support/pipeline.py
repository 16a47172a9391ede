"""A harness that runs ``emotion-stream worker`` as a real subprocess against the fixtures.

Fault tests need what in-process tests cannot give: a process that can be SIGKILLed,
SIGTERMed and restarted, with the exit code and the log of each run. The harness:

- creates unique input/output/DLQ topics and a unique consumer group per test;
- starts workers (``python -m emotion_stream.cli worker``) with ``EMOTION_STREAM_*``
  pointing at the broker and Triton fixtures, metrics on an ephemeral loopback port,
  each run logging to its own file;
- seeds tweets with unique ids (all at once, or paced from a background thread so
  that a fault lands mid-stream);
- seeds raw records too (poison: any key, value and headers);
- reads back every result and dead letter (``read_committed``), and the group's committed
  offsets, and checks the invariants a fault must not break (:meth:`Pipeline.settle`,
  :func:`check_delivery`, :func:`check_dead_letter`): no id lost, duplicates within a
  bound (or none), every dead letter with its context headers.

Every wait polls against a deadline; nothing sleeps for a fixed time. Only processes
started here are ever signalled, by their own ``Popen`` handle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError, NotCoordinatorError

from worker.messages import DLQ_HEADERS, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION

POLL_INTERVAL_S = 0.1
# Worker start-up imports the tokenizer stack and loads the tokenizer: seconds on an
# idle machine, more on a shared 2-core one. Measured with a CPU hog on both cores and
# other test runs beside it (load 8-15): 52-79 s to "model ready", and once more than
# 90 s without a first log line (still importing).
WORKER_START_TIMEOUT_S = 180.0
LOG_TAIL_LINES = 40
# The test producer may send records up to the broker's own limit (message.max.bytes,
# 1 MB + 12 bytes by default); the client's default cap (1 MiB) would refuse some first.
TEST_PRODUCER_MAX_REQUEST_BYTES = 2 * 1024 * 1024
# A topic has been read to its end once a poll finds nothing new this many times in a row
# with every partition at its end offset.
QUIET_POLLS = 3


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    describe: Callable[[], str] | str,
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Poll ``condition`` until it holds; on timeout fail with ``describe``'s text."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            text = describe() if callable(describe) else describe
            raise AssertionError(f"not within {timeout_s:g} s: {text}")
        time.sleep(interval_s)


def tweet_text(number: int) -> str:
    """Varied, deterministic tweet-like text (the tiny model's labels vary with it)."""
    subjects = ["I", "we", "my boss", "the team", "everyone", "she"]
    verbs = ["love", "hate", "miss", "fear", "laughed at", "cried over"]
    objects = ["mondays", "the rain", "this game", "traffic", "my exams", "that ending"]
    return f"{subjects[number % 6]} {verbs[number // 6 % 6]} {objects[number // 36 % 6]} #{number}"


@dataclass
class WorkerRun:
    """One ``emotion-stream worker`` process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log that say something (throughput summaries left out)."""
        telling = [line for line in self.log().splitlines() if '"event": "throughput"' not in line]
        tail = telling[-lines:]
        return f"--- {self.name} (pid {self.pid}, exit {self.process.poll()}) log tail:\n" + (
            "\n".join(tail)
        )

    def metrics_port(self) -> int | None:
        """The HTTP port the worker logged it listens on (METRICS_PORT=0 picks one)."""
        for line in self.log().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict):
                    for key in ("metrics_port", "port"):
                        if isinstance(event.get(key), int) and event[key] > 0:
                            return int(event[key])
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            if match and "metrics" in line.lower():
                return int(match.group(1))
        return None

    def assigned_partitions(self) -> set[int]:
        """Input partitions the worker holds now, according to its rebalance log events."""
        held: set[int] = set()
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(event, dict):
                continue
            partitions = {int(p[1]) for p in event.get("partitions") or ()}
            if event.get("event") == "partitions assigned":
                held |= partitions
            elif event.get("event") in {"partitions revoked", "partitions lost"}:
                held -= partitions
        return held

    def http_status(self, path: str) -> int | None:
        """Status of ``GET http://127.0.0.1:<metrics port><path>``; None if unreachable."""
        port = self.metrics_port()
        return None if port is None else http_status(port, path)

    def metrics_text(self) -> str:
        port = self.metrics_port()
        if port is None:
            return ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                return str(answer.read().decode("utf-8"))
        except OSError:
            return ""

    def metric(self, name: str) -> float:
        """Sum of every sample of Prometheus counter/gauge ``name`` (0 when absent)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith((f"{name} ", f"{name}{{")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines (``event`` == ``name`` if given), in order."""
        found = []
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                found.append(event)
        return found

    def rebalances(self) -> int:
        """How many times partitions were assigned to this worker (1 = joined once).

        Assignments of nothing do not count: a worker that subscribes before its topic's
        metadata is known joins with no partitions first, then at once with them.
        """
        return sum(1 for event in self.events("partitions assigned") if event.get("partitions"))

    def partitions_taken_away(self) -> list[dict[str, Any]]:
        """Revocations and losses of partitions it held (a rebalance or an eviction)."""
        return [
            event
            for event in self.events()
            if event.get("event") in {"partitions revoked", "partitions lost"}
            and event.get("partitions")
        ]

    def pause(self) -> None:
        """SIGSTOP: the process freezes (no heartbeats, no polls) until :meth:`resume`."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit — the crash the at-least-once promise is about."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> None:
        """SIGTERM: the polite stop; the worker should flush, commit and exit 0."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout_s:g} s\n{self.log_tail()}"
            ) from None


@dataclass
class TopicReader:
    """Reads one topic from the beginning, read_committed, and keeps every record."""

    bootstrap_servers: str
    topic: str
    records: list[Any] = field(default_factory=list)
    _consumer: Any = None

    def _ensure(self) -> Any:
        if self._consumer is None:
            consumer = KafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
            )
            partitions = consumer.partitions_for_topic(self.topic) or set()
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            consumer.seek_to_beginning()
            self._consumer = consumer
        return self._consumer

    def poll(self) -> int:
        """Fetch whatever arrived; return how many new records."""
        batches = self._ensure().poll(timeout_ms=200)
        new = [record for batch in batches.values() for record in batch]
        self.records.extend(new)
        return len(new)

    def at_end(self) -> bool:
        """Whether every partition has been read up to its current end offset.

        With read_committed the end is the last stable offset: an open transaction's
        records are not counted as readable yet (the broker holds them back).
        """
        consumer = self._ensure()
        partitions = list(consumer.assignment())
        ends = consumer.end_offsets(partitions)
        return all(consumer.position(tp) >= int(ends[tp]) for tp in partitions)

    def drain(self, timeout_s: float) -> list[Any]:
        """Read until the topic's end (and nothing new for a few polls); every record."""
        quiet = 0

        def drained() -> bool:
            nonlocal quiet
            quiet = quiet + 1 if self.poll() == 0 and self.at_end() else 0
            return quiet >= QUIET_POLLS

        wait_until(drained, timeout_s, f"{self.topic} not read to its end")
        return self.records

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def http_status(port: int, path: str) -> int | None:
    """Status of ``GET http://127.0.0.1:<port><path>``; None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


class Feeder(threading.Thread):
    """Sends tweets ``first..first+count-1`` at a steady rate from a background thread."""

    def __init__(self, pipeline: Pipeline, first: int, count: int, rate: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.pipeline = pipeline
        self.ids = [pipeline.tweet_id(n) for n in range(first, first + count)]
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            for index, tweet_id in enumerate(self.ids):
                delay = started + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # pacing the feed, not waiting for an outcome
                self.pipeline.send(tweet_id)
                self.sent += 1
            self.pipeline.producer.flush(timeout=60)
        except BaseException as error:
            self.error = error

    def finish(self, timeout_s: float = 120.0) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), f"feeder still sending after {timeout_s:g} s"
        if self.error is not None:
            raise self.error


class Pipeline:
    """Topics, a group and worker processes for one test; see the module docstring."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        triton_url: str,
        model_repository: Path,
        name: str,
        workdir: Path,
        partitions: int = 1,
        worker_env: dict[str, str] | None = None,
        create_topics: bool = True,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.triton_url = triton_url
        self.model_repository = model_repository
        self.name = name
        self.workdir = workdir
        self.partitions = partitions
        self.input_topic = f"{name}-tweets"
        self.output_topic = f"{name}-emotions"
        self.dlq_topic = f"{name}-tweets.dlq"
        self.group = f"{name}-workers"
        self.extra_env = dict(worker_env or {})
        self.delivery = self.extra_env.get("EMOTION_STREAM_DELIVERY", AT_LEAST_ONCE)
        self.runs: list[WorkerRun] = []
        self.seeded: list[str] = []
        self._send_lock = threading.Lock()
        if create_topics:
            self.create_topics(self.input_topic, self.output_topic, self.dlq_topic)
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            acks="all",
            max_request_size=TEST_PRODUCER_MAX_REQUEST_BYTES,
        )
        self.results = TopicReader(bootstrap_servers, self.output_topic)
        self.dead_letters = TopicReader(bootstrap_servers, self.dlq_topic)

    @property
    def exactly_once(self) -> bool:
        return self.delivery == EXACTLY_ONCE

    # --- topics and offsets ----------------------------------------------------
    def create_topics(self, *topics: str, replication_factor: int = 1) -> None:
        """Create some of this pipeline's topics (the DLQ has one partition, the others
        ``partitions``); a fault test may create one late, to make it appear mid-run."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        try:
            admin.create_topics(
                {
                    topic: {
                        "num_partitions": 1 if topic == self.dlq_topic else self.partitions,
                        "replication_factor": replication_factor,
                    }
                    for topic in topics
                },
                wait_for_metadata=True,
            )
            admin.wait_for_topics(list(topics), timeout_ms=30_000)
        finally:
            admin.close()

    def input_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.input_topic, p) for p in range(self.partitions)]

    def end_offsets(self) -> dict[int, int]:
        """The input topic's log-end offset per partition."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None)
        try:
            ends = consumer.end_offsets(self.input_partitions())
            return {tp.partition: int(offset) for tp, offset in ends.items()}
        finally:
            consumer.close()

    def committed_offsets(self) -> dict[int, int]:
        """The group's committed offset per input partition (absent: never committed)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
        try:
            offsets = admin.list_group_offsets({self.group: self.input_partitions()})
        except (CoordinatorNotAvailableError, NotCoordinatorError):
            return {}  # the group has no coordinator yet (nothing committed, ever)
        finally:
            admin.close()
        committed = offsets.get(self.group, {})
        return {
            tp.partition: int(meta.offset)
            for tp, meta in committed.items()
            if meta is not None and meta.offset is not None and meta.offset >= 0
        }

    # --- workers ---------------------------------------------------------------
    def worker_environment(self, worker_id: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMOTION_STREAM_")}
        env.update(
            {
                "EMOTION_STREAM_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "EMOTION_STREAM_INPUT_TOPIC": self.input_topic,
                "EMOTION_STREAM_OUTPUT_TOPIC": self.output_topic,
                "EMOTION_STREAM_DLQ_TOPIC": self.dlq_topic,
                "EMOTION_STREAM_CONSUMER_GROUP": self.group,
                "EMOTION_STREAM_TRITON_URL": self.triton_url,
                "EMOTION_STREAM_MODEL_REPOSITORY": str(self.model_repository),
                "EMOTION_STREAM_METRICS_PORT": "0",
                "EMOTION_STREAM_METRICS_HOST": "127.0.0.1",
                "EMOTION_STREAM_WORKER_ID": worker_id,
                "EMOTION_STREAM_LOG_SUMMARY_INTERVAL_S": "2",
                "PYTHONUNBUFFERED": "1",
                # Four engineers share two cores: keep tokenizer threads from multiplying.
                "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start_worker(self, **env_overrides: str) -> WorkerRun:
        """Start one more worker process; it logs to ``<workdir>/<name>.log``."""
        name = f"worker-{len(self.runs) + 1}"
        env = self.worker_environment(f"{self.name}-{name}")
        env.update(env_overrides)
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "emotion_stream.cli", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        run = WorkerRun(name, process, log_path)
        self.runs.append(run)
        return run

    def stop_all(self) -> None:
        """Kill whatever this pipeline started and is still running."""
        for run in self.runs:
            if run.alive():
                run.kill()

    # --- input -----------------------------------------------------------------
    def tweet_id(self, number: int) -> str:
        return f"{self.name}-{number:05d}"

    def send(self, tweet_id: str) -> None:
        number = int(tweet_id.rsplit("-", 1)[1])
        value = json.dumps({"id": tweet_id, "text": tweet_text(number)}).encode()
        with self._send_lock:
            self.producer.send(self.input_topic, key=tweet_id.encode(), value=value)
            self.seeded.append(tweet_id)

    def seed(self, count: int, first: int = 0) -> list[str]:
        """Send ``count`` tweets with unique ids, wait for the broker's acks."""
        ids = [self.tweet_id(n) for n in range(first, first + count)]
        for tweet_id in ids:
            self.send(tweet_id)
        self.producer.flush(timeout=60)
        return ids

    def send_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record as given (poison, extreme text); wait for the broker's ack."""
        with self._send_lock:
            self.producer.send(self.input_topic, key=key, value=value, headers=headers or [])
        self.producer.flush(timeout=60)

    def feed(self, count: int, rate: float, first: int = 0) -> Feeder:
        """Send tweets at ``rate``/s from a background thread (faults land mid-stream)."""
        feeder = Feeder(self, first, count, rate)
        feeder.start()
        return feeder

    # --- output ----------------------------------------------------------------
    def result_ids(self) -> Counter[str]:
        """How many results each tweet id has so far."""
        self.results.poll()
        return Counter(str(json.loads(record.value)["id"]) for record in self.results.records)

    def results_by_source(self) -> dict[tuple[int, int], int]:
        """(input partition, input offset) → how many results name it as their source."""
        self.results.poll()
        counts: Counter[tuple[int, int]] = Counter()
        for record in self.results.records:
            source = json.loads(record.value)["source"]
            counts[(int(source["partition"]), int(source["offset"]))] += 1
        return dict(counts)

    def dead_letter_count(self) -> int:
        self.dead_letters.poll()
        return len(self.dead_letters.records)

    def wait_for_results(self, ids: list[str], timeout_s: float) -> Counter[str]:
        """Poll until every id in ``ids`` has a result; return the per-id counts."""
        expected = set(ids)
        counts: Counter[str] = Counter()

        def complete() -> bool:
            nonlocal counts
            counts = self.result_ids()
            return expected <= counts.keys()

        def missing() -> str:
            lost = sorted(expected - counts.keys())
            where = self.input_positions(set(lost))
            return (
                f"{len(lost)} of {len(expected)} ids have no result; at input "
                f"(partition, offset): {sorted(where.values())[:40]}\n{self.describe()}"
            )

        wait_until(complete, timeout_s, missing)
        return counts

    def input_positions(self, ids: set[str]) -> dict[str, tuple[int, int]]:
        """Where each of ``ids`` sits in the input topic: (partition, offset)."""
        reader = TopicReader(self.bootstrap_servers, self.input_topic)
        try:
            for _ in range(50):  # bounded: 50 polls of at most 200 ms
                if reader.poll() == 0 and len(reader.records) >= len(self.seeded):
                    break
            return {
                record.key.decode(): (record.partition, record.offset)
                for record in reader.records
                if record.key is not None and record.key.decode() in ids
            }
        finally:
            reader.close()

    def wait_for_result_count(self, count: int, timeout_s: float) -> None:
        """Poll until at least ``count`` results arrived (to time a fault mid-stream)."""
        wait_until(
            lambda: self.results.poll() >= 0 and len(self.results.records) >= count,
            timeout_s,
            lambda: f"{len(self.results.records)} of {count} results\n{self.describe()}",
        )

    def settle(self, timeout_s: float) -> None:
        """Wait until the group has committed every input record, then read the output
        and DLQ topics to their ends: nothing more will come unless a fault redoes work."""
        wait_until(
            lambda: self.committed_offsets() == self.end_offsets(),
            timeout_s,
            lambda: f"the group never committed to the end\n{self.describe()}",
        )
        self.results.drain(timeout_s)
        self.dead_letters.drain(timeout_s)

    def describe(self) -> str:
        """What a failing test should show: counts, offsets and each worker's log tail."""
        parts = [
            f"seeded {len(self.seeded)}, results {len(self.results.records)}, "
            f"dead letters {len(self.dead_letters.records)}",
        ]
        with contextlib.suppress(Exception):
            parts.append(f"end offsets {self.end_offsets()}, committed {self.committed_offsets()}")
        parts += [run.log_tail() for run in self.runs]
        return "\n".join(parts)

    def close(self) -> None:
        self.stop_all()
        self.producer.close(timeout=5)
        self.results.close()
        self.dead_letters.close()


def duplicates(counts: Counter[str]) -> dict[str, int]:
    """Ids with more than one result, and how many each has."""
    return {tweet_id: n for tweet_id, n in counts.items() if n > 1}


@dataclass(frozen=True)
class Delivery:
    """What came out for the ids a test seeded (see :func:`check_delivery`)."""

    expected: int
    results: int
    duplicated_ids: int
    extra_results: int
    dead_letters: int

    def line(self, label: str) -> str:
        return (
            f"[{label}] {self.expected} ids, {self.results} results, {self.duplicated_ids} ids "
            f"duplicated ({self.extra_results} extra results), {self.dead_letters} dead letters"
        )


def check_delivery(
    pipeline: Pipeline,
    ids: list[str],
    *,
    max_extra_results: int,
    dead_letters: int | None = 0,
    label: str = "delivery",
) -> Delivery:
    """Assert the at-least-once invariants on what the pipeline has read so far.

    Every id in ``ids`` has a result (none lost); results beyond one per id number at
    most ``max_extra_results`` (0: exactly once); no result names an id that was never
    seeded; exactly ``dead_letters`` dead letters (``None``: not checked here). Call after
    :meth:`Pipeline.settle`.
    """
    counts = Counter(str(json.loads(record.value)["id"]) for record in pipeline.results.records)
    lost = sorted(set(ids) - counts.keys())
    assert not lost, f"{len(lost)} ids lost, e.g. {lost[:10]}\n{pipeline.describe()}"
    strangers = sorted(counts.keys() - set(ids))
    assert not strangers, f"results for ids never seeded: {strangers[:10]}"
    extra = duplicates(counts)
    report = Delivery(
        expected=len(ids),
        results=sum(counts.values()),
        duplicated_ids=len(extra),
        extra_results=sum(extra.values()) - len(extra),
        dead_letters=len(pipeline.dead_letters.records),
    )
    print("\n" + report.line(label))
    assert report.extra_results <= max_extra_results, (
        f"{report.extra_results} duplicate results (at most {max_extra_results} allowed): "
        f"{_duplicate_details(pipeline, extra)}\n{pipeline.describe()}"
    )
    assert dead_letters is None or report.dead_letters == dead_letters, (
        f"{report.dead_letters} dead letters, expected {dead_letters}\n{pipeline.describe()}"
    )
    return report


def _duplicate_details(pipeline: Pipeline, extra: dict[str, int]) -> str:
    """For a few duplicated ids: each result's source offset and processing time."""
    wanted = set(sorted(extra)[:8])
    lines = []
    for record in pipeline.results.records:
        result = json.loads(record.value)
        if str(result["id"]) in wanted:
            source = result["source"]
            lines.append(
                f"{result['id']}: input {source['partition']}:{source['offset']} "
                f"processed {result['processed_at']} (output {record.partition}:{record.offset})"
            )
    return "\n".join(sorted(lines))


def dead_letter_headers(record: Any) -> dict[str, bytes]:
    """A dead letter's headers by name (the last one wins, as the ``dlq.*`` ones come last)."""
    return {str(name): bytes(value or b"") for name, value in record.headers or ()}


def check_dead_letter(
    record: Any, *, error_class: str, source_topic: str, source: tuple[int, int] | None = None
) -> dict[str, bytes]:
    """Assert a dead letter carries every context header, the expected class and source."""
    headers = dead_letter_headers(record)
    missing = [name for name in DLQ_HEADERS if name not in headers]
    assert not missing, f"dead letter without {missing}: {sorted(headers)}"
    assert headers["dlq.error.class"].decode() == error_class, headers["dlq.error.message"]
    assert headers["dlq.error.message"], "a dead letter must say why"
    assert headers["dlq.source.topic"].decode() == source_topic
    if source is not None:
        where = (int(headers[DLQ_SOURCE_PARTITION]), int(headers[DLQ_SOURCE_OFFSET]))
        assert where == source, f"dead letter names {where}, the record was at {source}"
    return headers


@contextlib.contextmanager
def running_pipeline(**kwargs: Any) -> Iterator[Pipeline]:
    """A :class:`Pipeline` whose workers are killed and clients closed on exit."""
    pipeline = Pipeline(**kwargs)
    try:
        yield pipeline
    finally:
        pipeline.close()


# The worker's delivery modes (EMOTION_STREAM_DELIVERY), the fault matrix's two columns.
AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"
DELIVERY_MODES = (AT_LEAST_ONCE, EXACTLY_ONCE)

# Short backoff so that recovery after an outage is quick to observe.
FAST_RETRY = {
    "EMOTION_STREAM_RETRY_BACKOFF_INITIAL_S": "0.1",
    "EMOTION_STREAM_RETRY_BACKOFF_MAX_S": "1.0",
}


class PipelineFactory:
    """Builds :class:`Pipeline` objects for one test and closes them all afterwards."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        triton_url: str,
        model_repository: Path,
        unique_name: Callable[[str], str],
        workdir: Path,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.triton_url = triton_url
        self.model_repository = model_repository
        self.unique_name = unique_name
        self.workdir = workdir
        self.built: list[Pipeline] = []

    def __call__(
        self,
        *,
        partitions: int = 1,
        bootstrap_servers: str | None = None,
        triton_url: str | None = None,
        create_topics: bool = True,
        delivery: str = AT_LEAST_ONCE,
        **worker_env: str,
    ) -> Pipeline:
        """A pipeline on the given (default: the factory's) broker and Triton; ``worker_env``
        adds ``EMOTION_STREAM_*`` settings for its workers (fast retries by default).

        ``delivery`` is the workers' delivery mode. Exactly-once workers each get their
        own transactional id (``<group>-<worker id>``, the worker's default); a test that
        restarts *the same replica* passes ``EMOTION_STREAM_TRANSACTIONAL_ID`` itself.
        """
        assert delivery in DELIVERY_MODES, delivery
        worker_env = {"EMOTION_STREAM_DELIVERY": delivery, **worker_env}
        name = self.unique_name("fm")
        workdir = self.workdir / name
        workdir.mkdir(parents=True)
        pipeline = Pipeline(
            bootstrap_servers=bootstrap_servers or self.bootstrap_servers,
            triton_url=triton_url or self.triton_url,
            model_repository=self.model_repository,
            name=name,
            workdir=workdir,
            partitions=partitions,
            worker_env={**FAST_RETRY, **worker_env},
            create_topics=create_topics,
        )
        self.built.append(pipeline)
        return pipeline

    def close(self) -> None:
        for pipeline in self.built:
            pipeline.close()
