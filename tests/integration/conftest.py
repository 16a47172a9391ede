"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import PipelineFactory


@pytest.fixture
def make_pipeline(
    kafka_broker: Any,
    triton_server: Any,
    tiny_model_repository: Path,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> Iterator[PipelineFactory]:
    """Pipelines on the session's broker and Triton (a test may point one elsewhere), all
    closed when the test ends."""
    factory = PipelineFactory(
        bootstrap_servers=kafka_broker.bootstrap_servers,
        triton_url=triton_server.grpc_url,
        model_repository=tiny_model_repository,
        unique_name=unique_name,
        workdir=tmp_path,
    )
    yield factory
    factory.close()
