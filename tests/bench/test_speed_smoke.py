"""Smoke test of bench/speed.py's step, scaling and encode parts on the tiny model in --quick mode: they run end to
end, report every ratio the targets table needs (finite, positive), and a rerun reuses what was measured. No
timing thresholds: timings on a shared machine mean nothing here."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from bench import speed


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def _argv(settings, tmp_path) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(settings.model_dump(mode="json", by_alias=True), sort_keys=False))
    work = tmp_path / "work"
    return ["--params", str(params), "--quick", "--reuse-dir", str(work), "--set", "runtime.threads=1"]


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_speed_step_part_compares_with_sentence_transformers_and_the_gemm_peak(tiny_settings, tmp_path):
    pytest.importorskip("sentence_transformers")
    out = tmp_path / "results"
    argv = [*_argv(tiny_settings, tmp_path), "--parts", "step", "--out", str(out)]
    report = speed.main(argv)
    step = report["step"]
    for key in ("ratio_ours_vs_st", "ratio_jtcse_vs_simcse", "flops_ratio_jtcse_vs_simcse"):
        assert _positive(step[key]), key
    assert set(step["ms"]) == set(step["flops"]) == set(step["utilisation"]) == set(speed.speed_step.BUILDERS)
    assert all(_positive(v) for v in step["utilisation"].values())
    assert step["flops"]["jtcse"]["total"] > 2 * step["flops"]["simcse"]["total"]  # two towers and the bridge
    # same model, rows and length: the same FLOPs up to the losses' similarity matrices (ours: 2N x 2N, MNRL: N x N)
    assert step["flops"]["st_simcse"]["total"] == pytest.approx(step["flops"]["simcse"]["total"], rel=1e-3)
    assert step["info"]["st_simcse"]["pooling"] == [step["info"]["simcse"]["pooling"]]
    assert _positive(step["gemm"]["peak_gflops"]) and 0 < step["profile_jtcse"]["gemm_share"] < 1
    targets = {t["key"]: t for t in report["targets"]}
    assert set(targets) == {
        "ours_vs_st_step",
        "jtcse_vs_simcse_step",
        "jtcse_attention_vs_simcse_step",
        "jtcse_step_utilisation",
    }
    assert all(_positive(t["value"]) and isinstance(t["met"], bool) for t in targets.values())
    md = (out / "speed.md").read_text()
    assert md.index("| target | measured | target | met |") < md.index("## 1. Training step")
    assert "sentence-transformers SimCSE step" in md and (out / "speed.png").read_bytes()[:4] == b"\x89PNG"

    # A rerun with the same options measures nothing again: the part is read back from the work folder.
    again = speed.main([*argv, "--out", str(tmp_path / "again")])
    assert again["step"] == json.loads(json.dumps(step))


def test_speed_scaling_and_encode_parts_resume_from_the_work_folder(tiny_settings, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "results"
    sizes = ["--scaling-batches", "2", "--scaling-lengths", "8", "--encode-scale-sizes", "20", "50"]
    argv = [*_argv(tiny_settings, tmp_path), "--parts", "scaling", "encode", "--out", str(out), *sizes]
    report = speed.main(argv)
    scaling = report["scaling"]
    assert {(r["variant"], r["batch"], r["length"]) for r in scaling["steps"]} == {("simcse", 2, 8), ("jtcse", 2, 8)}
    for row in scaling["steps"]:
        assert _positive(row["step_ms"]) and row["peak_rss_mib"] >= row["rss_built_mib"] > 0
    assert [e["sentences"] for e in scaling["encode"]] == [20, 50] and all(e["measured"] for e in scaling["encode"])
    encode = report["encode"]
    assert [r["key"] for r in encode["rows"]][-1] == "sentence_transformers_torch"
    targets = {t["key"]: t for t in report["targets"]}
    assert {"jtcse_vs_st_encode", "onnx_int8_vs_st_encode"} <= set(targets)
    assert all(_positive(float(targets[k]["value"])) for k in ("jtcse_vs_st_encode", "onnx_int8_vs_st_encode"))
    md = (out / "speed.md").read_text()
    assert "| batch | max length |" in md and "| jtcse onnx int8 |" in md

    cache = tmp_path / "work" / "cache"
    kept = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len([n for n in kept if n.startswith("scaling_step-")]) == 2
    # An interrupted run: the part's own result is gone, its configs are kept and reused, nothing is re-measured.
    for part in cache.glob("part_scaling-*.json"):
        part.unlink()
    again = speed.main([*argv, "--out", str(tmp_path / "again")])
    assert again["scaling"]["steps"] == scaling["steps"]
    assert all(p.stat().st_mtime_ns == kept[p.name] for p in cache.glob("scaling_step-*.json"))
