"""The Worker in-process (a thread) against the real Kafka broker and the real Triton server.

Each test gets its own topics and consumer group; every wait polls against a deadline.
The subprocess-level fault tests (crashes, restarts, scaling, service outages, poison and
extreme messages) are the fault matrix, ``test_fault_matrix_*.py``.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from kafka import KafkaProducer, TopicPartition
from transformers import AutoTokenizer

from emotion_stream.layout import ModelLayout
from tests.support.delivery import check_dead_letter
from tests.support.topics import TopicReader, committed_offsets, end_offsets
from tests.support.waiting import wait_until
from worker.app import Worker
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

RESULT_TIMEOUT_S = 120.0
START_TIMEOUT_S = 120.0
INPUT_PARTITIONS = 3


@dataclass
class Running:
    """A Worker running on a thread, with its topics."""

    worker: Worker
    settings: WorkerSettings
    servers: str
    thread: threading.Thread
    errors: list[BaseException]
    outputs: TopicReader
    dead_letters: TopicReader

    def produce(self, messages: list[tuple[bytes | None, bytes | None]]) -> None:
        producer = KafkaProducer(bootstrap_servers=self.servers, acks="all")
        try:
            for key, value in messages:
                producer.send(self.settings.input_topic, key=key, value=value)
            producer.flush(timeout=30)
        finally:
            producer.close()

    def wait_for(self, results: int, dead_letters: int = 0) -> None:
        def done() -> bool:
            if self.errors:
                raise self.errors[0]
            self.outputs.poll()
            self.dead_letters.poll()
            return (
                len(self.outputs.records) >= results
                and len(self.dead_letters.records) >= dead_letters
            )

        wait_until(
            done,
            RESULT_TIMEOUT_S,
            lambda: (
                f"{len(self.outputs.records)}/{results} results, "
                f"{len(self.dead_letters.records)}/{dead_letters} dead letters"
            ),
        )

    def input_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.settings.input_topic, p) for p in range(INPUT_PARTITIONS)]

    def committed(self) -> dict[int, int]:
        return committed_offsets(
            self.servers, self.settings.consumer_group, self.input_partitions()
        )

    def end_offsets(self) -> dict[int, int]:
        """Log-end offsets of the input partitions that hold records (as committed() has
        no entry for a partition never committed)."""
        ends = end_offsets(self.servers, self.input_partitions())
        return {partition: offset for partition, offset in ends.items() if offset}

    def wait_committed_to_end(self) -> None:
        wait_until(
            lambda: self.committed() == self.end_offsets(),
            30,
            lambda: f"committed {self.committed()} != end {self.end_offsets()}",
        )

    def http(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.worker.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "worker did not stop within 60 s"
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def start_worker(
    kafka_broker: Any, triton_server: Any, tiny_model_repository: Path, unique_name: Any
) -> Iterator[Callable[..., Running]]:
    runs: list[Running] = []

    def start(**overrides: Any) -> Running:
        servers = kafka_broker.bootstrap_servers
        names = {
            "input_topic": unique_name("in"),
            "output_topic": unique_name("out"),
            "dlq_topic": unique_name("dlq"),
            "consumer_group": unique_name("group"),
        }
        kafka_broker.create_topic(names["input_topic"], partitions=INPUT_PARTITIONS)
        kafka_broker.create_topic(names["output_topic"], partitions=INPUT_PARTITIONS)
        kafka_broker.create_topic(names["dlq_topic"], partitions=1)
        settings = WorkerSettings(
            **{
                "kafka_bootstrap_servers": servers,
                "triton_url": triton_server.grpc_url,
                "model_repository": tiny_model_repository,
                "metrics_port": 0,
                "metrics_host": "127.0.0.1",
                "max_batch_wait_ms": 10,
                "commit_interval_ms": 200,
                "retry_backoff_initial_s": 0.1,
                "retry_backoff_max_s": 1.0,
                "worker_id": unique_name("worker"),
                **names,
                **overrides,
            }
        )
        worker = Worker(settings)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="worker-under-test", daemon=True)
        thread.start()
        running = Running(
            worker,
            settings,
            servers,
            thread,
            errors,
            TopicReader(servers, settings.output_topic),
            TopicReader(servers, settings.dlq_topic),
        )
        runs.append(running)
        wait_until(
            lambda: worker.wait_started(0.1) or bool(errors) or not thread.is_alive(),
            START_TIMEOUT_S,
            lambda: "worker start",
        )
        if errors:
            raise errors[0]
        return running

    yield start
    for running in runs:
        running.worker.stop()
        running.thread.join(60)
        running.outputs.close()
        running.dead_letters.close()


def tweet(number: int, key: str) -> tuple[bytes, bytes]:
    texts = ["I love mondays!", "we hate traffic :(", "my boss cried over the rain lol"]
    body = {"id": f"t-{number}", "text": f"{texts[number % 3]} #{number}", "seq": number}
    return key.encode(), json.dumps(body).encode()


def test_every_message_gets_exactly_one_result_in_order_per_key(
    start_worker: Callable[..., Running],
) -> None:
    run = start_worker()
    count = 120
    run.produce([tweet(n, f"user-{n % 7}") for n in range(count)])
    run.wait_for(results=count)
    run.wait_committed_to_end()

    results = [json.loads(r.value) for r in run.outputs.records]
    assert len(results) == count
    assert sorted(r["id"] for r in results) == sorted(f"t-{n}" for n in range(count))
    labels = ModelLayout(run.settings.model_repository).read_labels()
    for result in results:
        assert list(result["scores"]) == labels
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert result["label"] == max(result["scores"], key=result["scores"].get)
        assert result["score"] == result["scores"][result["label"]]
        assert result["model"] == {"name": "emotion-classifier", "version": "1"}
        assert result["source"]["topic"] == run.settings.input_topic
        assert result["meta"] == {"seq": int(result["id"][2:])}

    # Order per key: each output partition holds a key's results in input order.
    by_key: dict[bytes, list[int]] = defaultdict(list)
    for record in sorted(run.outputs.records, key=lambda r: (r.partition, r.offset)):
        by_key[record.key].append(json.loads(record.value)["meta"]["seq"])
    assert len(by_key) == 7
    for sequence in by_key.values():
        assert sequence == sorted(sequence)
    assert len({json.loads(r.value)["label"] for r in run.outputs.records}) > 1

    status, body = run.http("/metrics")
    assert status == 200
    assert f"emotion_worker_published_total {float(count)}" in body
    assert "emotion_worker_inference_seconds_bucket" in body
    assert run.http("/readyz")[0] == 200
    assert run.http("/healthz")[0] == 200
    run.stop()


def test_poison_goes_to_the_dlq_with_headers_and_is_committed_past(
    start_worker: Callable[..., Running],
) -> None:
    run = start_worker(max_text_bytes=1000)
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"p-null", None),
        (b"p-utf8", b"\xff\xfe not utf-8"),
        (b"p-empty", b"   "),
        (b"p-notext", b'{"id": "x", "body": "no text field"}'),
        (b"p-big", b"x" * 1001),
    ]
    good = [tweet(n, "k") for n in range(20)]
    good.append((b"k", b'"a json string value"'))
    good.append((b"k", "plain line with emoji 😂 and RTL שלום".encode()))
    messages = good[:5] + poison + good[5:]
    run.produce(messages)
    run.wait_for(results=len(good), dead_letters=len(poison))
    run.wait_committed_to_end()

    texts = {json.loads(r.value)["text"] for r in run.outputs.records}
    assert "a json string value" in texts
    assert "plain line with emoji 😂 and RTL שלום" in texts
    assert len(run.outputs.records) == len(good)

    run.dead_letters.poll()
    letters = {r.key: r for r in run.dead_letters.records}
    assert len(run.dead_letters.records) == len(poison)
    expected = {
        b"p-null": "NullValue",
        b"p-utf8": "InvalidUtf8",
        b"p-empty": "EmptyText",
        b"p-notext": "MissingText",
        b"p-big": "TextTooLarge",
    }
    for key, value in poison:
        letter = letters[key]
        headers = check_dead_letter(
            letter, error_class=expected[key], source_topic=run.settings.input_topic
        )
        assert headers["dlq.worker.id"].decode() == run.settings.worker_id
        assert letter.value == value
    _, body = run.http("/metrics")
    assert 'emotion_worker_dead_lettered_total{error_class="NullValue"} 1.0' in body
    run.stop()


# The INT8 model quantizes activations dynamically, per request: a text's scores move
# slightly with its batch-mates and with padding (the worker pads every request to a
# multiple of 8 tokens). One text per request, one request at a time (Triton's dynamic
# batcher would merge concurrent ones) must match onnxruntime on the same padded input to
# float precision; batched results stay close.
AS_THE_WORKER_PADS: dict[str, Any] = {
    "truncation": True,
    "max_length": 128,
    "padding": True,
    "pad_to_multiple_of": 8,
    "return_tensors": "np",
}


def _probabilities(session: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
    """onnxruntime's softmax scores for ``texts`` run as one request, padded as the worker pads."""
    encoded = tokenizer(texts, **AS_THE_WORKER_PADS)
    feeds = {
        "input_ids": encoded["input_ids"].astype(np.int64),
        "attention_mask": encoded["attention_mask"].astype(np.int64),
    }
    (logits,) = session.run(["logits"], feeds)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def assert_batched_scores_are_their_own(
    tiny_model_repository: Path, texts: list[str], got: np.ndarray, template: Callable[[str], str]
) -> None:
    """Batched results are each text's own INT8 scores, within the model's batch noise.

    A text's INT8 scores move with its batch-mates (activation scales are per request) by
    as much as this model moves them: measured by running every text in one request, the
    widest batch-mates and padding any of the worker's requests had. A fixed bound was the
    tiny random model's luck (0.05 failed at 0.054-0.062). A mix-up of results still
    shows: texts of different ``template`` lie further apart than that bound, so a result
    carrying another template's scores is outside it.
    """
    layout = ModelLayout(tiny_model_repository)
    tokenizer = AutoTokenizer.from_pretrained(str(layout.tokenizer_dir))
    session = ort.InferenceSession(str(layout.onnx), providers=["CPUExecutionProvider"])
    alone = np.concatenate([_probabilities(session, tokenizer, [text]) for text in texts])
    together = _probabilities(session, tokenizer, texts)
    bound = 2 * float(np.abs(together - alone).max()) + 1e-3
    deviation = float(np.abs(got - alone).max())
    assert deviation <= bound, (deviation, bound)
    kinds = [template(text) for text in texts]
    widest = max(
        float(np.abs(alone[i] - alone[j]).max())
        for i in range(len(texts))
        for j in range(len(texts))
        if kinds[i] != kinds[j]
    )
    assert widest > 2 * bound, f"the test cannot see a mix-up: {widest} vs {bound}"


@pytest.mark.parametrize("max_batch_size", [1, 32])
def test_results_through_triton_equal_onnxruntime(
    start_worker: Callable[..., Running],
    tiny_model_repository: Path,
    max_batch_size: int,
) -> None:
    run = start_worker(
        max_batch_size=max_batch_size, max_in_flight_batches=1 if max_batch_size == 1 else 2
    )
    count = 40
    run.produce([tweet(n, f"user-{n}") for n in range(count)])
    run.wait_for(results=count)
    run.stop()

    layout = ModelLayout(tiny_model_repository)
    labels = layout.read_labels()
    results = [json.loads(record.value) for record in run.outputs.records]
    texts = [result["text"] for result in results]
    got = np.array([[result["scores"][label] for label in labels] for result in results])
    if max_batch_size == 1:
        # The same request the worker sent: equal to float precision.
        tokenizer = AutoTokenizer.from_pretrained(str(layout.tokenizer_dir))
        session = ort.InferenceSession(str(layout.onnx), providers=["CPUExecutionProvider"])
        alone = np.concatenate([_probabilities(session, tokenizer, [text]) for text in texts])
        np.testing.assert_allclose(got, alone, atol=1e-5)
        return
    assert_batched_scores_are_their_own(
        tiny_model_repository, texts, got, template=lambda text: text.rsplit(" #", 1)[0]
    )


def _metric(body: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


def test_length_bucketing_keeps_every_id_in_partition_order(
    start_worker: Callable[..., Running], tiny_model_repository: Path
) -> None:
    """Windows of up to 64 tweets sorted by length into requests of at most 4: requests
    run out of arrival order, results must still go out once each, in offset order per
    input partition, each with its own text's scores."""
    run = start_worker(max_batch_size=4, batch_window=64, padding="bucketed")
    lengths = ["ok", "lol #{n}", "we hate traffic so much, every single morning " * 4, "meh {n}"]
    count = 240
    messages = []
    for n in range(count):
        body = {"id": f"t-{n}", "text": f"{lengths[n % 4].format(n=n)} {n}", "seq": n}
        messages.append((f"user-{n % 7}".encode(), json.dumps(body).encode()))
    run.produce(messages)
    run.wait_for(results=count)
    run.wait_committed_to_end()
    _, body = run.http("/metrics")
    run.stop()

    results = [(r.partition, r.offset, json.loads(r.value)) for r in run.outputs.records]
    assert sorted(r["id"] for _, _, r in results) == sorted(f"t-{n}" for n in range(count))
    # Per input partition, results leave in offset order (one producer: per output
    # partition, what was sent first is stored first).
    sent: dict[tuple[int, int], list[int]] = defaultdict(list)
    for out_partition, _, result in sorted(results, key=lambda r: (r[0], r[1])):
        sent[(out_partition, result["source"]["partition"])].append(result["source"]["offset"])
    assert all(offsets == sorted(offsets) for offsets in sent.values())
    # Requests never exceeded 4, and batches held several requests (windows were used).
    requests = _metric(body, "emotion_worker_batch_size_count")
    batches = _metric(body, "emotion_worker_inference_seconds_count")
    assert _metric(body, 'emotion_worker_batch_size_bucket{le="4.0"}') == requests
    assert requests > batches > 0

    labels = ModelLayout(tiny_model_repository).read_labels()
    got = np.array([[result["scores"][label] for label in labels] for _, _, result in results])
    texts = [result["text"] for _, _, result in results]
    assert_batched_scores_are_their_own(
        tiny_model_repository, texts, got, template=lambda text: text.split()[0]
    )
    assert len({result["label"] for _, _, result in results}) > 1


def test_max_batch_size_is_clamped_to_the_models(
    start_worker: Callable[..., Running], triton_server: Any
) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        config = client.get_model_config("emotion-classifier", as_json=True)["config"]
        model_max = int(config["max_batch_size"])
    finally:
        client.close()
    run = start_worker(max_batch_size=model_max + 100)
    assert run.worker.max_batch_size == model_max
    run.produce([tweet(n, "k") for n in range(model_max + 10)])
    run.wait_for(results=model_max + 10)
    _, body = run.http("/metrics")
    run.stop()
    # No batch above the model's limit was sent: every batch falls in the bucket le=limit.
    counts = {
        line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("emotion_worker_batch_size_bucket")
    }
    assert counts["+Inf"] > 0
    if f"{float(model_max)}" in counts:
        assert counts[f"{float(model_max)}"] == counts["+Inf"]
