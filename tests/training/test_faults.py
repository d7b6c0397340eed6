"""Faults injected into real training runs: kill -9, SIGTERM, Ctrl-C, a second run, a corrupt checkpoint,
a diverging learning rate, a corpus replaced in place. Each stage run through the `jtcse` CLI in a subprocess."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.processes import wait_for

STEPS = 10
WAIT_S = 120  # the longest any wait below lasts (the whole tiny run takes a few seconds)


def fault_settings(tiny_settings, **stage_overrides):
    settings = tiny_settings.model_copy(deep=True)
    for section in (settings.pretrain, settings.train, settings.distill):
        for key, value in {
            "steps": STEPS,
            "eval_every": 5,
            "checkpoint_every": 1,
            "keep_checkpoints": 2,
            **stage_overrides,
        }.items():
            setattr(section, key, value)
    return settings


def write_params(settings, path: Path) -> Path:
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def twin_dir(tmp_path_factory, tiny_bert):
    """A twin folder for stage 3 (two copies of the tiny tower)."""
    from jtcse.modeling.towers import load_tower
    from jtcse.training.objectives import save_twin

    tower, tok = load_tower(str(tiny_bert))
    out = tmp_path_factory.mktemp("twin") / "twin"
    save_twin(tower, tower, tok, out, poolings=("cls", "cls"), combine="sum")
    return out


def stage_args(stage: str, root: Path, tiny_bert: Path, twin: Path) -> list[str]:
    extra = {
        "tower": ["train-tower", "--tower", "a"],
        "twin": ["train", "--tower-a", str(tiny_bert), "--tower-b", str(tiny_bert)],
        "distill": ["distill", "--twin", str(twin)],
    }[stage]
    return [
        *extra,
        "--params",
        str(root / "params.yaml"),
        "--output",
        str(root / "out"),
        "--checkpoint-dir",
        str(root / "ckpt"),
        "--metrics-dir",
        str(root / "metrics"),
    ]


def run_in_process(stage: str, settings, root: Path, tiny_bert: Path, twin: Path):
    from jtcse.training.stages import distill_twin, train_tower, train_twin

    common = dict(output=root / "out", checkpoint_dir=root / "ckpt", metrics_dir=root / "metrics")
    if stage == "tower":
        return train_tower(settings, which="a", **common)
    if stage == "twin":
        return train_twin(settings, tower_a=str(tiny_bert), tower_b=str(tiny_bert), **common)
    return distill_twin(settings, twin=twin, **common)


def cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "jtcse.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_S)
    return proc.returncode, out, err


def newest_step(checkpoint_dir: Path) -> int:
    steps = [int(p.name.removeprefix("step-")) for p in checkpoint_dir.glob("step-*")]
    return max(steps, default=-1)


def logged_steps(path: Path) -> int:
    try:
        return sum(1 for _ in csv.DictReader(path.open()))
    except (OSError, ValueError):
        return 0


def stderr_tail(proc: subprocess.Popen):
    """The end of a finished run's stderr, for a failure message."""
    return lambda: proc.stderr.read()[-2000:]


def own_lines(stderr: str) -> list[str]:
    """jtcse's own lines of stderr (transformers draws progress bars there too); the last line must be one."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith(("jtcse ", "jtcse:")), stderr[-2000:]
    return [line for line in lines if line.startswith(("jtcse ", "jtcse:"))]


def assert_same_run(ref: Path, got: Path, note: str) -> None:
    """Final weights, best weights and CSV logs bit for bit; summary.json except its wall time."""
    final = f"step-{STEPS:08d}"
    a, b = (
        load_file(str(ref / "ckpt" / final / "model.safetensors")),
        load_file(str(got / "ckpt" / final / "model.safetensors")),
    )
    assert a.keys() == b.keys(), note
    assert all(torch.equal(a[k], b[k]) for k in a), f"final weights differ ({note})"
    for name in sorted(p.relative_to(ref / "out").as_posix() for p in (ref / "out").rglob("*.safetensors")):
        assert (ref / "out" / name).read_bytes() == (got / "out" / name).read_bytes(), f"{name} differs ({note})"
    for name in ("train.csv", "eval.csv"):
        assert (ref / "metrics" / name).read_text() == (got / "metrics" / name).read_text(), f"{name} differs ({note})"
    summary = [json.loads((r / "metrics" / "summary.json").read_text()) for r in (ref, got)]
    for s in summary:
        s.pop("seconds_this_run")
    assert summary[0] == summary[1], note


@pytest.fixture()
def reference(tiny_settings, tiny_bert, twin_dir, tmp_path):
    """An uninterrupted run of each stage, in-process (the same seeded computation as the CLI's)."""
    settings = fault_settings(tiny_settings)
    done = {}

    def get(stage: str) -> Path:
        if stage not in done:
            root = tmp_path / f"ref-{stage}"
            root.mkdir()
            run_in_process(stage, settings, root, tiny_bert, twin_dir)
            done[stage] = root
        return done[stage]

    return settings, get


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["tower", "twin", "distill"])
def test_sigkill_at_a_random_step_then_rerun_equals_an_uninterrupted_run(
    stage, reference, tiny_bert, twin_dir, tmp_path
):
    settings, ref = reference
    kill_after = random.Random().randint(1, STEPS - 3)
    note = f"{stage}, SIGKILL after checkpoint {kill_after}"
    root = tmp_path / "killed"
    root.mkdir()
    write_params(settings, root / "params.yaml")
    args = stage_args(stage, root, tiny_bert, twin_dir)
    proc = cli(args)
    wait_for(
        lambda: newest_step(root / "ckpt") >= kill_after,
        WAIT_S,
        f"checkpoint {kill_after}",
        0.01,
        proc,
        stderr_tail(proc),
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    killed_at = newest_step(root / "ckpt")
    assert killed_at < STEPS, f"the run finished before the kill ({note})"

    code, out, err = finish(cli(args))
    assert code == 0, err
    resumed = re.search(r"resuming .* \(step (\d+)\)", err)
    assert resumed and kill_after <= int(resumed.group(1)) <= killed_at, f"{note}: {err[-2000:]}"
    assert_same_run(ref(stage), root, note)


def signal_at_step(signum: int, train_csv: Path, step: int) -> threading.Thread:
    """Send ``signum`` to this process once ``train_csv`` logs ``step`` steps (a real signal, a real handler)."""

    def watch() -> None:
        deadline = time.monotonic() + WAIT_S
        while logged_steps(train_csv) < step and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_write_a_checkpoint_and_say_how_to_resume(
    signum, status, tiny_settings, tiny_bert, twin_dir, tmp_path, capsys
):
    from jtcse.cli import main
    from jtcse.training.stages import train_tower

    settings = fault_settings(tiny_settings, checkpoint_every=STEPS)  # the only earlier checkpoint: the signal's
    settings.pretrain.eval_every = 1  # every step's loss reaches train.csv at once: the watcher sees the step
    root = tmp_path / "signalled"
    root.mkdir()
    write_params(settings, root / "params.yaml")
    args = stage_args("tower", root, tiny_bert, twin_dir)
    watcher = signal_at_step(signum, root / "metrics" / "train.csv", 3)
    code = main(args)
    watcher.join(timeout=WAIT_S)
    err = capsys.readouterr().err.strip().splitlines()
    name = signal.Signals(signum).name
    match = re.fullmatch(
        rf"jtcse(?: train-tower)?: tower a: interrupted by {name} at step (\d+); checkpoint saved in "
        rf"(\S+); rerun the same command to resume",
        err[-1],
    )
    assert code == status and match, err
    step = int(match.group(1))
    assert 3 <= step < STEPS
    assert Path(match.group(2)) == root / "ckpt" / f"step-{step:08d}"
    assert sorted(p.name for p in (root / "ckpt").glob("step-*")) == [f"step-{step:08d}"]
    assert not (root / "metrics" / "summary.json").exists()

    assert main(args) == 0
    reference_root = tmp_path / "reference"
    train_tower(
        settings,
        which="a",
        output=reference_root / "out",
        checkpoint_dir=reference_root / "ckpt",
        metrics_dir=reference_root / "metrics",
    )
    assert_same_run(reference_root, root, f"{name} at step {step}")


@pytest.mark.slow
def test_a_second_run_in_the_same_checkpoint_folder_is_refused(tiny_settings, tiny_bert, twin_dir, tmp_path, capsys):
    from jtcse.cli import main

    settings = fault_settings(tiny_settings, steps=100_000, eval_every=1, checkpoint_every=100_000)
    write_params(settings, tmp_path / "params.yaml")
    args = stage_args("tower", tmp_path, tiny_bert, twin_dir)
    first = cli(args)
    wait_for(
        lambda: logged_steps(tmp_path / "metrics" / "train.csv") >= 2,
        WAIT_S,
        "the first run's step 2",
        0.01,
        first,
        stderr_tail(first),
    )
    assert main(args) == 2  # the second run, while the first trains
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(
        rf"jtcse: error: {re.escape(str(tmp_path / 'ckpt'))}: another run is using this checkpoint folder "
        rf"\(pid {first.pid} since [\d: -]+\); wait for it to end, or give this run its own --checkpoint-dir and --output",
        err[-1],
    ), err

    first.send_signal(signal.SIGTERM)  # a real process this time: the exit status a scheduler sees
    code, _, first_err = finish(first)
    assert code == 143 and "Traceback" not in first_err, first_err[-2000:]
    assert first_err.strip().splitlines()[-1].endswith("; rerun the same command to resume")
    rows = [int(r["step"]) for r in csv.DictReader((tmp_path / "metrics" / "train.csv").open())]
    assert rows == list(range(1, len(rows) + 1))  # one run's rows, not two runs' interleaved


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, caplog):
    from jtcse.training.stages import train_tower

    settings, ref = reference
    kwargs = dict(
        which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", metrics_dir=tmp_path / "metrics"
    )
    train_tower(settings, stop_after=6, **kwargs)
    (tmp_path / "ckpt" / "step-00000006" / "model.safetensors").write_bytes(b"")  # a 0-byte file
    with caplog.at_level(logging.WARNING, logger="jtcse.training"):
        result = train_tower(settings, **kwargs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-00000006 is unreadable" in w for w in warnings), warnings
    assert "tower a: resuming from the previous checkpoint step-00000005" in warnings
    assert len(result.history) == STEPS - 5
    assert_same_run(ref("tower"), tmp_path, "resumed from step 5 after a corrupt step 6")


def garble(path: Path) -> None:
    """Invert 256 bytes in the middle of ``path``, size unchanged (what a bad disk or a stray ``dd`` does)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 256] = bytes(b ^ 0xFF for b in data[middle : middle + 256])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.pt"])
def test_a_garbled_checkpoint_of_unchanged_size_falls_back_to_the_previous_one(name, reference, tmp_path, caplog):
    """Issue 21 item 1: a checkpoint file garbled in place still parses; its SHA256 (checkpoint.json) catches it."""
    from jtcse.training.stages import train_tower

    settings, ref = reference
    kwargs = dict(
        which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", metrics_dir=tmp_path / "metrics"
    )
    train_tower(settings, stop_after=6, **kwargs)
    damaged = tmp_path / "ckpt" / "step-00000006" / name
    size = damaged.stat().st_size
    garble(damaged)
    assert damaged.stat().st_size == size
    with caplog.at_level(logging.WARNING, logger="jtcse.training"):
        result = train_tower(settings, **kwargs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "step-00000006 is unreadable" in w and f"{damaged}: content differs from the SHA256" in w for w in warnings
    ), warnings
    assert "tower a: resuming from the previous checkpoint step-00000005" in warnings
    assert len(result.history) == STEPS - 5
    assert_same_run(ref("tower"), tmp_path, f"resumed from step 5 after a garbled {name} in step 6")


def test_garbled_weights_in_every_checkpoint_are_one_line_and_keep_the_output(tiny_settings, tmp_path, capsys):
    """No readable checkpoint because of garbled weights: exit 2 naming the file; the output folder stays and the
    message never blames the learning rate (the weights were never loaded)."""
    from jtcse.cli import main
    from jtcse.training.stages import train_tower

    settings = fault_settings(tiny_settings)
    train_tower(settings, which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", stop_after=4)
    assert (tmp_path / "out").is_dir()
    for checkpoint in (tmp_path / "ckpt").glob("step-*"):
        garble(checkpoint / "model.safetensors")
    write_params(settings, tmp_path / "params.yaml")
    args = ["train-tower", "--tower", "a", "--params", str(tmp_path / "params.yaml")]
    args += ["--output", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert main(args) == 2
    err = own_lines(capsys.readouterr().err)
    newest = tmp_path / "ckpt" / "step-00000004" / "model.safetensors"
    assert len(err) == 1 and err[0].startswith(
        f"jtcse: error: {tmp_path / 'ckpt'}: no readable checkpoint to resume from (step-00000004: "
        f"CheckpointDamaged: {newest}: content differs from the SHA256 recorded in checkpoint.json)"
    ), err
    assert "learning rate" not in err[0]
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").rglob("*.safetensors"))


def test_no_readable_checkpoint_says_how_to_start_afresh(tiny_settings, tiny_bert, tmp_path, capsys):
    from jtcse.cli import main
    from jtcse.training.stages import train_tower

    settings = fault_settings(tiny_settings)
    train_tower(settings, which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt", stop_after=4)
    for checkpoint in (tmp_path / "ckpt").glob("step-*"):
        state = checkpoint / "trainer_state.pt"
        state.write_bytes(state.read_bytes()[:100])  # truncated
    write_params(settings, tmp_path / "params.yaml")
    args = [
        "train-tower",
        "--tower",
        "a",
        "--params",
        str(tmp_path / "params.yaml"),
        "--output",
        str(tmp_path / "out"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
    ]
    assert main(args) == 2
    err = own_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(
        f"jtcse: error: {tmp_path / 'ckpt'}: no readable checkpoint to resume from (step-00000004: "
    )
    assert err[0].endswith(f"start afresh with --no-resume, or delete {tmp_path / 'ckpt'}")
    assert main([*args, "--no-resume"]) == 0


def test_a_diverged_run_leaves_no_output_and_says_so_in_one_line(tiny_settings, tmp_path, capsys):
    from jtcse.cli import main

    settings = fault_settings(tiny_settings, lr=1e6, checkpoint_every=100)
    write_params(settings, tmp_path / "params.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.safetensors").write_bytes(b"an earlier run's model")
    code = main(
        [
            "train-tower",
            "--tower",
            "a",
            "--params",
            str(tmp_path / "params.yaml"),
            "--output",
            str(tmp_path / "out"),
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
            "--metrics-dir",
            str(tmp_path / "m"),
        ]
    )
    captured = capsys.readouterr()
    err = own_lines(captured.err)
    assert code == 2 and len(err) == 1 and "Traceback" not in captured.err, captured.err
    assert re.fullmatch(
        rf"jtcse: error: tower a: loss became nan at step \d+; lower the learning rate "
        rf"or check the temperature; no model was saved \({re.escape(str(tmp_path / 'out'))} removed\)",
        err[0],
    ), err[0]
    assert "saved to" not in captured.out
    assert not (tmp_path / "out").exists() and not (tmp_path / "m" / "summary.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.parametrize("changed", ["corpus", "dev"])
def test_data_replaced_at_the_same_path_starts_afresh(changed, tiny_settings, tmp_path, caplog):
    from jtcse.training.stages import train_tower

    settings = fault_settings(tiny_settings)
    corpus, sts = tmp_path / "corpus.txt", tmp_path / "sts"
    shutil.copy(settings.data.corpus, corpus)
    shutil.copytree(settings.data.sts_dir, sts)
    settings.data.corpus, settings.data.sts_dir = str(corpus), str(sts)
    kwargs = dict(which="a", output=tmp_path / "out", checkpoint_dir=tmp_path / "ckpt")
    train_tower(settings, stop_after=4, **kwargs)
    if changed == "corpus":
        lines = corpus.read_text().splitlines()
        corpus.write_text("\n".join(reversed(lines)) + "\n")  # same path, same size, other order
    else:
        dev = sts / "stsb.dev.tsv"
        header, *rows = dev.read_text().splitlines()
        dev.write_text("\n".join([header, *reversed(rows)]) + "\n")
    with caplog.at_level(logging.INFO, logger="jtcse.training"):
        result = train_tower(settings, **kwargs)
    messages = [r.getMessage() for r in caplog.records]
    assert any("belong to other settings or inputs; starting afresh" in m for m in messages), messages
    assert not any(m.startswith("resuming") for m in messages)
    assert len(result.history) == STEPS


@pytest.mark.parametrize("where", ["weights", "trainer_state", "output_copy"])
def test_a_full_disk_during_training_is_one_line_and_tears_nothing(where, tiny_settings, tmp_path, capsys, monkeypatch):
    """Issue 21 item 4: a full disk, as each library reports it (safetensors: a SafetensorError with `code: 28`;
    torch.save: OSError 28; the copy to the output folder: a shutil.Error listing `[Errno 28]`), is one line,
    exit 2, naming what was being written; the earlier checkpoints stay whole and nothing temporary is left."""
    import jtcse.training.checkpoints as checkpoints
    from jtcse.cli import main

    settings = fault_settings(tiny_settings)
    write_params(settings, tmp_path / "params.yaml")
    args = ["train-tower", "--tower", "a", "--params", str(tmp_path / "params.yaml"), "--output", str(tmp_path / "out")]
    args += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--metrics-dir", str(tmp_path / "metrics")]
    calls = []

    def third_call_fails(real, fail):
        def fake(*a, **k):
            calls.append(1)
            if len(calls) == 3:
                fail(*a)
            return real(*a, **k)

        return fake

    def safetensors_full(*_):
        from safetensors import SafetensorError

        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    def torch_full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a Python file's write says: no file name

    real_copyfile, copies = shutil.copyfile, []

    def copy_full(src, dst, *a, **k):  # the 3rd file copied into the output's temporary folder: disk full
        if str(tmp_path / ".out.") in str(dst):
            copies.append(dst)
            if len(copies) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_copyfile(src, dst, *a, **k)

    if where == "weights":
        monkeypatch.setattr(checkpoints, "save_model", third_call_fails(checkpoints.save_model, safetensors_full))
        named = tmp_path / "ckpt" / "step-00000003"
    elif where == "trainer_state":
        monkeypatch.setattr(checkpoints.torch, "save", third_call_fails(torch.save, torch_full))
        named = tmp_path / "ckpt" / "step-00000003"
    else:
        monkeypatch.setattr(shutil, "copyfile", copy_full)
        named = None  # a file inside the output's temporary folder
    code = main(args)
    captured = capsys.readouterr()
    err = own_lines(captured.err)
    assert code == 2 and len(err) == 1 and "Traceback" not in captured.err, captured.err[-3000:]
    if named is not None:
        assert err[0] == f"jtcse: error: no space left on device writing {named}; free some space and rerun", err
    else:
        assert re.fullmatch(
            rf"jtcse: error: no space left on device writing {re.escape(str(tmp_path))}/\.out\.\S+\.tmp/\S+; "
            "free some space and rerun",
            err[0],
        ), err
    monkeypatch.undo()
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert leftovers == [], leftovers
    from jtcse.training.checkpoints import read_checkpoint_files

    for checkpoint in (tmp_path / "ckpt").glob("step-*"):
        read_checkpoint_files(checkpoint)  # every checkpoint left is whole and matches its digests
    assert main(args) == 0  # once there is space again, the same command resumes and finishes
