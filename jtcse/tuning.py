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
:func:`apply_best`); the ``jtcse tune*`` commands and ``flows/tune.py`` are thin shells over them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jtcse.config import (
    ConfigError,
    SearchChoices,
    SearchRange,
    Settings,
    TuneSettings,
    load_settings,
    resolve_model_path,
    set_dotted,
    settings_from_dict,
)
from jtcse.errors import InputNotFoundError, StorageUnavailableError
from jtcse.io import atomic_file, atomic_write_text

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

def metric_name(settings: Settings) -> str:
    """The study's objective: the dev metric that also selects checkpoints (``evaluate.selection``)."""
    return f"{settings.evaluate.selection}_spearman"


META_KEY = "_meta"  # key of best_params.yaml that tune-apply ignores
SETTINGS_FILE = "study_settings.yaml"  # the resolved settings the workers of a run load
BEST_FILE = "best_params.yaml"
SUMMARY_FILE = "summary.md"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
TRIALS_CSV = "trials.csv"
DEFAULT_TOWER_A = "models/tower_a"
DEFAULT_TOWER_B = "models/tower_b"


class TuningError(RuntimeError):
    """The study could not run to its end (a worker process failed, or no trial completed)."""


class TuningInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT stopped the study: the workers were stopped and the report covers what finished."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum


_received_signals: list[int] | None = None  # set while _signals_as_interrupt is active


@contextlib.contextmanager
def _signals_as_interrupt():
    """SIGTERM (a scheduler's stop, ``kill``) stops like Ctrl-C: an exception, so the cleanup below runs.

    Only in the main thread, where Python delivers signals; the signal received is kept for the exit status.
    """
    global _received_signals
    if _received_signals is not None or threading.current_thread() is not threading.main_thread():
        yield _received_signals if _received_signals is not None else []  # an outer block already handles them
        return
    received: list[int] = []

    def interrupt(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    _received_signals = received
    try:
        yield received
    finally:
        _received_signals = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------- settings


def with_overrides(settings: Settings, *, n_trials: int | None = None, storage: str | None = None,
                   study_name: str | None = None, workers: int | None = None) -> Settings:
    """A validated copy of ``settings`` with the given ``tune`` keys replaced (command-line overrides)."""
    changes = {"n_trials": n_trials, "storage": storage, "study_name": study_name, "workers": workers}
    raw = settings.model_dump(mode="json", by_alias=True)
    raw["tune"].update({k: v for k, v in changes.items() if v is not None})
    return settings_from_dict(raw, "tune options")


def write_settings(settings: Settings, path: str | os.PathLike) -> Path:
    """Write the fully resolved settings (what every worker of the study loads) as YAML."""
    path = Path(path)
    text = yaml.safe_dump(settings.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, "# Resolved settings of a jtcse tune run (written by jtcse.tuning; do not edit).\n" + text)
    return path


def safe_url(url: str) -> str:
    """The storage URL with any password masked, for logs and reports."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _dotted_get(settings: Settings, dotted: str) -> Any:
    node: Any = settings
    for part in dotted.split("."):
        node = getattr(node, "validate_data" if part == "validate" else part)
    return node


def _is_int_setting(dotted: str) -> bool:
    value = _dotted_get(Settings(), dotted)
    return isinstance(value, int) and not isinstance(value, bool)


def trial_settings(settings: Settings, overrides: dict[str, Any], *, threads: int | None = None) -> Settings:
    """The settings one trial trains with: ``overrides`` (dotted keys) plus the trial's step budget."""
    tune = settings.tune
    raw = settings.model_dump(mode="json", by_alias=True)
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
    raw["train"].update(steps=tune.trial_steps, eval_every=tune.eval_every, checkpoint_every=tune.trial_steps,
                        keep_checkpoints=1)
    if threads is not None and raw["runtime"]["threads"] is None:
        raw["runtime"]["threads"] = threads
    return settings_from_dict(raw, "trial settings")


def _layer_count(tower: str) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(tower))
    except (OSError, ValueError) as err:
        raise ConfigError(f"tower {tower}: cannot be loaded ({err}); train the stage-1 towers first "
                          "(dvc repro pretrain_a pretrain_b) or pass --tower-a/--tower-b") from None
    return int(config.num_hidden_layers)


def check_towers(settings: Settings, tower_a: str, tower_b: str) -> None:
    """Fail before the study starts, not in every trial: the towers load and every layout divides their depth."""
    key = "train.cross_attention.num_layers"
    layers = {_layer_count(tower_a), _layer_count(tower_b)}
    if len(layers) != 1:
        raise ConfigError(f"towers {tower_a} and {tower_b} have different layer counts {sorted(layers)}")
    depth = layers.pop()
    spec = settings.tune.space.cross_attention.num_layers
    if spec is None:
        values, where = [settings.train.cross_attention.num_layers], key
    elif isinstance(spec, SearchRange):
        values = list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
        where = "tune.space.cross_attention.num_layers"
    elif isinstance(spec, SearchChoices):
        values, where = list(spec.choices), "tune.space.cross_attention.num_layers"
    else:
        values, where = [spec], "tune.space.cross_attention.num_layers"
    bad = [v for v in values if v and depth % int(v)]
    if bad:
        raise ConfigError(f"{where}: {bad} do not divide the {depth} layers of {tower_a}; "
                          f"use divisors of {depth} (or 0 for no bridge)")


def check_data(settings: Settings) -> None:
    """Fail before the study starts, not in every trial: the corpus fills a batch and the dev STS file reads."""
    from jtcse.data import check_corpus_fits, read_corpus
    from jtcse.evaluation.sts import DEV_TASKS, STSEvaluator

    sentences = read_corpus(settings.data.corpus, settings.data.max_sentences)
    check_corpus_fits(sentences, settings.train.batch_size, corpus=settings.data.corpus, key="train.batch_size")
    STSEvaluator(settings.data.sts_dir, DEV_TASKS)


# ------------------------------------------------------------------------------------- optuna components


def _quiet_experimental() -> None:
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


#: Fault hook for the tests only: a worker whose environment sets it to N SIGKILLs itself right after it creates
#: trial N, before that trial's first heartbeat: the window in which a pre-empted worker leaves a RUNNING trial
#: with no heartbeat row at all.
SIGKILL_AFTER_CREATING_TRIAL_ENV = "JTCSE_FAULT_SIGKILL_AFTER_CREATING_TRIAL"
#: Seconds a PostgreSQL (or any network) storage may take to accept a connection before the run fails.
CONNECT_TIMEOUT_SECONDS = 10

@functools.cache
def _heartbeat_storage_class() -> type:
    """RDBStorage that also counts a RUNNING trial with *no* heartbeat as stale once it started grace_period ago.

    Optuna fails only trials whose last heartbeat is old; a worker killed between creating a trial and sending its
    first heartbeat (a fraction of a second, but pre-emption does hit it) would leave the trial RUNNING forever and
    every other worker waiting for it.
    """
    from datetime import datetime, timedelta

    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    class HeartbeatStorage(RDBStorage):
        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            stale = super()._get_stale_trial_ids(study_id)
            return stale + [t for t in self.trials_without_heartbeat(study_id) if t not in stale]

        def trials_without_heartbeat(self, study_id: int) -> list[int]:
            """RUNNING trials that never sent a heartbeat and started more than grace_period seconds ago."""
            from optuna.storages._rdb import models

            grace = timedelta(seconds=self.grace_period or 2 * (self.heartbeat_interval or 1))
            session = self.scoped_session()
            try:
                running = (session.query(models.TrialModel)
                           .filter(models.TrialModel.study_id == study_id,
                                   models.TrialModel.state == TrialState.RUNNING).all())
                now = datetime.now()  # datetime_start reads back as naive local time, like this
                return [t.trial_id for t in running
                        if not t.heartbeats and t.datetime_start is not None and now - t.datetime_start > grace]
            finally:
                session.close()

        def _create_new_trial(self, study_id: int, template_trial=None):  # what Optuna's cached storage calls
            frozen = super()._create_new_trial(study_id, template_trial)
            target = os.environ.get(SIGKILL_AFTER_CREATING_TRIAL_ENV)
            if target and template_trial is None and frozen.number == int(target):
                os.kill(os.getpid(), signal.SIGKILL)
            return frozen

    return HeartbeatStorage


def make_storage(tune: TuneSettings) -> optuna.storages.RDBStorage:
    """The study database with heartbeats; a trial whose worker died is failed and re-queued (``max_retry``).

    A database that does not answer fails within :data:`CONNECT_TIMEOUT_SECONDS` with one line naming the URL.
    """
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    _quiet_experimental()
    url = make_url(tune.storage)
    if url.get_backend_name() == "sqlite":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}  # wait for a writer instead of failing
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if url.get_backend_name() == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    retry = RetryHeartbeatStaleTrialCallback(max_retry=tune.max_retry) if tune.max_retry > 0 else None
    try:
        return _heartbeat_storage_class()(tune.storage, engine_kwargs=engine_kwargs,
                                          heartbeat_interval=tune.heartbeat_interval, grace_period=tune.grace_period,
                                          heartbeat_stale_trial_callback=retry)
    except (DBAPIError, SQLAlchemyError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise StorageUnavailableError(
            f"tune.storage {safe_url(tune.storage)}: cannot open the study database "
            f"({reason[0] if reason else type(err).__name__}); is the server running and the URL right?") from None


def derive_seed(seed: int, worker_index: int, n_existing: int) -> int:
    """Worker ``worker_index`` of a study already holding ``n_existing`` trials: its own reproducible seed."""
    import numpy as np

    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, worker_index, n_existing]).generate_state(1)[0] >> 1)


def make_sampler(tune: TuneSettings, worker_index: int = 0, n_existing: int = 0) -> optuna.samplers.TPESampler:
    """TPE with every behaviour that matters pinned (Optuna 5 changed the defaults)."""
    from optuna.samplers import TPESampler

    _quiet_experimental()
    s = tune.sampler
    return TPESampler(seed=derive_seed(s.seed, worker_index, n_existing), n_startup_trials=s.n_startup_trials,
                      n_ei_candidates=24, multivariate=s.multivariate, group=False, constant_liar=True)


def make_pruner(tune: TuneSettings) -> optuna.pruners.BasePruner:
    from optuna.pruners import MedianPruner, NopPruner, PercentilePruner

    p = tune.pruner
    if p.type == "median":
        return MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "percentile":
        return PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    return NopPruner()


def _space_fingerprint(settings: Settings) -> dict[str, Any]:
    tune = settings.tune
    return {"space": tune.space.model_dump(mode="json"), "trial_steps": tune.trial_steps,
            "eval_every": tune.eval_every, "selection": settings.evaluate.selection}


def prepare_study(settings: Settings) -> optuna.Study:
    """Create the study, or load it when it exists (call once before launching workers); fail stale trials."""
    import optuna

    tune = settings.tune
    storage = make_storage(tune)
    study = optuna.create_study(study_name=tune.study_name, storage=storage, load_if_exists=True,
                                direction="maximize", sampler=make_sampler(tune), pruner=make_pruner(tune))
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"tune.study_name: study {tune.study_name!r} in {safe_url(tune.storage)} minimises "
                          "something else; pick another name")
    fingerprint = _space_fingerprint(settings)
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", fingerprint)
        if not study.metric_names:
            study.set_metric_names([metric_name(settings)])
        log.info("study %r created in %s", tune.study_name, safe_url(tune.storage))
    else:
        if stored != fingerprint:
            log.warning("study %r: the search space or trial budget changed since it began; earlier trials still "
                        "guide the sampler (use a new tune.study_name for a fresh search)", tune.study_name)
        log.info("study %r resumed from %s: %s", tune.study_name, safe_url(tune.storage), trial_counts(study))
    optuna.storages.fail_stale_trials(study)
    return study


def load_study(tune: TuneSettings, *, sampler=None, pruner=None) -> optuna.Study:
    import optuna

    return optuna.load_study(study_name=tune.study_name, storage=make_storage(tune), sampler=sampler, pruner=pruner)


@dataclass
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials that count toward ``n_trials``."""
        return self.complete + self.pruned

    def __str__(self) -> str:
        return (f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed, {self.running} running, "
                f"{self.waiting} waiting")


def trial_counts(study: optuna.Study) -> TrialCounts:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TrialCounts(complete=states.count(TrialState.COMPLETE), pruned=states.count(TrialState.PRUNED),
                       failed=states.count(TrialState.FAIL), running=states.count(TrialState.RUNNING),
                       waiting=states.count(TrialState.WAITING))


# --------------------------------------------------------------------------------------------- objective


def suggest(trial: optuna.Trial, settings: Settings) -> dict[str, Any]:
    """Draw the trial's values from ``tune.space``: dotted ``train`` keys -> values (fixed entries included)."""
    out: dict[str, Any] = {}
    for dotted, spec in settings.tune.space.entries().items():
        name = dotted.removeprefix("train.")
        if isinstance(spec, SearchRange):
            if _is_int_setting(dotted):
                out[dotted] = trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1),
                                                log=spec.log)
            else:
                out[dotted] = trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        elif isinstance(spec, SearchChoices):
            out[dotted] = trial.suggest_categorical(name, spec.choices)
        else:
            out[dotted] = spec
    return out


class TrialObjective:
    """Train the twin with one trial's values; report every dev evaluation; return the best dev Spearman.

    The score is the best dev Spearman among the evaluations *during training* (steps >= 1): step 0 scores the
    untrained stage-1 towers, identical in every trial, and would only mask how a trial's values fare (for the
    pruner too, which compares a trial's best value so far with the others'); it is kept as the user attribute
    ``initial_metric``. Outputs go to a temporary folder removed after the trial. A diverged run (non-finite loss or dev score) is
    *pruned* (bad values, not a broken set-up). The wall time is a user attribute and, with
    ``tune.max_trial_seconds``, a constraint (``seconds_over_limit`` > 0 marks the trial infeasible).
    """

    def __init__(self, settings: Settings, *, tower_a: str, tower_b: str, worker: str | None = None,
                 threads: int | None = None):
        self.settings, self.tower_a, self.tower_b = settings, tower_a, tower_b
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.threads = threads

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from jtcse.training.stages import train_twin

        tune = self.settings.tune
        overrides = suggest(trial, self.settings)
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("overrides", overrides)
        settings = trial_settings(self.settings, overrides, threads=self.threads)
        log.info("trial %d (%s): %s", trial.number, self.worker, _format_values(overrides))

        seen: dict[int, float] = {}

        def on_eval(step: int, metric: float) -> None:
            if step == 0:
                trial.set_user_attr("initial_metric", metric)
                return
            if not math.isfinite(metric):
                trial.set_user_attr("diverged", f"dev Spearman {metric} at step {step}")
                raise optuna.TrialPruned(f"dev Spearman is {metric} at step {step}: the embeddings collapsed")
            seen[step] = metric
            trial.report(metric, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: dev Spearman {metric:.2f}")

        started = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"jtcse-trial-{trial.number:04d}-",
                                             ignore_cleanup_errors=True) as tmp:
                result = train_twin(settings, tower_a=self.tower_a, tower_b=self.tower_b, output=Path(tmp) / "twin",
                                    checkpoint_dir=Path(tmp) / "checkpoints", metrics_dir=None, resume=False,
                                    on_eval=on_eval, handle_signals=False)
        except FloatingPointError as err:
            trial.set_user_attr("diverged", str(err))
            raise optuna.TrialPruned(str(err)) from None
        finally:
            seconds = time.perf_counter() - started
            trial.set_user_attr("seconds", round(seconds, 2))
            if tune.max_trial_seconds is not None:
                trial.set_constraint("seconds_over_limit", seconds - tune.max_trial_seconds)
        if not seen:
            raise RuntimeError(f"trial {trial.number}: training ran no dev evaluation")
        best_step = max(seen, key=seen.get)
        trial.set_user_attr("best_step", best_step)
        log.info("trial %d: best dev Spearman %.2f at step %d (untrained towers: %.2f) in %.0f s", trial.number,
                 seen[best_step], best_step, result.initial_metric, seconds)
        return seen[best_step]


def _format_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('train.')}={_short(v)}" for k, v in values.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------- workers


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_worker(settings: Settings, *, tower_a: str = DEFAULT_TOWER_A, tower_b: str = DEFAULT_TOWER_B,
               worker_index: int = 0, workers: int = 1, progress: bool = True) -> int:
    """Run trials of the (existing) study until it holds ``tune.n_trials`` finished trials; return how many ran here.

    A worker starts a trial only while finished + running trials stay below ``n_trials``; otherwise it waits
    for the running ones, so that a trial whose worker died (failed by its stale heartbeat and re-queued) is
    picked up. It stops early once ``tune.max_failed_trials`` of its own trials failed in this run.
    """
    import optuna
    from tqdm.auto import tqdm

    tune = settings.tune
    study = load_study(tune)
    optuna.storages.fail_stale_trials(study)
    sampler = make_sampler(tune, worker_index, len(study.get_trials(deepcopy=False)))
    study = load_study(tune, sampler=sampler, pruner=make_pruner(tune))
    threads = max(1, _available_cpus() // workers) if workers > 1 else None
    objective = TrialObjective(settings, tower_a=tower_a, tower_b=tower_b,
                               worker=f"{socket.gethostname()}:{os.getpid()}/{worker_index}", threads=threads)
    poll = min(tune.heartbeat_interval, 5)
    stack = contextlib.ExitStack()
    stack.enter_context(_signals_as_interrupt())  # a SIGTERM'd worker marks its trial failed, then exits
    counts = trial_counts(study)
    bar = tqdm(total=tune.n_trials, initial=min(counts.finished, tune.n_trials), desc=f"tune {tune.study_name}",
               unit="trial", dynamic_ncols=True, disable=not progress)
    ran = failed_here = 0
    next_note = 0.0

    def count_failure(_study, frozen) -> None:
        nonlocal failed_here
        failed_here += frozen.state == optuna.trial.TrialState.FAIL

    try:
        while True:
            optuna.storages.fail_stale_trials(study)
            counts = trial_counts(study)
            bar.n = min(counts.finished, tune.n_trials)
            bar.set_postfix_str(str(counts))
            if counts.finished >= tune.n_trials:
                break
            if failed_here >= tune.max_failed_trials:
                log.error("worker %d: %d of its trials failed (tune.max_failed_trials): not starting more; see the "
                          "errors above", worker_index, failed_here)
                break
            if counts.finished + counts.running >= tune.n_trials:
                # The last trials run elsewhere; stay to retry one whose worker dies. The wait is bounded: each
                # of them completes, or is failed grace_period after its last heartbeat (or its start, if none).
                if time.monotonic() >= next_note:
                    log.info("worker %d: waiting for %d trial(s) running in other workers (%s); a trial of a dead "
                             "worker is failed and re-queued %d s after its last heartbeat", worker_index,
                             counts.running, counts, tune.grace_period)
                    next_note = time.monotonic() + 60
                time.sleep(poll)
                continue
            study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[count_failure], gc_after_trial=True)
            ran += 1
    finally:
        bar.close()
        stack.close()
    log.info("worker %d: ran %d trial(s); study %r: %s", worker_index, ran, tune.study_name, trial_counts(study))
    return ran


def worker_command(settings_path: str | os.PathLike, *, tower_a: str, tower_b: str, worker_index: int = 0,
                   workers: int = 1) -> list[str]:
    """The command line of one worker process of a prepared study."""
    return [sys.executable, "-m", "jtcse.tuning", "worker", "--params", str(settings_path), "--tower-a", str(tower_a),
            "--tower-b", str(tower_b), "--worker-index", str(worker_index), "--workers", str(workers), "--no-create"]


def worker_env(workers: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               TQDM_DISABLE="1")
    if workers > 1:
        env.setdefault("OMP_NUM_THREADS", str(max(1, _available_cpus() // workers)))
    return env


def spawn_worker(settings_path: str | os.PathLike, *, tower_a: str, tower_b: str, worker_index: int, workers: int,
                 log_dir: str | os.PathLike) -> subprocess.Popen:
    """Start one worker process; its output goes to ``log_dir/worker-<index>.log``."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{worker_index}.log"
    with log_path.open("ab") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} worker {worker_index}/{workers}\n".encode())
        proc = subprocess.Popen(worker_command(settings_path, tower_a=tower_a, tower_b=tower_b,
                                               worker_index=worker_index, workers=workers),
                                stdout=fh, stderr=subprocess.STDOUT, env=worker_env(workers))
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def log_tail(path: str | os.PathLike, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    """Ask every worker to stop (its running trial is marked failed), wait up to ``timeout`` s, then kill."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # optuna marks the running trial failed, then the worker exits
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker pid %d did not stop within %.0f s of SIGINT; killed", proc.pid, timeout)
            proc.kill()
            proc.wait(timeout=timeout)


def run_worker_processes(settings_path: str | os.PathLike, settings: Settings, *, tower_a: str, tower_b: str,
                         log_dir: str | os.PathLike, progress: bool = True) -> list[int]:
    """Run ``tune.workers`` worker processes against the prepared study; show progress; return their exit codes."""
    from tqdm.auto import tqdm

    tune = settings.tune
    procs = [spawn_worker(settings_path, tower_a=tower_a, tower_b=tower_b, worker_index=i, workers=tune.workers,
                          log_dir=log_dir) for i in range(tune.workers)]
    log.info("%d worker processes started (pids %s); logs in %s", len(procs), [p.pid for p in procs], log_dir)
    study = load_study(tune)
    bar = tqdm(total=tune.n_trials, desc=f"tune {tune.study_name}", unit="trial", dynamic_ncols=True,
               disable=not progress)
    try:
        while any(p.poll() is None for p in procs):
            counts = trial_counts(study)
            bar.n = min(counts.finished, tune.n_trials)
            bar.set_postfix_str(str(counts))
            time.sleep(2)
    except BaseException:
        _stop(procs)
        raise
    finally:
        bar.n = min(trial_counts(study).finished, tune.n_trials)
        bar.close()
    codes = [p.returncode for p in procs]
    for i, (proc, code) in enumerate(zip(procs, codes)):
        if code:
            log.error("worker %d (pid %d) exited with %d; last lines of %s:\n%s", i, proc.pid, code,
                      proc.log_path, log_tail(proc.log_path))  # type: ignore[attr-defined]
    return codes


# ------------------------------------------------------------------------------------------------- study


@dataclass
class StudyReport:
    """What a finished study produced; ``files`` maps an output name to its path."""

    study_name: str
    storage: str
    counts: TrialCounts
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float | None = None
    files: dict[str, str] = field(default_factory=dict)
    summary: str = ""


def run_study(settings: Settings, *, tower_a: str = DEFAULT_TOWER_A, tower_b: str = DEFAULT_TOWER_B,
              output_dir: str | os.PathLike = "tune", workers: int | None = None, n_trials: int | None = None,
              storage: str | None = None, study_name: str | None = None, subprocesses: bool | None = None,
              progress: bool = True) -> StudyReport:
    """Create or resume the study, run its trials with ``tune.workers`` workers, write the report.

    One worker runs in this process unless ``subprocesses`` is true; several always run as separate processes
    (``python -m jtcse.tuning worker``). Writes ``output_dir``: best_params.yaml, summary.md, trials.csv, the
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
        log.warning("%d workers on SQLite: writes are serialised and may time out; use PostgreSQL for several "
                    "workers (docs/tuning.md)", tune.workers)
    prepare_study(settings)
    settings_path = write_settings(settings, output_dir / SETTINGS_FILE)
    started = time.perf_counter()
    with _signals_as_interrupt() as received:
        try:
            if subprocesses or tune.workers > 1:
                codes = run_worker_processes(settings_path, settings, tower_a=tower_a, tower_b=tower_b,
                                             log_dir=output_dir / "logs", progress=progress)
            else:
                run_worker(settings, tower_a=tower_a, tower_b=tower_b, progress=progress)
                codes = [0]
        except KeyboardInterrupt:  # the workers are stopped (run_worker_processes waited for them)
            signum = received[0] if received else signal.SIGINT
            report = write_report(settings, output_dir, wall_seconds=time.perf_counter() - started)
            raise TuningInterrupted(
                f"interrupted by {signal.Signals(signum).name}; workers stopped; the report in {output_dir} covers "
                f"the finished trials ({report.counts}); rerun the same command to continue the study",
                signum) from None
    report = write_report(settings, output_dir, wall_seconds=time.perf_counter() - started)
    failed = [i for i, code in enumerate(codes) if code]
    if failed:
        raise TuningError(f"worker(s) {failed} failed (see {output_dir / 'logs'}); the report covers the trials "
                          f"that finished: {report.counts}")
    if report.best_trial is None:
        raise TuningError(f"study {tune.study_name!r} has no completed trial ({report.counts}); see the errors above")
    return report


def make_url_backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()


def resolve_tower(tower: str | os.PathLike) -> str:
    """Absolute path for a local folder (workers may run elsewhere in the tree), the name itself otherwise."""
    path = Path(tower).expanduser()
    return str(path.resolve()) if path.exists() else str(tower)


# ------------------------------------------------------------------------------------------------ report


def _round(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Dotted ``train`` keys -> values of the best feasible trial (fixed entries included); raises ValueError
    when no trial completed."""
    best = study.best_trial
    values = best.user_attrs.get("overrides") or {f"train.{k}": v for k, v in best.params.items()}
    return {k: _round(v) for k, v in values.items()}


def write_best_params(study: optuna.Study, path: str | os.PathLike, settings: Settings | None = None) -> Path:
    """best_params.yaml: dotted keys -> values, for ``jtcse tune-apply``; ``_meta`` (ignored by it) says where from."""
    path = Path(path)
    best = study.best_trial
    meta = {"study": study.study_name, "trial": best.number, "value": round(float(best.value), 4),
            "metric": study.metric_names[0] if study.metric_names else None}
    if settings is not None:
        meta |= {"storage": safe_url(settings.tune.storage), "trial_steps": settings.tune.trial_steps}
    header = (f"# Best trial of Optuna study {study.study_name!r}: trial {best.number}, dev Spearman "
              f"{best.value:.4f}.\n# Apply: jtcse tune-apply --best {path.as_posix()} --params params.yaml "
              f"(the {META_KEY} key is ignored)\n")
    body = yaml.safe_dump({META_KEY: meta, **best_params(study)}, sort_keys=False)
    atomic_write_text(path, header + body)
    return path


def _save_figure(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    with atomic_file(path, "wb") as fh:
        figure.savefig(fh, format="png", dpi=110, bbox_inches="tight")  # keeps a legend placed outside the axes
    plt.close(figure)


def write_plots(study: optuna.Study, output_dir: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """Optimisation history and parameter importances as PNG; returns (files, notes on what was skipped)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    _quiet_experimental()
    output_dir = Path(output_dir)
    files, notes = {}, []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        path = output_dir / HISTORY_PLOT
        _save_figure(ovm.plot_optimization_history(study, target_name="dev Spearman (evaluate.selection)"), path)
        files["history_plot"] = str(path)
    else:
        notes.append("no optimisation history: no trial completed")
    varying = {name for t in complete for name in t.params
               if len({json.dumps(u.params.get(name)) for u in complete}) > 1}
    if len(complete) < 2 or not varying:
        notes.append("no parameter importances: they need at least two completed trials with different values")
    else:
        try:
            path = output_dir / IMPORTANCE_PLOT
            _save_figure(ovm.plot_param_importances(study, target_name="dev Spearman (evaluate.selection)"), path)
            files["importance_plot"] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            notes.append(f"no parameter importances: {err}")
    return files, notes


def write_trials_csv(study: optuna.Study, path: str | os.PathLike) -> Path:
    path = Path(path)
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "last_step": t.last_step, "seconds": t.user_attrs.get("seconds"),
                     "worker": t.user_attrs.get("worker"), "retry_of": t.system_attrs.get("failed_trial"),
                     **{k.removeprefix("train."): v for k, v in t.user_attrs.get("overrides", {}).items()}})
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())
    return path


def _study_span(study: optuna.Study) -> float | None:
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def summary_markdown(study: optuna.Study, settings: Settings, counts: TrialCounts, wall_seconds: float | None,
                     notes: list[str]) -> str:
    from optuna.trial import TrialState

    tune = settings.tune
    lines = [f"# Optuna study `{study.study_name}`", "",
             f"Storage `{safe_url(tune.storage)}`; objective: best dev Spearman x 100 (evaluate.selection) within "
             f"{tune.trial_steps} steps (maximised); target {tune.n_trials} finished trials.", "",
             "| | |", "|---|---|"]
    try:
        best = study.best_trial
    except ValueError:
        best = None
    lines.append(f"| best value | {best.value:.4f} (trial {best.number}) |" if best else "| best value | none |")
    lines += [f"| trials completed | {counts.complete} |", f"| trials pruned | {counts.pruned} |",
              f"| trials failed | {counts.failed} |"]
    if counts.running or counts.waiting:
        lines.append(f"| trials running / waiting | {counts.running} / {counts.waiting} |")
    if wall_seconds is not None:
        lines.append(f"| wall time of this run | {wall_seconds / 60:.1f} min |")
    span = _study_span(study)
    if span is not None:
        lines.append(f"| wall time of the study | {span / 60:.1f} min |")
    busy = sum(t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False))
    lines.append(f"| training time, all trials | {busy / 60:.1f} min |")
    if best is not None:
        lines += ["", "## Best parameters", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | {_short(v)} |" for k, v in best_params(study).items()]
        lines += ["", f"Apply: `jtcse tune-apply --best tune/{BEST_FILE} --params params.yaml`, then `dvc repro`."]
    trials = study.get_trials(deepcopy=False)
    if trials:
        names = list(dict.fromkeys(k for t in trials for k in t.params))
        lines += ["", "## Trials", "", "| # | state | value | step | s | worker | " + " | ".join(names) + " |",
                  "|---" * (6 + len(names)) + "|"]
        for t in trials:
            value = f"{t.value:.4f}" if t.value is not None and t.state in (TrialState.COMPLETE, TrialState.PRUNED) else ""
            cells = [str(t.number), t.state.name.lower(), value, str(t.last_step if t.last_step is not None else ""),
                     str(t.user_attrs.get("seconds", "")), str(t.user_attrs.get("worker", ""))]
            cells += [_short(t.params[n]) if n in t.params else "" for n in names]
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *[f"Note: {n}." for n in notes]]
    return "\n".join(lines) + "\n"


def write_report(settings: Settings, output_dir: str | os.PathLike = "tune", *,
                 wall_seconds: float | None = None) -> StudyReport:
    """Write best_params.yaml (when a trial completed), trials.csv, the plots and summary.md for the study."""
    tune = settings.tune
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    study = load_study(tune)
    counts = trial_counts(study)
    report = StudyReport(study_name=tune.study_name, storage=safe_url(tune.storage), counts=counts,
                         wall_seconds=wall_seconds)
    notes: list[str] = []
    try:
        best = study.best_trial
    except ValueError as err:
        best = None
        notes.append(f"no best parameters: {err}")
    if best is not None:
        report.best_value, report.best_trial = float(best.value), best.number
        report.best_params = best_params(study)
        report.files["best_params"] = str(write_best_params(study, output_dir / BEST_FILE, settings))
    report.files["trials_csv"] = str(write_trials_csv(study, output_dir / TRIALS_CSV))
    plots, plot_notes = write_plots(study, output_dir)
    report.files |= plots
    report.summary = summary_markdown(study, settings, counts, wall_seconds, notes + plot_notes)
    summary_path = output_dir / SUMMARY_FILE
    atomic_write_text(summary_path, report.summary)
    report.files["summary"] = str(summary_path)
    log.info("study %r: %s; best %s; report in %s", tune.study_name, counts,
             f"{report.best_value:.4f} (trial {report.best_trial})" if best else "none", output_dir)
    return report


# ------------------------------------------------------------------------------------------------- apply


def _yaml_float(value: float) -> str:
    """A float in a form every YAML reader (PyYAML's YAML 1.1 too) reads back as a float: 1.0e-05, not 1e-05."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        if exponent[0] not in "+-":
            exponent = "+" + exponent
        text = f"{mantissa}e{exponent}"
    elif "." not in text:
        text += ".0"
    return text


def _round_trip_yaml():
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        pass

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    Representer.add_representer(float, lambda r, v: r.represent_scalar("tag:yaml.org,2002:float", _yaml_float(v)))
    handler = YAML(typ="rt")
    handler.Representer = Representer
    handler.preserve_quotes = True
    handler.width = 4096
    handler.indent(mapping=2, sequence=4, offset=2)
    return handler


def read_best_params(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: not found; run `jtcse tune` first")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted keys to values")
    values = {k: v for k, v in raw.items() if not str(k).startswith("_")}
    for key, value in values.items():
        if not isinstance(key, str) or "." not in key or isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: {key!r}: expected a dotted setting (train.w_tm) with a single value")
    return values


def apply_best(best: str | os.PathLike | dict[str, Any], params: str | os.PathLike = "params.yaml") -> dict[str, tuple[Any, Any]]:
    """Write the best values into ``params`` (comments and layout kept; atomic); return key -> (old, new).

    The edited file is validated before it replaces the original: an invalid value leaves params.yaml as it was.
    """
    values = read_best_params(best) if not isinstance(best, dict) else dict(best)
    params = Path(params)
    if not params.is_file():
        raise InputNotFoundError(f"{params}: not found")
    handler = _round_trip_yaml()
    original = params.read_text(encoding="utf-8")
    tree = handler.load(original)
    if tree is None:
        from ruamel.yaml.comments import CommentedMap

        tree = CommentedMap()
    changes: dict[str, tuple[Any, Any]] = {}
    for dotted, value in values.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            if key not in node or node[key] is None:
                from ruamel.yaml.comments import CommentedMap

                node[key] = CommentedMap()
            node = node[key]
            if not hasattr(node, "keys"):
                raise ConfigError(f"{params}: {dotted}: '{key}' is not a section")
        old = node.get(leaf)
        if leaf in node and old == value and isinstance(old, bool) == isinstance(value, bool):
            continue
        node[leaf] = value
        changes[dotted] = (old, value)
    buffer = io.StringIO()
    handler.dump(tree, buffer)
    text = buffer.getvalue()
    settings = settings_from_dict(yaml.safe_load(text), str(params))  # refuse to write an invalid file
    for dotted, value in values.items():
        got = _dotted_get(settings, dotted)
        if got != value and not (isinstance(value, float) and math.isclose(got, value, rel_tol=1e-12)):
            raise ConfigError(f"{params}: {dotted}: wrote {value!r} but it reads back as {got!r}")
    if text != original:
        atomic_write_text(params, text)  # keeps the file's permission bits
    for dotted, (old, new) in changes.items():
        log.info("%s: %s: %s -> %s", params, dotted, old, new)
    return changes


# --------------------------------------------------------------------------------------------------- CLI


def _tune_options(p: argparse.ArgumentParser, *, towers: bool = True) -> None:
    p.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    if towers:
        p.add_argument("--tower-a", default=DEFAULT_TOWER_A, help=f"stage-1 tower A (default: {DEFAULT_TOWER_A})")
        p.add_argument("--tower-b", default=DEFAULT_TOWER_B, help=f"stage-1 tower B (default: {DEFAULT_TOWER_B})")
    p.add_argument("--n-trials", type=int, help="finished trials the study should hold (default: tune.n_trials)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study (default: tune.storage)")
    p.add_argument("--study-name", help="study name (default: tune.study_name)")


def _settings_from(args) -> Settings:
    settings = load_settings(args.params)
    return with_overrides(settings, n_trials=args.n_trials, storage=args.storage, study_name=args.study_name,
                          workers=getattr(args, "workers", None) if args.command == "tune" else None)


def cmd_tune(args) -> None:
    settings = _settings_from(args)
    try:
        report = run_study(settings, tower_a=args.tower_a, tower_b=args.tower_b, output_dir=args.output_dir,
                           subprocesses=args.subprocesses or None)
    except TuningError as err:
        print(f"jtcse tune: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except TuningInterrupted as stop:
        print(f"jtcse tune: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_status) from None
    print(report.summary.split("\n## Trials")[0].rstrip())
    print("\n" + "\n".join(f"{name}: {path}" for name, path in report.files.items()))


def cmd_tune_worker(args) -> None:
    settings = _settings_from(args)
    if not args.no_create:
        check_towers(settings, resolve_tower(args.tower_a), resolve_tower(args.tower_b))
        check_data(settings)
        prepare_study(settings)
    run_worker(settings, tower_a=resolve_tower(args.tower_a), tower_b=resolve_tower(args.tower_b),
               worker_index=args.worker_index, workers=args.workers,
               progress=os.environ.get("TQDM_DISABLE") != "1")


def cmd_tune_report(args) -> None:
    report = write_report(_settings_from(args), args.output_dir)
    print(report.summary.split("\n## Trials")[0].rstrip())


def cmd_tune_apply(args) -> None:
    changes = apply_best(args.best, args.params)
    if not changes:
        print(f"{args.params} already holds the values of {args.best}")
    for dotted, (old, new) in changes.items():
        print(f"{dotted}: {old} -> {new}")
    if changes:
        print(f"{args.params} updated; `dvc repro` retrains with the tuned values")


def register_cli(sub) -> None:
    """Add ``tune``, ``tune-worker``, ``tune-report`` and ``tune-apply`` to the ``jtcse`` command line."""
    p = sub.add_parser("tune", help="Optuna search over the twin's loss weights (resumable, several workers)")
    _tune_options(p)
    p.add_argument("--workers", type=int, help="worker processes sharing the study (default: tune.workers)")
    p.add_argument("--output-dir", default="tune", help="best_params.yaml, summary.md, plots, logs (default: tune/)")
    p.add_argument("--subprocesses", action="store_true", help="run even a single worker as a separate process")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("tune-worker", help="one more worker for a study (e.g. on another machine, PostgreSQL storage)")
    _tune_options(p)
    p.add_argument("--worker-index", type=int, default=0, help="distinct per worker of a machine: seeds its sampler")
    p.add_argument("--workers", type=int, default=1, help="workers on this machine: the CPU threads are split among them")
    p.add_argument("--no-create", action="store_true", help="the study exists already (set by `jtcse tune`)")
    p.set_defaults(func=cmd_tune_worker)

    p = sub.add_parser("tune-report", help="write best_params.yaml, summary.md and plots of a study")
    _tune_options(p, towers=False)
    p.add_argument("--output-dir", default="tune", help="where to write (default: tune/)")
    p.set_defaults(func=cmd_tune_report)

    p = sub.add_parser("tune-apply", help="write a study's best values into params.yaml (comments kept)")
    p.add_argument("--best", default=f"tune/{BEST_FILE}", help=f"best parameters (default: tune/{BEST_FILE})")
    p.add_argument("--params", default="params.yaml", help="settings file to update (default: params.yaml)")
    p.set_defaults(func=cmd_tune_apply)


def main(argv: list[str] | None = None) -> int:
    """``python -m jtcse.tuning worker ...`` (what ``jtcse tune`` spawns) = ``jtcse tune-worker ...``."""
    from jtcse import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("worker", "tune", "report", "apply"):
        argv[0] = {"worker": "tune-worker", "tune": "tune", "report": "tune-report", "apply": "tune-apply"}[argv[0]]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
