"""Data-parallel training: two gloo processes on CPU must train the same model as one process."""

import csv
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from jtcse.config import settings_from_dict
from jtcse.errors import ConfigError
from jtcse.training.stages import train_twin

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _losses(path):
    return [
        (int(r["step"]), float(r["loss"]), float(r["loss_icnce"]), float(r["loss_tm"]))
        for r in csv.DictReader(open(path))
    ]


def test_two_processes_train_the_same_twin_as_one(tiny_settings, tmp_path):
    # Without dropout the two views are identical in both runs, so any difference comes from the
    # distribution itself: the slices, the gathered negatives and the gradient averaging.
    settings = tiny_settings.model_copy(deep=True)
    settings.model.dropout = 0.0
    settings.train.dropout = 0.0
    settings.train.steps = 4
    settings.train.eval_every = 2
    settings.train.checkpoint_every = 4
    settings.runtime.device = "cpu"
    tower = str(settings.model.base)
    train_twin(
        settings,
        tower_a=tower,
        tower_b=tower,
        output=tmp_path / "one",
        checkpoint_dir=tmp_path / "ck_one",
        metrics_dir=tmp_path / "m_one",
    )

    raw = settings.model_dump(mode="json", by_alias=True)
    raw["runtime"]["nproc_per_node"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jtcse.cli",
            "train",
            "--params",
            str(params),
            "--tower-a",
            tower,
            "--tower-b",
            tower,
            "--output",
            str(tmp_path / "two"),
            "--checkpoint-dir",
            str(tmp_path / "ck_two"),
            "--metrics-dir",
            str(tmp_path / "m_two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("jtcse twin: STS-B dev") == 1  # one result line, from rank 0

    one, two = _losses(tmp_path / "m_one" / "train.csv"), _losses(tmp_path / "m_two" / "train.csv")
    assert [r[0] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a[1:] == pytest.approx(b[1:], rel=1e-4, abs=1e-5), (a, b)
    w_one = load_file(str(tmp_path / "ck_one" / "step-00000004" / "model.safetensors"))
    w_two = load_file(str(tmp_path / "ck_two" / "step-00000004" / "model.safetensors"))
    assert w_one.keys() == w_two.keys()
    # Adam turns rounding-level gradient differences of near-zero gradients into visible steps: the
    # gradients themselves are compared exactly in test_gathered_gradients_equal_one_process_gradients.
    for key in w_one:
        torch.testing.assert_close(w_two[key], w_one[key], rtol=0, atol=1e-3, msg=key)
    initial = load_file(os.path.join(tower, "model.safetensors"))
    shared = [k for k in initial if f"twin.tower_a.{k}" in w_one]
    assert len(shared) > 10
    assert max((w_one[f"twin.tower_a.{k}"] - initial[k]).abs().max().item() for k in shared) > 3e-3  # it moved
    # rank 0 alone evaluates and logs (the dev scores of a random 32-wide model are too flat to compare)
    assert [r["step"] for r in csv.DictReader(open(tmp_path / "m_two" / "eval.csv"))] == ["0", "2", "4"]
    assert (tmp_path / "two" / "twin.json").is_file()


def _objectives(raw_settings: dict):
    """A SimCSE tower (its pooler unused: DDP must tolerate that) and a bridged JTCSE twin, dropout off."""
    from jtcse.modeling.towers import load_tower
    from jtcse.training.build import build_twin_objective
    from jtcse.training.objectives import SimCSEObjective

    settings = settings_from_dict(raw_settings)
    base = str(settings.model.base)
    tower, tokenizer = load_tower(base, dropout=0.0)
    return {
        "simcse": SimCSEObjective(tower, tokenizer, max_length=24),
        "jtcse": build_twin_objective(settings, base, base),
    }


def _gradients(objectives: dict, sentences: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    from jtcse.training import distributed

    grads = {}
    for name, objective in objectives.items():
        model = distributed.wrap(objective.to(device), device)
        torch.manual_seed(0)  # the random ICNCE direction: the same draw in every process
        losses = model(sentences)
        losses["loss"].backward()
        grads[f"{name}/loss"] = losses["loss"].detach().reshape(1)
        grads.update({f"{name}/{k}": p.grad for k, p in objective.named_parameters() if p.grad is not None})
    return grads


def _gradient_worker(rank: int, world: int, port: int, raw_settings: dict, sentences: list[str], out: str) -> None:
    from safetensors.torch import save_file

    from jtcse.training import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    device = distributed.setup("cpu")
    grads = _gradients(_objectives(raw_settings), sentences, device)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in grads.items()}, out)
    distributed.shutdown()


def test_gathered_gradients_equal_one_process_gradients(tiny_settings, sample_corpus, tmp_path):
    """Each process encodes half the batch; gathered negatives + DDP averaging must give the full-batch gradient."""
    import socket

    import torch.multiprocessing as mp

    settings = tiny_settings.model_copy(deep=True)
    settings.model.dropout = 0.0
    settings.train.dropout = 0.0  # the twin stage's own dropout, off too
    raw = settings.model_dump(mode="json", by_alias=True)
    sentences = sample_corpus.read_text(encoding="utf-8").splitlines()[:8]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gradient_worker, args=(2, port, raw, sentences, str(tmp_path / "grads.safetensors")), nprocs=2)
    two = load_file(str(tmp_path / "grads.safetensors"))
    one = _gradients(_objectives(raw), sentences, torch.device("cpu"))
    assert one.keys() == two.keys()
    assert sum(k.startswith("jtcse/twin.tower_b.") for k in one) > 10  # both towers of the twin have gradients
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-7, msg=key)


def test_batch_sizes_must_split_over_the_processes():
    with pytest.raises(
        ConfigError, match=r"train\.batch_size \(30\) must be divisible by runtime\.nproc_per_node \(4\)"
    ):
        settings_from_dict(
            {
                "runtime": {"nproc_per_node": 4},
                "pretrain": {"batch_size": 32},
                "train": {"batch_size": 30},
                "distill": {"batch_size": 64},
            }
        )
