"""Fixtures shared across unit-test modules."""

# The worker-on-fakes fixture lives beside its fakes in test_app.py; exposing it here lets
# test_app_exactly_once.py build its exactly-once variant on it.
from tests.unit.test_app import run_worker  # noqa: F401
