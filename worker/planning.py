"""How one micro-batch is cut into inference requests (pure: token lengths in, cuts out).

:func:`plan_requests` cuts a batch into requests of at most the model's batch size.
Bucketed, it sorts the texts by token length and picks the cut that minimises padded
tokens plus a fixed cost per request, so short tweets are not padded to a long one's
length; each request is padded to a multiple of 8 tokens. :meth:`TweetTokenizer.plan
<worker.tokenizing.TweetTokenizer.plan>` encodes the requests this plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PAD_MULTIPLE = 8
"""Requests are padded to a multiple of this many tokens (onnxruntime's kernels like it)."""

REQUEST_OVERHEAD_TOKENS = 24
"""The fixed cost of one more request, in padded tokens: one request costs ~4 ms at Triton
(gRPC, the backend, onnxruntime's per-call work) besides ~0.18 ms per token, measured on
the benchmark's roberta-base INT8 model on 2 VNNI cores (benchmarks/RESULTS.md)."""


@dataclass(frozen=True)
class PlannedRequest:
    """One inference request: which texts of the batch it carries, padded to what width."""

    indices: tuple[int, ...]
    """Positions in the batch (arrival order), in the order the request carries them."""
    width: int
    """Tokens per row after padding."""


def padded_width(length: int, limit: int, multiple: int = PAD_MULTIPLE) -> int:
    """``length`` rounded up to ``multiple``, but never past ``limit`` (the model's)."""
    return min(limit, -(-max(1, length) // multiple) * multiple)


def plan_requests(
    lengths: Sequence[int],
    max_size: int,
    *,
    limit: int,
    bucketed: bool = True,
    multiple: int = PAD_MULTIPLE,
    overhead_tokens: int = REQUEST_OVERHEAD_TOKENS,
) -> list[PlannedRequest]:
    """Cut a batch of texts with these token lengths into requests of at most ``max_size``.

    Bucketed: sort by length (ties by arrival) and choose the contiguous cut of the sorted
    order with the lowest cost, ``sum(rows * width) + overhead_tokens * requests`` (dynamic
    programming, exact for that cost). Otherwise: consecutive chunks of ``max_size`` in
    arrival order, each padded to its longest. Widths are rounded up to ``multiple`` and
    capped at ``limit``. Every index appears in exactly one request.
    """
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    count = len(lengths)
    if not bucketed:
        return [
            PlannedRequest(
                tuple(range(start, min(start + max_size, count))),
                padded_width(max(lengths[start : start + max_size]), limit, multiple),
            )
            for start in range(0, count, max_size)
        ]
    order = sorted(range(count), key=lambda i: (lengths[i], i))
    widths = [padded_width(lengths[i], limit, multiple) for i in order]
    # best[j]: cheapest cost of the first j sorted texts; cut[j]: where its last request starts.
    best = [0] * (count + 1)
    cut = [0] * (count + 1)
    for stop in range(1, count + 1):
        width = widths[stop - 1]  # the longest of any request ending here
        best[stop], cut[stop] = min(
            (best[start] + overhead_tokens + (stop - start) * width, start)
            for start in range(max(0, stop - max_size), stop)
        )
    requests: list[PlannedRequest] = []
    stop = count
    while stop > 0:
        start = cut[stop]
        requests.append(PlannedRequest(tuple(order[start:stop]), widths[stop - 1]))
        stop = start
    requests.reverse()
    return requests
