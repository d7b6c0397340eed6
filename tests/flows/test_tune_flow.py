"""The Prefect `tune` flow on the tiny twin: study, worker, report files and the markdown artifact."""

from pathlib import Path

import yaml

from jtcse import tuning
from tests.tuning.helpers import with_tune


def test_tune_flow_writes_the_report_and_publishes_the_summary(prefect_harness, tiny_settings, tiny_bert, tmp_path):
    from prefect.artifacts import Artifact

    from flows.tune import ARTIFACT_KEY, tune

    settings = with_tune(tiny_settings, storage=f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=2, study_name="flow")
    params = tuning.write_settings(settings, tmp_path / "params.yaml")
    files = tune(params=str(params), tower_a=str(tiny_bert), tower_b=str(tiny_bert), output_dir=str(tmp_path / "tune"))

    assert set(files) >= {"best_params", "summary", "trials_csv", "history_plot"}
    assert all(isinstance(p, str) and Path(p).is_file() for p in files.values())
    best = yaml.safe_load(Path(files["best_params"]).read_text())
    assert best["_meta"]["study"] == "flow" and "train.lr" in best
    counts = tuning.trial_counts(tuning.load_study(settings.tune))
    assert counts.finished == 2 and counts.running == 0

    artifact = Artifact.get(ARTIFACT_KEY)
    assert artifact is not None and "| trials completed | 2 |" in artifact.data
