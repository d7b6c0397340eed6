"""SIGTERM to a pytest run (a CI runner's stop, `timeout`) tears the session down: no orphaned child servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from tests.conftest import REPO
from tests.processes import alive, wait_for

WAIT_S = 60


def test_sigterm_runs_the_session_fixtures_teardown(tmp_path):
    pid_file = tmp_path / "server.pid"
    (tmp_path / "test_victim.py").write_text(
        textwrap.dedent(
            f"""
            import subprocess, sys, time
            from pathlib import Path
            import pytest

            @pytest.fixture(scope="session")
            def server():
                # like prefect_test_harness: a child in its own session, stopped by the fixture's teardown
                proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
                Path({str(pid_file)!r}).write_text(str(proc.pid))
                try:
                    yield proc
                finally:
                    proc.kill()
                    proc.wait(timeout=30)

            def test_waits(server):
                time.sleep(600)
            """
        )
    )
    pytest_run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.stop_on_sigterm",
            "-p",
            "no:cacheprovider",
            "test_victim.py",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: pid_file.is_file() and pid_file.read_text(), WAIT_S, "the victim's server to start")
        server_pid = int(pid_file.read_text())
        assert alive(server_pid)
        pytest_run.send_signal(signal.SIGTERM)
        out, _ = pytest_run.communicate(timeout=WAIT_S)
    finally:
        if pytest_run.poll() is None:
            pytest_run.kill()
            pytest_run.wait(timeout=WAIT_S)
    assert "pytest stopped by SIGTERM" in out, out
    assert pytest_run.returncode != 0
    wait_for(lambda: not alive(server_pid), WAIT_S, "the server child to be stopped by the fixture's teardown")
