"""A study on the tiny twin (jtcse/tuning/study.py, objective.py, report.py): pruning, the report, best params
applied to params.yaml, a failing trial recorded while the study goes on."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from jtcse import tuning
from jtcse.config import load_settings
from tests.conftest import REPO
from tests.tuning.helpers import sqlite_url, trials_of, with_tune


def test_study_prunes_writes_best_params_and_they_apply_to_params_yaml(tiny_settings, tiny_bert, tmp_path):
    # keep only trials within the top 1 % at each step: after the first completed trial, a trial whose best value so
    # far is below the completed trials' at a step is pruned there. Which trials that hits depends on the CPU's
    # floating-point trajectory, so the test re-derives every decision from the stored values instead of expecting one.
    settings = with_tune(
        tiny_settings,
        storage=sqlite_url(tmp_path / "optuna.db"),
        n_trials=4,
        pruner={"type": "percentile", "percentile": 1.0, "n_startup_trials": 1, "n_warmup_steps": 0},
    )
    report = tuning.run_study(
        settings, tower_a=str(tiny_bert), tower_b=str(tiny_bert), output_dir=tmp_path / "tune", progress=False
    )
    counts = report.counts
    assert counts.finished == 4 and counts.failed == 0 and counts.running == 0
    assert counts.complete >= 1 and counts.pruned + counts.complete == 4, counts
    trials = trials_of(settings)
    assert counts.pruned == sum(t.state.name == "PRUNED" for t in trials)
    for trial in trials:
        expected_stop = _percentile_pruning_step(trial, trials, percentile=1.0, n_startup_trials=1)
        if trial.state.name == "PRUNED":
            assert trial.last_step == expected_stop, (trial.number, trial.intermediate_values)
        else:
            assert expected_stop is None and trial.last_step == settings.tune.trial_steps, trial.number
    assert all(0 not in t.intermediate_values for t in trials)  # the untrained towers are not a trial's score

    out = tmp_path / "tune"
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["_meta"]["trial"] == report.best_trial and best["_meta"]["value"] == pytest.approx(
        report.best_value, abs=1e-4
    )
    assert {"train.lr", "train.w_tm", "train.cross_attention.num_layers", "train.modulus_on"} <= set(best)
    summary = (out / "summary.md").read_text()
    assert f"| trials pruned | {counts.pruned} |" in summary and "## Best parameters" in summary
    assert (out / "optimization_history.png").stat().st_size > 1000
    if counts.complete >= 2:
        assert (out / "param_importances.png").stat().st_size > 1000
    else:  # importances need two completed trials: skipped with a note, not an error
        assert "Note: no parameter importances" in summary and "importance_plot" not in report.files
    assert (out / "trials.csv").read_text().count("\n") == 5

    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    original = params.read_text()
    from jtcse.cli import main

    assert main(["tune-apply", "--best", str(out / "best_params.yaml"), "--params", str(params)]) == 0
    applied = load_settings(params)
    for dotted, value in best.items():
        if dotted == "_meta":
            continue
        got = tuning.dotted_get(applied, dotted)
        assert got == (pytest.approx(value, rel=1e-12) if isinstance(value, float) else value), dotted
    new = params.read_text()
    # comments and layout survive: only the lines of changed values differ, each keeping its comment
    old_lines, new_lines = original.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert 1 <= len(changed) <= len(best) - 1
    for a, b in changed:
        assert a.split(":")[0] == b.split(":")[0]
        if "#" in a:
            assert a[a.index("#") :] == b[b.index("#") :]
    assert "# weight of the tensor-modulus constraint" in new and new.startswith("# jtcse settings.")
    assert tuning.apply_best(out / "best_params.yaml", params) == {}  # applying twice changes nothing


def _percentile_pruning_step(trial, trials, *, percentile: float, n_startup_trials: int) -> int | None:
    """The step at which a percentile pruner (maximising, one worker: trials run in number order) stops ``trial``,
    or None: prune once the trial's best value so far is below the given top percentile of the values that the
    trials completed before it reported at that step."""
    completed = [t for t in trials if t.number < trial.number and t.state.name == "COMPLETE"]
    if len(completed) < n_startup_trials:
        return None
    best_so_far = -np.inf
    for step in sorted(trial.intermediate_values):
        best_so_far = max(best_so_far, trial.intermediate_values[step])
        others = [t.intermediate_values[step] for t in completed if step in t.intermediate_values]
        if others and best_so_far < np.percentile(others, 100 - percentile):
            return step
    return None


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny_settings, tiny_bert, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    no_pooler = tmp_path / "no_pooler"  # modulus_on: pooler needs a pooler: those draws fail for real
    BertModel(BertConfig.from_pretrained(tiny_bert), add_pooling_layer=False).save_pretrained(no_pooler)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(no_pooler)
    settings = with_tune(
        tiny_settings,
        storage=sqlite_url(tmp_path / "optuna.db"),
        n_trials=2,
        trial_steps=2,
        eval_every=1,
        space={"modulus_on": {"choices": ["pooler", "embedding"]}, "cross_attention": {"num_layers": 2}},
    )
    report = tuning.run_study(
        settings, tower_a=str(no_pooler), tower_b=str(no_pooler), output_dir=tmp_path / "tune", progress=False
    )
    assert report.counts.failed >= 1 and report.counts.complete == 2, report.counts
    trials = trials_of(settings)
    assert {t.params["modulus_on"] for t in trials if t.state.name == "FAIL"} == {"pooler"}
    assert {t.params["modulus_on"] for t in trials if t.state.name == "COMPLETE"} == {"embedding"}
    assert "| trials failed |" in (tmp_path / "tune" / "summary.md").read_text()
