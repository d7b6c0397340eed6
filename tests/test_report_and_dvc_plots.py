"""What `dvc metrics show`, `dvc plots show` and the report stage give users: readable, one chart per quantity."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

from jtcse.evaluation.sts import SELECTION_METRICS
from tests.conftest import REPO

TASKS = ("sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg")
TRAINING_STAGES = ("pretrain_a", "pretrain_b", "train", "distill")


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def top_level_plots() -> dict[str, dict]:
    plots = {}
    for entry in dvc_yaml()["plots"]:
        ((name, props),) = entry.items() if isinstance(entry, dict) else ((entry, None),)
        plots[name] = props
    return plots


def test_metrics_are_the_sts_tables_and_stage_summaries_only():
    metrics = [
        next(iter(m)) if isinstance(m, dict) else m
        for stage in dvc_yaml()["stages"].values()
        for m in stage.get("metrics", [])
    ]
    assert "reports/validation.json" not in metrics
    for name in ("base", "base_mean", "twin", "distilled"):
        assert f"metrics/{name}/metrics.json" in metrics
    assert all(m.startswith("metrics/") and m.endswith((".json",)) for m in metrics), metrics


def test_every_chart_names_x_and_y_and_every_loss_term_has_its_own():
    plots = top_level_plots()
    charts = {name: props for name, props in plots.items() if props is not None}
    stage_plots = [p for stage in dvc_yaml()["stages"].values() for p in stage.get("plots", [])]
    assert stage_plots == []  # stage-level plots have no x/y: each would draw a meaningless default chart
    for name, props in charts.items():
        assert props.get("x") and isinstance(props.get("y"), dict) and props.get("title"), name
    drawn = {
        (path, column)
        for props in charts.values()
        for path, columns in props["y"].items()
        for column in (columns if isinstance(columns, list) else [columns])
    }
    for stage in TRAINING_STAGES:
        log = REPO / "metrics" / stage / "train.csv"
        rows = list(csv.DictReader(log.open(encoding="utf-8")))
        columns = {c: [r[c] for r in rows] for c in rows[0] if c.startswith("loss")}
        for column, values in columns.items():
            # stage 1 has one term: its total `loss` equals `loss_nce`, which is drawn once
            twins = [c for c, v in columns.items() if c != column and v == values]
            assert any((f"metrics/{stage}/train.csv", c) in drawn for c in [column, *twins]), (
                f"{stage} {column} is plotted nowhere"
            )
        assert (f"metrics/{stage}/eval.csv", "stsb_dev") in drawn
        # a chart of one stage's loss terms never mixes in another stage's
        for props in charts.values():
            files = {p.split("/")[1] for p in props["y"] if p.endswith("train.csv")}
            assert len(files) <= 1 or files == {"pretrain_a", "pretrain_b"}, props["title"]
    assert {c for _, c in drawn if c.startswith("loss")} >= {
        "loss",
        "loss_nce",
        "loss_icnce",
        "loss_cross",
        "loss_tm",
        "loss_kl",
    }
    for column in ("grad_cross", "grad_tm", "e_cls_a", "cos_towers"):
        assert ("metrics/train/diagnostics.csv", column) in drawn
    bars = charts["sts_per_task"]
    assert bars["template"] == "grouped_bars" and (REPO / ".dvc" / "plots" / "grouped_bars.json").is_file()
    assert "/dvc_plots" in (REPO / ".gitignore").read_text().splitlines()


def write_metrics(root: Path, name: str, base: float) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({t: base + i for i, t in enumerate(TASKS)}))
    return path


def test_report_has_both_base_poolings_labels_and_plot_data(tmp_path):
    from jtcse.cli import main
    from jtcse.evaluation.report import y_range

    paths = {
        name: write_metrics(tmp_path, name, base)
        for name, base in (("base", 70.0), ("base_mean", 75.0), ("twin", 76.5), ("distilled", 77.0))
    }
    out = tmp_path / "reports"
    assert (
        main(
            [
                "report",
                "--base",
                str(paths["base"]),
                "--base-mean",
                str(paths["base_mean"]),
                "--base-pooling",
                "cls",
                "--twin",
                str(paths["twin"]),
                "--distilled",
                str(paths["distilled"]),
                "--markdown",
                str(out / "t.md"),
                "--plot",
                str(out / "b.png"),
                "--plot-data",
                str(out / "b.csv"),
            ]
        )
        == 0
    )
    table = (out / "t.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[4:]] == [
        "| base (cls pooling)",
        "| base (mean pooling)",
        "| twin (JTCSE)",
        "| distilled (JTCSE-D)",
    ]
    assert "| base (mean pooling) | 75.00 | 76.00 |" in (out / "t.md").read_text()
    rows = list(csv.DictReader((out / "b.csv").open()))
    assert len(rows) == 4 * 8 and rows[0] == {"task": "sts12", "model": "base (cls pooling)", "spearman": "70.0"}
    assert {r["model"] for r in rows if r["task"] == "avg"} == {
        "base (cls pooling)",
        "base (mean pooling)",
        "twin (JTCSE)",
        "distilled (JTCSE-D)",
    }
    assert (out / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # 70 .. 84: the axis starts 5 below the lowest (rounded to 5) and leaves room above the highest for labels
    assert y_range({"a": {"sts12": 70.0, "avg": 84.0}}) == (65.0, 90.0)
    assert y_range({"a": {"sts12": 2.0}}) == (0.0, 5.0)


def test_report_with_mean_pooling_models_shows_the_base_once(tmp_path):
    from jtcse.cli import main

    base = write_metrics(tmp_path, "base", 70.0)
    assert (
        main(
            [
                "report",
                "--base",
                str(base),
                "--base-mean",
                str(base),
                "--base-pooling",
                "mean",
                "--markdown",
                str(tmp_path / "t.md"),
            ]
        )
        == 0
    )
    text = (tmp_path / "t.md").read_text()
    assert text.count("| base (mean pooling) |") == 1 and "cls" not in text


def dvc_json(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args, "--json"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_dvc_metrics_show_is_a_narrow_table():
    shown = dvc_json(["metrics", "show"])
    (workspace,) = shown.values()
    files = workspace["data"]
    assert "reports/validation.json" not in files
    keys = {k for f in files.values() for k in f.get("data", {})}
    selection = {f"{when}_{metric}" for when in ("initial", "best") for metric in SELECTION_METRICS}
    from jtcse.evaluation.transfer import TRANSFER_TASKS

    summary = {"best_step", "steps", "batch_size", "seconds_this_run", "seconds"}
    assert keys <= {*TASKS, *TRANSFER_TASKS, *selection, *summary}, keys
