"""Settings of seconds-long studies on the tiny twin, shared by the tuning tests and the tune flow's test."""

from __future__ import annotations

from pathlib import Path

from jtcse import tuning
from jtcse.config import settings_from_dict


def with_tune(settings, **tune):
    """``settings`` with a ``tune`` section for seconds-long trials (every key of ``tune`` overrides)."""
    raw = settings.model_dump(mode="json", by_alias=True)
    raw["runtime"]["threads"] = 1  # on a shared 2-core machine one thread per process is several times faster
    raw["tune"] = {
        "n_trials": 3,
        "trial_steps": 4,
        "eval_every": 2,
        "heartbeat_interval": 1,
        "grace_period": 2,
        "pruner": {"type": "none"},
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "space": {
            "lr": {"low": 1e-4, "high": 3e-2, "log": True},
            "cross_attention": {"num_layers": {"choices": [1, 2, 4]}},
        },
        **tune,
    }
    return settings_from_dict(raw, "test settings")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def trials_of(settings):
    return tuning.load_study(settings.tune).get_trials(deepcopy=False)
