"""Fixtures shared across unit-test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.fakes import DEADLINE_S, Harness, start_worker_on_fakes


@pytest.fixture
def run_worker() -> Iterator[Callable[..., Harness]]:
    """``run_worker(records, ...)``: a worker on fakes running on its own thread
    (:func:`tests.support.fakes.start_worker_on_fakes`); every one stopped afterwards."""
    harnesses: list[Harness] = []

    def start(*args: Any, **kwargs: Any) -> Harness:
        harness = start_worker_on_fakes(*args, **kwargs)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        harness.worker.stop()
        harness.thread.join(DEADLINE_S)
