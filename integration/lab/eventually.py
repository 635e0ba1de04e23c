"""Poll until a condition holds; the only way tests wait for the real world."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    predicate: Callable[[], T | None], timeout_s: float = 10.0, interval_s: float = 0.02
) -> T:
    """Return the predicate's first truthy value; fail with the last one seen."""
    deadline = time.monotonic() + timeout_s
    last = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last value: {last!r}")
        time.sleep(interval_s)
        last = predicate()
    return last
