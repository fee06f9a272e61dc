"""Exponential backoff with jitter: the one retry delay of the site's broker connection
and of its sources (a serial port reopened, a replay file that reappears)."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with full jitter between ``base_s`` and ``max_s``.

    ``next_delay()`` returns the wait before the next attempt and doubles the ceiling;
    ``reset()`` after a success. ``rng`` is injectable so tests are deterministic.
    """

    def __init__(
        self, base_s: float, max_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        self.base_s = base_s
        self.max_s = max(max_s, base_s)
        self._rng = rng
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt: between half and all of the current ceiling."""
        ceiling = min(self.max_s, self.base_s * (2.0**self._attempt))
        self._attempt += 1
        # Half fixed, half jitter: never zero (no hot loop), and sites that lost the same
        # device at the same time do not retry in lock step.
        return ceiling * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        """Forget earlier failures."""
        self._attempt = 0
