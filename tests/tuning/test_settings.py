"""The ``tune`` settings and the checks before a study (jtcse/tuning/settings.py): errors name the key."""

from __future__ import annotations

import pytest

from jtcse import tuning
from jtcse.config import load_settings, settings_from_dict
from jtcse.errors import ConfigError
from tests.conftest import REPO
from tests.tuning.helpers import with_tune


def test_tune_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"tune\.space\.w_tm: .*-1 is not a valid train\.w_tm"):
        settings_from_dict({"tune": {"space": {"w_tm": -1}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.cross_attention\.mode: .*'diag' is not a valid"):
        settings_from_dict({"tune": {"space": {"cross_attention": {"mode": {"choices": ["side", "diag"]}}}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.lr\.range: .*log-scale range needs low > 0"):
        settings_from_dict({"tune": {"space": {"lr": {"low": 0, "high": 1, "log": True}}}})
    with pytest.raises(ConfigError, match=r"tune\.space\.w_nse: Extra inputs"):
        settings_from_dict({"tune": {"space": {"w_nse": 1.0}}})
    with pytest.raises(ConfigError, match=r"tune\.storage"):
        settings_from_dict({"tune": {"storage": "not a url"}})
    with pytest.raises(ConfigError, match=r"tune\.pruner\.type"):
        settings_from_dict({"tune": {"pruner": {"type": "hyperband"}}})
    fixed = settings_from_dict({"tune": {"space": {"w_tm": 0.5, "lr": None, "modulus_on": "embedding"}}})
    entries = fixed.tune.space.entries()
    assert entries["train.w_tm"] == 0.5 and entries["train.modulus_on"] == "embedding" and "train.lr" not in entries
    repo = load_settings(REPO / "params.yaml").tune
    assert repo.storage == "sqlite:///tune/optuna.db" and repo.pruner.type == "median"


def test_layouts_that_do_not_divide_the_towers_are_refused_before_any_trial(tiny_settings, tiny_bert):
    settings = with_tune(tiny_settings, space={"cross_attention": {"num_layers": {"choices": [2, 3]}}})
    with pytest.raises(
        ConfigError, match=r"tune\.space\.cross_attention\.num_layers: \[3\] do not divide the 4 layers"
    ):
        tuning.check_towers(settings, str(tiny_bert), str(tiny_bert))
