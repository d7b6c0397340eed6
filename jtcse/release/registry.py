"""A small model registry: promote a new model only when it beats the one currently promoted.

``registry.json`` keeps every promoted version with its metrics, data hash, git commit and time; the files of
each version are copied into ``v<N>/`` so the promoted model survives later pipeline runs.

A promotion is crash-safe: ``v<N>/`` is built in a temporary folder and renamed into place whole, then
``registry.json`` is replaced atomically; a failure at any point leaves ``current`` on the previous complete
version, and the new ``v<N>/`` is removed again (no orphan folder). Each entry records the SHA256 of its files, so
:func:`registry_problems` can prove the current model is there and whole.

``registry.json`` is checked whenever it is read: valid JSON with ``current`` and ``versions``, ``current`` naming
one of the versions (or null when there are none), every metric a finite number. A file that fails is refused
with one line naming it (:class:`RegistryError`), and nothing is promoted: a registry whose ``current`` points
nowhere would otherwise let any new model through as "no model promoted yet". A new model whose metric is not a
finite number is refused too, never compared.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from jtcse.errors import UserError
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


class RegistryError(UserError):
    """``registry.json`` is unreadable or inconsistent, or a metric is not a finite number: nothing is promoted."""


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number in strict JSON")


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def registry_file_problems(registry: object) -> list[str]:
    """What makes a parsed ``registry.json`` unusable (empty: it is consistent)."""
    if not isinstance(registry, dict) or not {"current", "versions"} <= registry.keys():
        return ["expected an object with the keys 'current' and 'versions'"]
    versions, current = registry["versions"], registry["current"]
    if not isinstance(versions, list):
        return ["'versions' is not a list"]
    problems: list[str] = []
    numbers: list[int] = []
    for i, entry in enumerate(versions):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("version"), int)
            or isinstance(entry["version"], bool)
        ):
            problems.append(f"versions[{i}] has no integer 'version'")
            continue
        numbers.append(entry["version"])
        if not isinstance(entry.get("path"), str) or not isinstance(entry.get("metrics"), dict):
            problems.append(f"v{entry['version']} lacks 'path' or 'metrics'")
            continue
        bad = sorted(k for k, v in entry["metrics"].items() if not _is_finite_number(v))
        if bad:
            problems.append(f"v{entry['version']} has non-finite or non-numeric metrics {bad}")
    if len(set(numbers)) != len(numbers):
        problems.append(f"versions repeat a number: {numbers}")
    if current is None:
        if versions:
            problems.append(f"'current' is null but {len(versions)} version(s) are recorded")
    elif isinstance(current, bool) or not isinstance(current, int) or current not in numbers:
        problems.append(f"'current' is {current!r}, which names no recorded version (versions: {numbers})")
    return problems


def read_registry(registry_dir: str | Path) -> dict:
    """The registry (empty when no ``registry.json`` exists); :class:`RegistryError` when it is unusable."""
    path = Path(registry_dir) / REGISTRY_FILE
    if not path.is_file():
        return {"current": None, "versions": []}
    try:
        registry = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise RegistryError(f"{path}: not valid JSON ({err}); restore it from a backup; nothing promoted") from None
    problems = registry_file_problems(registry)
    if problems:
        raise RegistryError(f"{path}: {'; '.join(problems)}; fix or restore it; nothing promoted")
    return registry


def current_entry(registry_dir: str | Path) -> dict | None:
    registry = read_registry(registry_dir)
    return next((v for v in registry["versions"] if v["version"] == registry["current"]), None)


def decide(new_metrics: dict, registry_dir: str | Path, metric: str = "avg", min_improvement: float = 0.0) -> Decision:
    if metric not in new_metrics:
        raise KeyError(f"retrain.metric: '{metric}' is not among the new model's metrics {sorted(new_metrics)}")
    new = new_metrics[metric]
    if not _is_finite_number(new):
        raise RegistryError(
            f"retrain.metric: the new model's {metric} is {new!r}, not a finite number; nothing promoted"
        )
    new = float(new)
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
    bad = sorted(k for k, v in metrics.items() if not _is_finite_number(v))
    if bad:
        raise RegistryError(f"the new model's metrics {bad} are not finite numbers; nothing promoted")
    version = max((v["version"] for v in registry["versions"]), default=0) + 1
    folder = registry_dir / f"v{version}"
    with atomic_directory(folder) as tmp:
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
    try:
        atomic_write_json(registry_dir / REGISTRY_FILE, registry)
    except BaseException:  # registry.json still names the previous version: v<N>/ would be an orphan
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return entry


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def registry_problems(registry_dir: str | Path) -> list[str]:
    """Why the registry cannot be trusted: ``registry.json`` unusable, or the current version not there whole
    (empty: all is well, or nothing is promoted yet)."""
    try:
        current = current_entry(registry_dir)
    except RegistryError as err:
        return [str(err)]
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
