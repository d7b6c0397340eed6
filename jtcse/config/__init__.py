"""Typed settings for every stage, loaded from ``params.yaml``: :class:`Settings` (one field per section) and
the loading (overlays, ``--set`` overrides, one-line errors naming the key).

The sections themselves live in :mod:`jtcse.config.sections` (the stages) and :mod:`jtcse.config.search` (the
Optuna search space of ``tune``); import a section class from there.

Each field's description is the documentation of that hyperparameter; ``params.yaml`` repeats it as a
comment.  Unknown keys and wrong types are refused with an error that names the offending key, because a
misspelt hyperparameter that is silently ignored is the most expensive bug in a training pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from jtcse.config.search import TuneSettings
from jtcse.config.sections import (
    DataSettings,
    DistillSettings,
    EvaluateSettings,
    ModelSettings,
    PackageSettings,
    PretrainSettings,
    RetrainSettings,
    RuntimeSettings,
    TransferSettings,
    TwinSettings,
    ValidateSettings,
    _Section,
)
from jtcse.errors import ConfigError


class Settings(_Section):
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    validate_data: ValidateSettings = Field(default_factory=lambda: ValidateSettings(), alias="validate")
    pretrain: PretrainSettings = Field(default_factory=PretrainSettings)
    train: TwinSettings = Field(default_factory=TwinSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    evaluate: EvaluateSettings = Field(default_factory=EvaluateSettings)
    transfer: TransferSettings = Field(default_factory=TransferSettings)
    package: PackageSettings = Field(default_factory=PackageSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    tune: TuneSettings = Field(
        default_factory=TuneSettings, description="Optuna search over the twin stage (jtcse tune)."
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _batches_split_over_processes(self) -> Settings:
        n = self.runtime.nproc_per_node
        for section in ("pretrain", "train", "distill"):
            size = getattr(self, section).batch_size
            if size % n:
                raise ValueError(f"{section}.batch_size ({size}) must be divisible by runtime.nproc_per_node ({n})")
        return self


Settings.model_rebuild()


def _format_error(source: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        given = e.get("input")
        if e["type"] not in ("extra_forbidden", "value_error", "missing") and isinstance(
            given, (bool, int, float, str)
        ):
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
                raise ConfigError(
                    f"{self.name}:{line}: duplicate key {key!r} (first at line {seen[key]}); "
                    "a repeated key or section replaces the earlier one whole: merge them"
                )
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
        line = path.read_bytes()[: err.start].count(b"\n") + 1
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


#: Top-level key of an overlay settings file: the file it is applied on top of (see :func:`read_settings_tree`).
EXTENDS = "extends"


def read_settings_tree(path: str | os.PathLike) -> dict[str, Any]:
    """The settings mapping of a file, with ``extends:`` resolved (not yet validated).

    A file whose top level says ``extends: params.yaml`` is an *overlay*: it holds only the keys that differ, and
    its mapping is merged into the base file's (the path is relative to the overlay's folder; a base may itself
    extend another). Mappings merge key by key, anything else (a value, a list, null) replaces the base's. The
    merged mapping is validated like any settings file, so an overlay key the schema lacks is refused by name.
    An empty (or comments-only) file is refused: running every stage on defaults nobody chose is a mistake.
    """
    layers: list[tuple[Path, dict[str, Any]]] = []  # the file asked for first, then what it extends
    path = Path(path)
    while True:
        raw = read_yaml(path)
        if raw is None:
            raise ConfigError(
                f"{path}: no settings (the file is empty or holds only comments); expected sections "
                "such as model:, data:, train: (see the project's params.yaml)"
            )
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
        layers.append((path, raw))
        base = raw.pop(EXTENDS, None)
        if base is None:
            break
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"{path}: {EXTENDS}: expected the path of the settings file this one overlays")
        path = path.parent / base
        if any(path.resolve() == seen.resolve() for seen, _ in layers):
            files = " -> ".join(str(seen) for seen, _ in layers)
            raise ConfigError(f"{layers[-1][0]}: {EXTENDS}: {base} leads back to a file already read ({files})")
    tree: dict[str, Any] = {}
    for _, layer in reversed(layers):
        tree = merge_settings(tree, layer)
    return tree


def merge_settings(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` on top of ``base``: mappings merge key by key, any other value replaces the base's."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def overlay_values(path: str | os.PathLike) -> dict[str, Any]:
    """The values an overlay sets, as dotted keys (``train.cross_attention.num_layers``) to values, after checking
    that the overlay and its base load as valid settings. Lists and other non-mapping values are leaves."""
    load_settings(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or EXTENDS not in raw:
        raise ConfigError(f"{path}: not an overlay (its top level has no '{EXTENDS}:' naming the file it changes)")
    raw.pop(EXTENDS)

    def leaves(node: dict[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            out.update(leaves(value, f"{dotted}.") if isinstance(value, dict) else {dotted: value})
        return out

    return leaves(raw, "")


def load_settings(path: str | os.PathLike = "params.yaml", overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate ``params.yaml`` (or an overlay of it, see :func:`read_settings_tree`); ``overrides`` maps
    dotted keys to values (e.g. from Optuna)."""
    path = Path(path)
    raw = read_settings_tree(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return settings_from_dict(raw, str(path))


def apply_overrides(settings: Settings, overrides: dict[str, Any], source: str = "overrides") -> Settings:
    """A validated copy of ``settings`` with dotted-key ``overrides`` applied (``{"train.lr": 1e-5}``); the one
    way benchmarks, tuning trials and command-line options derive settings. Errors name ``source`` and the key."""
    raw = settings.model_dump(mode="json", by_alias=True)
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
    return settings_from_dict(raw, source)


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{key}' is not a section")
    node[leaf] = value
