"""The whole search: create or resume the study, run its workers, write the report."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from jtcse.config import Settings
from jtcse.tuning.report import StudyReport, write_report
from jtcse.tuning.settings import (
    DEFAULT_TOWER_A,
    DEFAULT_TOWER_B,
    SETTINGS_FILE,
    check_data,
    check_towers,
    resolve_tower,
    with_overrides,
    write_settings,
)
from jtcse.tuning.storage import make_url_backend, prepare_study
from jtcse.tuning.workers import run_worker, run_worker_processes, signals_as_interrupt

log = logging.getLogger("jtcse.tuning")


class TuningError(RuntimeError):
    """The study could not run to its end (a worker process failed, or no trial completed)."""


class TuningInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped the study: the workers were stopped and the report covers what finished."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


def run_study(
    settings: Settings,
    *,
    tower_a: str = DEFAULT_TOWER_A,
    tower_b: str = DEFAULT_TOWER_B,
    output_dir: str | os.PathLike = "tune",
    workers: int | None = None,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    subprocesses: bool | None = None,
    progress: bool = True,
) -> StudyReport:
    """Create or resume the study, run its trials with ``tune.workers`` workers, write the report.

    One worker runs in this process unless ``subprocesses`` is true; several always run as separate processes
    (``jtcse tune-worker``). Writes ``output_dir``: best_params.yaml, summary.md, trials.csv, the
    optimisation-history and parameter-importance plots, study_settings.yaml and logs/ of the workers.
    """
    settings = with_overrides(settings, n_trials=n_trials, storage=storage, study_name=study_name, workers=workers)
    tune = settings.tune
    tower_a, tower_b = resolve_tower(tower_a), resolve_tower(tower_b)
    check_towers(settings, tower_a, tower_b)
    check_data(settings)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if tune.workers > 1 and make_url_backend(tune.storage) == "sqlite":
        log.warning(
            "%d workers on SQLite: writes are serialised and may time out; use PostgreSQL for several "
            "workers (docs/tuning.md)",
            tune.workers,
        )
    prepare_study(settings)
    settings_path = write_settings(settings, output_dir / SETTINGS_FILE)
    started = time.perf_counter()
    with signals_as_interrupt() as gate:
        try:
            if subprocesses or tune.workers > 1:
                codes = run_worker_processes(
                    settings_path,
                    settings,
                    tower_a=tower_a,
                    tower_b=tower_b,
                    log_dir=output_dir / "logs",
                    progress=progress,
                )
            else:
                run_worker(settings, tower_a=tower_a, tower_b=tower_b, progress=progress)
                codes = [0]
        except KeyboardInterrupt:  # the workers are stopped (run_worker_processes waited for them)
            signum = gate.received[0] if gate.received else signal.SIGINT
            report = write_report(settings, output_dir, wall_seconds=time.perf_counter() - started)
            raise TuningInterrupted(
                f"interrupted by {signal.Signals(signum).name}; workers stopped; the report in {output_dir} covers "
                f"the finished trials ({report.counts}); rerun the same command to continue the study",
                signum,
            ) from None
    report = write_report(settings, output_dir, wall_seconds=time.perf_counter() - started)
    failed = [i for i, code in enumerate(codes) if code]
    if failed:
        raise TuningError(
            f"worker(s) {failed} failed (see {output_dir / 'logs'}); the report covers the trials "
            f"that finished: {report.counts}"
        )
    if report.best_trial is None:
        raise TuningError(f"study {tune.study_name!r} has no completed trial ({report.counts}); see the errors above")
    return report
