"""Smoke test of bench/onnx_encode.py at a tiny size: it runs end to end and writes what it promises (no timing
thresholds: timings on a shared machine mean nothing here)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from bench import onnx_encode

pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_onnx_encode_writes_every_row_and_the_sts_of_both_files(tiny_settings, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_settings.model_dump(mode="json", by_alias=True), sort_keys=False))
    out = tmp_path / "results"
    argv = ["--params", str(params), "--sentences", "24", "--repeats", "2", "--batch-size", "8", "--out", str(out)]
    report = onnx_encode.main([*argv, "--set", "runtime.threads=1"])
    data = json.loads((out / "onnx_encode.json").read_text())
    assert data["rows"] == report["rows"]
    keys = ["jtcse_torch", "jtcse_onnx_float32", "jtcse_onnx_int8", "sentence_transformers_torch"]
    assert [r["key"] for r in data["rows"]] == keys and data["sentences"] == 24
    for row in data["rows"]:
        assert row["sentences_per_s"] > 0 and math.isfinite(row["vs_sentence_transformers"])
    rows = {r["key"]: r for r in data["rows"]}
    assert (
        rows["jtcse_onnx_float32"]["max_abs_diff"] < 1e-4 and rows["sentence_transformers_torch"]["max_abs_diff"] < 1e-4
    )
    assert rows["jtcse_onnx_int8"]["min_cosine"] > 0.99
    assert set(data["sts"]) == {"jtcse_onnx_float32", "jtcse_onnx_int8"}
    assert all(len(scores) == 8 and math.isfinite(scores["avg"]) for scores in data["sts"].values())
    markdown = (out / "onnx_encode.md").read_text()
    assert "| jtcse onnx int8 |" in markdown and "int8 - float32:" in markdown and "avg" in markdown
