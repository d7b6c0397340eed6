"""Where a model came from: the DVC hash of the data, the git commit, the hardware."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import yaml


def data_version(dvc_file: str | Path = "data.dvc") -> str:
    """The DVC content hash of data/ (outs[0].md5 of the pointer file), or 'unknown'."""
    path = Path(dvc_file)
    if not path.is_file():
        return "unknown"
    outs = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown"))


def git_commit(cwd: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip()


def pipeline_outputs(dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Paths the DVC pipeline itself writes (every stage's outs, metrics and plots, and dvc.lock), relative to
    the folder of ``dvc_yaml``. Paths built from ``${...}`` are left out (they name ignored model folders)."""
    path = Path(dvc_yaml)
    if not path.is_file():
        return []
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}
    written = ["dvc.lock"]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in (stage or {}).get(kind) or []:
                name = next(iter(entry)) if isinstance(entry, dict) else entry
                if isinstance(name, str) and "${" not in name:
                    written.append(name.rstrip("/"))
    return written


def git_dirty(cwd: str | Path = ".", ignore_pipeline_outputs: bool = True) -> bool | None:
    """Whether tracked files differ from the commit; None outside a git checkout.

    By default the files the DVC pipeline writes (``pipeline_outputs`` of ``cwd/dvc.yaml``: metrics, reports,
    dvc.lock) do not count: ``dvc repro`` rewrites them (training times change every run), so a run from a clean
    commit would otherwise always look modified by the time it packages its model.
    """
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "-z", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        prefix = subprocess.run(
            ["git", "rev-parse", "--show-prefix"], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    entries = out.stdout.split("\0")
    changed, i = [], 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        changed.append(entry[3:])
        if entry[0] in "RC":  # a rename or copy is followed by its original path
            changed.append(entries[i])
            i += 1
    ignored = [prefix + p for p in pipeline_outputs(Path(cwd) / "dvc.yaml")] if ignore_pipeline_outputs else []
    return any(not any(path == p or path.startswith(p + "/") for p in ignored) for path in changed)


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"
