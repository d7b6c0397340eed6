"""Helpers of the tests that start, signal and outlive processes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts until its parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(
    condition,
    timeout: float,
    what: str,
    interval: float = 0.1,
    proc: subprocess.Popen | None = None,
    exit_detail: Callable[[], str] | None = None,
):
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` seconds pass (AssertionError
    naming what was waited for). With ``proc``, the wait also fails as soon as that process ends first (with
    ``exit_detail()``, e.g. the tail of its log, in the message), and a timed-out wait kills it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            detail = f":\n{exit_detail()}" if exit_detail else ""
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}{detail}")
        time.sleep(interval)
    if proc is not None:
        proc.kill()
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
