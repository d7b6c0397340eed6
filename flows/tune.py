"""Hyperparameter search as a Prefect flow: create or resume the Optuna study, run its workers, report.

A thin shell over :mod:`jtcse.tuning`: one task prepares the study (once, before any worker starts), one task per
worker runs trials (in the flow's process for a single worker, as a ``jtcse tune-worker`` process
each when there are several), a last task writes best_params.yaml, the plots and summary.md, which is also
published as a Prefect markdown artifact. Tasks return paths and numbers, never models.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from jtcse import tuning
from jtcse.config import load_settings

ARTIFACT_KEY = "jtcse-tune"


@task(name="prepare-study", cache_policy=NONE, persist_result=False)
def prepare(
    params: str,
    tower_a: str,
    tower_b: str,
    output_dir: str,
    workers: int | None,
    n_trials: int | None,
    storage: str | None,
    study_name: str | None,
) -> str:
    """Validate the settings and the towers, create or load the study, write the resolved settings; return its path."""
    settings = tuning.with_overrides(
        load_settings(params), n_trials=n_trials, storage=storage, study_name=study_name, workers=workers
    )
    tuning.check_towers(settings, tower_a, tower_b)
    tuning.check_data(settings)
    tuning.prepare_study(settings)
    return str(tuning.write_settings(settings, Path(output_dir) / tuning.SETTINGS_FILE))


@task(name="tune-worker", cache_policy=NONE, persist_result=False)
def run_worker(settings_path: str, tower_a: str, tower_b: str, worker_index: int, workers: int, log_dir: str) -> int:
    """Run one worker until the study holds its trials; return the worker's exit code (0)."""
    logger = get_run_logger()
    if workers == 1:
        tuning.run_worker(load_settings(settings_path), tower_a=tower_a, tower_b=tower_b, progress=False)
        return 0
    proc = tuning.spawn_worker(
        settings_path, tower_a=tower_a, tower_b=tower_b, worker_index=worker_index, workers=workers, log_dir=log_dir
    )
    logger.info("worker %d: pid %d, log %s", worker_index, proc.pid, proc.log_path)
    code = proc.wait()
    if code:
        raise RuntimeError(f"worker {worker_index} exited with {code}:\n{tuning.log_tail(proc.log_path)}")
    return code


@task(name="tune-report", cache_policy=NONE, persist_result=False)
def report(settings_path: str, output_dir: str) -> dict[str, str]:
    """best_params.yaml, trials.csv, plots and summary.md; publishes the summary as a markdown artifact."""
    result = tuning.write_report(load_settings(settings_path), output_dir)
    create_markdown_artifact(
        markdown=result.summary, key=ARTIFACT_KEY, description=f"Optuna study {result.study_name}: {result.counts}"
    )
    return result.files


@flow(name="tune", log_prints=True)
def tune(
    params: str = "params.yaml",
    tower_a: str = tuning.DEFAULT_TOWER_A,
    tower_b: str = tuning.DEFAULT_TOWER_B,
    workers: int | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    output_dir: str = "tune",
) -> dict[str, str]:
    """Optuna search over the twin stage (settings: the ``tune`` section of ``params``); returns the output files."""
    logger = get_run_logger()
    tower_a, tower_b = tuning.resolve_tower(tower_a), tuning.resolve_tower(tower_b)
    settings_path = prepare(params, tower_a, tower_b, output_dir, workers, n_trials, storage, study_name)
    k = load_settings(settings_path).tune.workers
    futures = [
        run_worker.submit(settings_path, tower_a, tower_b, i, k, str(Path(output_dir) / "logs")) for i in range(k)
    ]
    failed = []
    for i, future in enumerate(futures):
        future.wait()
        if future.state.is_failed():
            failed.append(i)
            logger.error("worker %d failed: %s", i, future.state.message)
    files = report(settings_path, output_dir)
    if failed:
        raise tuning.TuningError(f"worker(s) {failed} failed; the report covers the trials that finished")
    if "best_params" not in files:
        raise tuning.TuningError(f"no trial completed; see {files['summary']}")
    logger.info(
        "best parameters: %s; apply with `jtcse tune-apply --best %s --params %s`",
        files["best_params"],
        files["best_params"],
        params,
    )
    return files


if __name__ == "__main__":
    tune()
