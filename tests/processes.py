"""Helpers of the tests that start, signal and outlive processes."""

from __future__ import annotations

import os
import time


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` seconds pass (AssertionError
    naming what was waited for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
