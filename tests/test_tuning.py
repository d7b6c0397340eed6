"""Optuna search on the tiny twin: pruning, best params applied to params.yaml, resume after kill -9, two workers
on a real PostgreSQL server."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from jtcse import tuning
from jtcse.config import ConfigError, load_settings, settings_from_dict
from tests.conftest import REPO


def with_tune(settings, **tune):
    """``settings`` with a ``tune`` section for seconds-long trials (every key of ``tune`` overrides)."""
    raw = settings.model_dump(mode="json", by_alias=True)
    raw["runtime"]["threads"] = 1  # on a shared 2-core machine one thread per process is several times faster
    raw["tune"] = {
        "n_trials": 3, "trial_steps": 4, "eval_every": 2, "heartbeat_interval": 1, "grace_period": 2,
        "pruner": {"type": "none"},
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "space": {"lr": {"low": 1e-4, "high": 3e-2, "log": True}, "cross_attention": {"num_layers": {"choices": [1, 2, 4]}}},
        **tune,
    }
    return settings_from_dict(raw, "test settings")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def trials_of(settings):
    return tuning.load_study(settings.tune).get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------------ settings only


def test_tune_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"tune\.space\.w_tm: .*-1 is not a valid train\.w_tm"):
        settings_from_dict({"tune": {"space": {"w_tm": -1}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.cross_attention\.mode: .*'diag' is not a valid"):
        settings_from_dict({"tune": {"space": {"cross_attention": {"mode": {"choices": ["side", "diag"]}}}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.lr\.range: .*log-scale range needs low > 0"):
        settings_from_dict({"tune": {"space": {"lr": {"low": 0, "high": 1, "log": True}}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.w_nse: Extra inputs"):
        settings_from_dict({"tune": {"space": {"w_nse": 1.0}}})
    with pytest.raises(ConfigError, match=r"tune\.storage"):
        settings_from_dict({"tune": {"storage": "not a url"}})
    with pytest.raises(ConfigError, match=r"tune\.pruner\.type"):
        settings_from_dict({"tune": {"pruner": {"type": "hyperband"}}})
    fixed = settings_from_dict({"tune": {"space": {"w_tm": 0.5, "lr": None, "modulus_on": "embedding"}}})
    entries = fixed.tune.space.entries()
    assert entries["train.w_tm"] == 0.5 and entries["train.modulus_on"] == "embedding" and "train.lr" not in entries
    repo = load_settings(REPO / "params.yaml").tune
    assert repo.storage == "sqlite:///tune/optuna.db" and repo.pruner.type == "median"


def test_layouts_that_do_not_divide_the_towers_are_refused_before_any_trial(tiny_settings, tiny_bert):
    settings = with_tune(tiny_settings, space={"cross_attention": {"num_layers": {"choices": [2, 3]}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.cross_attention\.num_layers: \[3\] do not divide the 4 layers"):
        tuning.check_towers(settings, str(tiny_bert), str(tiny_bert))


def test_apply_refuses_an_invalid_value_and_leaves_params_untouched(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    (tmp_path / "best.yaml").write_text("_meta: {trial: 1}\ntrain.w_tm: -2.0\n")
    with pytest.raises(ConfigError, match=r"train\.w_tm"):
        tuning.apply_best(tmp_path / "best.yaml", params)
    assert params.read_text() == before


# ------------------------------------------------------------------------------------------------ a study


def test_study_prunes_writes_best_params_and_they_apply_to_params_yaml(tiny_settings, tiny_bert, tmp_path):
    # keep only trials within the top 1 % at each step: after the first completed trial, anything below the best
    # so far is pruned at its first evaluation (the runs are seeded and deterministic)
    settings = with_tune(tiny_settings, storage=sqlite_url(tmp_path / "optuna.db"), n_trials=4,
                         pruner={"type": "percentile", "percentile": 1.0, "n_startup_trials": 1, "n_warmup_steps": 0})
    report = tuning.run_study(settings, tower_a=str(tiny_bert), tower_b=str(tiny_bert), output_dir=tmp_path / "tune",
                              progress=False)
    counts = report.counts
    assert counts.finished == 4 and counts.failed == 0 and counts.running == 0
    assert counts.pruned >= 1 and counts.complete >= 1, counts
    trials = trials_of(settings)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert all(t.last_step < settings.tune.trial_steps for t in pruned)  # stopped early
    assert all(0 not in t.intermediate_values for t in trials)  # the untrained towers are not a trial's score

    out = tmp_path / "tune"
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["_meta"]["trial"] == report.best_trial and best["_meta"]["value"] == pytest.approx(report.best_value, abs=1e-4)
    assert {"train.lr", "train.w_tm", "train.cross_attention.num_layers", "train.modulus_on"} <= set(best)
    summary = (out / "summary.md").read_text()
    assert f"| trials pruned | {counts.pruned} |" in summary and "## Best parameters" in summary
    assert (out / "optimization_history.png").stat().st_size > 1000
    if counts.complete >= 2:
        assert (out / "param_importances.png").stat().st_size > 1000
    else:  # importances need two completed trials: skipped with a note, not an error
        assert "Note: no parameter importances" in summary and "importance_plot" not in report.files
    assert (out / "trials.csv").read_text().count("\n") == 5

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    original = params.read_text()
    from jtcse.cli import main

    assert main(["tune-apply", "--best", str(out / "best_params.yaml"), "--params", str(params)]) == 0
    applied = load_settings(params)
    for dotted, value in best.items():
        if dotted == "_meta":
            continue
        got = tuning._dotted_get(applied, dotted)
        assert got == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), dotted
    new = params.read_text()
    # comments and layout survive: only the lines of changed values differ, each keeping its comment
    old_lines, new_lines = original.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert 1 <= len(changed) <= len(best) - 1
    for a, b in changed:
        assert a.split(":")[0] == b.split(":")[0]
        if "#" in a:
            assert a[a.index("#"):] == b[b.index("#"):]
    assert "# weight of the tensor-modulus constraint" in new and new.startswith("# jtcse settings.")
    assert tuning.apply_best(out / "best_params.yaml", params) == {}  # applying twice changes nothing


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny_settings, tiny_bert, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    no_pooler = tmp_path / "no_pooler"  # modulus_on: pooler needs a pooler: those draws fail for real
    BertModel(BertConfig.from_pretrained(tiny_bert), add_pooling_layer=False).save_pretrained(no_pooler)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(no_pooler)
    settings = with_tune(tiny_settings, storage=sqlite_url(tmp_path / "optuna.db"), n_trials=2, trial_steps=2,
                         eval_every=1, space={"modulus_on": {"choices": ["pooler", "embedding"]},
                                                       "cross_attention": {"num_layers": 2}})
    report = tuning.run_study(settings, tower_a=str(no_pooler), tower_b=str(no_pooler), output_dir=tmp_path / "tune",
                              progress=False)
    assert report.counts.failed >= 1 and report.counts.complete == 2, report.counts
    trials = trials_of(settings)
    assert {t.params["modulus_on"] for t in trials if t.state.name == "FAIL"} == {"pooler"}
    assert {t.params["modulus_on"] for t in trials if t.state.name == "COMPLETE"} == {"embedding"}
    assert "| trials failed |" in (tmp_path / "tune" / "summary.md").read_text()


# ------------------------------------------------------------------------------------------ kill and resume


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"worker exited ({proc.returncode}) before {what}:\n{tuning.log_tail(proc.log_path, 40)}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_killed_worker_trial_is_failed_and_retried_and_a_rerun_only_runs_the_rest(tiny_settings, tiny_bert, tmp_path,
                                                                                   monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the killed worker's trial folder stays behind: keep it here
    settings = with_tune(tiny_settings, storage=sqlite_url(tmp_path / "optuna.db"), n_trials=3, trial_steps=6)
    tower = str(tiny_bert)
    tuning.prepare_study(settings)
    path = tuning.write_settings(settings, tmp_path / "study_settings.yaml")
    proc = tuning.spawn_worker(path, tower_a=tower, tower_b=tower, worker_index=0, workers=1, log_dir=tmp_path / "logs")
    try:
        def second_trial_training():
            trials = trials_of(settings)
            done = [t for t in trials if t.state.name == "COMPLETE"]
            # "overrides" is stored once every value is drawn: the kill then lands in training, not between two
            # suggest calls (a worker that starts faster could otherwise be killed with half its values drawn)
            running = [t for t in trials if t.state.name == "RUNNING" and "overrides" in t.user_attrs]
            return running[0] if done and running else None

        victim = wait_for(second_trial_training, 180, "a trial training after a completed one", proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_pid = proc.pid
    assert trials_of(settings)[victim.number].state.name == "RUNNING"  # nobody told the storage

    report = tuning.run_study(settings, tower_a=tower, tower_b=tower, output_dir=tmp_path / "tune", progress=False)
    trials = trials_of(settings)
    states = {t.number: t.state.name for t in trials}
    assert states[victim.number] == "FAIL"  # its heartbeat went stale: failed, never left RUNNING
    assert "RUNNING" not in states.values() and "WAITING" not in states.values()
    assert report.counts.finished == 3
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE"
    assert retries[0].params == trials[victim.number].params  # the interrupted trial was rerun with the same values
    by_rerun = [t for t in trials if t.user_attrs.get("worker_pid") == os.getpid()]
    by_killed = [t for t in trials if t.user_attrs.get("worker_pid") == killed_pid and t.state.name == "COMPLETE"]
    assert len(by_killed) >= 1 and len(by_rerun) == 3 - len(by_killed)  # the rerun ran only the remainder

    from jtcse.cli import main  # the command line reruns the finished study: nothing left to do

    assert main(["tune", "--params", str(path), "--tower-a", tower, "--tower-b", tower,
                 "--output-dir", str(tmp_path / "again")]) == 0
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
    bindir = Path(found[-1]).parent if found else (Path(shutil.which("initdb")).parent if shutil.which("initdb") else None)
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (initdb): apt-get install -y postgresql "
                    "(.ci/run installs it); this test needs a real server")
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
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "jtcse", "optuna")
        yield f"postgresql+psycopg://jtcse@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
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
    report = tuning.run_study(settings, tower_a=str(tiny_bert), tower_b=str(tiny_bert), output_dir=tmp_path / "tune",
                              progress=False)
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
