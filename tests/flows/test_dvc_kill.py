"""kill -9 of `dvc repro` in the middle of a training stage, then `dvc repro` again: the stage resumes from its
checkpoint and ends with the same weights and logs as an uninterrupted run (the real dvc.yaml, tiny settings)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.pipeline_project import dvc, make_project, project_env

pytestmark = pytest.mark.slow
WAIT_S = 600


def test_sigkill_of_dvc_repro_during_pretrain_then_rerun_equals_an_uninterrupted_run(
    tmp_path, tiny_bert, small_sts_dir, monkeypatch
):
    from jtcse.config import load_settings
    from jtcse.training.stages import train_tower

    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project", tiny_bert, small_sts_dir)
    dvc(["repro", "--single-item", "validate"], project)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "--single-item", "pretrain_a"],
        cwd=project,
        env=project_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoints = project / "checkpoints" / "tower_a"
    deadline = time.monotonic() + WAIT_S
    while not list(checkpoints.glob("step-*")):
        assert proc.poll() is None, f"dvc repro ended ({proc.returncode}) before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the wait"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the jtcse stage it runs, as a pre-empted machine would
    proc.wait(timeout=60)
    last = max(int(p.name.removeprefix("step-")) for p in checkpoints.glob("step-*"))
    steps = load_settings(project / "params.yaml").pretrain.steps
    assert last < steps, "the stage finished before the kill"

    rerun = dvc(["repro", "--single-item", "pretrain_a"], project)
    assert "resuming tower a" in rerun.stdout + rerun.stderr

    monkeypatch.chdir(project)  # params.yaml's paths are relative to the project
    reference = tmp_path / "reference"
    train_tower(
        load_settings("params.yaml"),
        which="a",
        output=reference / "tower_a",
        checkpoint_dir=reference / "ckpt",
        metrics_dir=reference / "metrics",
    )
    final = f"step-{steps:08d}/model.safetensors"
    a, b = load_file(str(reference / "ckpt" / final)), load_file(str(checkpoints / final))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (reference / "tower_a" / "model.safetensors").read_bytes() == (
        project / "models" / "tower_a" / "model.safetensors"
    ).read_bytes()
    for name in ("train.csv", "eval.csv"):
        assert (reference / "metrics" / name).read_text() == (project / "metrics" / "pretrain_a" / name).read_text()
    assert "changed" not in dvc(["status", "pretrain_a"], project).stdout  # dvc.lock records the resumed result
