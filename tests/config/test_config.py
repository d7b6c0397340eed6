import pytest

from jtcse.config import load_settings, settings_from_dict
from jtcse.errors import ConfigError
from tests.conftest import REPO


def _differences(ours, theirs, key=""):
    """Dotted keys at which two nested dicts (settings dumps) differ."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        for name in sorted(set(ours) | set(theirs), key=str):
            yield from _differences(
                ours.get(name, "<absent>"), theirs.get(name, "<absent>"), f"{key}.{name}".lstrip(".")
            )
    elif ours != theirs or type(ours) is not type(theirs):
        yield f"{key}: params.yaml {ours!r}, code {theirs!r}"


def test_the_code_defaults_are_params_yaml_in_every_section():
    """One home per default: a setting left out of params.yaml (or a bare Settings()) means the same run."""
    import yaml

    from jtcse.config import Settings

    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    sections = {field.alias or name for name, field in Settings.model_fields.items()}
    assert set(raw) == sections, f"params.yaml sections {sorted(raw)} are not the settings' {sorted(sections)}"
    ours = load_settings(REPO / "params.yaml").model_dump(mode="json", by_alias=True)
    theirs = Settings().model_dump(mode="json", by_alias=True)
    for section in sorted(sections):
        differing = list(_differences(ours[section], theirs[section], section))
        assert not differing, "params.yaml and jtcse/config/sections.py disagree: " + "; ".join(differing)


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
    cpu = load_settings(REPO / "params.yaml")
    assert (gpu.pretrain.batch_size, gpu.pretrain.lr, gpu.distill.lr) == (64, 2.0e-5, 1.0e-5)
    assert gpu.model.base == "bert-base-uncased" and gpu.model.dropout is None and gpu.model.max_length == 64
    assert (gpu.pretrain.steps, gpu.train.steps, gpu.distill.steps, gpu.train.lr) == (2000, 2000, 2000, 1.3e-6)
    assert gpu.train.cross_attention.num_layers == 6
    assert gpu.tune.space.cross_attention.num_layers.choices == [2, 3, 4, 6, 12]
    assert (gpu.transfer.inner_folds, gpu.transfer.max_train) == (10, None)  # the full SentEval protocol
    # what the overlay leaves out is params.yaml's, down to keys inside a changed mapping
    assert gpu.train.w_tm == cpu.train.w_tm and gpu.data == cpu.data and gpu.tune.space.lr.log is True


def test_params_gpu_is_an_overlay_holding_only_schema_keys_that_differ():
    import yaml

    from jtcse.config import EXTENDS, overlay_values
    from jtcse.tuning.settings import dotted_get

    raw = yaml.safe_load((REPO / "params-gpu.yaml").read_text(encoding="utf-8"))
    assert raw[EXTENDS] == "params.yaml"
    cpu = load_settings(REPO / "params.yaml")
    values = overlay_values(REPO / "params-gpu.yaml")
    assert len(values) >= 20
    for dotted, value in values.items():
        try:
            base = dotted_get(cpu, dotted)
        except AttributeError:
            pytest.fail(f"params-gpu.yaml: {dotted}: not a setting")
        assert base != value, f"params-gpu.yaml: {dotted}: {value!r} is params.yaml's value already; drop it"


def test_an_overlay_merges_into_its_base_and_validates_like_any_file(tmp_path):
    (tmp_path / "base.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "sub").mkdir()
    overlay = tmp_path / "sub" / "gpu.yaml"
    overlay.write_text(
        "extends: ../base.yaml\ntrain:\n  cross_attention: {mode: side}\ntune:\n  space: {temperature: 0.07}\n"
    )
    settings = load_settings(overlay, {"train.w_tm": 0.5})
    base = load_settings(tmp_path / "base.yaml")
    assert settings.train.cross_attention.mode == "side"
    assert settings.train.cross_attention.num_layers == base.train.cross_attention.num_layers  # merged, not replaced
    assert settings.tune.space.temperature == 0.07  # a mapping of params.yaml replaced by a value
    assert settings.train.w_tm == 0.5  # --set applies on top of both
    # an overlay of an overlay
    (tmp_path / "more.yaml").write_text("extends: sub/gpu.yaml\ntrain: {steps: 7}\n")
    deeper = load_settings(tmp_path / "more.yaml")
    assert (deeper.train.steps, deeper.train.cross_attention.mode) == (7, "side")


@pytest.mark.parametrize(
    "text, match",
    [
        ("extends: base.yaml\ntrain:\n  stepz: 3\n", r"over\.yaml: train\.stepz: Extra inputs are not permitted"),
        ("extends: missing.yaml\n", r"missing\.yaml: file not found"),
        ("extends: over.yaml\n", r"over\.yaml: extends: over\.yaml leads back to a file already read"),
        ("extends: [base.yaml]\n", r"over\.yaml: extends: expected the path of the settings file"),
    ],
)
def test_a_bad_overlay_is_named(tmp_path, text, match):
    (tmp_path / "base.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"))
    (tmp_path / "over.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_settings(tmp_path / "over.yaml")


def test_params_apply_writes_the_overlay_into_params_yaml_keeping_comments(tmp_path, capsys):
    from jtcse.cli import main

    for name in ("params.yaml", "params-gpu.yaml"):
        (tmp_path / name).write_text((REPO / name).read_text(encoding="utf-8"))
    target = tmp_path / "params.yaml"
    assert main(["params-apply", str(tmp_path / "params-gpu.yaml"), "--params", str(target)]) == 0
    assert load_settings(target) == load_settings(REPO / "params-gpu.yaml")
    text = target.read_text(encoding="utf-8")
    assert "  base: bert-base-uncased # 'minilm' = offline all-MiniLM-L6-v2" in text  # comments stay
    assert "extends" not in text
    # applying again changes nothing; a file that is not an overlay is refused
    assert main(["params-apply", str(tmp_path / "params-gpu.yaml"), "--params", str(target)]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert main(["params-apply", str(target), "--params", str(target)]) == 2
