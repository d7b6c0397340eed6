"""``tune-apply`` (jtcse/tuning/apply.py): an invalid value never reaches params.yaml."""

from __future__ import annotations

import shutil

import pytest

from jtcse import tuning
from jtcse.errors import ConfigError
from tests.conftest import REPO


def test_apply_refuses_an_invalid_value_and_leaves_params_untouched(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    before = params.read_text()
    (tmp_path / "best.yaml").write_text("_meta: {trial: 1}\ntrain.w_tm: -2.0\n")
    with pytest.raises(ConfigError, match=r"train\.w_tm"):
        tuning.apply_best(tmp_path / "best.yaml", params)
    assert params.read_text() == before
