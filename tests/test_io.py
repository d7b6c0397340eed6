"""jtcse.io's writers produce exactly what the naive write would, and nothing when they fail."""

from __future__ import annotations

import io as stdio
import json
import os

import numpy as np
import pytest


def test_json_with_sorted_keys_matches_json_dumps(tmp_path):
    from jtcse.io import atomic_write_json

    payload = {"b": [1, 2.5], "a": {"z": None, "y": "é"}}
    atomic_write_json(tmp_path / "sorted.json", payload, sort_keys=True)
    atomic_write_json(tmp_path / "plain.json", payload)
    assert (tmp_path / "sorted.json").read_text(encoding="utf-8") == json.dumps(
        payload, indent=2, sort_keys=True
    ) + "\n"
    assert (tmp_path / "plain.json").read_text(encoding="utf-8") == json.dumps(payload, indent=2) + "\n"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2])
    return fig, plt


def test_atomic_savefig_writes_the_bytes_savefig_writes(tmp_path):
    from jtcse.io import atomic_savefig

    fig, plt = _figure()
    try:
        naive = stdio.BytesIO()
        fig.savefig(naive, format="png", dpi=50, metadata={"Software": None})
        atomic_savefig(fig, tmp_path / "plot.png", dpi=50, metadata={"Software": None})
        atomic_savefig(fig, tmp_path / "plot.svg", format="svg")
    finally:
        plt.close(fig)
    assert (tmp_path / "plot.png").read_bytes() == naive.getvalue()
    assert (tmp_path / "plot.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png", "plot.svg"]


def test_a_failing_savefig_keeps_the_old_figure(tmp_path):
    from jtcse.io import atomic_savefig

    target = tmp_path / "plot.png"
    target.write_bytes(b"old figure")
    fig, plt = _figure()
    try:
        with pytest.raises(ValueError):
            atomic_savefig(fig, target, format="no-such-format")
    finally:
        plt.close(fig)
    assert target.read_bytes() == b"old figure" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_atomic_save_npy_matches_np_save_and_refuses_pickled_objects(tmp_path):
    from jtcse.io import atomic_save_npy

    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    naive = stdio.BytesIO()
    np.save(naive, values)
    atomic_save_npy(tmp_path / "v.npy", values)
    assert (tmp_path / "v.npy").read_bytes() == naive.getvalue()
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), values)
    with pytest.raises(ValueError):
        atomic_save_npy(tmp_path / "v.npy", np.array([{"a": 1}], dtype=object))
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), values)  # the old array survives
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


def test_leftover_target_reads_back_the_names_io_gives_its_temporary_siblings(tmp_path):
    import tempfile

    from jtcse.io import leftover_target

    fd, tmp = tempfile.mkstemp(prefix=".ckpt-10.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    assert leftover_target(tmp) == tmp_path / "ckpt-10"
    assert leftover_target(tmp_path / ".model.v1.abc_123.tmp") == tmp_path / "model.v1"
    assert leftover_target(tmp_path / ".best.old") == tmp_path / "best"
    for other in ("ckpt-10", ".lock", ".tmp", ".old", ".name.tmp", "x.tmp"):
        assert leftover_target(tmp_path / other) is None, other


def test_clean_folder_leftovers_removes_every_killed_writers_siblings_and_restores_a_swapped_folder(tmp_path):
    import tempfile

    from jtcse.io import atomic_directory, clean_folder_leftovers

    with atomic_directory(tmp_path / "ckpt-20") as new:
        (new / "model.safetensors").write_bytes(b"20")
    tempfile.mkdtemp(prefix=".ckpt-30.", suffix=".tmp", dir=tmp_path)  # a writer killed while filling ckpt-30
    os.close(tempfile.mkstemp(prefix=".run.json.", suffix=".tmp", dir=tmp_path)[0])
    (tmp_path / ".ckpt-10.old").mkdir()  # killed between the two renames of a swap: ckpt-10 is gone
    (tmp_path / ".ckpt-10.old" / "model.safetensors").write_bytes(b"10")
    (tmp_path / ".lock").write_text("")
    removed = clean_folder_leftovers(tmp_path)
    assert sorted(p.name.split(".")[1] for p in removed) == ["ckpt-30", "run"]  # the two temporaries
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "ckpt-10", "ckpt-20"]
    assert (tmp_path / "ckpt-10" / "model.safetensors").read_bytes() == b"10"
    assert clean_folder_leftovers(tmp_path) == [] and clean_folder_leftovers(tmp_path / "missing") == []


def test_no_space_error_recognises_each_librarys_full_disk():
    """Issue 21 item 4: OSError 28, a shutil.Error of a copy, safetensors' Rust error, one wrapped in another."""
    import errno
    import shutil

    from jtcse.io import no_space_error

    rust = RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    copy = shutil.Error([("a/w", "b/w", "[Errno 28] No space left on device: 'b/w'")])
    wrapped = ValueError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "c/x")
    cases = [(OSError(errno.ENOSPC, "full"), "d"), (copy, "b/w"), (rust, "d"), (wrapped, "c/x")]
    for err, named in cases:
        full = no_space_error(err, "d")
        assert full is not None and full.errno == errno.ENOSPC and full.filename == named, err
    for err in (OSError(errno.EACCES, "denied"), ValueError("code: 280"), shutil.Error([("a", "b", "[Errno 13] x")])):
        assert no_space_error(err, "d") is None, err
