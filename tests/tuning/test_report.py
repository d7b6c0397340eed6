"""The study report (jtcse/tuning/report.py): what summary.md tells the user to run."""

from __future__ import annotations

import re

from jtcse import tuning
from tests.tuning.helpers import sqlite_url, with_tune


def test_the_apply_line_names_the_best_params_file_actually_written(tiny_settings, tmp_path, monkeypatch):
    """Issue 21 item 11: with --output-dir out/tune the Apply line said tune/best_params.yaml (the default)."""
    import optuna
    from optuna.distributions import FloatDistribution

    monkeypatch.chdir(tmp_path)
    settings = with_tune(tiny_settings, storage=sqlite_url(tmp_path / "optuna.db"), study_name="report")
    study = optuna.create_study(study_name="report", storage=settings.tune.storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": 1e-3},
            distributions={"lr": FloatDistribution(1e-4, 3e-2, log=True)},
            value=50.0,
            user_attrs={"overrides": {"train.lr": 1e-3}},
        )
    )
    report = tuning.write_report(settings, "out/tune")
    assert (
        report.files["best_params"] == "out/tune/best_params.yaml"
        and (tmp_path / "out/tune/best_params.yaml").is_file()
    )
    apply = [line for line in report.summary.splitlines() if line.startswith("Apply:")]
    assert apply == [
        "Apply: `jtcse tune-apply --best out/tune/best_params.yaml --params params.yaml`, then `dvc repro`."
    ]
    header = (tmp_path / "out/tune/best_params.yaml").read_text()
    assert re.search(r"# Apply: jtcse tune-apply --best out/tune/best_params.yaml ", header), header
