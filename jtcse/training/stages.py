"""The three training stages as plain functions; the CLI, DVC stages, Prefect flows and Optuna call these."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from jtcse.config import Settings
from jtcse.data.readers import check_corpus_fits, read_corpus
from jtcse.encoding import pick_device
from jtcse.errors import ConfigError
from jtcse.evaluation.sts import DEV_TASKS, STSEvaluator, dev_evaluator
from jtcse.formats import resolve_model_path, sha256_file
from jtcse.losses import DistillationLoss, JTCSELoss
from jtcse.modeling.towers import load_tower
from jtcse.modeling.twin import BridgedTwin, bridge_layer_counts
from jtcse.training import distributed
from jtcse.training.augment import augmenter
from jtcse.training.diagnostics import plot_diagnostics
from jtcse.training.objectives import DistillObjective, JTCSEObjective, SimCSEObjective
from jtcse.training.trainer import Trainer, TrainResult

log = logging.getLogger(__name__)


def _prepare(settings: Settings, section: str) -> tuple[torch.device, list[str], STSEvaluator]:
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    device = distributed.setup(settings.runtime.device) or pick_device(settings.runtime.device)
    sentences = read_corpus(settings.data.corpus, settings.data.max_sentences)
    check_corpus_fits(
        sentences, getattr(settings, section).batch_size, corpus=settings.data.corpus, key=f"{section}.batch_size"
    )
    dev = dev_evaluator(settings.data.sts_dir, settings.evaluate.selection, batch_size=settings.evaluate.batch_size)
    return device, sentences, dev


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


def _tower(settings: Settings, path: str, seed: int, dropout: float | None = None):
    """A tower to train from ``path``; ``dropout`` (None: model.dropout) is the stage's own."""
    torch.manual_seed(seed)  # any freshly initialised weights (a missing pooler) follow the stage's seed
    m = settings.model
    return load_tower(
        path,
        dropout=m.dropout if dropout is None else dropout,
        attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code,
    )


def tower_pooling(settings: Settings, which: str) -> str:
    """Tower ``which``'s pooling: its own stage-1 setting, else model.pooling (used by every later stage)."""
    return settings.pretrain.tower(which).pooling or settings.model.pooling


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
    own = settings.pretrain.tower(which)
    p = settings.pretrain if own.lr is None else settings.pretrain.model_copy(update={"lr": own.lr})
    seed = own.seed
    device, sentences, dev = _prepare(settings, "pretrain")
    tower, tokenizer = _tower(settings, init or settings.model.base, seed, own.dropout)
    objective = SimCSEObjective(
        tower,
        tokenizer,
        temperature=p.temperature,
        pooling=tower_pooling(settings, which),
        max_length=settings.model.max_length,
        eval_max_length=settings.evaluate.max_length,
        second_view=augmenter(own.augment, own.augment_rate),
    ).to(device)
    trainer = Trainer(
        objective,
        sentences,
        p,
        dev_evaluator=dev,
        output_dir=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        runtime=settings.runtime,
        seed=seed,
        desc=f"tower {which}",
        fingerprint=fingerprint(settings, "pretrain", [init or settings.model.base]) | {"tower": which},
    )
    return trainer.fit(resume=resume, stop_after=stop_after)


def build_twin_objective(settings: Settings, tower_a: str, tower_b: str) -> JTCSEObjective:
    t = settings.train
    model_a, tokenizer = _tower(settings, tower_a, t.seed, t.dropout)
    model_b, _ = _tower(settings, tower_b, t.seed + 1, t.dropout)
    ca = t.cross_attention
    depth = model_a.config.num_hidden_layers
    if ca.num_layers not in bridge_layer_counts(depth):
        raise ConfigError(
            f"train.cross_attention.num_layers: {ca.num_layers} does not divide the {depth} layers of "
            f"{tower_a}; use one of {bridge_layer_counts(depth)[1:]}, or 0 for no bridge"
        )
    twin = BridgedTwin(
        model_a,
        model_b,
        num_ca_layers=ca.num_layers,
        mode=ca.mode,
        mix_gate=ca.mix_gate,
        pooling=(tower_pooling(settings, "a"), tower_pooling(settings, "b")),
    )
    loss = JTCSELoss(
        w_nce=t.w_nce,
        w_icnce=t.w_icnce,
        w_cross=t.w_cross,
        w_tm=t.w_tm,
        temperature=t.temperature,
        icnce_direction=t.icnce_direction,
        modulus_on=t.modulus_on,
        tm_clamp=t.tm_clamp,
    )
    if t.modulus_on == "pooler" and (model_a.pooler is None or model_b.pooler is None):
        raise ConfigError(
            f"train.modulus_on is 'pooler' but {tower_a} or {tower_b} has no pooler: set train.modulus_on: embedding"
        )
    return JTCSEObjective(
        twin,
        tokenizer,
        loss,
        max_length=settings.model.max_length,
        eval_max_length=settings.evaluate.max_length,
        combine=t.twin_combine,
        normalize=t.twin_normalize,
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
    device, sentences, dev = _prepare(settings, "train")
    objective = build_twin_objective(settings, tower_a, tower_b).to(device)
    trainer = Trainer(
        objective,
        sentences,
        settings.train,
        dev_evaluator=dev,
        output_dir=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        runtime=settings.runtime,
        desc="jtcse",
        fingerprint=fingerprint(settings, "train", [tower_a, tower_b]),
        handle_signals=handle_signals,
    )
    result = trainer.fit(resume=resume, stop_after=stop_after, on_eval=on_eval)
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
    from jtcse.api import load_twin

    d = settings.distill
    device, sentences, dev = _prepare(settings, "distill")
    teacher = load_twin(twin, device=str(device))
    init = {"tower_a": str(Path(twin) / "tower_a"), "tower_b": str(Path(twin) / "tower_b")}.get(
        d.student_init, d.student_init
    )
    student, tokenizer = _tower(settings, init, d.seed)
    loss = DistillationLoss(
        w_kl=d.w_kl,
        w_nce=d.w_nce,
        temperature=d.temperature,
        teacher_temperature=d.teacher_temperature,
        student_temperature=d.student_temperature,
    )
    objective = DistillObjective(
        student,
        teacher,
        tokenizer,
        loss,
        pooling=settings.model.pooling,
        max_length=settings.model.max_length,
        eval_max_length=settings.evaluate.max_length,
    ).to(device)
    trainer = Trainer(
        objective,
        sentences,
        d,
        dev_evaluator=dev,
        output_dir=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        runtime=settings.runtime,
        desc="distill",
        fingerprint=fingerprint(settings, "distill", [str(twin), init]),
    )
    return trainer.fit(resume=resume, stop_after=stop_after)
