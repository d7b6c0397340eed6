"""A throw-away copy of this project (git + DVC + the real dvc.yaml) with tiny settings, for end-to-end tests."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

VENV_BIN = str(Path(sys.executable).parent)


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")  # dvc.yaml's commands call `jtcse` and `python`
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run(args: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(args, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = [
            (x.decode(errors="replace") if isinstance(x, bytes) else x or "")[-3000:] for x in (err.stdout, err.stderr)
        ]
        raise AssertionError(f"{' '.join(args)} did not finish within {timeout} s:\n{out[0]}\n{out[1]}") from None
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def remote_url() -> str:
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    url = config["'remote \"shared\"'"]["url"]
    return str((REPO / ".dvc" / url).resolve())


TINY_STAGE = {"steps": 4, "batch_size": 8, "lr": 1e-3, "eval_every": 2, "checkpoint_every": 2, "keep_checkpoints": 1}


def make_project(root: Path, tiny_model: Path, small_sts: Path, small_transfer: Path | None = None) -> Path:
    """Copy the pipeline definition and code, point it at the tiny model, pull the real data.

    Validation runs on the full bundle; training selection and evaluation use the first pairs of each STS file.
    """
    for name in ("dvc.yaml", "data.dvc", "pyproject.toml"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "jtcse", root / "jtcse", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(base=str(tiny_model), max_length=24)
    shutil.copytree(small_sts, root / "sts_small")
    params["data"].update(max_sentences=64, sts_dir="sts_small")
    for stage in ("pretrain", "train", "distill"):
        params[stage].update(TINY_STAGE)
    params["train"]["cross_attention"]["num_layers"] = 2
    params["evaluate"].update(batch_size=256, max_length=48)
    if small_transfer is not None:
        shutil.copytree(small_transfer, root / "transfer_small")
        params["transfer"].update(data_dir="transfer_small", folds=2, inner_folds=2, max_iter=50, max_train=None)
    params["runtime"]["threads"] = 1
    params["package"].update(name="tiny", version="0.0.1")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / ".gitignore").write_text("/checkpoints\n/registry\n/models\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@example.com"], root)
    run(["git", "config", "user.name", "ci"], root)
    dvc(["init", "-q"], root)
    dvc(["config", "core.analytics", "false"], root)
    dvc(["remote", "add", "-d", "shared", remote_url()], root)
    dvc(["pull", "-q", "data.dvc"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root
