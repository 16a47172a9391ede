"""A record kafka-python cannot parse does not stop the worker's consumer (issue 11).

kafka-python 3.0.12 decodes header names as UTF-8 and raises CorruptRecordError from
``poll()`` for one that is not (the Java client writes any bytes there); the worker
stopped on it, and every replica after it. Through the real broker,
:class:`worker.transport.KafkaSource` returns a stand-in for that offset (which the
worker dead-letters as ``CorruptRecord``) and goes on with the records after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError

from tests.support.fakes import NoRebalanceWork
from tests.support.kafka_records import produce_unparsable, produce_with_librdkafka
from tests.support.service_fixtures import KafkaService
from worker.messages import SourceRecord
from worker.settings import WorkerSettings
from worker.transport import KafkaSource

pytestmark = pytest.mark.integration

# Bounded reading: a fresh group joins and fetches within seconds on a busy machine.
READ_TIMEOUT_S = 60.0
POLL_S = 0.5


def _seed(servers: str, topic: str) -> None:
    """before (0), unparsable (1), after (2), null key and value (3), last (4)."""
    produce_with_librdkafka(servers, topic, [(b"k0", b"before", [])])
    produce_unparsable(servers, topic, b"k1", b"bad header name")
    produce_with_librdkafka(
        servers,
        topic,
        [(b"k2", b"after", [("fine", b"v")]), (None, None, []), (b"k4", b"last", [])],
    )


def _read_through_source(
    kafka_broker: KafkaService, topic: str, group: str, count: int
) -> list[SourceRecord]:
    """Up to ``count`` records of ``topic`` as the worker's :class:`KafkaSource` reads them."""
    settings = WorkerSettings(
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        input_topic=topic,
        consumer_group=group,
        metrics_port=-1,
    )
    got: list[SourceRecord] = []
    with KafkaSource(settings, NoRebalanceWork()) as source:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while len(got) < count and time.monotonic() < deadline:
            got.extend(source.poll(POLL_S))
    return got


def test_kafka_python_alone_raises_without_saying_where(
    kafka_broker: KafkaService, unique_name: Callable[[str], str]
) -> None:
    """Why KafkaSource must step over the record itself: the client's poll raises, with
    no topic, partition or offset in the error, and (seen here, not asserted: it would
    spin a core) the poll after that loops forever inside kafka-python 3.0.12."""
    topic = unique_name("badheader-raw")
    kafka_broker.create_topic(topic)
    _seed(kafka_broker.bootstrap_servers, topic)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=unique_name("raw"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        values: list[bytes | None] = []
        error: CorruptRecordError | None = None
        deadline = time.monotonic() + READ_TIMEOUT_S
        while error is None and time.monotonic() < deadline:
            try:
                for batch in consumer.poll(timeout_ms=int(POLL_S * 1000)).values():
                    values.extend(r.value for r in batch)
            except CorruptRecordError as exc:
                error = exc
        assert error is not None, "the client raised"
        assert values == [b"before"]
        assert "utf-8" in str(error) and topic not in str(error)
    finally:
        consumer.close()


def test_the_source_steps_over_a_record_the_client_cannot_parse(
    kafka_broker: KafkaService, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("badheader")
    kafka_broker.create_topic(topic)
    _seed(kafka_broker.bootstrap_servers, topic)
    got = _read_through_source(kafka_broker, topic, unique_name("source"), count=5)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]
    stand_in = got[1]
    assert stand_in.unreadable is not None and "CorruptRecordError" in stand_in.unreadable
    assert "utf-8" in stand_in.unreadable
    assert (stand_in.key, stand_in.value, stand_in.headers) == (None, None, ())
    assert [r.unreadable for r in got if r is not stand_in] == [None] * 4
    assert [r.value for r in got] == [b"before", None, b"after", None, b"last"]
    assert got[2].headers == (("fine", b"v"),)
    assert (got[3].key, got[3].value) == (None, None)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_the_source_reads_batches_in_every_codec_other_clients_use(
    kafka_broker: KafkaService, unique_name: Callable[[str], str], codec: str
) -> None:
    """Compression is the producer's choice, not ours: without snappy, lz4 and zstandard
    installed, kafka-python raised UnsupportedCodecError from poll() on such a batch and
    the worker stopped on it (and every replica after it)."""
    topic = unique_name(f"codec-{codec}")
    kafka_broker.create_topic(topic)
    sent = [(f"k{i}".encode(), f"tweet {i} ".encode() * 20, []) for i in range(20)]
    produce_with_librdkafka(kafka_broker.bootstrap_servers, topic, sent, compression=codec)
    got = _read_through_source(kafka_broker, topic, unique_name("codec"), count=len(sent))
    assert [(r.key, r.value) for r in got] == [(k, v) for k, v, _ in sent]
    assert all(r.unreadable is None for r in got)
