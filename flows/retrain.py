"""Scheduled retraining as a Prefect flow: pull, validate, reproduce the DVC stages, promote only a better model.

A thin shell: the stages are `dvc repro` runs of dvc.yaml, and the promotion rule lives in jtcse.release.registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from jtcse.config import Settings, load_settings
from jtcse.errors import ConfigError
from jtcse.evaluation.sts import format_table
from jtcse.provenance import data_version, git_commit
from jtcse.release.registry import decide, decision_dict, promote, registry_problems

#: Tags of the flow and its deployment (filter runs in the UI, or attach tag-based limits).
TAGS = ["jtcse", "retrain"]

# `jtcse` exits with 2 for bad data or bad settings: rerunning cannot fix those.
_PERMANENT = re.compile(r"exited with (?:status |code )?2\b|ERROR: (?:failed to parse|unexpected error - .*params)")


class StageFailed(RuntimeError):
    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def _dvc(args: list[str], project_dir: str, timeout_hours: float | None = None) -> str:
    # Stage commands call `jtcse`: make this interpreter's environment the one they find first.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if timeout_hours is None:
        params = Path(project_dir) / "params.yaml"  # the file dvc itself reads the stages' params from
        timeout_hours = (load_settings(params) if params.is_file() else Settings()).retrain.stage_timeout_hours
    # A session of its own, so that a stage that runs past its bound is stopped with everything it started.
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", *args],
        cwd=project_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_hours * 3600)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise StageFailed(
            f"dvc {' '.join(args)} did not finish within {timeout_hours:g} h (retrain.stage_timeout_hours); stopped",
            transient=False,
        ) from None
    except BaseException:
        _stop_group(proc)
        raise
    output = stdout + stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise StageFailed(
            f"dvc {' '.join(args)} failed ({proc.returncode}):\n{tail}", transient=not _PERMANENT.search(output)
        )
    return output


def _stop_group(proc: subprocess.Popen, grace_seconds: float = 60) -> None:
    """SIGTERM the stage's process group (training saves a checkpoint), SIGKILL it after ``grace_seconds``."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def only_transient(task, task_run, state) -> bool:
    """Retry a stage after a crash or a lost resource, never after bad input."""
    exc = state.result(raise_on_failure=False)
    return getattr(exc, "transient", True)


@task(name="dvc-pull", retries=2, retry_delay_seconds=5, retry_condition_fn=only_transient)
def pull_data(project_dir: str) -> str:
    _dvc(["pull", "--quiet", "data.dvc"], project_dir)
    return data_version(Path(project_dir) / "data.dvc")


@task(name="validate", retries=0)  # a failed expectation is a finding, not a glitch: never retried
def validate(project_dir: str) -> str:
    _dvc(["repro", "--single-item", "validate"], project_dir)
    return str(Path(project_dir) / "reports" / "validation.json")


@task(name="stage", retry_delay_seconds=10, retry_condition_fn=only_transient, task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, project_dir: str) -> str:
    started = time.perf_counter()
    output = _dvc(["repro", "--single-item", stage], project_dir)
    get_run_logger().info(
        "%s: %s in %.1f s",
        stage,
        "up to date" if "didn't change, skipping" in output else "reproduced",
        time.perf_counter() - started,
    )
    return stage


def pipeline_stages(project_dir: Path, chosen: list[str] | None = None) -> list[str]:
    """The dvc.yaml stages a retrain runs after ``validate``, in order: ``chosen`` (``retrain.stages``), or when it
    is None every stage of dvc.yaml but validate, in dvc.yaml's order, so dvc.yaml is the one list of stages.
    A chosen name that dvc.yaml lacks is refused before anything runs."""
    path = Path(project_dir) / "dvc.yaml"
    declared = list((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {})
    if chosen is None:
        return [stage for stage in declared if stage != "validate"]
    if unknown := [stage for stage in chosen if stage not in declared]:
        raise ConfigError(f"retrain.stages: {', '.join(unknown)}: not a stage of {path} ({', '.join(declared)})")
    return list(chosen)


def _metrics(project_dir: Path, name: str) -> dict | None:
    path = project_dir / "metrics" / name / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def workspace_limit_name(project_dir: str | Path) -> str:
    """One Prefect global concurrency limit per DVC workspace (its resolved path), shared by every retrain run."""
    root = Path(project_dir).resolve()
    digest = hashlib.sha256(str(root).encode("utf-8")).hexdigest()[:12]
    return f"jtcse-retrain-{root.name}-{digest}"


class WorkspaceBusy(RuntimeError):
    """Another retrain holds this DVC workspace."""


@contextmanager
def workspace_slot(project_dir: str | Path, wait_seconds: float) -> Iterator[str]:
    """Hold the workspace's only slot (limit 1, created on first use) while a retrain runs there.

    Two `dvc repro` runs in one workspace would overwrite each other's outputs, so a second retrain (scheduled,
    triggered by hand or `python -m flows.retrain`) waits at most ``wait_seconds`` for the slot, then fails.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = workspace_limit_name(project_dir)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    with ExitStack() as stack:
        try:  # only the acquisition: a TimeoutError from the run itself is not "busy"
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=max(wait_seconds, 0.1), strict=True))
        except TimeoutError:
            raise WorkspaceBusy(
                f"{Path(project_dir).resolve()}: another retrain holds this workspace (Prefect "
                f"concurrency limit {name!r}); gave up after {wait_seconds:g} s "
                "(retrain.workspace_wait_seconds)"
            ) from None
        yield name


@flow(name="retrain", log_prints=True)
def retrain(project_dir: str = ".", params_file: str = "params.yaml", pull: bool = True) -> dict:
    """Reproduce the pipeline and promote the new twin if it beats the promoted one on the chosen metric.

    Args:
        project_dir: The jtcse project (DVC workspace) to retrain in: holds dvc.yaml, params.yaml, data.dvc.
            Only one retrain runs in a workspace at a time.
        params_file: Settings file, relative to project_dir; its `retrain` section picks the stages (null: all
            of dvc.yaml's), the promotion metric and the minimum improvement.
        pull: Run `dvc pull data.dvc` first, so the run trains on the latest versioned data.
    """
    root = Path(project_dir).resolve()
    settings = load_settings(root / params_file).retrain
    with workspace_slot(root, settings.workspace_wait_seconds):
        return _retrain(root, settings, pull)


def _retrain(root: Path, settings, pull: bool) -> dict:
    logger = get_run_logger()
    stages = pipeline_stages(root, settings.stages)  # before anything runs: a misspelt stage stops it here
    data_hash = pull_data(str(root)) if pull else data_version(root / "data.dvc")
    validate(str(root))
    stage_task = run_stage.with_options(retries=settings.stage_retries)
    for stage in stages:
        stage_task(stage, str(root))

    new = _metrics(root, "twin")
    if new is None:
        raise FileNotFoundError(f"{root / 'metrics/twin/metrics.json'}: the evaluate stage wrote no metrics")
    registry = root / settings.registry_dir
    decision = decide(new, registry, settings.metric, settings.min_improvement)
    entry = None
    if decision.promote:
        entry = promote(
            registry, [root / a for a in settings.promote], new, data_version=data_hash, git_commit=git_commit(root)
        )
    if problems := registry_problems(registry):
        raise RuntimeError(f"registry {registry}: " + "; ".join(problems))
    logger.info("%s: %s", "PROMOTED" if entry else "KEPT current model", decision.reason)

    rows = {name: m for name in ("base", "base_mean", "twin", "distilled") if (m := _metrics(root, name))}
    verdict = f"promoted as v{entry['version']}" if entry else f"kept v{decision.current_version}"
    create_markdown_artifact(
        key="retrain-result",
        markdown=f"# Retrain: {verdict}\n\n{decision.reason}\n\n{format_table(rows)}\n\n"
        f"data `{data_hash}`, commit `{git_commit(root)}`\n",
        description="STS results of the retrained models and the promotion decision",
    )
    return {"decision": decision_dict(decision), "promoted_version": entry["version"] if entry else None}


if __name__ == "__main__":
    from prefect import tags

    with tags(*TAGS):
        retrain()
