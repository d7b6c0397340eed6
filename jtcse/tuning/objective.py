"""One trial: draw values from ``tune.space``, train the twin with them, report every dev evaluation."""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jtcse.config import Settings
from jtcse.config.search import SearchChoices, SearchRange
from jtcse.tuning.settings import is_int_setting, trial_settings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("jtcse.tuning")


def suggest(trial: optuna.Trial, settings: Settings) -> dict[str, Any]:
    """Draw the trial's values from ``tune.space``: dotted ``train`` keys -> values (fixed entries included)."""
    out: dict[str, Any] = {}
    for dotted, spec in settings.tune.space.entries().items():
        name = dotted.removeprefix("train.")
        if isinstance(spec, SearchRange):
            if is_int_setting(dotted):
                out[dotted] = trial.suggest_int(
                    name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log
                )
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

    def __init__(
        self, settings: Settings, *, tower_a: str, tower_b: str, worker: str | None = None, threads: int | None = None
    ):
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
            with tempfile.TemporaryDirectory(
                prefix=f"jtcse-trial-{trial.number:04d}-", ignore_cleanup_errors=True
            ) as tmp:
                result = train_twin(
                    settings,
                    tower_a=self.tower_a,
                    tower_b=self.tower_b,
                    output=Path(tmp) / "twin",
                    checkpoint_dir=Path(tmp) / "checkpoints",
                    metrics_dir=None,
                    resume=False,
                    on_eval=on_eval,
                    handle_signals=False,
                )
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
        log.info(
            "trial %d: best dev Spearman %.2f at step %d (untrained towers: %.2f) in %.0f s",
            trial.number,
            seen[best_step],
            best_step,
            result.initial_metric,
            seconds,
        )
        return seen[best_step]


def _format_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('train.')}={short_value(v)}" for k, v in values.items())


def short_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
