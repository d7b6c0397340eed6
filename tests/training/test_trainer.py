import csv
import shutil

import torch
from safetensors.torch import load_file

from jtcse.training.build import build_twin_objective
from jtcse.training.stages import train_tower, train_twin


def fixed_batch_loss(objective, sentences, seed=123):
    """The objective's loss on one batch with a fixed dropout draw, comparable before and after training."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return objective(sentences)["loss"].item()


def test_simcse_steps_lower_the_loss(tiny_settings, tmp_path):
    from jtcse.data.readers import read_corpus
    from jtcse.modeling.towers import load_tower
    from jtcse.training.objectives import SimCSEObjective

    settings = tiny_settings.model_copy(deep=True)
    settings.model.pooling = "cls"  # the objective below pools as the paper does
    settings.data.max_sentences = 16
    settings.pretrain.steps = 30
    settings.pretrain.lr = 3e-3
    settings.pretrain.eval_every = 30
    batch = read_corpus(settings.data.corpus, 16)[:8]
    tower, tok = load_tower(settings.model.base)
    before = fixed_batch_loss(SimCSEObjective(tower, tok, max_length=24).train(), batch)
    result = train_tower(
        settings,
        which="a",
        output=tmp_path / "tower",
        checkpoint_dir=tmp_path / "ckpt",
        metrics_dir=tmp_path / "metrics",
    )
    trained, tok = load_tower(str(tmp_path / "tower"))
    # The best-on-dev weights are saved; compare with the final-step weights to be sure training moved them.
    final = load_file(str(sorted((tmp_path / "ckpt").glob("step-*"))[-1] / "model.safetensors"))
    tower.load_state_dict({k.removeprefix("tower."): v for k, v in final.items() if k.startswith("tower.")})
    after = fixed_batch_loss(SimCSEObjective(tower, tok, max_length=24).train(), batch)
    assert after < 0.8 * before, (before, after)
    assert result.steps == 30 and len(result.history) == 30
    rows = list(csv.DictReader((tmp_path / "metrics" / "train.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    evals = list(csv.DictReader((tmp_path / "metrics" / "eval.csv").open()))
    assert [int(r["step"]) for r in evals] == [0, 30]
    assert (tmp_path / "tower" / "model.safetensors").is_file()


def test_jtcse_stop_and_resume_equals_uninterrupted_run(tiny_settings, tmp_path):
    tower = str(tiny_settings.model.base)
    common = dict(tower_a=tower, tower_b=tower)
    full = train_twin(tiny_settings, output=tmp_path / "full", checkpoint_dir=tmp_path / "ck_full", **common)
    first = train_twin(
        tiny_settings,
        output=tmp_path / "split",
        checkpoint_dir=tmp_path / "ck_split",
        metrics_dir=tmp_path / "m",
        stop_after=3,
        **common,
    )
    assert first.steps == 3
    # dvc repro deletes a stage's outputs before it reruns the stage: the resume must restore them.
    shutil.rmtree(tmp_path / "split")
    shutil.rmtree(tmp_path / "m")
    second = train_twin(
        tiny_settings,
        output=tmp_path / "split",
        checkpoint_dir=tmp_path / "ck_split",
        metrics_dir=tmp_path / "m",
        **common,
    )
    losses = lambda hist: [(r["step"], r["loss"], r["loss_icnce"], r["loss_tm"]) for r in hist]  # noqa: E731
    assert losses(first.history) + losses(second.history) == losses(full.history)
    w_full = load_file(str(tmp_path / "ck_full" / "step-00000006" / "model.safetensors"))
    w_split = load_file(str(tmp_path / "ck_split" / "step-00000006" / "model.safetensors"))
    assert w_full.keys() == w_split.keys()
    assert all(torch.equal(w_full[k], w_split[k]) for k in w_full)
    steps = [int(r["step"]) for r in csv.DictReader((tmp_path / "m" / "train.csv").open())]
    assert steps == list(range(1, 7))  # resumed log continues without duplicates
    assert (second.best_metric, second.best_step) == (full.best_metric, full.best_step)
    evals = [int(r["step"]) for r in csv.DictReader((tmp_path / "m" / "eval.csv").open())]
    assert evals == [0, 3, 6]
    best_full = load_file(str(tmp_path / "full" / "tower_a" / "model.safetensors"))
    best_split = load_file(str(tmp_path / "split" / "tower_a" / "model.safetensors"))
    assert all(torch.equal(best_full[k], best_split[k]) for k in best_full)


def test_a_finished_run_is_trained_again_not_resumed(tiny_settings, tmp_path):
    """Rerunning a finished stage (dvc repro after a code change) must train, not find nothing left to do."""
    kwargs = dict(which="a", output=tmp_path / "tower", checkpoint_dir=tmp_path / "ckpt", metrics_dir=tmp_path / "m")
    first = train_tower(tiny_settings, **kwargs)
    shutil.rmtree(tmp_path / "tower")
    again = train_tower(tiny_settings, **kwargs)
    assert len(again.history) == len(first.history) == tiny_settings.pretrain.steps
    assert [r["loss"] for r in again.history] == [r["loss"] for r in first.history]  # seeded: the same run
    assert (tmp_path / "tower" / "model.safetensors").is_file()
    assert len(list(csv.DictReader((tmp_path / "m" / "train.csv").open()))) == tiny_settings.pretrain.steps


def test_twin_objective_refuses_pooler_mode_without_pooler(tiny_settings, tmp_path):
    import pytest
    from transformers import BertModel

    from jtcse.modeling.towers import load_tower

    model, tok = load_tower(str(tiny_settings.model.base))
    no_pooler = BertModel(model.config, add_pooling_layer=False)
    no_pooler.save_pretrained(tmp_path / "np")
    tok.save_pretrained(tmp_path / "np")
    with pytest.raises(ValueError, match="train.modulus_on"):
        build_twin_objective(tiny_settings, str(tmp_path / "np"), str(tmp_path / "np"))


def test_non_finite_loss_stops_the_run_naming_its_step(tiny_settings, tmp_path):
    """Losses are read back in batches of steps (no device sync per step); the first bad step is still named."""
    import pytest

    settings = tiny_settings.model_copy(deep=True)
    settings.pretrain.temperature = 1e-39  # cosine / tau overflows float32: the very first loss is nan
    settings.pretrain.steps = 12
    settings.pretrain.eval_every = 12
    settings.pretrain.checkpoint_every = 12
    with pytest.raises(FloatingPointError, match=r"tower a: loss became nan at step 1; "):
        train_tower(settings, which="a", output=tmp_path / "tower", checkpoint_dir=tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").glob("step-*"))  # nothing trained on a nan is checkpointed


def test_a_run_first_removes_what_killed_writers_left_in_its_folders(tiny_settings, tmp_path):
    """A checkpoint write killed mid-way leaves `.step-N.<random>.tmp`; the next run (holding the lock) removes
    it, and a swap killed between its renames (`.step-N.old`, no `step-N`) is put back, never deleted."""
    ckpt = tmp_path / "ckpt"
    (ckpt / ".step-00000001.k1ll3d.tmp").mkdir(parents=True)
    (ckpt / ".run.json.x_y.tmp").write_text("{")
    (tmp_path / ".tower.a1b2.tmp").mkdir()
    train_tower(tiny_settings, which="a", output=tmp_path / "tower", checkpoint_dir=ckpt)
    assert not [p for p in ckpt.rglob("*") if p.name.endswith(".tmp")]
    assert not (tmp_path / ".tower.a1b2.tmp").exists() and (tmp_path / "tower" / "model.safetensors").is_file()
