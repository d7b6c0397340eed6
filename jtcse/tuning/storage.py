"""The study database and Optuna's pieces: heartbeat storage (a dead worker's trial is failed and re-queued),
the seeded sampler, the pruner, creating or loading the study, counting its trials."""

from __future__ import annotations

import functools
import logging
import os
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jtcse.config import Settings
from jtcse.config.search import TuneSettings, mask_text, mask_url
from jtcse.errors import ConfigError, StorageUnavailableError
from jtcse.tuning.settings import metric_name

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("jtcse.tuning")


def safe_url(url: str) -> str:
    """The storage URL with any password masked (``user:***@``, ``password=***``), for logs and reports."""
    return mask_url(url)


def make_url_backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()


def quiet_experimental_warnings() -> None:
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
                running = (
                    session.query(models.TrialModel)
                    .filter(models.TrialModel.study_id == study_id, models.TrialModel.state == TrialState.RUNNING)
                    .all()
                )
                now = datetime.now()  # datetime_start reads back as naive local time, like this
                return [
                    t.trial_id
                    for t in running
                    if not t.heartbeats and t.datetime_start is not None and now - t.datetime_start > grace
                ]
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

    quiet_experimental_warnings()
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
        return _heartbeat_storage_class()(
            tune.storage,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=tune.heartbeat_interval,
            grace_period=tune.grace_period,
            heartbeat_stale_trial_callback=retry,
        )
    except (DBAPIError, SQLAlchemyError) as err:
        reason = mask_text(str(getattr(err, "orig", None) or err), tune.storage).strip().splitlines()
        raise StorageUnavailableError(
            f"tune.storage {safe_url(tune.storage)}: cannot open the study database "
            f"({reason[0] if reason else type(err).__name__}); is the server running and the URL right?"
        ) from None


def derive_seed(seed: int, worker_index: int, n_existing: int) -> int:
    """Worker ``worker_index`` of a study already holding ``n_existing`` trials: its own reproducible seed."""
    import numpy as np

    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, worker_index, n_existing]).generate_state(1)[0] >> 1)


def make_sampler(tune: TuneSettings, worker_index: int = 0, n_existing: int = 0) -> optuna.samplers.TPESampler:
    """TPE with every behaviour that matters pinned (Optuna 5 changed the defaults)."""
    from optuna.samplers import TPESampler

    quiet_experimental_warnings()
    s = tune.sampler
    return TPESampler(
        seed=derive_seed(s.seed, worker_index, n_existing),
        n_startup_trials=s.n_startup_trials,
        n_ei_candidates=24,
        multivariate=s.multivariate,
        group=False,
        constant_liar=True,
    )


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
    return {
        "space": tune.space.model_dump(mode="json"),
        "trial_steps": tune.trial_steps,
        "eval_every": tune.eval_every,
        "selection": settings.evaluate.selection,
    }


def prepare_study(settings: Settings) -> optuna.Study:
    """Create the study, or load it when it exists (call once before launching workers); fail stale trials."""
    import optuna

    tune = settings.tune
    storage = make_storage(tune)
    study = optuna.create_study(
        study_name=tune.study_name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=make_sampler(tune),
        pruner=make_pruner(tune),
    )
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(
            f"tune.study_name: study {tune.study_name!r} in {safe_url(tune.storage)} minimises "
            "something else; pick another name"
        )
    fingerprint = _space_fingerprint(settings)
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", fingerprint)
        if not study.metric_names:
            study.set_metric_names([metric_name(settings)])
        log.info("study %r created in %s", tune.study_name, safe_url(tune.storage))
    else:
        if stored != fingerprint:
            log.warning(
                "study %r: the search space or trial budget changed since it began; earlier trials still "
                "guide the sampler (use a new tune.study_name for a fresh search)",
                tune.study_name,
            )
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
        return (
            f"{self.complete} complete, {self.pruned} pruned, {self.failed} failed, {self.running} running, "
            f"{self.waiting} waiting"
        )


def trial_counts(study: optuna.Study) -> TrialCounts:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return TrialCounts(
        complete=states.count(TrialState.COMPLETE),
        pruned=states.count(TrialState.PRUNED),
        failed=states.count(TrialState.FAIL),
        running=states.count(TrialState.RUNNING),
        waiting=states.count(TrialState.WAITING),
    )
