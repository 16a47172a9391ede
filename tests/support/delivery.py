"""The delivery invariants a fault must not break, checked on what a pipeline read back:
every seeded id has a result (none lost), duplicates within a bound (or none), no result
for an id never seeded, and every dead letter carrying its context headers."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.messages import DLQ_HEADERS, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION

if TYPE_CHECKING:
    from tests.support.pipeline import Pipeline


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
