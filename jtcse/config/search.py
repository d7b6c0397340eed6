"""The ``tune:`` section of ``params.yaml``: the Optuna search space over the twin stage, sampler and pruner."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from jtcse.config.sections import CrossAttentionSettings, TwinSettings, _Section

# --- Study database URLs ------------------------------------------------------------------------------------

_USERINFO_PASSWORD = re.compile(r"(?P<user>://[^/@:\s]*:)[^@\s/?#]*(?=@)")
_QUERY_PASSWORD = re.compile(r"(?i)(?P<key>[?&;](?:password|passwd|pwd)=)[^&;#\s]*")
#: The package that provides each database driver module SQLAlchemy may ask for (what to `pip install`).
DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "mariadb": "mariadb",
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}


def mask_url(url: str) -> str:
    """A storage URL fit for a message: the password of ``user:password@`` and any ``password=`` in the query
    replaced by ``***``. Works on any text (even one that is not a valid URL), so every message can use it."""
    return _QUERY_PASSWORD.sub(r"\g<key>***", _USERINFO_PASSWORD.sub(r"\g<user>***", url))


def url_passwords(url: str) -> list[str]:
    """The passwords a URL carries (userinfo and query), as written and decoded: to mask them in other text."""
    from urllib.parse import unquote

    found = [m.group(0)[len(m.group("user")) :] for m in _USERINFO_PASSWORD.finditer(url)]
    found += [m.group(0)[len(m.group("key")) :] for m in _QUERY_PASSWORD.finditer(url)]
    return sorted({v for p in found if p for v in (p, unquote(p))}, key=len, reverse=True)


def mask_text(text: str, url: str) -> str:
    """``text`` (say, a database driver's error) with every password of ``url`` in it replaced by ``***``."""
    for password in url_passwords(url):
        text = text.replace(password, "***")
    return mask_url(text)


# --- Hyperparameter search (jtcse.tuning) -------------------------------------------------------------------
# Each entry of ``tune.space`` is a fixed value, a range ``{low, high, log, step}`` or a set ``{choices: [...]}``
# and names the ``train`` setting it drives; every value it can take is validated against that setting here.


class SearchRange(_Section):
    """An interval Optuna samples from: ``{low: 0.1, high: 3.0, log: true}`` (integers for integer settings)."""

    low: float = Field(description="Smallest value tried.")
    high: float = Field(description="Largest value tried.")
    log: bool = Field(
        False, description="Sample uniformly in log space (needs low > 0); right for weights and learning rates."
    )
    step: float | None = Field(
        None, gt=0, description="Discretisation step; null = continuous (1 for integer settings). Not with log."
    )

    @model_validator(mode="after")
    def _bounds(self) -> SearchRange:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined")
        return self


class SearchChoices(_Section):
    """A set Optuna picks from: ``{choices: [side, mix]}``."""

    choices: list[bool | int | float | str] = Field(
        min_length=1, description="The values tried, unordered, without repeats."
    )

    @model_validator(mode="after")
    def _distinct(self) -> SearchChoices:
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
    Annotated[SearchRange, Tag("range")]
    | Annotated[SearchChoices, Tag("choices")]
    | Annotated[bool | int | float | str, Tag("fixed")],
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
    mode: SpaceEntry | None = Field(
        None, description="train.cross_attention.mode (stream, side, attention or mix); null = keep the train value."
    )
    mix_gate: SpaceEntry | None = Field(
        None, description="train.cross_attention.mix_gate (used by mode mix only); null = keep the train value."
    )

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

    w_nce: SpaceEntry | None = Field(
        default_factory=lambda: SearchRange(low=0.2, high=5.0, log=True),
        description="train.w_nce, weight of InfoNCE inside each tower.",
    )
    w_icnce: SpaceEntry | None = Field(
        default_factory=lambda: SearchRange(low=0.2, high=5.0, log=True),
        description="train.w_icnce, weight of the interaction InfoNCE across towers.",
    )
    w_cross: SpaceEntry | None = Field(
        default_factory=lambda: SearchRange(low=0.05, high=5.0, log=True),
        description="train.w_cross, weight of the bridge's term ICNCE(c_A, c_B).",
    )
    w_tm: SpaceEntry | None = Field(
        default_factory=lambda: SearchRange(low=0.05, high=5.0, log=True),
        description="train.w_tm, weight of the tensor-modulus constraint.",
    )
    lr: SpaceEntry | None = Field(
        default_factory=lambda: SearchRange(low=1e-6, high=3e-5, log=True),
        description="train.lr, AdamW learning rate of the twin.",
    )
    temperature: SpaceEntry | None = Field(
        default_factory=lambda: SearchRange(low=0.03, high=0.1),
        description="train.temperature, tau of both InfoNCE terms.",
    )
    modulus_on: SpaceEntry | None = Field(
        default_factory=lambda: SearchChoices(choices=["pooler", "embedding"]),
        description="train.modulus_on: pooler or embedding.",
    )
    cross_attention: CrossAttentionSpace = Field(
        default_factory=CrossAttentionSpace, description="train.cross_attention entries."
    )

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
        out |= {
            f"train.cross_attention.{k}": getattr(self.cross_attention, k) for k in CrossAttentionSpace.model_fields
        }
        return {k: v for k, v in out.items() if v is not None}


class SamplerSettings(_Section):
    """The TPE sampler, pinned explicitly (Optuna 5 changed its defaults)."""

    seed: int = Field(
        42,
        description="Sampler seed. Worker i of a study already holding n trials seeds with (seed, i, n), so "
        "parallel workers and resumed runs never repeat each other's draws, and a rerun is reproducible.",
    )
    n_startup_trials: int = Field(
        4, ge=0, description="Random trials before TPE starts modelling (Optuna's 10 exceeds the CPU budget)."
    )
    multivariate: bool = Field(
        True, description="Model the parameters jointly: the loss weights interact through the total loss."
    )


class PrunerSettings(_Section):
    """Early stopping of unpromising trials on their STS-B dev curve."""

    type: Literal["median", "percentile", "none"] = Field(
        "median",
        description="'median': stop a trial whose best dev score so far is below the median of the completed "
        "trials at the same step; 'percentile': keep only the top `percentile` percent instead; 'none': never prune.",
    )
    n_startup_trials: int = Field(2, ge=0, description="Finished trials before any trial may be pruned.")
    n_warmup_steps: int = Field(10, ge=0, description="No trial is pruned before this training step.")
    percentile: float = Field(
        50.0,
        gt=0,
        lt=100,
        description="'percentile' only: the top percent of completed trials a trial "
        "must stay within at each step (50 = median; smaller prunes harder).",
    )


class TuneSettings(_Section):
    """Optuna search over the twin stage (``jtcse tune``): each trial trains the twin from the stage-1 towers for
    ``trial_steps`` steps and scores its best STS-B dev Spearman."""

    study_name: str = Field(
        "jtcse",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Study name in the storage; rerunning with the same name continues the study.",
    )
    storage: str = Field(
        "sqlite:///tune/optuna.db",
        description="SQLAlchemy URL of the study database: a SQLite file (relative to the working directory) for one "
        "worker, PostgreSQL (postgresql+psycopg://user@host:port/db) for several workers or machines.",
    )
    n_trials: int = Field(
        8,
        ge=1,
        description="Finished (complete or pruned) trials the study should hold; a rerun runs only "
        "the remainder, and failed trials do not count.",
    )
    workers: int = Field(
        1, ge=1, description="Worker processes sharing the study (several need PostgreSQL; SQLite serialises them)."
    )
    trial_steps: int = Field(
        40,
        ge=1,
        description="Optimiser steps of one trial (replaces train.steps there; tune-apply does not "
        "change train.steps).",
    )
    eval_every: int = Field(
        10, ge=1, description="Steps between a trial's STS-B dev evaluations: the curve the pruner sees."
    )
    max_trial_seconds: float | None = Field(
        None,
        gt=0,
        description="Cost limit per trial, as a constraint (not a second objective): a slower trial is infeasible, "
        "TPE steers away from it and it is never reported best. null = no limit.",
    )
    max_failed_trials: int = Field(
        5,
        ge=1,
        description="A worker stops starting trials once this many of its trials failed in "
        "the run (a broken set-up, not a bad draw); failed trials never count toward n_trials.",
    )
    heartbeat_interval: int = Field(
        10, ge=1, description="Seconds between a running trial's heartbeats in the storage."
    )
    grace_period: int = Field(
        30,
        ge=2,
        description="Seconds without heartbeat after which a running trial counts as dead "
        "(its worker was killed): it is marked failed and re-queued; must exceed heartbeat_interval.",
    )
    max_retry: int = Field(1, ge=0, description="Times a trial of a dead worker is re-queued with the same parameters.")
    sampler: SamplerSettings = Field(default_factory=SamplerSettings, description="TPE sampler settings.")
    pruner: PrunerSettings = Field(default_factory=PrunerSettings, description="Pruner settings.")
    space: SearchSpace = Field(default_factory=SearchSpace, description="Search space over the train section.")

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        shown = mask_url(value)  # never a password in a message
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"{shown!r} is not a SQLAlchemy database URL (e.g. sqlite:///tune/optuna.db)") from None
        try:
            dialect = url.get_dialect()
        except Exception:  # sqlalchemy raises NoSuchModuleError, or ImportError for a missing driver
            raise ValueError(
                f"{shown!r}: no SQLAlchemy dialect/driver {url.drivername!r} is installed "
                "(use sqlite:///path.db or postgresql+psycopg://user@host:port/db)"
            ) from None
        try:
            dialect.import_dbapi()  # the driver module itself (mysql:// needs MySQLdb, from mysqlclient)
        except ImportError as err:
            module = (err.name or "").split(".")[0] or getattr(dialect, "driver", "?")
            package = DRIVER_PACKAGES.get(module, module)
            raise ValueError(
                f"{shown!r}: the database driver of {url.drivername!r} is not installed (Python module {module}, "
                f"from the package {package}); install it, or use sqlite:///path.db or "
                "postgresql+psycopg://user@host:port/db"
            ) from None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ValueError(
                "an in-memory SQLite study cannot be shared or resumed: give a file, sqlite:///tune/optuna.db"
            )
        return value

    @model_validator(mode="after")
    def _heartbeat(self) -> TuneSettings:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval})"
            )
        return self
