"""The chart tests (each module is marked ``chart``: the CI stage ``charts/ci/stage.sh`` runs
them, ``make test`` leaves them out so nothing runs twice) share one Helm binary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chart.render import helm_binary
from tests.conftest import skip_or_fail

# The integration harness's pipelines (unique topics, group, worker processes), for the
# rendered-worker test.
from tests.integration.conftest import make_pipeline

__all__ = ["helm", "make_pipeline"]


@pytest.fixture(scope="session")
def helm() -> Iterator[str]:
    try:
        yield helm_binary()
    except (RuntimeError, OSError) as error:
        skip_or_fail(f"no Helm: {error}")
