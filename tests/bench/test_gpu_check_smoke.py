"""bench/gpu_check.py --cpu-smoke: the GPU check runs end to end at a tiny size on the CPU (the GPU machine is lent
rarely: a script that breaks here would waste its time), through the pipeline's own stages and settings."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_check


@pytest.fixture(autouse=True)
def _no_out_and_torch_threads(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)  # the device tool's results folder: never written by a test
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cpu_smoke_measures_every_part_and_trains_with_the_stages(tmp_path):
    argv = ["--cpu-smoke", "--carry", str(tmp_path / "no-carry"), "--out", str(tmp_path / "out")]
    report = gpu_check.main(argv)

    assert {r["variant"] for r in report["steps"]} == {"one_tower", "twin_no_bridge", "jtcse_twin"}
    assert all(r["ms_per_step"] > 0 for r in report["steps"])
    assert [r["dtype"] for r in report["encode"]] == ["bf16", "fp32", "bf16", "fp32"]
    training = report["training"]
    assert [s["stage"] for s in training["stages"]] == ["SimCSE tower a", "SimCSE tower b", "JTCSE twin (stream x 2)"]
    for stage in training["stages"]:
        assert stage["steps"] == 3 and stage["ms_per_step"] > 0 and [step for step, _ in stage["curve"]] == [0, 3]
        assert stage["curve"][0][1] == pytest.approx(stage["initial_dev"], abs=1e-4)  # eval.csv keeps 4 decimals
        assert stage["best_dev"] >= stage["initial_dev"]
    # The recipe is params.yaml's with the check's budget: its learning rates, the smoke's explicit bridge.
    settings = training["settings"]
    assert settings["train"]["cross_attention"]["num_layers"] == training["bridged_layers"] == 2
    assert training["stages"][2]["lr"] == settings["train"]["lr"] and settings["train"]["diagnostics"] is False
    written = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert written["training"]["stages"] == json.loads(json.dumps(training["stages"]))
    assert "| JTCSE twin (stream x 2) | 3 | 8 |" in (tmp_path / "out" / "gpu.md").read_text()


def test_a_bridge_that_does_not_fit_the_base_is_an_error_not_replaced(tmp_path):
    argv = ["--cpu-smoke", "--carry", str(tmp_path / "no-carry"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"num_layers: 3 does not divide the 4 layers .* use one of \[1, 2, 4\]"):
        gpu_check.main([*argv, "--set", "train.cross_attention.num_layers=3"])
    assert not (tmp_path / "out").exists()  # refused before anything was measured
