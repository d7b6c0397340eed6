"""Stage-2 diagnostics: each number against a naive computation, and training left exactly as it was."""

import csv
import math

import pytest
import torch

from jtcse.training.build import build_twin_objective
from jtcse.training.diagnostics import COLUMNS, anisotropy, e_cls, gradient_norms
from jtcse.training.stages import train_twin


def test_e_cls_is_cls_norm_over_mean_norm_of_the_real_other_tokens():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    expected = []
    for row, m in zip(hidden, mask):
        others = [row[j].norm().item() for j in range(1, 5) if m[j]]
        expected.append(row[0].norm().item() / (sum(others) / len(others)))
    assert torch.allclose(e_cls(hidden, mask), torch.tensor(expected), atol=1e-6)


def test_anisotropy_is_the_mean_cosine_of_distinct_pairs():
    torch.manual_seed(1)
    v = torch.randn(6, 3)
    pairs = [
        torch.nn.functional.cosine_similarity(v[i], v[j], dim=0).item() for i in range(6) for j in range(6) if i != j
    ]
    assert anisotropy(v) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert anisotropy(torch.ones(4, 3)) == pytest.approx(1.0)


def test_gradient_norms_equal_one_backward_per_weighted_term():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(3))
    u = torch.nn.Parameter(torch.randn(2))
    parts = {"nce": (w**2).sum(), "tm": (w * u.sum()).sum()}
    weights = {"nce": 0.5, "tm": 3.0}
    norms = gradient_norms(parts, weights, [w, u])
    for name in parts:
        w.grad = u.grad = None
        (weights[name] * parts[name]).backward(retain_graph=True)
        naive = math.sqrt(
            sum((p.grad if p.grad is not None else torch.zeros_like(p)).pow(2).sum().item() for p in (w, u))
        )
        assert norms[f"grad_{name}"] == pytest.approx(naive, rel=1e-6)
    w.grad = u.grad = None
    sum(weights[k] * v for k, v in parts.items()).backward()
    assert norms["grad_total"] == pytest.approx(
        math.sqrt(w.grad.pow(2).sum().item() + u.grad.pow(2).sum().item()), rel=1e-6
    )


def _losses(metrics_dir):
    return [{k: v for k, v in r.items() if k != "lr"} for r in csv.DictReader((metrics_dir / "train.csv").open())]


def test_diagnostics_are_logged_and_do_not_change_training(tiny_settings, tmp_path):
    tower = str(tiny_settings.model.base)
    kwargs = dict(tower_a=tower, tower_b=tower)
    on = tiny_settings.model_copy(deep=True)
    on.train.diagnostics, on.train.diagnostics_probe = True, 16
    off = tiny_settings.model_copy(deep=True)
    off.train.diagnostics = False
    train_twin(on, output=tmp_path / "on", checkpoint_dir=tmp_path / "ck_on", metrics_dir=tmp_path / "m_on", **kwargs)
    train_twin(
        off, output=tmp_path / "off", checkpoint_dir=tmp_path / "ck_off", metrics_dir=tmp_path / "m_off", **kwargs
    )
    assert _losses(tmp_path / "m_on") == _losses(tmp_path / "m_off")
    assert not (tmp_path / "m_off" / "diagnostics.csv").exists()
    rows = list(csv.DictReader((tmp_path / "m_on" / "diagnostics.csv").open()))
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["step"]) for r in rows] == [0, 3, 6]  # one row per dev evaluation
    for r in rows:
        assert all(float(r[f"grad_{t}"]) > 0 for t in ("nce", "icnce", "cross", "tm"))
        assert 0 < float(r["e_cls_a"]) and -1 <= float(r["cos_towers"]) <= 1
    assert (tmp_path / "m_on" / "diagnostics.png").stat().st_size > 1000


def test_zero_cross_weight_is_exactly_tncse(tiny_settings, tmp_path):
    """w_cross 0 skips the bridge in stream mode: the same losses, step for step, as no bridge at all."""
    tower = str(tiny_settings.model.base)
    kwargs = dict(tower_a=tower, tower_b=tower)
    zero = tiny_settings.model_copy(deep=True)
    zero.train.w_cross, zero.train.diagnostics = 0.0, False
    tncse = tiny_settings.model_copy(deep=True)
    tncse.train.cross_attention.num_layers, tncse.train.diagnostics = 0, False
    train_twin(zero, output=tmp_path / "z", checkpoint_dir=tmp_path / "ck_z", metrics_dir=tmp_path / "m_z", **kwargs)
    train_twin(tncse, output=tmp_path / "t", checkpoint_dir=tmp_path / "ck_t", metrics_dir=tmp_path / "m_t", **kwargs)
    assert _losses(tmp_path / "m_z") == _losses(tmp_path / "m_t")
    with_bridge = tiny_settings.model_copy(deep=True)
    with_bridge.train.diagnostics = False
    train_twin(
        with_bridge, output=tmp_path / "b", checkpoint_dir=tmp_path / "ck_b", metrics_dir=tmp_path / "m_b", **kwargs
    )
    assert [r["loss"] for r in _losses(tmp_path / "m_b")] != [r["loss"] for r in _losses(tmp_path / "m_t")]


def test_objective_diagnostics_measure_the_bridge_even_at_zero_weight(tiny_settings):
    settings = tiny_settings.model_copy(deep=True)
    settings.train.w_cross = 0.0
    tower = str(settings.model.base)
    objective = build_twin_objective(settings, tower, tower)
    assert objective.twin.compute_cross is False
    sentences = ["a man plays a guitar", "the cat sleeps on the mat", "stocks fell on monday", "it rains"]
    row = objective.diagnostics(sentences, sentences)
    assert row["loss_cross"] > 0 and row["grad_cross"] == 0.0  # measured, but its weight gives it no pull
    assert objective.twin.compute_cross is False and objective.training
