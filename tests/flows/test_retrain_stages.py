"""The retrain flow's stage list has one source, dvc.yaml: `retrain.stages: null` runs all of its stages."""

import pytest
import yaml

from jtcse.config import load_settings
from jtcse.errors import ConfigError
from tests.conftest import REPO


def test_the_default_stage_list_is_dvc_yaml_s_in_its_order():
    from flows.retrain import pipeline_stages

    assert load_settings(REPO / "params.yaml").retrain.stages is None
    declared = list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])
    stages = pipeline_stages(REPO, None)
    assert stages == [stage for stage in declared if stage != "validate"]  # validate runs first, as its own task
    assert stages[:3] == ["pretrain_a", "pretrain_b", "train"] and "package" in stages


def test_a_chosen_stage_list_is_kept_and_unknown_names_are_refused():
    from flows.retrain import pipeline_stages

    assert pipeline_stages(REPO, ["train", "evaluate"]) == ["train", "evaluate"]
    with pytest.raises(ConfigError, match=r"retrain\.stages: trian: not a stage of .*dvc\.yaml"):
        pipeline_stages(REPO, ["trian", "evaluate"])
