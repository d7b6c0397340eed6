"""Worker processes (jtcse/tuning/workers.py, started as `jtcse tune-worker`): resume after kill -9, two workers on
a real PostgreSQL server, SIGTERM to `jtcse tune`."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from jtcse import tuning
from tests.conftest import REPO
from tests.processes import alive, wait_for
from tests.tuning.helpers import sqlite_url, trials_of, with_tune


def worker_log(proc: subprocess.Popen):
    """The end of a tuning worker's log, for a failure message."""
    return lambda: tuning.log_tail(proc.log_path, 40)


def heartbeat_rows(db: Path, trial_number: int) -> int:
    """Heartbeat rows Optuna holds for a trial, read straight from the SQLite file."""
    import sqlite3

    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT COUNT(*) FROM trial_heartbeats h JOIN trials t ON t.trial_id = h.trial_id WHERE t.number = ?",
            (trial_number,),
        ).fetchone()[0]


@pytest.mark.parametrize("window", ["while_training", "before_first_heartbeat"])
def test_killed_worker_trial_is_failed_and_retried_and_a_rerun_only_runs_the_rest(
    tiny_settings, tiny_bert, tmp_path, monkeypatch, window
):
    """``while_training`` kills the worker during its second trial (heartbeats recorded); ``before_first_heartbeat``
    makes it SIGKILL itself right after creating trial 1, deterministically, so the trial has no heartbeat row at
    all: Optuna alone never fails such a trial and the rerun used to wait for it forever."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the killed worker's trial folder stays behind: keep it here
    db = tmp_path / "optuna.db"
    settings = with_tune(tiny_settings, storage=sqlite_url(db), n_trials=3, trial_steps=6)
    tower = str(tiny_bert)
    tuning.prepare_study(settings)
    path = tuning.write_settings(settings, tmp_path / "study_settings.yaml")
    if window == "before_first_heartbeat":
        monkeypatch.setenv(tuning.SIGKILL_AFTER_CREATING_TRIAL_ENV, "1")  # only the worker's environment gets it
    proc = tuning.spawn_worker(path, tower_a=tower, tower_b=tower, worker_index=0, workers=1, log_dir=tmp_path / "logs")
    monkeypatch.delenv(tuning.SIGKILL_AFTER_CREATING_TRIAL_ENV, raising=False)
    try:
        if window == "while_training":

            def second_trial_training():
                trials = trials_of(settings)
                done = [t for t in trials if t.state.name == "COMPLETE"]
                running = [t for t in trials if t.state.name == "RUNNING" and t.intermediate_values]  # training
                return running[0] if done and running else None

            victim = wait_for(
                second_trial_training, 180, "a trial training after a completed one", 0.05, proc, worker_log(proc)
            )
            os.kill(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the worker did not die within 180 s:\n{tuning.log_tail(proc.log_path, 40)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, tuning.log_tail(proc.log_path, 40)
    killed_pid = proc.pid
    if window == "before_first_heartbeat":
        victim = trials_of(settings)[1]
        assert heartbeat_rows(db, 1) == 0 and heartbeat_rows(db, 0) == 1  # killed inside the window
    assert trials_of(settings)[victim.number].state.name == "RUNNING"  # nobody told the storage

    report = tuning.run_study(settings, tower_a=tower, tower_b=tower, output_dir=tmp_path / "tune", progress=False)
    trials = trials_of(settings)
    states = {t.number: t.state.name for t in trials}
    assert states[victim.number] == "FAIL"  # its heartbeat went stale (or never came): failed, never left RUNNING
    assert "RUNNING" not in states.values() and "WAITING" not in states.values()
    assert report.counts.finished == 3
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    if window == "while_training":
        assert retries[0].params == trials[victim.number].params  # the interrupted trial reran with the same values
    else:  # killed before drawing anything: the retry draws its values itself
        assert trials[victim.number].params == {} and len(retries[0].params) == len(trials[0].params)
    by_rerun = [t for t in trials if t.user_attrs.get("worker_pid") == os.getpid()]
    by_killed = [t for t in trials if t.user_attrs.get("worker_pid") == killed_pid and t.state.name == "COMPLETE"]
    assert len(by_killed) >= 1 and len(by_rerun) == 3 - len(by_killed)  # the rerun ran only the remainder

    from jtcse.cli import main  # the command line reruns the finished study: nothing left to do

    assert (
        main(
            [
                "tune",
                "--params",
                str(path),
                "--tower-a",
                tower,
                "--tower-b",
                tower,
                "--output-dir",
                str(tmp_path / "again"),
            ]
        )
        == 0
    )
    assert len(trials_of(settings)) == len(trials)
    again = yaml.safe_load((tmp_path / "again" / "best_params.yaml").read_text())
    assert again["_meta"]["trial"] == report.best_trial


# ------------------------------------------------------------------------------- two workers, real PostgreSQL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on loopback (Debian's postgresql package; CI installs it)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    bindir = (
        Path(found[-1]).parent if found else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    )
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries not found (initdb): apt-get install -y postgresql "
            "(.ci/run installs it); this test needs a real server"
        )
    root = Path(tempfile.mkdtemp(prefix="jtcse-pg-"))  # under /tmp: reachable by the server's user
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            pytest.fail("running as root and no 'postgres' or 'nobody' user to run the server as")
        info = pwd.getpwnam(user)
        os.chown(root, info.pw_uid, info.pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    data, port = root / "data", free_port()

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode:
            pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}\n{_read(root / 'server.log')}")

    run(str(bindir / "initdb"), "-D", str(data), "-U", "jtcse", "-A", "trust", "--no-sync", "--no-locale", "-E", "UTF8")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "jtcse", "optuna")
        yield f"postgresql+psycopg://jtcse@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_two_worker_processes_share_one_postgres_study(tiny_settings, tiny_bert, tmp_path, postgres_url):
    settings = with_tune(tiny_settings, storage=postgres_url, study_name="two-workers", n_trials=6, workers=2)
    report = tuning.run_study(
        settings, tower_a=str(tiny_bert), tower_b=str(tiny_bert), output_dir=tmp_path / "tune", progress=False
    )
    trials = trials_of(settings)
    assert all(t.state.name == "COMPLETE" for t in trials), [t.state for t in trials]
    assert 6 <= len(trials) <= 7  # two workers may both start the last trial
    assert report.counts.finished == len(trials)
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    draws = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(draws)) == len(draws)  # workers seed their samplers apart: no trial drawn twice
    workers = {t.user_attrs["worker_pid"] for t in trials}
    assert len(workers) == 2 and os.getpid() not in workers  # split across both worker processes
    logs = sorted((tmp_path / "tune" / "logs").glob("worker-*.log"))
    assert [p.name for p in logs] == ["worker-0.log", "worker-1.log"]
    assert (tmp_path / "tune" / "best_params.yaml").is_file()


@pytest.mark.slow
def test_sigterm_to_tune_stops_both_workers_and_writes_the_report(tiny_settings, tiny_bert, tmp_path):
    """Issue 15: SIGTERM to `jtcse tune --workers 2` left both workers running and wrote no report."""
    settings = with_tune(
        tiny_settings, storage=sqlite_url(tmp_path / "optuna.db"), n_trials=50, trial_steps=400, eval_every=2, workers=2
    )
    params = tuning.write_settings(settings, tmp_path / "params.yaml")
    tower = str(tiny_bert)
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jtcse.cli",
            "tune",
            "--params",
            str(params),
            "--tower-a",
            tower,
            "--tower-b",
            tower,
            "--output-dir",
            str(tmp_path / "tune"),
        ],
        start_new_session=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.log_path = tmp_path / "tune" / "logs" / "worker-0.log"

    try:

        def two_trials_running():
            try:
                running = [t for t in trials_of(settings) if t.state.name == "RUNNING" and "worker_pid" in t.user_attrs]
            except Exception:  # the study is not created yet
                return None
            return running if len(running) == 2 else None

        running = wait_for(two_trials_running, 240, "two trials RUNNING, one per worker", 0.05, proc, worker_log(proc))
        pids = {t.user_attrs["worker_pid"] for t in running}
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        still_running = [pid for pid in pids if alive(pid)]
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever a failed test left: the tune process group
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == 143, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("jtcse tune: interrupted by SIGTERM; workers stopped; the report in ") and last.endswith(
        "rerun the same command to continue the study"
    ), err[-3000:]
    assert len(pids) == 2 and still_running == []  # not re-parented and still training
    assert (tmp_path / "tune" / "summary.md").is_file() and (tmp_path / "tune" / "trials.csv").is_file()
    states = {t.state.name for t in trials_of(settings)}
    assert "RUNNING" not in states  # the interrupted trials were marked failed, not left running
