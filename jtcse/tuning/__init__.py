"""Hyperparameter search over the JTCSE twin stage with Optuna.

One *trial* trains the twin from the stage-1 towers for ``tune.trial_steps`` steps with the values it draws from
``tune.space`` (the loss weights, learning rate, temperature, cross-attention layout, ``modulus_on``) and
scores the best dev Spearman (``evaluate.selection``) it reached. Every dev evaluation is reported to Optuna, whose pruner stops
unpromising trials early.

The study lives in a database (``tune.storage``: a SQLite file, or PostgreSQL for several workers), so:

* a rerun continues the same study and runs only the trials still missing (``tune.n_trials`` counts complete and
  pruned trials; failed ones do not count);
* several worker processes, on one machine or many, share one study;
* a running trial sends heartbeats: when its worker dies (``kill -9``, pre-emption) the trial is marked failed
  after ``tune.grace_period`` seconds and re-queued with the same parameters (``tune.max_retry``), never left
  RUNNING;
* a failing trial is recorded as failed and the study goes on (until ``tune.max_failed_trials``).

Library first (:func:`run_study`, :func:`run_worker`, :func:`best_params`, :func:`write_report`,
:func:`apply_best`); the ``jtcse tune*`` commands (:mod:`jtcse.commands.tune`) and ``flows/tune.py`` are thin
shells over them.

Modules, each importing only the ones above it: :mod:`~jtcse.tuning.settings` (file names, overrides, the
checks before a study), :mod:`~jtcse.tuning.storage` (the database, sampler, pruner, trial counts),
:mod:`~jtcse.tuning.objective` (one trial), :mod:`~jtcse.tuning.workers` (the trial loop and worker processes),
:mod:`~jtcse.tuning.report`, :mod:`~jtcse.tuning.apply` and :mod:`~jtcse.tuning.study` (:func:`run_study`).
They all log as ``jtcse.tuning``, the logger name of the single module they were split from.
"""

from jtcse.tuning.apply import apply_best, read_best_params
from jtcse.tuning.objective import TrialObjective, suggest
from jtcse.tuning.report import (
    StudyReport,
    best_params,
    summary_markdown,
    write_best_params,
    write_plots,
    write_report,
    write_trials_csv,
)
from jtcse.tuning.settings import (
    BEST_FILE,
    DEFAULT_TOWER_A,
    DEFAULT_TOWER_B,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    META_KEY,
    SETTINGS_FILE,
    SUMMARY_FILE,
    TRIALS_CSV,
    check_data,
    check_towers,
    dotted_get,
    metric_name,
    resolve_tower,
    trial_settings,
    with_overrides,
    write_settings,
)
from jtcse.tuning.storage import (
    CONNECT_TIMEOUT_SECONDS,
    SIGKILL_AFTER_CREATING_TRIAL_ENV,
    TrialCounts,
    derive_seed,
    load_study,
    make_pruner,
    make_sampler,
    make_storage,
    prepare_study,
    safe_url,
    trial_counts,
)
from jtcse.tuning.study import TuningError, TuningInterrupted, run_study
from jtcse.tuning.workers import log_tail, run_worker, run_worker_processes, spawn_worker, worker_command, worker_env

__all__ = [
    "BEST_FILE",
    "CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_TOWER_A",
    "DEFAULT_TOWER_B",
    "HISTORY_PLOT",
    "IMPORTANCE_PLOT",
    "META_KEY",
    "SETTINGS_FILE",
    "SIGKILL_AFTER_CREATING_TRIAL_ENV",
    "SUMMARY_FILE",
    "TRIALS_CSV",
    "StudyReport",
    "TrialCounts",
    "TrialObjective",
    "TuningError",
    "TuningInterrupted",
    "apply_best",
    "best_params",
    "check_data",
    "check_towers",
    "derive_seed",
    "dotted_get",
    "load_study",
    "log_tail",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "metric_name",
    "prepare_study",
    "read_best_params",
    "resolve_tower",
    "run_study",
    "run_worker",
    "run_worker_processes",
    "safe_url",
    "spawn_worker",
    "suggest",
    "summary_markdown",
    "trial_counts",
    "trial_settings",
    "with_overrides",
    "worker_command",
    "worker_env",
    "write_best_params",
    "write_plots",
    "write_report",
    "write_settings",
    "write_trials_csv",
]
