"""Smoke test of the benchmarks at a tiny size: they run end to end and write what they promise.

No timing thresholds: timings on a shared CI machine mean nothing; only that the numbers exist and are sane.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from bench import quality, speed


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
    argv = ["--params", str(params), "--seeds", "1", "--rows", "all", "--out", str(out),
            "--reuse-dir", str(tmp_path / "work"), "--set", "data.max_sentences=64", "--set", "runtime.threads=1"]
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
    by_key = {r["key"]: r for r in data["rows"]}
    assert set(by_key["jtcse"]["per_seed"]["1"]["train_stages_s"]) == {"twin_jtcse", "tower_a", "tower_b"}
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
    check = speed.loss_agreement(batch=6, hidden=5)
    assert check["max_abs_diff_value"] < 1e-10 and check["max_abs_diff_grad"] < 1e-10
    assert check["clamped_rows"] > 0  # the clamp branch was exercised

    report = speed.main(["--parts", "loss", "--quick", "--out", str(tmp_path)])
    loss = report["loss"]
    assert loss["agreement"]["max_abs_diff_value"] < 1e-10
    assert [r["batch"] for r in loss["rows"]] == list(speed.QUICK["loss_batches"])
    for row in loss["rows"]:
        assert row["speedup"] > 0 and math.isfinite(row["speedup"])
        assert row["vectorised_ms"] > 0 and row["naive_ms"] > 0
    assert (tmp_path / "speed.json").is_file() and "modulus loss" in (tmp_path / "speed.md").read_text()
