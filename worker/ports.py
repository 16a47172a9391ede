"""The parts a :class:`~worker.app.Worker` is built from, and the real ones by default.

Each port is a Protocol the loop talks to; tests build the same ``Worker`` from fakes by
passing other factories. The defaults connect the real services: Kafka
(:mod:`worker.transport`), Triton (:mod:`worker.inference`) and the repository's
tokenizer (:mod:`worker.tokenizing`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from worker.errors import FatalError
from worker.inference import Classified, ModelSpec, TritonClassifier
from worker.messages import OutboundRecord, SourceRecord
from worker.offsets import Partition
from worker.settings import WorkerSettings
from worker.tokenizing import EncodedBatch, PlannedBatch, TweetTokenizer
from worker.transport import KafkaPublisher, KafkaSource, TransactionalPublisher


class RebalanceHandler(Protocol):
    """What the worker does when partitions move (called on the consumer's I/O thread)."""

    def on_assigned(self, partitions: set[Partition]) -> dict[Partition, int]:
        """Note the assignment; return where to re-read partitions whose work was dropped."""
        ...

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, int]:
        """Forget the partitions; return the offsets that are complete and may be committed."""
        ...

    def on_lost(self, partitions: set[Partition]) -> None: ...


class Source(Protocol):
    """The input side (``worker.transport.KafkaSource`` or a test double)."""

    def __enter__(self) -> Source: ...
    def __exit__(self, *exc: object) -> None: ...
    def poll(self, timeout_s: float) -> list[SourceRecord]: ...
    def assignment(self) -> set[Partition]: ...
    @property
    def rebalancing(self) -> bool: ...
    @property
    def paused(self) -> bool: ...
    def pause_all(self) -> None: ...
    def resume_all(self) -> None: ...
    def seek(self, partition: Partition, offset: int) -> None: ...
    def commit(self, offsets: dict[Partition, int]) -> bool: ...
    def committed_offsets(self, partitions: set[Partition]) -> dict[Partition, int]: ...
    def lag(self, next_offsets: dict[Partition, int]) -> dict[Partition, int]: ...
    def membership(self) -> Any: ...


class Publisher(Protocol):
    """The output side (``worker.transport.KafkaPublisher`` or a test double)."""

    def __enter__(self) -> Publisher: ...
    def __exit__(self, *exc: object) -> None: ...
    def send(
        self, record: OutboundRecord, on_done: Callable[[BaseException | None], None]
    ) -> None: ...
    def flush(self, timeout_s: float) -> bool: ...


@runtime_checkable
class Transactions(Protocol):
    """What exactly-once needs of the publisher (``worker.transport.TransactionalPublisher``)."""

    @property
    def in_transaction(self) -> bool: ...
    def commit_transaction(self, offsets: dict[Partition, int], membership: Any) -> None: ...
    def abort_transaction(self) -> None: ...


class Classifier(Protocol):
    """Inference (``worker.inference.TritonClassifier`` or a test double)."""

    model_name: str

    def ensure_ready(self) -> None: ...
    def load_spec(self) -> ModelSpec: ...
    def classify(self, batch: EncodedBatch) -> Classified: ...
    def close(self) -> None: ...


class Tokenizer(Protocol):
    def plan(self, texts: list[str], max_request_size: int) -> PlannedBatch: ...


SourceFactory = Callable[[WorkerSettings, RebalanceHandler], Source]
PublisherFactory = Callable[[WorkerSettings], Publisher]
ClassifierFactory = Callable[[WorkerSettings], Classifier]
TokenizerFactory = Callable[[WorkerSettings], Tokenizer]


def kafka_source(settings: WorkerSettings, handler: RebalanceHandler) -> Source:
    return KafkaSource(settings, handler)


def kafka_publisher(settings: WorkerSettings) -> Publisher:
    if settings.exactly_once:
        return TransactionalPublisher(settings)
    return KafkaPublisher(settings)


def triton_classifier(settings: WorkerSettings) -> Classifier:
    return TritonClassifier.connect(
        settings.triton_url,
        settings.model_name,
        settings.model_version,
        settings.triton_timeout_s,
        ssl=settings.triton_ssl,
        root_certificates=settings.triton_root_certificates,
        private_key=settings.triton_private_key,
        certificate_chain=settings.triton_certificate_chain,
    )


def repository_tokenizer(settings: WorkerSettings) -> Tokenizer:
    try:
        return TweetTokenizer.from_directory(
            settings.layout.tokenizer_dir, settings.max_sequence_length, settings.padding
        )
    except (OSError, ValueError) as exc:
        raise FatalError(f"cannot load the tokenizer: {exc}") from exc
