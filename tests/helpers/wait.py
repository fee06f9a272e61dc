"""Wait on a condition with a deadline instead of sleeping and hoping.

Tests run on loaded machines (load average 10 on 2 cores): a fixed sleep before an assert
passes or fails by scheduling luck. Poll the condition the assert is about instead, with a
deadline generous enough to be reached only when the behaviour is really wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "", step: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value.

    Raises ``AssertionError`` naming ``what`` (and the last value seen) after ``timeout``
    seconds. The predicate is always tried once more at the deadline, so a slow poll loop
    never fails a condition that did hold.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate} (last: {last!r})"
            )
        time.sleep(step)
