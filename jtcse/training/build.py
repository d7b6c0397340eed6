"""Training assembled from settings, in one place: each stage's objective, and the trainer that runs it.

The stages (:mod:`jtcse.training.stages`), the tuning objective and every benchmark build what they train
through these functions, so a setting added to a section reaches all of them (a benchmark that rebuilt a loss
by hand once dropped ``train.w_cross`` without a word).
"""

from __future__ import annotations

from pathlib import Path

import torch

from jtcse.config import Settings
from jtcse.errors import ConfigError
from jtcse.evaluation.sts import STSEvaluator
from jtcse.losses import DistillationLoss, JTCSELoss
from jtcse.modeling.towers import load_tower
from jtcse.modeling.twin import BridgedTwin, check_bridge_layers
from jtcse.training.augment import augmenter
from jtcse.training.objectives import DistillObjective, JTCSEObjective, Objective, SimCSEObjective
from jtcse.training.trainer import Trainer

#: The settings section each stage trains with.
SECTIONS = ("pretrain", "train", "distill")


def load_stage_tower(settings: Settings, path: str, seed: int, dropout: float | None = None):
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


def tower_optim(settings: Settings, which: str):
    """The pretrain section as tower ``which`` trains with it (its own ``lr`` where set)."""
    own = settings.pretrain.tower(which)
    return settings.pretrain if own.lr is None else settings.pretrain.model_copy(update={"lr": own.lr})


def build_tower_objective(settings: Settings, which: str = "a", init: str | None = None) -> SimCSEObjective:
    """Stage 1: unsupervised SimCSE on one tower (``pretrain.tower_<which>``: seed, dropout, pooling,
    augmentation), started from ``init`` (default: model.base)."""
    own = settings.pretrain.tower(which)
    tower, tokenizer = load_stage_tower(settings, init or settings.model.base, own.seed, own.dropout)
    return SimCSEObjective(
        tower,
        tokenizer,
        temperature=settings.pretrain.temperature,
        pooling=tower_pooling(settings, which),
        max_length=settings.model.max_length,
        eval_max_length=settings.evaluate.max_length,
        second_view=augmenter(own.augment, own.augment_rate),
    )


def build_twin_loss(settings: Settings) -> JTCSELoss:
    """The stage-2 loss with every weight of the ``train`` section."""
    t = settings.train
    return JTCSELoss(
        w_nce=t.w_nce,
        w_icnce=t.w_icnce,
        w_cross=t.w_cross,
        w_tm=t.w_tm,
        temperature=t.temperature,
        icnce_direction=t.icnce_direction,
        modulus_on=t.modulus_on,
        tm_clamp=t.tm_clamp,
    )


def build_twin_objective(settings: Settings, tower_a: str, tower_b: str) -> JTCSEObjective:
    """Stage 2: the two stage-1 towers, bridged as ``train.cross_attention`` says, under the JTCSE loss."""
    t = settings.train
    model_a, tokenizer = load_stage_tower(settings, tower_a, t.seed, t.dropout)
    model_b, _ = load_stage_tower(settings, tower_b, t.seed + 1, t.dropout)
    ca = t.cross_attention
    check_bridge_layers(ca.num_layers, model_a.config.num_hidden_layers, "train.cross_attention.num_layers", tower_a)
    if t.modulus_on == "pooler" and (model_a.pooler is None or model_b.pooler is None):
        raise ConfigError(
            f"train.modulus_on is 'pooler' but {tower_a} or {tower_b} has no pooler: set train.modulus_on: embedding"
        )
    twin = BridgedTwin(
        model_a,
        model_b,
        num_ca_layers=ca.num_layers,
        mode=ca.mode,
        mix_gate=ca.mix_gate,
        pooling=(tower_pooling(settings, "a"), tower_pooling(settings, "b")),
    )
    return JTCSEObjective(
        twin,
        tokenizer,
        build_twin_loss(settings),
        max_length=settings.model.max_length,
        eval_max_length=settings.evaluate.max_length,
        combine=t.twin_combine,
        normalize=t.twin_normalize,
    )


def distill_student_init(settings: Settings, twin: str | Path) -> str:
    """Where the student starts: ``distill.student_init`` (tower_a / tower_b of ``twin``, or a model path)."""
    init = settings.distill.student_init
    return {"tower_a": str(Path(twin) / "tower_a"), "tower_b": str(Path(twin) / "tower_b")}.get(init, init)


def build_distill_objective(
    settings: Settings, twin: str | Path, device: str | torch.device = "cpu"
) -> DistillObjective:
    """Stage 3 (JTCSE-D): a single tower learning the frozen twin's similarities (the twin loads on ``device``)."""
    from jtcse.api import load_twin

    d = settings.distill
    teacher = load_twin(twin, device=str(device))
    student, tokenizer = load_stage_tower(settings, distill_student_init(settings, twin), d.seed)
    loss = DistillationLoss(
        w_kl=d.w_kl,
        w_nce=d.w_nce,
        temperature=d.temperature,
        teacher_temperature=d.teacher_temperature,
        student_temperature=d.student_temperature,
    )
    return DistillObjective(
        student,
        teacher,
        tokenizer,
        loss,
        pooling=settings.model.pooling,
        max_length=settings.model.max_length,
        eval_max_length=settings.evaluate.max_length,
    )


def build_trainer(
    settings: Settings,
    section: str,
    objective: Objective,
    sentences: list[str],
    dev_evaluator: STSEvaluator,
    *,
    output: str | Path,
    checkpoint_dir: str | Path,
    metrics_dir: str | Path | None = None,
    desc: str | None = None,
    fingerprint: dict | None = None,
    optim=None,
    seed: int | None = None,
    handle_signals: bool = True,
) -> Trainer:
    """The trainer of stage ``section`` (one of :data:`SECTIONS`): its optimiser settings (``optim``: a copy of
    the section with per-tower changes), the runtime section, and the files it writes."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    return Trainer(
        objective,
        sentences,
        optim or getattr(settings, section),
        dev_evaluator=dev_evaluator,
        output_dir=output,
        checkpoint_dir=checkpoint_dir,
        metrics_dir=metrics_dir,
        runtime=settings.runtime,
        seed=seed,
        desc=desc or section,
        fingerprint=fingerprint,
        handle_signals=handle_signals,
    )
