"""A fault test's pipeline: unique topics and group, worker processes, input and output.

Fault tests run ``emotion-stream worker`` as real subprocesses
(:mod:`tests.support.worker_process`) against the fixtures' broker and Triton. A
:class:`Pipeline`:

- creates unique input/output/DLQ topics and a unique consumer group per test;
- starts workers with ``EMOTION_STREAM_*`` pointing at the broker and Triton fixtures,
  metrics on an ephemeral loopback port, each run logging to its own file;
- seeds tweets with unique ids (all at once, or paced from a background thread so
  that a fault lands mid-stream), and raw records too (poison: any key, value, headers);
- reads back every result and dead letter (``read_committed``) and the group's committed
  offsets; :meth:`Pipeline.settle` waits until nothing more will come, and
  :mod:`tests.support.delivery` checks the invariants a fault must not break.

Every wait polls against a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from tests.support.topics import (
    Feeder,
    TopicReader,
    committed_offsets,
    end_offsets,
)
from tests.support.waiting import wait_until
from tests.support.worker_process import (
    WORKER_START_TIMEOUT_S,
    WorkerRun,
    WorkerTopics,
    worker_environment,
)

# The test producer may send records up to the broker's own limit (message.max.bytes,
# 1 MB + 12 bytes by default); the client's default cap (1 MiB) would refuse some first.
TEST_PRODUCER_MAX_REQUEST_BYTES = 2 * 1024 * 1024
# Every fault test's workers: metrics on a port of the kernel's choosing (logged), a
# throughput line every 2 s, one math thread (many processes share two cores).
FAULT_TEST_WORKER_SETTINGS = {
    "EMOTION_STREAM_METRICS_PORT": "0",
    "EMOTION_STREAM_METRICS_HOST": "127.0.0.1",
    "EMOTION_STREAM_LOG_SUMMARY_INTERVAL_S": "2",
    "OMP_NUM_THREADS": "1",
}
# Reading the input back to locate ids a failing test names: bounded polls.
INPUT_LOCATE_POLLS = 50
# The worker's delivery modes (EMOTION_STREAM_DELIVERY), the fault matrix's two columns.
AT_LEAST_ONCE = "at_least_once"
EXACTLY_ONCE = "exactly_once"
DELIVERY_MODES = (AT_LEAST_ONCE, EXACTLY_ONCE)


def tweet_text(number: int) -> str:
    """Varied, deterministic tweet-like text (the tiny model's labels vary with it)."""
    subjects = ["I", "we", "my boss", "the team", "everyone", "she"]
    verbs = ["love", "hate", "miss", "fear", "laughed at", "cried over"]
    objects = ["mondays", "the rain", "this game", "traffic", "my exams", "that ending"]
    return f"{subjects[number % 6]} {verbs[number // 6 % 6]} {objects[number // 36 % 6]} #{number}"


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
        return end_offsets(self.bootstrap_servers, self.input_partitions())

    def committed_offsets(self) -> dict[int, int]:
        """The group's committed offset per input partition (absent: never committed)."""
        return committed_offsets(self.bootstrap_servers, self.group, self.input_partitions())

    # --- workers ---------------------------------------------------------------
    @property
    def topics(self) -> WorkerTopics:
        return WorkerTopics(self.input_topic, self.output_topic, self.dlq_topic, self.group)

    def worker_environment(self, worker_id: str) -> dict[str, str]:
        return worker_environment(
            self.topics,
            bootstrap_servers=self.bootstrap_servers,
            triton_url=self.triton_url,
            model_repository=self.model_repository,
            worker_id=worker_id,
            **{**FAULT_TEST_WORKER_SETTINGS, **self.extra_env},
        )

    def start_worker(self, **env_overrides: str) -> WorkerRun:
        """Start one more worker process; it logs to ``<workdir>/<name>.log``."""
        name = f"worker-{len(self.runs) + 1}"
        env = self.worker_environment(f"{self.name}-{name}")
        env.update(env_overrides)
        run = WorkerRun.start(name, env, self.workdir / f"{name}.log")
        self.runs.append(run)
        return run

    def wait_holding(
        self, workers: list[WorkerRun], timeout_s: float = WORKER_START_TIMEOUT_S
    ) -> None:
        """Until each of ``workers`` holds at least one partition (the group has settled)."""
        wait_until(
            lambda: all(worker.assigned_partitions() for worker in workers),
            timeout_s,
            lambda: f"not every worker got partitions\n{self.describe()}",
        )

    def wait_readiness(self, worker: WorkerRun, *, ready: bool, timeout_s: float) -> None:
        """Until ``worker``'s /readyz says ready (200) or, with ``ready=False``, answers
        anything else."""

        def reached() -> bool:
            status = worker.http_status("/readyz")
            return status == 200 if ready else status not in {200, None}

        wait_until(
            reached,
            timeout_s,
            lambda: (
                f"{worker.name} never reported {'' if ready else 'not-'}ready\n{self.describe()}"
            ),
        )

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
        """Send ``count`` tweets at ``rate``/s from a background thread (faults land
        mid-stream); ids from ``first`` on."""
        return self._feed(
            Feeder(self._id_from(first), rate, self.send, self.producer.flush, limit=count)
        )

    def feed_across_a_fault(self, rate: float, *, first: int, tail: int, limit: int) -> Feeder:
        """Send tweets at ``rate``/s from a background thread until ``tail`` more after
        the feeder's ``fault_over()`` (at most ``limit``); ids from ``first`` on."""
        feeder = Feeder(
            self._id_from(first), rate, self.send, self.producer.flush, limit=limit, tail=tail
        )
        return self._feed(feeder)

    def _id_from(self, first: int) -> Callable[[int], str]:
        return lambda index: self.tweet_id(first + index)

    @staticmethod
    def _feed(feeder: Feeder) -> Feeder:
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
            for _ in range(INPUT_LOCATE_POLLS):
                if reader.poll() == 0 and len(reader.records) >= len(self.seeded):
                    break
            return {
                record.key.decode(): (record.partition, record.offset)
                for record in reader.records
                if record.key is not None and record.key.decode() in ids
            }
        finally:
            reader.close()

    def warm_up(self, count: int, first: int, timeout_s: float) -> list[str]:
        """Seed ``count`` tweets numbered from ``first`` (after a feed's, never clashing)
        and wait for their results: the group is up and consuming. Their ids."""
        ids = self.seed(count, first=first)
        self.wait_for_results(ids, timeout_s)
        return ids

    def published_past_the_commit(self, timeout_s: float) -> int:
        """Results out (the output read to its end) whose input offset the group has not
        committed: exactly what a worker restarting from the committed offsets classifies
        a second time (none exactly once: those are in an aborted transaction)."""
        committed = self.committed_offsets()
        self.results.drain(timeout_s)
        return sum(
            count
            for (partition, offset), count in self.results_by_source().items()
            if offset >= committed.get(partition, 0)
        )

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
        one_replica: bool = False,
        prefix: str = "fm",
        **worker_env: str,
    ) -> Pipeline:
        """A pipeline on the given (default: the factory's) broker and Triton; ``worker_env``
        adds ``EMOTION_STREAM_*`` settings for its workers (fast retries by default).

        ``delivery`` is the workers' delivery mode. Exactly-once workers each get their
        own transactional id (``<group>-<worker id>``, the worker's default); with
        ``one_replica`` every worker of the pipeline shares one
        (``<name>-replica-0``), as restarts of one replica do. ``prefix`` starts the
        pipeline's unique name (its topics and group).
        """
        assert delivery in DELIVERY_MODES, delivery
        name = self.unique_name(prefix)
        worker_env = {"EMOTION_STREAM_DELIVERY": delivery, **worker_env}
        if one_replica:
            worker_env["EMOTION_STREAM_TRANSACTIONAL_ID"] = f"{name}-replica-0"
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
