import pytest

from jtcse.config import ConfigError, load_settings, settings_from_dict
from tests.conftest import REPO


def test_repository_params_load_and_agree_with_the_code_defaults():
    """params.yaml documents the defaults: a setting left out of it must mean the same run."""
    settings = load_settings(REPO / "params.yaml")
    defaults = settings_from_dict({})
    assert settings.model.base == "minilm"
    for section in ("train", "evaluate"):
        ours, theirs = getattr(settings, section).model_dump(), getattr(defaults, section).model_dump()
        differing = {k for k in ours if ours[k] != theirs[k]} - {
            "steps",
            "batch_size",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "lr",
        }
        assert not differing, f"params.yaml {section} differs from jtcse/config.py defaults in {differing}"


def test_unknown_key_is_named(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  w_nse: 1.0\n")
    with pytest.raises(ConfigError, match=r"p\.yaml: train\.w_nse: Extra inputs are not permitted"):
        load_settings(tmp_path / "p.yaml")


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"train\.cross_attention\.num_layers"):
        settings_from_dict({"train": {"cross_attention": {"num_layers": "many"}}})


def test_bad_choice_is_named():
    with pytest.raises(ConfigError, match=r"model\.pooling"):
        settings_from_dict({"model": {"pooling": "max"}})


def test_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:3: invalid YAML: .*while parsing a flow sequence at line 2"):
        load_settings(tmp_path / "p.yaml")


def test_overrides_use_dotted_keys():
    settings = load_settings(REPO / "params.yaml", {"train.w_tm": 0.25, "train.cross_attention.num_layers": 0})
    assert settings.train.w_tm == 0.25 and settings.train.cross_attention.num_layers == 0


def _leaves(node, key=""):
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _leaves(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{key}[{i}]")
    else:
        yield key, node


@pytest.mark.parametrize("name", ["params.yaml", "params-gpu.yaml"])
def test_shipped_params_files_load_with_real_numbers_and_true_comments(name):
    import re

    import yaml

    path = REPO / name
    settings = load_settings(path)
    assert isinstance(settings.pretrain.lr, float) and isinstance(settings.train.lr, float)
    # PyYAML reads 2e-05 as a string (YAML 1.1 floats need a dot and a signed exponent: 2.0e-5); the settings
    # would coerce it, but the file should say what it means to every YAML reader (DVC, Optuna reports).
    number = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert [k for k, v in _leaves(raw) if isinstance(v, str) and number.fullmatch(v)] == []
    # "each fed twice: N rows" beside a batch size: every sentence is two rows (two dropout views).
    for line in path.read_text(encoding="utf-8").splitlines():
        stated = re.search(r"batch_size:\s*(\d+).*each fed twice: (\d+) rows", line)
        if stated:
            assert int(stated.group(2)) == 2 * int(stated.group(1)), line


def test_params_gpu_profile_values():
    gpu = load_settings(REPO / "params-gpu.yaml")
    assert (gpu.pretrain.batch_size, gpu.pretrain.lr, gpu.distill.lr) == (64, 2.0e-5, 1.0e-5)
    assert gpu.model.base == "bert-base-uncased" and gpu.model.dropout is None
