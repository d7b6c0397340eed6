"""End to end: the real dvc.yaml on tiny settings, driven by the retrain flow; then the scheduled deployment."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import yaml

from tests.pipeline_project import dvc, make_project, project_env
from tests.processes import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert, small_sts_dir, small_transfer_dir):
    return make_project(tmp_path_factory.mktemp("project"), tiny_bert, small_sts_dir, small_transfer_dir)


def stale_stages(project) -> set[str]:
    status = json.loads(dvc(["status", "--json"], project).stdout or "{}")
    return set(status)


@pytest.mark.timeout(900)  # two full dvc repro runs: 98 s on the 2-core machine, 426 s at load average 11
def test_retrain_flow_promotes_then_keeps_and_dvc_reruns_only_what_changed(project, prefect_harness):
    from flows.retrain import retrain
    from jtcse.release.registry import read_registry

    first = retrain(project_dir=str(project))
    assert first["decision"]["promote"] and first["promoted_version"] == 1
    twin = json.loads((project / "metrics/twin/metrics.json").read_text())
    assert set(twin) == {"sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg"}
    registry = read_registry(project / "registry")
    assert registry["current"] == 1
    entry = registry["versions"][0]
    assert entry["metrics"] == twin and len(entry["data_version"]) > 10 and len(entry["git_commit"]) == 40
    assert (project / "registry/v1/twin/twin.json").is_file()
    assert (project / "reports/sts_bars.png").stat().st_size > 1000
    transfer = json.loads((project / "metrics/distilled/transfer.json").read_text())
    assert set(transfer) == {"mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc", "avg"}
    assert "| distilled (JTCSE-D) |" in (project / "reports/transfer_table.md").read_text()
    assert "SentEval transfer tasks, accuracy x 100" in (project / "models/tiny-0.0.1/README.md").read_text()
    assert stale_stages(project) == set()  # a second `dvc repro` has nothing to do

    second = retrain(project_dir=str(project), pull=False)
    assert not second["decision"]["promote"] and second["promoted_version"] is None
    assert "does not beat v1" in second["decision"]["reason"]
    assert read_registry(project / "registry")["current"] == 1

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 5e-4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = stale_stages(project)
    assert "train" in changed
    assert not changed & {"validate", "pretrain_a", "pretrain_b", "evaluate_base", "evaluate_transfer_base"}
    params["train"]["lr"] = 1e-3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale_stages(project) == set()


def test_failed_validation_stops_the_flow_without_retry(project, prefect_harness):
    from flows.retrain import StageFailed, retrain

    params = yaml.safe_load((project / "params.yaml").read_text())
    original = (project / "params.yaml").read_text()
    params["validate"]["max_words"] = 5  # the corpus has longer lines: the gate must fail
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        with pytest.raises(StageFailed, match="expect_column_values_to_be_between") as info:
            retrain(project_dir=str(project), pull=False)
        assert info.value.transient is False
    finally:
        (project / "params.yaml").write_text(original)
        dvc(["repro", "--single-item", "validate"], project)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(900)  # 60 s (127 s at load average 11); its own waits add up to 150 + 120 + 360 s
def test_scheduled_deployment_on_a_real_server_runs(project, tmp_path):
    import httpx

    port = free_port()
    env = project_env() | {
        "PREFECT_HOME": str(tmp_path / "home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    runner = None
    try:

        def healthy():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 150, "prefect server", interval=1)
        runner = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flows.serve",
                "--project-dir",
                str(project),
                "--name",
                "smoke",
                "--cron",
                "0 4 * * 0",
                "--no-pull",
            ],
            env=env,
            cwd=str(project.parent),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        code = (
            "import sys; from prefect.deployments import run_deployment; "
            "r = run_deployment('retrain/smoke', timeout=300); print(r.state.type.value, r.id); "
            "sys.exit(0 if r.state.is_completed() else 1)"
        )

        def deployment():
            r = httpx.post(f"http://127.0.0.1:{port}/api/deployments/filter", json={}, timeout=5)
            return [d for d in r.json() if d["name"] == "smoke"]

        (dep,) = wait_for(deployment, 120, "the served deployment", interval=1)
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["0 4 * * 0"]
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=360)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("COMPLETED")
    finally:
        for proc in (runner, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
