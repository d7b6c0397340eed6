"""The stage functions read each tower's own stage-1 settings (pretrain.tower_a / tower_b) and the twin stage's own
dropout, pooling and combination (jtcse/training/stages.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from jtcse.config import settings_from_dict
from jtcse.encoding import TowerEncoder
from jtcse.evaluation.sts import dev_evaluator
from jtcse.modeling.towers import load_tower


def _with(settings, **sections):
    raw = settings.model_dump(mode="json", by_alias=True)
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return settings_from_dict(raw, "test settings")


def test_each_tower_trains_with_its_own_pooling_lr_and_augmentation(tiny_settings, tiny_bert, tmp_path):
    from jtcse.training.stages import train_tower

    settings = _with(
        tiny_settings,
        model={"pooling": "cls"},
        pretrain={
            "steps": 3,
            "eval_every": 3,
            "tower_a": {"seed": 1, "lr": 1e-12},
            "tower_b": {"seed": 2, "pooling": "mean", "augment": "word_deletion", "augment_rate": 0.3},
        },
    )
    results = {}
    for which in ("a", "b"):
        results[which] = train_tower(
            settings,
            which=which,
            output=tmp_path / which,
            checkpoint_dir=tmp_path / f"ck_{which}",
            metrics_dir=tmp_path / f"m_{which}",
        )
    # step 0 is scored with the tower's own pooling: the untouched base, encoded independently
    dev = dev_evaluator(settings.data.sts_dir, settings.evaluate.selection, batch_size=64)
    for which, pooling in (("a", "cls"), ("b", "mean")):
        model, tokenizer = load_tower(str(tiny_bert), attn_implementation="eager")
        base = TowerEncoder(model.eval(), tokenizer, pooling, max_length=32)
        assert results[which].initial_metric == pytest.approx(dev(base)["dev_mean"], abs=1e-3), which
    # tower A's lr of 1e-12 leaves its weights where they started (whether or not step 0 was kept)
    trained_a = load_file(str(tmp_path / "a" / "model.safetensors"))
    original = load_file(str(tiny_bert / "model.safetensors"))
    assert all(torch.allclose(trained_a[k], original[k], atol=1e-6) for k in original if k in trained_a)
    train_rows = (tmp_path / "m_b" / "train.csv").read_text().splitlines()
    assert len(train_rows) == 4  # header and three steps


def test_the_twin_keeps_each_towers_pooling_its_own_dropout_and_normalised_combination(
    tiny_settings, tiny_bert, tmp_path
):
    from jtcse.training.build import build_twin_objective
    from jtcse.training.stages import train_twin

    settings = _with(
        tiny_settings,
        model={"pooling": "cls"},
        pretrain={"tower_b": {"seed": 2, "pooling": "mean"}},
        train={"steps": 2, "eval_every": 2, "dropout": 0.0, "twin_combine": "concat", "twin_normalize": True},
    )
    objective = build_twin_objective(settings, str(tiny_bert), str(tiny_bert))
    assert objective.twin.poolings == ("cls", "mean")
    for tower in (objective.twin.tower_a, objective.twin.tower_b):
        assert tower.config.hidden_dropout_prob == 0.0 and tower.config.attention_probs_dropout_prob == 0.0
    dev = objective.dev_encoder()
    assert (dev.tower_a.pooling, dev.tower_b.pooling, dev.combine, dev.normalize) == ("cls", "mean", "concat", True)

    train_twin(
        settings,
        tower_a=str(tiny_bert),
        tower_b=str(tiny_bert),
        output=tmp_path / "twin",
        checkpoint_dir=tmp_path / "ck",
    )
    manifest = json.loads((tmp_path / "twin" / "twin.json").read_text())
    assert manifest["pooling"] == ["cls", "mean"] and manifest["combine"] == "concat" and manifest["normalize"] is True


def test_an_unknown_tower_setting_is_named():
    from jtcse.config import ConfigError

    with pytest.raises(ConfigError, match=r"pretrain\.tower_b\.augment"):
        settings_from_dict({"pretrain": {"tower_b": {"augment": "back_translation"}}}, "params.yaml")
    with pytest.raises(ConfigError, match=r"pretrain\.seed_a"):
        settings_from_dict({"pretrain": {"seed_a": 1}}, "params.yaml")
