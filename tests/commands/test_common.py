"""`--set KEY=VALUE` overrides of the training commands (jtcse/commands/common.py, jtcse/commands/train.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml


@pytest.fixture()
def params_file(tmp_path, tiny_bert, small_sts_dir, sample_corpus) -> Path:
    path = tmp_path / "params.yaml"
    stage = {"steps": 6, "batch_size": 8, "lr": 1e-3, "eval_every": 3, "checkpoint_every": 3, "keep_checkpoints": 3}
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"base": str(tiny_bert), "max_length": 24, "attn_implementation": "eager"},
                "runtime": {"threads": 1},
                "data": {"corpus": str(sample_corpus), "sts_dir": str(small_sts_dir), "max_sentences": 200},
                "pretrain": stage,
                "evaluate": {"batch_size": 64, "max_length": 32},
            }
        )
    )
    return path


def test_set_overrides_dotted_keys_with_yaml_values(params_file):
    from jtcse.cli import build_parser
    from jtcse.commands.common import command_settings

    args = build_parser().parse_args(
        [
            "train",
            "--params",
            str(params_file),
            "--output",
            "x",
            "--tower-a",
            "a",
            "--tower-b",
            "b",
            "--set",
            "train.lr=2e-5",
            "--set",
            "train.modulus_on=embedding",
            "--set",
            "train.cross_attention.num_layers=2",
            "--set",
            "data.max_sentences=null",
        ]
    )
    settings = command_settings(args)
    assert settings.train.lr == 2e-5 and settings.train.modulus_on == "embedding"
    assert settings.train.cross_attention.num_layers == 2 and settings.data.max_sentences is None
    assert settings.pretrain.steps == 6  # the rest comes from the file


def test_set_errors_name_the_key(params_file, tmp_path, capsys):
    from jtcse.cli import build_parser, main

    common = ["train-tower", "--params", str(params_file), "--tower", "a", "--output", str(tmp_path / "t")]
    assert main([*common, "--set", "pretrain.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert "pretrain.lr: expected a number" in err and "--set pretrain.lr=..." in err
    assert main([*common, "--set", "pretrain.l_r=1e-3"]) == 2
    assert "pretrain.l_r: Extra inputs are not permitted" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*common, "--set", "pretrain.lr"])
    assert info.value.code == 2
    assert (
        "argument --set: expected KEY=VALUE with a dotted key (train.lr=2e-5), got 'pretrain.lr'"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "t").exists()


def test_set_reaches_the_training_run(params_file, tmp_path):
    from jtcse.cli import main

    metrics = tmp_path / "metrics"
    assert (
        main(
            [
                "train-tower",
                "--params",
                str(params_file),
                "--tower",
                "a",
                "--output",
                str(tmp_path / "tower"),
                "--checkpoint-dir",
                str(tmp_path / "ckpt"),
                "--metrics-dir",
                str(metrics),
                "--set",
                "pretrain.steps=2",
                "--set",
                "pretrain.eval_every=1",
            ]
        )
        == 0
    )
    summary = json.loads((metrics / "summary.json").read_text())
    assert summary["steps"] == 2
    assert [line.split(",")[0] for line in (metrics / "eval.csv").read_text().splitlines()] == ["step", "0", "1", "2"]
