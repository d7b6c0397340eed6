"""The training loop every stage shares: seeded, resumable, evaluated on STS-B dev, best weights kept.

A checkpoint (:mod:`jtcse.training.checkpoints`) holds everything a resume needs to continue *exactly*. The best
weights so far are kept beside the checkpoints too, so a resume restores the output folder and the logs even when
they were deleted (``dvc repro`` removes a stage's outputs before rerunning it). A run whose last checkpoint is its
last step is finished and never resumed: rerunning it trains again.

A run holds a lock on its checkpoint folder, stops on SIGTERM/SIGINT after writing a checkpoint at the current
step, falls back to the previous checkpoint when the latest one cannot be read, and removes its output folder
when the loss diverges (see :mod:`jtcse.training.guards`).
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from jtcse.config.sections import OptimSettings, RuntimeSettings
from jtcse.data.readers import SentenceStream
from jtcse.evaluation.sts import STSEvaluator
from jtcse.io import atomic_directory, atomic_write_json, clean_folder_leftovers, clean_leftovers, naming_a_full_disk
from jtcse.training import distributed
from jtcse.training.checkpoints import (
    BEST_DIR,
    checkpoint_path,
    publish_best,
    restore_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
    start_afresh,
)
from jtcse.training.guards import CheckpointLock, StopSignals, TrainingDiverged, TrainingInterrupted
from jtcse.training.logs import CsvLog
from jtcse.training.objectives import Objective
from jtcse.training.optimization import make_optimizer, make_scheduler

log = logging.getLogger(__name__)

#: Loss values are read back from the device (a CUDA sync) once per this many steps, and before every
#: evaluation and checkpoint, not after every step; a non-finite loss is still reported with its step.
SYNC_EVERY = 10


@dataclass
class TrainResult:
    best_metric: float
    best_step: int
    initial_metric: float
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if distributed.world_size() > 1 and torch.cuda.is_available():
        # Under DDP the CPU generator (random ICNCE direction) stays identical on every rank, so all ranks
        # compute the same loss; each GPU's dropout generator is offset so the ranks draw independent masks.
        torch.cuda.manual_seed(seed + 7919 * distributed.rank())
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic kernels are what makes a run repeatable; filling every new tensor with NaN first (the
        # default that comes with them) only guards against reading uninitialised memory, which no kernel here
        # does, and it cost a tenth of a CPU training step (bench/speed.py's profile).
        torch.utils.deterministic.fill_uninitialized_memory = False


@dataclass
class _Run:
    """The state of one :meth:`Trainer.fit` call between its steps."""

    start: int
    best: tuple[float, int]  # (best dev metric, its step)
    initial: float
    last_metric: float
    logs: dict[str, CsvLog]
    on_eval: Callable[[int, float], None] | None
    diagnostics_batch: list[str]
    probe: list[str]
    history: list[dict] = field(default_factory=list)
    pending: list[tuple[int, float, dict[str, torch.Tensor]]] = field(default_factory=list)  # losses not yet read
    bar: tqdm | None = None

    def show(self) -> None:
        if self.bar is not None and self.history:
            self.bar.set_postfix(
                loss=f"{self.history[-1]['loss']:.4f}", dev=f"{self.last_metric:.2f}", best=f"{self.best[0]:.2f}"
            )


class Trainer:
    """Runs one stage's objective for ``settings.steps`` steps.

    Under torchrun (see :mod:`jtcse.training.distributed`) every process runs this loop on its slice of each
    batch; rank 0 alone evaluates and writes models, checkpoints and logs, and the others follow its decisions.

    ``on_eval(step, metric)`` is called after every dev evaluation (Optuna reports and prunes there; an
    exception it raises stops training). ``stop_after`` ends the run early after that many steps, as a
    pre-empted job would, so a later run resumes from the last checkpoint.
    """

    def __init__(
        self,
        objective: Objective,
        sentences: list[str],
        settings: OptimSettings,
        *,
        dev_evaluator: STSEvaluator,
        output_dir: str | Path,
        checkpoint_dir: str | Path,
        metrics_dir: str | Path | None = None,
        runtime: RuntimeSettings | None = None,
        seed: int | None = None,
        desc: str = "train",
        fingerprint: dict | None = None,
        handle_signals: bool = True,
    ):
        self.objective, self.settings, self.dev_evaluator = objective, settings, dev_evaluator
        self.runtime = runtime or RuntimeSettings()
        self.seed = settings.seed if seed is None else seed
        self.output_dir, self.checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
        self.metrics_dir = Path(metrics_dir) if metrics_dir else None
        self.desc = desc
        self.fingerprint = fingerprint or {}
        self.handle_signals = handle_signals  # off for Optuna trials: their checkpoints are thrown away
        self.stream = SentenceStream(sentences, settings.batch_size, self.seed)
        self.device = objective.device
        self.autocast = self.device.type == "cuda" and self.runtime.bf16

    def _evaluate(self) -> dict[str, float]:
        """Every dev metric (rank 0 computes, all ranks receive); the primary one selects the best weights."""
        metrics = {self.dev_evaluator.primary_metric: math.nan}
        if distributed.is_main():
            self.objective.eval()
            try:
                metrics = self.dev_evaluator(self.objective.dev_encoder())
            finally:
                self.objective.train()
        return distributed.broadcast_object(metrics)

    def _diagnostics_enabled(self) -> bool:
        wanted = getattr(self.settings, "diagnostics", False) and hasattr(self.objective, "diagnostics")
        if wanted and distributed.world_size() > 1:
            log.info("%s: diagnostics are single-process only; not written under torchrun", self.desc)
            return False
        return bool(wanted and self.metrics_dir)

    def _save_checkpoint(
        self, step: int, optimizer, scheduler, best: tuple[float, int], initial: float, logs: dict[str, CsvLog]
    ) -> None:
        save_checkpoint(
            self.checkpoint_dir,
            step,
            self.objective,
            optimizer,
            scheduler,
            best=best,
            initial=initial,
            logs=[csv_log.path for csv_log in logs.values()],
            keep=self.settings.keep_checkpoints,
        )

    def _save_best(self) -> None:
        if distributed.is_main():
            best = self.checkpoint_dir / BEST_DIR
            with naming_a_full_disk(best), atomic_directory(best) as tmp:
                self.objective.save_model(tmp)
            publish_best(self.checkpoint_dir, self.output_dir)
        distributed.barrier()

    def _clean_leftovers(self) -> None:
        """Temporary folders of writers killed mid-write (we hold the lock: no other writer is running)."""
        clean_leftovers(self.output_dir)
        clean_folder_leftovers(self.checkpoint_dir)

    def fit(
        self, *, resume: bool = True, stop_after: int | None = None, on_eval: Callable[[int, float], None] | None = None
    ) -> TrainResult:
        """Train (or resume) to ``settings.steps``; holds the checkpoint folder's lock while it runs.

        Raises :class:`TrainingInterrupted` after SIGTERM/SIGINT (a checkpoint of the current step is written)
        and :class:`TrainingDiverged` on a non-finite loss (the output folder is removed: it would look finished).
        """
        lock = CheckpointLock(self.checkpoint_dir) if distributed.is_main() else None
        if lock is not None:
            lock.acquire()
        try:
            if lock is not None:
                self._clean_leftovers()
            with StopSignals(self.handle_signals) as signals:
                return self._fit(resume=resume, stop_after=stop_after, on_eval=on_eval, signals=signals)
        except TrainingDiverged as err:
            if distributed.is_main() and self.output_dir.exists():
                shutil.rmtree(self.output_dir, ignore_errors=True)
                raise TrainingDiverged(f"{err}; no model was saved ({self.output_dir} removed)") from None
            raise
        finally:
            if lock is not None:
                lock.release()

    def _fit(
        self,
        *,
        resume: bool,
        stop_after: int | None,
        on_eval: Callable[[int, float], None] | None,
        signals: StopSignals,
    ) -> TrainResult:
        s = self.settings
        seed_everything(self.seed, self.runtime.deterministic)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, s, self.device)
        scheduler = make_scheduler(optimizer, s)
        run = self._start(resume, optimizer, scheduler, on_eval)
        model = distributed.wrap(self.objective, self.device)

        self.objective.train()
        began = time.perf_counter()
        if run.start == 0:
            run.initial = self._record_eval(run, 0)
            log.info("%s: step 0 dev %s = %.2f", self.desc, self.dev_evaluator.primary_metric, run.initial)

        end = s.steps if stop_after is None else min(s.steps, run.start + stop_after)
        run.bar = tqdm(
            range(run.start, end),
            initial=run.start,
            total=s.steps,
            desc=self.desc,
            unit="step",
            dynamic_ncols=True,
            disable=not distributed.is_main(),
        )
        for step_index in run.bar:
            step = step_index + 1
            sentences = self.stream.batch(step_index)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                losses = model(sentences)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if s.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            optimizer.step()
            scheduler.step()
            run.pending.append((step, scheduler.get_last_lr()[0], {k: v.detach() for k, v in losses.items()}))
            evaluate = step % s.eval_every == 0 or step == s.steps
            checkpoint_now = step % s.checkpoint_every == 0 or step == s.steps
            if evaluate or checkpoint_now or step % SYNC_EVERY == 0:
                self._flush(run)
            if evaluate:
                run.last_metric = self._record_eval(run, step)
                run.show()
            if checkpoint_now:
                self._save_checkpoint(step, optimizer, scheduler, run.best, run.initial, run.logs)
            stop = distributed.broadcast_object(signals.received) if distributed.world_size() > 1 else signals.received
            if stop is not None and step < end:
                if not checkpoint_now:
                    self._flush(run)
                    self._save_checkpoint(step, optimizer, scheduler, run.best, run.initial, run.logs)
                run.bar.close()
                raise TrainingInterrupted(self.desc, step, checkpoint_path(self.checkpoint_dir, step), stop)
        self._flush(run)  # a stop_after that ends between syncs
        run.bar.close()
        return self._finish(run, end, time.perf_counter() - began)

    def _start(self, resume: bool, optimizer, scheduler, on_eval) -> _Run:
        """Restore the latest usable checkpoint (or start afresh) and open the CSV logs where it left them."""
        main = distributed.is_main()
        start, best, initial = 0, (-math.inf, 0), math.nan
        checkpoint = (
            resumable_checkpoint(self.checkpoint_dir, self.fingerprint, self.settings.steps, self.desc)
            if main and resume
            else None
        )
        checkpoint = distributed.broadcast_object(checkpoint)
        if checkpoint is not None:
            start, best, initial = restore_checkpoint(checkpoint, self.objective, optimizer, scheduler, self.device)
            log.info("resuming %s from %s (step %d)", self.desc, checkpoint, start)
            if main and (self.checkpoint_dir / BEST_DIR).is_dir():
                publish_best(self.checkpoint_dir, self.output_dir)
        elif main:
            start_afresh(self.checkpoint_dir, self.fingerprint)
        distributed.barrier()

        logs = {}
        diagnose = self._diagnostics_enabled()
        if self.metrics_dir and main:
            logs["train"] = CsvLog(self.metrics_dir / "train.csv", ["step", "loss", *self.objective.loss_names, "lr"])
            logs["eval"] = CsvLog(self.metrics_dir / "eval.csv", ["step", *self.dev_evaluator.metric_names])
            if diagnose:
                logs["diagnostics"] = CsvLog(
                    self.metrics_dir / "diagnostics.csv", ["step", *self.objective.diagnostic_names]
                )
            for csv_log in logs.values():
                csv_log.reset(
                    start if checkpoint is not None else None,
                    checkpoint / csv_log.path.name if checkpoint is not None else None,
                )
        return _Run(
            start=start,
            best=best,
            initial=initial,
            last_metric=best[0],
            logs=logs,
            on_eval=on_eval,
            # Diagnostics look at one fixed batch and probe set, so their curves compare steps, not batches.
            diagnostics_batch=self.stream.batch(0) if diagnose else [],
            probe=self.stream.sentences[: getattr(self.settings, "diagnostics_probe", 0)] if diagnose else [],
        )

    def _record_eval(self, run: _Run, step: int) -> float:
        """Evaluate on dev, keep the weights if they are the best so far, log, and call ``on_eval``."""
        metrics = self._evaluate()
        metric = metrics[self.dev_evaluator.primary_metric]
        if not math.isfinite(metric):  # never "saved to" a folder no evaluation ever filled
            raise FloatingPointError(
                f"{self.desc}: dev {self.dev_evaluator.primary_metric} is {metric} at step {step}: the model gives "
                "every pair the same similarity (collapsed embeddings)"
            )
        if metric > run.best[0]:
            run.best = (metric, step)
            self._save_best()
        if "eval" in run.logs:
            run.logs["eval"].append({"step": step, **{k: round(v, 4) for k, v in metrics.items()}})
        if "diagnostics" in run.logs:
            row = self.objective.diagnostics(run.diagnostics_batch, run.probe)
            run.logs["diagnostics"].append({"step": step, **{k: round(v, 6) for k, v in row.items()}})
        if run.on_eval is not None:
            run.on_eval(step, metric)
        return metric

    def _flush(self, run: _Run) -> None:
        """Read the pending steps' losses back from the device (one sync), check them, and log them."""
        if not run.pending:
            return
        names = list(run.pending[0][2])
        values = torch.stack([torch.stack([losses[k].float() for k in names]) for *_, losses in run.pending]).tolist()
        for (step, lr, _), row_values in zip(run.pending, values):
            row = {"step": step, "lr": lr, **dict(zip(names, row_values))}
            if not math.isfinite(row["loss"]):
                raise TrainingDiverged(
                    f"{self.desc}: loss became {row['loss']} at step {step}; "
                    "lower the learning rate or check the temperature"
                )
            run.history.append(row)
            if "train" in run.logs:
                run.logs["train"].append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        run.pending.clear()
        run.show()

    def _finish(self, run: _Run, end: int, seconds: float) -> TrainResult:
        s = self.settings
        best, initial = run.best, run.initial
        result = TrainResult(
            best_metric=best[0],
            best_step=best[1],
            initial_metric=initial,
            steps=end,
            seconds=seconds,
            history=run.history,
        )
        if self.metrics_dir and distributed.is_main() and end == s.steps:
            with naming_a_full_disk(self.metrics_dir / "summary.json"):
                atomic_write_json(
                    self.metrics_dir / "summary.json",
                    {
                        f"initial_{self.dev_evaluator.primary_metric}": round(initial, 4),
                        f"best_{self.dev_evaluator.primary_metric}": round(best[0], 4),
                        "best_step": best[1],
                        "steps": s.steps,
                        "batch_size": s.batch_size,
                        "seconds_this_run": round(seconds, 1),
                    },
                )
        log.info(
            "%s: best dev %.2f at step %d (from %.2f); model -> %s",
            self.desc,
            best[0],
            best[1],
            initial,
            self.output_dir,
        )
        return result
