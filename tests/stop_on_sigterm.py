"""A pytest plugin (tests/conftest.py imports its hook): SIGTERM ends the session the way Ctrl-C does.

Python's default SIGTERM action kills the interpreter at once, so ``finally`` blocks and fixture finalizers never
run: a CI runner's or ``timeout``'s stop left the Prefect servers and workers the tests start running as orphans.
Raised as KeyboardInterrupt, the signal unwinds the running test and pytest tears the session's fixtures down.
"""

from __future__ import annotations

import signal
import threading


def _stop(signum, frame):
    raise KeyboardInterrupt(f"pytest stopped by {signal.Signals(signum).name}")


def pytest_configure(config):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
