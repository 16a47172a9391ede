"""The one wait of tests and benchmarks: poll a condition against a deadline, never sleep
for an outcome. Built on the embedded stack's own poll loop
(:func:`compose.processes.wait_until`); this one fails with a description instead of
returning False."""

from __future__ import annotations

from collections.abc import Callable

from compose.processes import wait_until as poll_until

POLL_INTERVAL_S = 0.1


class NotWithin(AssertionError):
    """A condition did not hold within its deadline (a test failure, not an error)."""


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    describe: Callable[[], str] | str,
    interval_s: float = POLL_INTERVAL_S,
) -> None:
    """Poll ``condition`` until it holds; on timeout raise :class:`NotWithin` with
    ``describe``'s text (a callable is asked only then, so it may show the latest state)."""
    if not poll_until(condition, timeout_s=timeout_s, interval_s=interval_s):
        text = describe() if callable(describe) else describe
        raise NotWithin(f"not within {timeout_s:g} s: {text}")
