"""Writers killed or failing at several points leave the old complete artifact or the new complete one.

Faults are injected into the real writers: an exception raised inside them (at the write, the fsync, the rename,
the folder swap...) and a real SIGKILL of a writing process. Afterwards every artifact reads back whole.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.release.test_packaging import build, inputs  # noqa: F401  (inputs is a fixture)

WAIT_S = 60


class Injected(Exception):
    """The fault a test raises inside a writer."""


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ io


@pytest.mark.parametrize("point", ["write", "fsync", "rename"])
def test_a_failing_file_write_keeps_the_old_file_and_leaves_nothing(point, tmp_path, monkeypatch):
    import jtcse.io as io

    target = tmp_path / "metrics.json"
    io.atomic_write_json(target, {"avg": 1.0})
    old = target.read_bytes()
    if point == "write":

        def fail(path, payload):  # half of the new text is on disk when the writer dies
            with io.atomic_file(path, "w") as fh:
                fh.write(json.dumps(payload)[:5])
                raise Injected("disk full")

        with pytest.raises(Injected):
            fail(target, {"avg": 2.0})
    else:
        monkeypatch.setattr(
            io.os, "fsync" if point == "fsync" else "replace", lambda *a: (_ for _ in ()).throw(Injected(point))
        )
        with pytest.raises(Injected):
            io.atomic_write_json(target, {"avg": 2.0})
        monkeypatch.undo()
    assert target.read_bytes() == old and hidden_leftovers(tmp_path) == []
    io.atomic_write_json(target, {"avg": 2.0})
    assert json.loads(target.read_text()) == {"avg": 2.0}


def test_atomic_file_keeps_the_permissions_of_the_file_it_replaces(tmp_path):
    from jtcse.io import atomic_write_text

    target = tmp_path / "params.yaml"
    target.write_text("a: 1\n")
    target.chmod(0o640)
    atomic_write_text(target, "a: 2\n")
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_text() == "a: 2\n"


def test_a_folder_swap_failing_between_its_steps_keeps_the_old_folder(tmp_path, monkeypatch):
    import jtcse.io as io

    target = tmp_path / "model"
    with io.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    for fault in ("exchange", "second rename"):
        if fault == "exchange":  # the one-step swap fails: nothing changed
            monkeypatch.setattr(io, "_exchange", lambda a, b: (_ for _ in ()).throw(Injected(fault)))
        else:  # no RENAME_EXCHANGE (another OS or filesystem): the second of two renames fails
            monkeypatch.setattr(io, "_exchange", lambda a, b: False)
            real_replace, calls = os.replace, []

            def replace(a, b):
                calls.append(a)
                if len(calls) == 2:
                    raise Injected(fault)
                return real_replace(a, b)

            monkeypatch.setattr(io.os, "replace", replace)
        with pytest.raises(Injected):
            with io.atomic_directory(target) as tmp:
                (tmp / "weights").write_text("new")
        monkeypatch.undo()
        assert (target / "weights").read_text() == "old" and hidden_leftovers(tmp_path) == [], fault


def test_a_kill_between_the_two_renames_is_repaired_on_the_next_write(tmp_path):
    """What SIGKILL leaves where the swap takes two renames: no folder, the complete old one aside."""
    from jtcse.io import atomic_directory, clean_leftovers, old_sibling

    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("old")
    os.replace(target, old_sibling(target))
    (tmp_path / ".model.abc123.tmp").mkdir()  # the new folder the killed writer had half built
    assert clean_leftovers(target) == [tmp_path / ".model.abc123.tmp"]
    assert (target / "weights").read_text() == "old" and hidden_leftovers(tmp_path) == []


WRITER = """
import sys
from jtcse.io import atomic_write_bytes
atomic_write_bytes(sys.argv[1], b"n" * 200_000_000)
"""


def test_sigkill_of_a_process_writing_a_file_leaves_the_old_file(tmp_path):
    target = tmp_path / "vectors.npy"
    target.write_bytes(b"old complete content")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + WAIT_S
    while not any(p.name.startswith(".vectors.npy.") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    assert target.read_bytes() == b"old complete content"


# ------------------------------------------------------------------------------------------ checkpoint


def test_a_checkpoint_write_failing_midway_keeps_the_previous_checkpoints_and_resume_is_exact(
    tiny_settings, tmp_path, monkeypatch
):
    import torch
    from safetensors.torch import load_file

    import jtcse.training.trainer as trainer
    from jtcse.training.stages import train_tower

    settings = tiny_settings.model_copy(deep=True)
    settings.pretrain.checkpoint_every = 2
    reference = train_tower(settings, which="a", output=tmp_path / "ref", checkpoint_dir=tmp_path / "ck_ref")
    real_save, calls = torch.save, []

    def save(obj, path, *args, **kwargs):  # model.safetensors of step 4 is written; its trainer state fails
        calls.append(path)
        if len(calls) == 2:
            raise Injected(f"killed while writing {path}")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(trainer.torch, "save", save)
    with pytest.raises(Injected):
        train_tower(settings, which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if not p.name.startswith(".")) == [
        "best",
        "run.json",
        "step-00000002",
    ]
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name.endswith(".tmp")]
    resumed = train_tower(settings, which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history[2:]]
    a = load_file(str(tmp_path / "ck_ref" / "step-00000006" / "model.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "step-00000006" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_output_is_old_or_new_when_the_write_fails(tiny_bert, small_sts_dir, tmp_path, monkeypatch, capsys):
    import jtcse.io as io
    from jtcse.cli import main

    out = tmp_path / "metrics.json"
    out.write_text('{"avg": 12.5}\n')
    args = [
        "evaluate",
        "--model",
        str(tiny_bert),
        "--data-dir",
        str(small_sts_dir),
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(Injected("killed at the rename")))
    with pytest.raises(Injected):
        main(args)
    monkeypatch.undo()
    assert out.read_text() == '{"avg": 12.5}\n' and hidden_leftovers(tmp_path) == []
    assert main(args) == 0
    new = json.loads(out.read_text())
    assert set(new) == {"sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg"}


# ------------------------------------------------------------------------------------------- package


def release_state(out: Path, label: str = "tiny-jtcse-0.0.1"):
    """(folder SHA256SUMS bytes, tarball bytes) after checking each one reads back whole."""
    from jtcse.api import verify_checksums

    verify_checksums(out / label)
    with tarfile.open(out / f"{label}.tar.gz") as tar:  # a torn gzip raises here
        assert all(m.name.startswith(f"{label}/") or m.name == label for m in tar.getmembers())
    return (out / label / "SHA256SUMS").read_bytes(), (out / f"{label}.tar.gz").read_bytes()


def tarball_sums(tarball: Path, label: str = "tiny-jtcse-0.0.1") -> bytes:
    with tarfile.open(tarball) as tar:
        return tar.extractfile(f"{label}/SHA256SUMS").read()


@pytest.fixture()
def two_builds(inputs, tmp_path):  # noqa: F811
    """Inputs for an old release and a new one that differs (other twin metrics)."""
    new_metrics = tmp_path / "twin_metrics_new.json"
    scores = json.loads(Path(inputs["twin_metrics"]).read_text())
    new_metrics.write_text(json.dumps({k: v + 1.0 for k, v in scores.items()}))
    return inputs, {**inputs, "twin_metrics": new_metrics}


@pytest.mark.parametrize(
    "point", ["after_tarball_written", "at_the_folder_swap", "after_the_folder_swap", "after_the_tarball_rename"]
)
def test_an_interrupted_package_is_detected_and_repaired_by_the_next_run(
    point, two_builds, tmp_path, monkeypatch, caplog
):
    import jtcse.io as io
    import jtcse.release.packaging as packaging
    from jtcse.release.integrity import release_problems

    old_inputs, new_inputs = two_builds
    out = tmp_path / "models"
    old = build(old_inputs, out)
    assert release_problems(out, "tiny-jtcse-0.0.1") == []
    old_sums, old_tar = release_state(out)

    def fail(*args, **kwargs):
        raise Injected(point)

    if point == "after_tarball_written":
        monkeypatch.setattr(packaging, "fsync_dir", fail)
    elif point == "at_the_folder_swap":
        monkeypatch.setattr(io, "_swap_into_place", fail)
    elif point == "after_the_folder_swap":  # the defect of issue 15: new folder, old tarball
        monkeypatch.setattr(packaging, "atomic_rename", fail)
    else:
        monkeypatch.setattr(packaging, "write_release", fail)
    with pytest.raises(Injected):
        build(new_inputs, out)
    monkeypatch.undo()

    sums, tar = release_state(out)  # each artifact is whole: the old one or the new one
    assert tarball_sums(out / "tiny-jtcse-0.0.1.tar.gz") in (old_sums, sums)
    problems = release_problems(out, "tiny-jtcse-0.0.1")
    if (sums, tar) == (old_sums, old_tar):  # nothing changed: the old release stands, manifest included
        assert problems == []
    else:  # a mismatched or unconfirmed pair is never taken for a release
        assert problems and "release.json is missing" in problems[0]

    (out / ".tiny-jtcse-0.0.1.x1y2.tmp").mkdir()  # what a SIGKILL at these points leaves behind
    (out / ".tiny-jtcse-0.0.1.tar.gz.x1y2.tmp").write_bytes(b"half a tarball")
    with caplog.at_level("WARNING", logger="jtcse.release.packaging"):
        fixed = build(new_inputs, out)
    assert any("left by an interrupted `jtcse package`" in r.getMessage() for r in caplog.records)
    assert release_problems(out, "tiny-jtcse-0.0.1") == []
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny-jtcse-0.0.1",
        "tiny-jtcse-0.0.1.release.json",
        "tiny-jtcse-0.0.1.tar.gz",
    ]
    assert tarball_sums(fixed.tarball) == (fixed.path / "SHA256SUMS").read_bytes() != old_sums
    assert old.path == fixed.path


def test_sigkill_just_after_the_folder_swap_is_detected_and_repaired(two_builds, tmp_path):
    """A real kill -9 of `jtcse package` at the point issue 15 found (folder swapped, tarball not yet)."""
    from jtcse.release.integrity import release_problems

    old_inputs, new_inputs = two_builds
    out = tmp_path / "models"
    build(old_inputs, out)
    old_sums = (out / "tiny-jtcse-0.0.1" / "SHA256SUMS").read_bytes()
    params = tmp_path / "params.yaml"
    params.write_text(
        f"model:\n  base: {new_inputs['settings'].model.base}\n  pooling: cls\nevaluate:\n  max_length: 32\n"
        "package:\n  name: tiny-jtcse\n  version: 0.0.1\n"
    )
    script = (
        "import os, signal, sys\nimport jtcse.release.packaging as p\nfrom jtcse.cli import main\n"
        "p.atomic_rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\nsys.exit(main(sys.argv[1:]))\n"
    )
    args = [
        "package",
        "--params",
        str(params),
        "--twin",
        str(new_inputs["twin"]),
        "--distilled",
        str(new_inputs["distilled"]),
        "--twin-metrics",
        str(new_inputs["twin_metrics"]),
        "--distilled-metrics",
        str(new_inputs["distilled_metrics"]),
        "--output-dir",
        str(out),
        "--data-dvc",
        str(new_inputs["data_dvc"]),
        "--licenses",
        str(new_inputs["licenses"]),
        "--no-check",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (out / "tiny-jtcse-0.0.1" / "SHA256SUMS").read_bytes() != old_sums  # the new folder ...
    assert tarball_sums(out / "tiny-jtcse-0.0.1.tar.gz") == old_sums  # ... beside the old tarball
    assert [n for n in hidden_leftovers(out) if n.startswith(".tiny-jtcse-0.0.1.tar.gz.")]  # the unrenamed tarball
    assert release_problems(out, "tiny-jtcse-0.0.1") == [
        "tiny-jtcse-0.0.1.release.json is missing (a `jtcse package` run was interrupted)"
    ]
    fixed = build(new_inputs, out)
    assert release_problems(out, "tiny-jtcse-0.0.1") == [] and hidden_leftovers(out) == []
    assert tarball_sums(fixed.tarball) == (fixed.path / "SHA256SUMS").read_bytes()


# ------------------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("point", ["copying", "after_the_copy", "writing_registry_json"])
def test_a_failed_promotion_leaves_the_registry_on_a_complete_model(point, tmp_path, monkeypatch):
    import jtcse.io as io
    import jtcse.release.registry as registry

    model = tmp_path / "models" / "twin"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"v1 weights")
    reg = tmp_path / "registry"
    registry.promote(reg, [model], {"avg": 70.0}, data_version="d1", git_commit="c1")
    (model / "model.safetensors").write_bytes(b"v2 weights, longer")
    (model / "tokenizer.json").write_text("{}")

    if point == "copying":
        real_copyfile, calls = shutil.copyfile, []

        def copyfile(*args, **kwargs):  # the first file is copied, the second fails
            calls.append(1)
            if len(calls) == 2:
                raise Injected("killed while copying")
            return real_copyfile(*args, **kwargs)

        monkeypatch.setattr(shutil, "copyfile", copyfile)
    elif point == "after_the_copy":
        monkeypatch.setattr(registry, "atomic_write_json", lambda *a: (_ for _ in ()).throw(Injected(point)))
    else:
        monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(Injected(point)))
    with pytest.raises(Injected):
        registry.promote(reg, [model], {"avg": 71.0}, data_version="d2", git_commit="c2")
    monkeypatch.undo()

    assert sorted(p.name for p in reg.iterdir() if p.is_dir()) == ["v1"]  # no orphan v2/ (issue 21 item 6)
    current = registry.current_entry(reg)
    assert (
        current["version"] == 1 and (reg / current["path"] / "twin" / "model.safetensors").read_bytes() == b"v1 weights"
    )
    assert registry.registry_problems(reg) == []
    entry = registry.promote(reg, [model], {"avg": 71.0}, data_version="d2", git_commit="c2")
    assert entry["version"] == 2 and registry.current_entry(reg)["version"] == 2
    assert sorted(p.name for p in (reg / "v2" / "twin").iterdir()) == ["model.safetensors", "tokenizer.json"]
    assert registry.registry_problems(reg) == [] and hidden_leftovers(reg) == []


def test_registry_problems_name_a_missing_or_partial_model(tmp_path):
    import jtcse.release.registry as registry

    model = tmp_path / "twin"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    reg = tmp_path / "registry"
    registry.promote(reg, [model], {"avg": 70.0}, data_version="d1", git_commit="c1")
    (reg / "v1" / "twin" / "model.safetensors").write_bytes(b"weigh")
    assert registry.registry_problems(reg) == [
        f"{reg / 'v1'}: twin/model.safetensors differs from the files recorded at promotion"
    ]
    shutil.rmtree(reg / "v1")
    assert registry.registry_problems(reg) == [f"{reg / 'v1'}: the current model's folder is missing"]
