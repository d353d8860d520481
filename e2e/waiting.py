"""Polling with a deadline: the one way the e2e suite waits for the cluster to converge."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 0.25) -> Any:
    """Call check until it returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
