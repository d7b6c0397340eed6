"""A small model registry: promote a new model only when it beats the one currently promoted.

``registry.json`` keeps every promoted version with its metrics, data hash, git commit and time; the files of
each version are copied into ``v<N>/`` so the promoted model survives later pipeline runs.

A promotion is crash-safe: ``v<N>/`` is built in a temporary folder and renamed into place whole, then
``registry.json`` is replaced atomically; a failure at any point leaves ``current`` on the previous complete
version. Each entry records the SHA256 of its files, so :func:`registry_problems` can prove the current model
is there and whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from jtcse.formats import sha256_file
from jtcse.io import atomic_directory, atomic_write_json

REGISTRY_FILE = "registry.json"


@dataclass(frozen=True)
class Decision:
    promote: bool
    metric: str
    new_value: float
    current_value: float | None
    current_version: int | None
    reason: str


def read_registry(registry_dir: str | Path) -> dict:
    path = Path(registry_dir) / REGISTRY_FILE
    if not path.is_file():
        return {"current": None, "versions": []}
    return json.loads(path.read_text(encoding="utf-8"))


def current_entry(registry_dir: str | Path) -> dict | None:
    registry = read_registry(registry_dir)
    return next((v for v in registry["versions"] if v["version"] == registry["current"]), None)


def decide(new_metrics: dict, registry_dir: str | Path, metric: str = "avg", min_improvement: float = 0.0) -> Decision:
    if metric not in new_metrics:
        raise KeyError(f"retrain.metric: '{metric}' is not among the new model's metrics {sorted(new_metrics)}")
    new = float(new_metrics[metric])
    current = current_entry(registry_dir)
    if current is None:
        return Decision(True, metric, new, None, None, "no model promoted yet")
    old = float(current["metrics"][metric])
    if new > old + min_improvement:
        return Decision(
            True, metric, new, old, current["version"], f"{metric} {new:.2f} beats v{current['version']} ({old:.2f})"
        )
    return Decision(
        False,
        metric,
        new,
        old,
        current["version"],
        f"{metric} {new:.2f} does not beat v{current['version']} ({old:.2f}) by more than {min_improvement}",
    )


def promote(
    registry_dir: str | Path,
    artifacts: list[str | Path],
    metrics: dict,
    *,
    data_version: str,
    git_commit: str,
    extra: dict | None = None,
) -> dict:
    """Copy the artifacts into v<N>/ and make N current; returns the new registry entry."""
    registry_dir = Path(registry_dir)
    registry = read_registry(registry_dir)
    version = max((v["version"] for v in registry["versions"]), default=0) + 1
    with atomic_directory(registry_dir / f"v{version}") as tmp:
        for artifact in map(Path, artifacts):
            if not artifact.exists():
                raise FileNotFoundError(f"retrain.promote: {artifact} does not exist")
            target = tmp / artifact.name
            (shutil.copytree if artifact.is_dir() else shutil.copy2)(artifact, target)
        files = _digests(tmp)
    entry = {
        "version": version,
        "path": f"v{version}",
        "files": files,
        "metrics": metrics,
        "data_version": data_version,
        "git_commit": git_commit,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    registry["versions"].append(entry)
    registry["current"] = version
    atomic_write_json(registry_dir / REGISTRY_FILE, registry)
    return entry


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def registry_problems(registry_dir: str | Path) -> list[str]:
    """Why the current version is not there whole (empty: it is, or nothing is promoted yet)."""
    current = current_entry(registry_dir)
    if current is None:
        return []
    folder = Path(registry_dir) / current["path"]
    if not folder.is_dir():
        return [f"{folder}: the current model's folder is missing"]
    recorded = current.get("files")
    if recorded is None:  # promoted before digests were recorded
        return []
    actual = _digests(folder)
    return [
        f"{folder}: {name} {'differs from' if name in actual else 'is missing from'} the files recorded at promotion"
        for name in sorted(recorded)
        if actual.get(name) != recorded[name]
    ]


def decision_dict(decision: Decision) -> dict:
    return asdict(decision)
