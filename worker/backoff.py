"""Capped exponential backoff with full jitter: how the worker waits before trying again."""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        cap = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 60))
        self.attempt += 1
        # Half fixed, half random: never zero, and workers that failed together spread out.
        return cap / 2 + self._rng.uniform(0, cap / 2)

    def reset(self) -> None:
        self.attempt = 0
