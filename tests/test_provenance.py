"""git_dirty: source changes count, the files `dvc repro` itself rewrites do not."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)


@pytest.fixture()
def checkout(tmp_path):
    """A committed project with the real dvc.yaml and the files the pipeline writes."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for name in (
        "metrics/train/summary.json",
        "metrics/twin/metrics.json",
        "reports/sts_bars.png",
        "reports/validation.json",
        "dvc.lock",
        "jtcse/trainer.py",
        "params.yaml",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("v1\n")
    git("init", "-q", cwd=root)
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=root)
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", cwd=root)
    return root


def test_pipeline_outputs_are_read_from_dvc_yaml():
    from jtcse.provenance import pipeline_outputs

    written = pipeline_outputs(REPO / "dvc.yaml")
    assert {
        "dvc.lock",
        "reports/validation.json",
        "metrics/train/summary.json",
        "metrics/twin/metrics.json",
        "metrics/base_mean/metrics.json",
        "reports/sts_bars.png",
        "models/twin",
    } <= set(written)
    assert not [p for p in written if "${" in p]


def test_a_pipeline_run_is_not_dirty_but_a_source_change_is(checkout):
    from jtcse.provenance import git_dirty

    assert git_dirty(checkout) is False
    for name in (
        "metrics/train/summary.json",
        "metrics/twin/metrics.json",
        "reports/sts_bars.png",
        "reports/validation.json",
        "dvc.lock",
    ):
        (checkout / name).write_text("rewritten by dvc repro\n")
    assert git_dirty(checkout) is False
    assert git_dirty(checkout, ignore_pipeline_outputs=False) is True
    (checkout / "params.yaml").write_text("changed\n")
    assert git_dirty(checkout) is True
    git("checkout", "params.yaml", cwd=checkout)
    git("mv", "jtcse/trainer.py", "jtcse/renamed.py", cwd=checkout)
    assert git_dirty(checkout) is True
    git("mv", "jtcse/renamed.py", "jtcse/trainer.py", cwd=checkout)
    assert git_dirty(checkout) is False
    (checkout / "jtcse" / "trainer.py").write_text("changed\n")
    assert git_dirty(checkout) is True


def test_outside_git_is_unknown(tmp_path):
    from jtcse.provenance import git_dirty

    assert git_dirty(tmp_path) is None
