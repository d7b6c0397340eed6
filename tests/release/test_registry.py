"""The promotion gate (jtcse.release.registry): an inconsistent or corrupt registry.json, or a metric that is not a finite
number, is refused with one line naming the file, and nothing is promoted: no new current, no orphan folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jtcse.errors import UserError
from jtcse.release.registry import REGISTRY_FILE, RegistryError, decide, promote, read_registry, registry_problems


@pytest.fixture()
def model(tmp_path) -> Path:
    folder = tmp_path / "models" / "twin"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture()
def registry(tmp_path, model) -> Path:
    """A registry holding v1 (avg 80.0), current."""
    reg = tmp_path / "registry"
    promote(reg, [model], {"avg": 80.0}, data_version="d1", git_commit="c1")
    return reg


def edit(reg: Path, change) -> str:
    data = json.loads((reg / REGISTRY_FILE).read_text())
    change(data)
    text = json.dumps(data)
    (reg / REGISTRY_FILE).write_text(text)
    return text


def folders(reg: Path) -> list[str]:
    return sorted(p.name for p in reg.iterdir() if p.name != REGISTRY_FILE)


def assert_refused_and_nothing_promoted(reg: Path, model: Path, before: str, match: str) -> None:
    path = reg / REGISTRY_FILE
    for attempt in (
        lambda: decide({"avg": 70.0}, reg),
        lambda: promote(reg, [model], {"avg": 70.0}, data_version="d2", git_commit="c2"),
    ):
        with pytest.raises(RegistryError, match=match) as caught:
            attempt()
        message = str(caught.value)
        assert isinstance(caught.value, UserError) and "\n" not in message
        assert message.startswith(f"{path}: ") and message.endswith("nothing promoted"), message
    assert path.read_text() == before and folders(reg) == ["v1"]
    problems = registry_problems(reg)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: "), problems


@pytest.mark.parametrize(
    "current,match",
    [(7, r"'current' is 7, which names no recorded version \(versions: \[1\]\)"), (None, "'current' is null but 1")],
)
def test_a_current_that_names_no_version_is_refused(current, match, registry, model):
    """Issue 21 item 3: `"current": 7` or `null` with versions present used to let a worse model through."""
    before = edit(registry, lambda d: d.update(current=current))
    assert_refused_and_nothing_promoted(registry, model, before, match)


@pytest.mark.parametrize("value", ["NaN", "Infinity", '"high"'])
def test_a_non_finite_current_metric_is_refused(value, registry, model):
    """Issue 21 item 6: a NaN current metric used to block every later promotion silently."""
    text = (registry / REGISTRY_FILE).read_text().replace('"avg": 80.0', f'"avg": {value}')
    (registry / REGISTRY_FILE).write_text(text)
    match = (
        "not a number in strict JSON" if value != '"high"' else r"v1 has non-finite or non-numeric metrics \['avg'\]"
    )
    assert_refused_and_nothing_promoted(registry, model, text, match)


@pytest.mark.parametrize(
    "text,match",
    [
        ('{"current": 1, "versions": [', "not valid JSON"),
        ('{"current": 1}', "expected an object with the keys 'current' and 'versions'"),
        ("[]", "expected an object"),
        ('{"current": 1, "versions": [{"version": 1}]}', "v1 lacks 'path' or 'metrics'"),
    ],
)
def test_a_corrupt_registry_json_is_refused_naming_the_file(text, match, registry, model):
    """Issue 21 item 7: a JSONDecodeError / KeyError: 'versions' used to escape without naming the file."""
    (registry / REGISTRY_FILE).write_text(text)
    assert_refused_and_nothing_promoted(registry, model, text, match)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("promoted_before", [True, False])
def test_a_non_finite_new_metric_is_an_error_and_leaves_no_folder(value, promoted_before, tmp_path, model):
    """Issue 21 item 6: NaN used to read as "does not beat"; Infinity promoted, then left an orphan v2/."""
    reg = tmp_path / "registry"
    if promoted_before:
        promote(reg, [model], {"avg": 80.0}, data_version="d1", git_commit="c1")
    before = (reg / REGISTRY_FILE).read_text() if promoted_before else None
    with pytest.raises(RegistryError, match=r"the new model's avg is .*not a finite number; nothing promoted"):
        decide({"avg": value}, reg)
    with pytest.raises(RegistryError, match=r"the new model's metrics \['avg'\] are not finite numbers"):
        promote(reg, [model], {"avg": value, "sts12": 70.0}, data_version="d2", git_commit="c2")
    if promoted_before:
        assert (reg / REGISTRY_FILE).read_text() == before and folders(reg) == ["v1"]
    else:
        assert not reg.exists() or folders(reg) == []
    assert registry_problems(reg) == []


def test_a_consistent_registry_still_decides_and_promotes(registry, model):
    assert registry_problems(registry) == [] and read_registry(registry)["current"] == 1
    assert not decide({"avg": 79.0}, registry).promote
    assert decide({"avg": 81.0}, registry).promote
    assert promote(registry, [model], {"avg": 81.0}, data_version="d2", git_commit="c2")["version"] == 2
    assert read_registry(registry)["current"] == 2 and folders(registry) == ["v1", "v2"]
