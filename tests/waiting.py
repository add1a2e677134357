"""Waiting on real components: poll a predicate until it holds, or fail saying what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition", *,
             describe: Callable[[], str] | None = None, interval: float = 0.1) -> Any:
    """The predicate's first truthy value; an AssertionError naming `what` (and `describe()`) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = describe() if describe else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{extra}" if extra else ""))
        time.sleep(interval)
