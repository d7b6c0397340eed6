"""Smoke test of the benchmarks at a tiny size: they run end to end and write what they promise.

No timing thresholds: timings on a shared CI machine mean nothing; only that the numbers exist and are sane.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from bench import quality, speed, transfer


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """runtime.threads=1 keeps tiny models fast on a busy machine; the setting is process-wide, so put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _params_file(settings, path):
    raw = settings.model_dump(mode="json", by_alias=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def test_quality_writes_every_row(tiny_settings, tmp_path):
    params = _params_file(tiny_settings, tmp_path / "params.yaml")
    out = tmp_path / "results"
    stage = ["steps=2", "eval_every=2", "checkpoint_every=2", "batch_size=8"]
    sets = [f"{section}.{kv}" for section in ("pretrain", "train", "distill") for kv in stage]
    argv = [
        "--params",
        str(params),
        "--seeds",
        "1",
        "--rows",
        "all",
        "--out",
        str(out),
        "--reuse-dir",
        str(tmp_path / "work"),
        "--set",
        "data.max_sentences=64",
        "--set",
        "runtime.threads=1",
    ]
    for item in sets:
        argv += ["--set", item]
    report = quality.main(argv)

    keys = ["base_cls", "base_mean", "simcse", "ensemble", "tncse", "jtcse", "jtcse_d"]
    data = json.loads((out / "quality.json").read_text())
    assert [r["key"] for r in data["rows"]] == keys == [r["key"] for r in report["rows"]]
    for row in data["rows"]:
        assert set(row["mean"]) == {"sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg"}
        assert all(math.isfinite(v) for v in row["mean"].values())
        assert row["eval_s"] > 0 and (row["train_s"] > 0) == row["trained"]
        assert len(row["per_seed"]["1"]["encoder_identity"]) == 16
    by_key = {r["key"]: r for r in data["rows"]}
    assert set(by_key["jtcse"]["per_seed"]["1"]["train_stages_s"]) == {"twin_jtcse", "tower_a", "tower_b"}
    # The towers read one pretrain section but train with different seeds: tower B is never tower A reused.
    work = tmp_path / "work" / "seed1"
    assert json.loads((work / "tower_b.done.json").read_text())["kind"] == "tower_b"
    # (their dev curves differ after step 0; their shipped weights may both be the base when step 0 wins on dev)
    curve_a, curve_b = ((work / "metrics" / t / "eval.csv").read_text().splitlines() for t in ("tower_a", "tower_b"))
    assert curve_a[:2] == curve_b[:2] and curve_a[2:] != curve_b[2:]
    assert data["settings"]["pretrain"]["steps"] == 2 and data["environment"]["git_commit"]
    assert data["row_overrides"]["tncse"] == {"train.cross_attention.num_layers": 0}

    md = (out / "quality.md").read_text()
    for row in data["rows"]:
        assert f"| {row['number']} | {row['label']} |" in md
    for line in data["comparisons"]:
        assert line in md and "does not beat" in line
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run with the same work dir reuses every trained stage instead of training again.
    again = quality.main([*argv, "--rows", "6", "--out", str(tmp_path / "again")])
    assert again["rows"][0]["per_seed"][1]["reused_stages"] == ["distilled", "tower_a", "tower_b", "twin_jtcse"]
    assert again["rows"][0]["mean"] == by_key["jtcse_d"]["mean"]


def test_speed_loss_part_agrees_and_reports_a_ratio(tmp_path):
    from bench import speed_loss

    check = speed_loss.loss_agreement(batch=6, hidden=5)
    assert check["max_abs_diff_value"] < 1e-10 and check["max_abs_diff_grad"] < 1e-10
    assert check["clamped_rows"] > 0  # the clamp branch was exercised

    argv = ["--parts", "loss", "--quick", "--out", str(tmp_path), "--reuse-dir", str(tmp_path / "work")]
    report = speed.main(argv)
    loss = report["loss"]
    assert loss["agreement"]["max_abs_diff_value"] < 1e-10
    assert [r["batch"] for r in loss["rows"]] == list(speed.QUICK["loss_batches"])
    for row in loss["rows"]:
        assert row["speedup"] > 0 and math.isfinite(row["speedup"])
        assert row["vectorised_ms"] > 0 and row["naive_ms"] > 0
    assert (tmp_path / "speed.json").is_file() and "Tensor-modulus loss" in (tmp_path / "speed.md").read_text()


def test_ablation_writes_every_cell_with_dev_test_and_diagnostics(tiny_settings, tmp_path):
    from bench import ablation

    params = _params_file(tiny_settings, tmp_path / "params.yaml")
    out = tmp_path / "results"
    argv = [
        "--params",
        str(params),
        "--seeds",
        "1",
        "--out",
        str(out),
        "--reuse-dir",
        str(tmp_path / "work"),
        "--cells",
        "tncse",
        "stream2:cross_attention.mode=stream,cross_attention.num_layers=2,w_cross=0.5",
        "--set",
        "data.max_sentences=64",
        "--set",
        "runtime.threads=1",
        "--set",
        "train.diagnostics_probe=8",
    ]
    for section in ("pretrain", "train"):
        argv += ["--set", f"{section}.steps=2", "--set", f"{section}.eval_every=2", "--set", f"{section}.batch_size=8"]
    report = ablation.main(argv)
    data = json.loads((out / "ablation.json").read_text())
    assert (
        sorted(c["name"] for c in data["cells"]) == ["stream2", "tncse"] == sorted(c["name"] for c in report["cells"])
    )
    by_name = {c["name"]: c for c in data["cells"]}
    assert by_name["stream2"]["overrides"] == {
        "train.cross_attention.mode": "stream",
        "train.cross_attention.num_layers": 2,
        "train.w_cross": 0.5,
    }
    dev_means = [c["dev"]["dev_mean"][0] for c in data["cells"]]
    assert dev_means == sorted(dev_means, reverse=True)  # chosen on dev: sorted by the selection metric
    for cell in data["cells"]:
        rec = cell["per_seed"]["1"]
        assert set(rec["dev_at_best"]) == {"stsb_dev", "sickr_dev", "dev_mean"}
        assert math.isfinite(cell["test"]["mean"]["avg"]) and rec["diagnostics_steps"] == [0, 2]
    assert by_name["stream2"]["per_seed"]["1"]["diagnostics_last"]["grad_cross"] > 0
    assert by_name["tncse"]["per_seed"]["1"]["diagnostics_first"]["loss_cross"] is None
    md = (out / "ablation.md").read_text()
    assert "| stream2 | stream | 2 | 0.5 |" in md and "| tncse | none | 0 |" in md
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Rerun: nothing is trained or evaluated again.
    test_caches = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "seed1").glob("*.test.json")}
    again = ablation.main(argv)
    assert [c["test"]["mean"] for c in again["cells"]] == [c["test"]["mean"] for c in report["cells"]]
    assert len(test_caches) == 2
    assert {p: p.stat().st_mtime_ns for p in test_caches} == test_caches

    # quality.py's TNCSE row is the ablation's tncse cell under another name: its model and test scores are reused.
    quality_argv = [a for a in argv if a not in ("--cells", "tncse") and not a.startswith("stream2:")]
    rows = quality.main([*quality_argv, "--rows", "4", "--out", str(tmp_path / "quality")])["rows"]
    tncse = rows[0]["per_seed"][1]
    assert tncse["reused_stages"] == ["tower_a", "tower_b", "twin_tncse"] and tncse["eval_cached"]
    assert tncse["scores"] == {k: round(v, 4) for k, v in by_name["tncse"]["per_seed"]["1"]["scores"].items()}
    assert not (tmp_path / "work" / "seed1" / "twin_tncse").exists()


def test_quality_design_rows_and_profiles(tiny_settings, tmp_path):
    from bench import common

    assert common.profile_overrides("long", ["train.lr=3e-5"])["train.steps"] == 300
    assert common.profile_overrides("long", ["train.steps=400"])["train.steps"] == 400  # --set wins
    with pytest.raises(SystemExit, match="unknown profile"):
        common.profile_overrides("huge", [])
    params = _params_file(tiny_settings, tmp_path / "params.yaml")
    argv = [
        "--params",
        str(params),
        "--seeds",
        "1",
        "--rows",
        "tncse",
        "side1",
        "--out",
        str(tmp_path / "r"),
        "--design",
        "side1:cross_attention.mode=side,cross_attention.num_layers=1,w_cross=2",
        "--set",
        "data.max_sentences=64",
        "--set",
        "runtime.threads=1",
        "--set",
        "train.diagnostics=false",
    ]
    for section in ("pretrain", "train"):
        argv += ["--set", f"{section}.steps=2", "--set", f"{section}.eval_every=2", "--set", f"{section}.batch_size=8"]
    report = quality.main(argv)
    assert [(r["key"], r["number"]) for r in report["rows"]] == [("tncse", "4"), ("design_side1", "5.1")]
    assert report["row_overrides"]["design_side1"] == {
        "train.cross_attention.mode": "side",
        "train.cross_attention.num_layers": 1,
        "train.w_cross": 2,
    }
    assert "| 5.1 | JTCSE twin, side1 |" in (tmp_path / "r" / "quality.md").read_text()
    # A design without bridged layers is a TNCSE twin, and its row says so.
    table = quality.row_table(["side1:cross_attention.mode=side", "plain:lr=5e-6,cross_attention.num_layers=0"])
    assert [r.label for r in table.rows if r.key.startswith("design_")] == ["JTCSE twin, side1", "TNCSE twin, plain"]


def test_transfer_writes_every_row_and_reuses_finished_ones(tiny_settings, tiny_bert, small_transfer_dir, tmp_path):
    params = _params_file(tiny_settings, tmp_path / "params.yaml")
    out, work = tmp_path / "results", tmp_path / "work"
    argv = [
        "--params",
        str(params),
        "--out",
        str(out),
        "--reuse-dir",
        str(work),
        "--set",
        "runtime.threads=1",
        "--set",
        f"transfer.data_dir={small_transfer_dir}",
        "--set",
        "transfer.folds=2",
        "--set",
        "transfer.inner_folds=2",
        "--set",
        "transfer.max_train=null",
        "--rows",
        "base_cls=@base@cls",
        f"tower_mean={tiny_bert}@mean",
        f"from_dvc={tmp_path / 'dvc.json'}",
    ]
    (tmp_path / "dvc.json").write_text(
        json.dumps(
            {
                "mr": 60.0,
                "cr": 70.0,
                "subj": 80.0,
                "mpqa": 75.0,
                "sst2": 65.0,
                "trec": 50.0,
                "mrpc": 66.0,
                "avg": 66.5714,
            }
        )
    )
    report = transfer.main(argv)

    data = json.loads((out / "transfer.json").read_text())
    assert [(r["name"], r["pooling"]) for r in data["rows"]] == [
        ("base_cls", "cls"),
        ("tower_mean", "mean"),
        ("from_dvc", "-"),
    ]
    assert data["rows"][2]["scores"]["trec"] == 50.0 and data["rows"][2]["seconds"] is None
    for row in data["rows"][:2]:
        assert set(row["scores"]) == {"mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc", "avg"}
        assert 0 <= row["scores"]["avg"] <= 100 and row["seconds"] > 0 and row["sentences"] > 0
        assert row["scores"]["avg"] == pytest.approx(
            sum(v for k, v in row["scores"].items() if k != "avg") / 7, abs=1e-3
        )
    # cls and mean pooling of the same weights are different vectors, so different probes.
    assert data["rows"][0]["scores"] != data["rows"][1]["scores"]
    md = (out / "transfer.md").read_text()
    assert "| base zero-shot (cls) |" in md and "| tower_mean |" in md and "| MR | CR |" in md
    assert "| 50.00 | 66.00 | **66.57** | from dvc repro |" in md
    assert report["rows"] == data["rows"]

    again = transfer.main([*argv, "--out", str(tmp_path / "again")])
    assert again["rows"] == data["rows"]  # reused from the work dir: same scores, same recorded times

    with pytest.raises(SystemExit, match="pooling must be cls or mean"):
        transfer.main([*argv, "--rows", "bad=@base@max"])
    with pytest.raises(SystemExit, match="not found"):
        transfer.main([*argv, "--rows", f"gone={tmp_path / 'missing'}"])


def test_recipe_search_reports_each_cell_on_dev_and_resumes(tiny_settings, tmp_path):
    from bench import recipe_search

    params = _params_file(tiny_settings, tmp_path / "params.yaml")
    out, work = tmp_path / "results", tmp_path / "work"
    common = ["--params", str(params), "--out", str(out), "--reuse-dir", str(work), "--set", "runtime.threads=1"]
    for section in ("pretrain", "train"):
        common += [
            "--set",
            f"{section}.steps=2",
            "--set",
            f"{section}.eval_every=2",
            "--set",
            f"{section}.batch_size=8",
        ]
    common += ["--set", "data.max_sentences=64"]
    assert recipe_search.main([*common, "--report-only"])["cells"] == []  # nothing trained yet: nothing to report

    report = recipe_search.main([*common, "--cells", "mixed_gentle", "mean_gentle"])
    cells = {c["name"]: c for c in report["cells"]}
    assert set(cells) == {"mixed_gentle", "mean_gentle"} and all(c["finished"] for c in cells.values())
    assert [r["step"] for r in cells["mixed_gentle"]["curve"]] == [0.0, 2.0]
    assert cells["mixed_gentle"]["best"]["dev_mean"] >= cells["mixed_gentle"]["ensemble"]["dev_mean"]  # step 0 counts
    assert cells["mixed_gentle"]["overrides"]["train.lr"] == 2e-6
    assert cells["mean_gentle"]["cos_towers_step0"] == pytest.approx(1.0, abs=1e-5)  # the base twice
    assert cells["mixed_gentle"]["cos_towers_step0"] < 1.0
    md = (out / "recipe_search.md").read_text()
    assert "| mixed_gentle |" in md and "| mean_gentle |" in md and "Not run yet" not in md
    again = recipe_search.main([*common, "--report-only"])  # every finished cell read back, nothing retrained
    assert {c["name"] for c in again["cells"]} == set(cells) and "mean_jtcse" in again["not_started"]
    assert (out / "recipe_search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_report_only_tables_what_is_finished_and_trains_nothing(tiny_settings, tmp_path):
    params = _params_file(tiny_settings, tmp_path / "params.yaml")
    argv = ["--params", str(params), "--out", str(tmp_path / "out"), "--reuse-dir", str(tmp_path / "work")]
    argv += ["--set", "runtime.threads=1", "--set", "data.max_sentences=64"]
    for section in ("pretrain", "train", "distill"):
        argv += ["--set", f"{section}.steps=2", "--set", f"{section}.eval_every=2", "--set", f"{section}.batch_size=8"]
    quality.main([*argv, "--rows", "2", "--seeds", "1"])  # seed 1's tower A only
    report = quality.main(
        [*argv, "--rows", "2", "5", "--seeds", "1", "2", "--repeat-rows", "simcse", "jtcse", "--report-only"]
    )
    assert [r["key"] for r in report["rows"]] == ["simcse"] and list(report["rows"][0]["per_seed"]) == [1]
    assert report["missing"] == ["simcse seed 2", "jtcse seed 1", "jtcse seed 2"]
    assert not (tmp_path / "work" / "seed2").exists()  # nothing was trained for the missing seed
    assert "left out): simcse seed 2, jtcse seed 1, jtcse seed 2" in (tmp_path / "out" / "quality.md").read_text()
