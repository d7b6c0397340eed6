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
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip()


def git_dirty(cwd: str | Path = ".") -> bool | None:
    """Whether tracked files differ from the commit; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                             capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip())


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
