"""The three training stages as plain functions; the CLI, DVC stages, Prefect flows and Optuna call these.

Each reads its corpus and dev set, builds its objective and trainer from the settings
(:mod:`jtcse.training.build`) and runs it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from jtcse.config import Settings
from jtcse.data.readers import check_corpus_fits, read_corpus
from jtcse.encoding import pick_device
from jtcse.evaluation.sts import DEV_TASKS, dev_evaluator
from jtcse.formats import resolve_model_path, sha256_file
from jtcse.training import distributed
from jtcse.training.build import (
    build_distill_objective,
    build_tower_objective,
    build_trainer,
    build_twin_objective,
    distill_student_init,
    tower_optim,
)
from jtcse.training.diagnostics import plot_diagnostics
from jtcse.training.objectives import Objective
from jtcse.training.trainer import TrainResult

log = logging.getLogger(__name__)


def fingerprint(settings: Settings, section: str, inputs: list[str]) -> dict:
    """What a stage's checkpoints depend on: its settings, the exact weights it started from and the contents
    of the corpus and the dev files (a corpus replaced at the same path starts afresh, never resumes)."""
    digests = {}
    for name in inputs:
        root = Path(resolve_model_path(name))
        # Weights and the JSON beside them (config, tokenizer, twin.json: a twin's pooling/combine change the
        # teacher without changing any weight).
        files = (
            sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".json") and p.is_file())
            if root.is_dir()
            else []
        )
        digests[name] = [sha256_file(f) for f in files] or name
    data_files = [Path(settings.data.corpus), *(Path(settings.data.sts_dir) / name for name in DEV_TASKS.values())]
    return {
        "stage": section,
        "settings": {k: getattr(settings, k).model_dump(mode="json") for k in ("model", "data", "evaluate", section)},
        "inputs": digests,
        "data": {str(path): sha256_file(path) if path.is_file() else None for path in data_files},
    }


def _fit_stage(
    settings: Settings,
    section: str,
    make_objective: Callable[[torch.device], Objective],
    *,
    inputs: list[str],
    output: str | Path,
    checkpoint_dir: str | Path,
    metrics_dir: str | Path | None,
    desc: str,
    resume: bool,
    stop_after: int | None,
    on_eval: Callable[[int, float], None] | None = None,
    fingerprint_extra: dict | None = None,
    **trainer_options,
) -> TrainResult:
    """What every stage does: read the corpus and the dev set, build the objective on the device, and fit it
    (resumable; ``inputs`` are the weights it starts from, part of the checkpoints' fingerprint with
    ``fingerprint_extra``); ``trainer_options`` go to :func:`build_trainer`."""
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    device = distributed.setup(settings.runtime.device) or pick_device(settings.runtime.device)
    sentences = read_corpus(settings.data.corpus, settings.data.max_sentences)
    check_corpus_fits(
        sentences, getattr(settings, section).batch_size, corpus=settings.data.corpus, key=f"{section}.batch_size"
    )
    dev = dev_evaluator(settings.data.sts_dir, settings.evaluate.selection, batch_size=settings.evaluate.batch_size)
    trainer = build_trainer(
        settings,
        section,
        make_objective(device).to(device),
        sentences,
        dev,
        output=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        desc=desc,
        fingerprint=fingerprint(settings, section, inputs) | (fingerprint_extra or {}),
        **trainer_options,
    )
    return trainer.fit(resume=resume, stop_after=stop_after, on_eval=on_eval)


def train_tower(
    settings: Settings,
    *,
    which: str,
    output: str | Path,
    checkpoint_dir: str | Path,
    metrics_dir: str | Path | None = None,
    init: str | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Stage 1: unsupervised SimCSE on one tower from the base checkpoint; ``which`` picks the tower's own
    settings (``pretrain.tower_a`` / ``tower_b``: seed, lr, dropout, pooling, augmentation)."""
    start = init or settings.model.base
    return _fit_stage(
        settings,
        "pretrain",
        lambda device: build_tower_objective(settings, which, start),
        inputs=[start],
        output=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        desc=f"tower {which}",
        resume=resume,
        stop_after=stop_after,
        optim=tower_optim(settings, which),
        seed=settings.pretrain.tower(which).seed,
        fingerprint_extra={"tower": which},
    )


def train_twin(
    settings: Settings,
    *,
    tower_a: str,
    tower_b: str,
    output: str | Path,
    checkpoint_dir: str | Path,
    metrics_dir: str | Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    handle_signals: bool = True,
) -> TrainResult:
    """Stage 2: joint JTCSE training of the two stage-1 towers (diagnostics.csv/.png beside the logs;
    ``handle_signals``: see :class:`Trainer`)."""
    result = _fit_stage(
        settings,
        "train",
        lambda device: build_twin_objective(settings, tower_a, tower_b),
        inputs=[tower_a, tower_b],
        output=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        desc="jtcse",
        resume=resume,
        stop_after=stop_after,
        on_eval=on_eval,
        handle_signals=handle_signals,
    )
    if metrics_dir and distributed.is_main():
        ca = settings.train.cross_attention
        bridge = f"{ca.mode} x {ca.num_layers}, w_cross {settings.train.w_cross}" if ca.num_layers else "no bridge"
        plot_diagnostics(
            Path(metrics_dir) / "diagnostics.csv",
            Path(metrics_dir) / "diagnostics.png",
            title=f"stage 2 diagnostics ({bridge})",
        )
    return result


def distill_twin(
    settings: Settings,
    *,
    twin: str | Path,
    output: str | Path,
    checkpoint_dir: str | Path,
    metrics_dir: str | Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Stage 3 (JTCSE-D): distil the twin into one tower."""
    return _fit_stage(
        settings,
        "distill",
        lambda device: build_distill_objective(settings, twin, device),
        inputs=[str(twin), distill_student_init(settings, twin)],
        output=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        desc="distill",
        resume=resume,
        stop_after=stop_after,
    )
