"""bench/workspace.py, the stage cache of the training benchmarks: a finished stage is reused, never retrained;
test scores are cached by training and by content; the keys that name work on disk do not drift."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench.workspace import SEED_STRIDE, NotFinished, Workspace, _digest, encoder_identity, seeded_overrides


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def settings(tiny_settings):
    from jtcse.config import apply_overrides

    stage = {"steps": 2, "eval_every": 2, "checkpoint_every": 2, "batch_size": 8}
    return apply_overrides(
        tiny_settings, {"data.max_sentences": 64, **{f"pretrain.{k}": v for k, v in stage.items()}}, "test"
    )


def test_keys_on_disk_are_stable(settings):
    # Existing work dirs (runs/bench/...) are found by these digests: changing them orphans every finished stage.
    assert _digest({"stage": "tower_a", "settings": {}, "requires": []}) == "e0c80be3a24522c1"
    shifted = seeded_overrides(settings, 3)
    assert shifted["train.seed"] == settings.train.seed + 2 * SEED_STRIDE
    assert seeded_overrides(settings, 1)["pretrain.tower_b.seed"] == settings.pretrain.tower_b.seed
    with pytest.raises(SystemExit, match="positive"):
        seeded_overrides(settings, 0)


def test_a_finished_stage_is_reused_not_retrained(settings, tmp_path, monkeypatch):
    from jtcse.config import apply_overrides
    from jtcse.training import stages

    first = Workspace(tmp_path, settings).tower(1, "a")
    seed1 = tmp_path / "seed1"
    marker = json.loads((seed1 / "tower_a.done.json").read_text())
    assert not first.reused and (seed1 / "tower_a").is_dir() and first.path == seed1 / "tower_a"
    assert marker["fingerprint"] == first.fingerprint and marker["kind"] == "tower_a"
    assert marker["summary"]["steps"] == 2
    assert not (seed1 / "checkpoints" / "tower_a").exists()  # resumable state is dropped once the stage is done

    monkeypatch.setattr(stages, "train_tower", lambda *a, **k: pytest.fail("a finished stage was trained again"))
    again = Workspace(tmp_path, settings).tower(1, "a")
    assert again.reused and again.fingerprint == first.fingerprint and again.summary == marker["summary"]
    assert again.seconds == pytest.approx(first.seconds, abs=1e-3)
    assert again.reused_stages() == ["tower_a"]
    # Nor do the threads of this process count: a benchmark resumed with another runtime.threads reuses its work.
    assert Workspace(tmp_path, apply_overrides(settings, {"runtime.threads": 2})).tower(1, "a").reused

    # A workspace that may not train says what is missing instead of training it: tower B, a changed setting.
    with pytest.raises(NotFinished, match="tower_b is not trained"):
        Workspace(tmp_path, settings, train=False).tower(1, "b")
    with pytest.raises(NotFinished, match="tower_a is not trained"):
        Workspace(tmp_path, apply_overrides(settings, {"pretrain.lr": 1e-4}), train=False).tower(1, "a")


def test_test_scores_are_cached_by_training_and_by_content(settings, tmp_path):
    ws = Workspace(tmp_path, settings)
    stage = ws.tower(1, "a")
    calls = []

    def evaluate():
        calls.append(1)
        return {"avg": 50.0}

    identity = encoder_identity([(stage.path, "cls")])
    assert ws.test_scores(1, stage, evaluate, identity)[::2] == ({"avg": 50.0}, False)
    assert ws.test_scores(1, stage, evaluate, identity)[::2] == ({"avg": 50.0}, True)
    assert calls == [1]
    assert json.loads((tmp_path / "seed1" / "tower_a.test.json").read_text())["fingerprint"] == stage.fingerprint

    # A copy of the same weights is the same encoder; a normalised sum of two identical towers is the tower alone
    # (normalised: the key keeps the flag even for one tower).
    copy = shutil.copytree(stage.path, tmp_path / "copy")
    assert encoder_identity([(copy, "cls")]) == identity
    pair = encoder_identity([(stage.path, "cls"), (copy, "cls")], "sum", normalize=True)
    assert pair == encoder_identity([(stage.path, "cls")], normalize=True) != identity
    assert encoder_identity([(copy, "mean")]) != identity
    scores, _, cached = Workspace(tmp_path, settings, train=False).scores_by_content(identity, evaluate)
    assert cached and scores == {"avg": 50.0} and calls == [1]
