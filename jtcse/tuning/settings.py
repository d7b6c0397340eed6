"""What a study runs with: its output file names, the command-line overrides of ``tune``, the settings of one
trial, and the checks that fail before the study starts instead of in every trial."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from jtcse.config import Settings, apply_overrides
from jtcse.config.search import SearchChoices, SearchRange
from jtcse.errors import ConfigError
from jtcse.formats import resolve_model_path
from jtcse.io import atomic_write_text

META_KEY = "_meta"  # key of best_params.yaml that tune-apply ignores
SETTINGS_FILE = "study_settings.yaml"  # the resolved settings the workers of a run load
BEST_FILE = "best_params.yaml"
SUMMARY_FILE = "summary.md"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
TRIALS_CSV = "trials.csv"
DEFAULT_TOWER_A = "models/tower_a"
DEFAULT_TOWER_B = "models/tower_b"


def metric_name(settings: Settings) -> str:
    """The study's objective: the dev metric that also selects checkpoints (``evaluate.selection``)."""
    return f"{settings.evaluate.selection}_spearman"


def with_overrides(
    settings: Settings,
    *,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    workers: int | None = None,
) -> Settings:
    """A validated copy of ``settings`` with the given ``tune`` keys replaced (command-line overrides)."""
    changes = {"n_trials": n_trials, "storage": storage, "study_name": study_name, "workers": workers}
    return apply_overrides(settings, {f"tune.{k}": v for k, v in changes.items() if v is not None}, "tune options")


def write_settings(settings: Settings, path: str | os.PathLike) -> Path:
    """Write the fully resolved settings (what every worker of the study loads) as YAML."""
    path = Path(path)
    text = yaml.safe_dump(settings.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True)
    atomic_write_text(path, "# Resolved settings of a jtcse tune run (written by jtcse.tuning; do not edit).\n" + text)
    return path


def dotted_get(settings: Settings, dotted: str) -> Any:
    node: Any = settings
    for part in dotted.split("."):
        node = getattr(node, "validate_data" if part == "validate" else part)
    return node


def is_int_setting(dotted: str) -> bool:
    value = dotted_get(Settings(), dotted)
    return isinstance(value, int) and not isinstance(value, bool)


def trial_settings(settings: Settings, overrides: dict[str, Any], *, threads: int | None = None) -> Settings:
    """The settings one trial trains with: ``overrides`` (dotted keys) plus the trial's step budget."""
    tune = settings.tune
    budget = {
        "train.steps": tune.trial_steps,
        "train.eval_every": tune.eval_every,
        "train.checkpoint_every": tune.trial_steps,
        "train.keep_checkpoints": 1,
    }
    if threads is not None and settings.runtime.threads is None:
        budget["runtime.threads"] = threads
    return apply_overrides(settings, {**overrides, **budget}, "trial settings")


def _layer_count(tower: str) -> int:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(resolve_model_path(tower))
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"tower {tower}: cannot be loaded ({err}); train the stage-1 towers first "
            "(dvc repro pretrain_a pretrain_b) or pass --tower-a/--tower-b"
        ) from None
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
    from jtcse.modeling.twin import check_bridge_layers

    check_bridge_layers([int(v) for v in values], depth, where, tower_a)


def check_data(settings: Settings) -> None:
    """Fail before the study starts, not in every trial: the corpus fills a batch and the dev STS file reads."""
    from jtcse.data.readers import check_corpus_fits, read_corpus
    from jtcse.evaluation.sts import DEV_TASKS, STSEvaluator

    sentences = read_corpus(settings.data.corpus, settings.data.max_sentences)
    check_corpus_fits(sentences, settings.train.batch_size, corpus=settings.data.corpus, key="train.batch_size")
    STSEvaluator(settings.data.sts_dir, DEV_TASKS)


def resolve_tower(tower: str | os.PathLike) -> str:
    """Absolute path for a local folder (workers may run elsewhere in the tree), the name itself otherwise."""
    path = Path(tower).expanduser()
    return str(path.resolve()) if path.exists() else str(tower)
