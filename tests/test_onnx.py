"""ONNX in the package (jtcse/onnx_backend.py): `jtcse package` writes distilled/onnx/model.onnx and an int8
variant; `jtcse.load(..., backend="onnx")` and `jtcse encode --backend onnx` run them with onnxruntime.

Tolerances (tiny random 32-wide BERT of tests/conftest.py, 4 layers):
- float32 export: every vector within 1e-4 (absolute) of the torch model's, and cosine within 1e-4 of 1 (measured
  about 5e-7 and 1e-7);
- int8 export: cosine with the torch vectors >= 0.99 (measured about 0.9999 here; on MiniLM-L6 0.983 at the worst
  of 2000 STS sentences, and a seven-task STS average 0.12 below float32: bench/results/speed.md, section 3).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from jtcse.errors import UserError
from tests.conftest import build_tiny_model
from tests.release.test_packaging import build, inputs  # noqa: F401  (fixture: what the pipeline hands `jtcse package`)

pytest.importorskip("onnxruntime")

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field while a child watches them.",
    "x",
    "The stock market fell sharply on Tuesday, analysts said, after a long and very wordy report " * 3,
]
INT8 = "onnx/model_qint8_avx512_vnni.onnx"
FLOAT_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.99


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def package(inputs):  # noqa: F811
    """Built once with the self-check, which loads both ONNX files and compares them with the torch model."""
    return build(inputs, inputs["root"] / "onnx_models", check=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_package_writes_both_onnx_files_in_sentence_transformers_layout(package):
    import onnxruntime as ort

    distilled = package.path / "distilled"
    manifest = json.loads((package.path / "jtcse_package.json").read_text())
    entry = manifest["models"]["distilled"]["onnx"]
    assert entry == {
        "float32": "onnx/model.onnx",
        "int8": INT8,
        "quantization": "avx512_vnni",
        "opset": 17,
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "output": "last_hidden_state",
    }
    assert sorted(p.name for p in (distilled / "onnx").iterdir()) == ["model.onnx", "model_qint8_avx512_vnni.onnx"]
    listed = (package.path / "SHA256SUMS").read_text()
    assert "  distilled/onnx/model.onnx\n" in listed and f"  distilled/{INT8}\n" in listed
    assert {"distilled/onnx/model.onnx", f"distilled/{INT8}"} <= set(manifest["files"])
    for name in ("model.onnx", Path(INT8).name):
        session = ort.InferenceSession(str(distilled / "onnx" / name), providers=["CPUExecutionProvider"])
        assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
            (n, ["batch_size", "sequence_length"], "tensor(int64)") for n in entry["inputs"]
        ]
        assert [(o.name, o.shape) for o in session.get_outputs()] == [
            ("last_hidden_state", ["batch_size", "sequence_length", 32])
        ]
    sizes = {name: (distilled / name).stat().st_size for name in ("onnx/model.onnx", INT8)}
    assert sizes[INT8] < 0.5 * sizes["onnx/model.onnx"]
    card = (package.path / "README.md").read_text()
    assert "### ONNX" in card and f"`distilled/{INT8}`" in card and "`distilled/onnx/model.onnx`" in card
    assert f'jtcse.load("tiny-jtcse-0.0.1", backend="onnx", file_name="{INT8}")' in card
    assert f"--backend onnx --file-name {INT8}" in card
    assert "STS avg" not in card  # package.onnx_sts is off by default


def test_onnx_vectors_match_the_torch_model(package):
    import jtcse
    from jtcse.onnx_backend import OnnxEncoder

    torch_model = jtcse.load(package.path, device="cpu")
    want = torch_model.encode(SENTENCES, batch_size=2)
    onnx_float = jtcse.load(package.path, backend="onnx")
    assert isinstance(onnx_float, OnnxEncoder) and onnx_float.pooling == "cls" and onnx_float.max_seq_length == 32
    assert onnx_float.get_sentence_embedding_dimension() == 32
    got = onnx_float.encode(SENTENCES, batch_size=2)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() < FLOAT_TOLERANCE
    assert np.abs(1 - cosines(got, want)).max() < FLOAT_TOLERANCE
    int8 = jtcse.load(package.path, backend="onnx", file_name=INT8).encode(SENTENCES, batch_size=3)
    assert cosines(int8, want).min() > INT8_MIN_COSINE
    assert np.abs(int8 - want).max() > 0  # it is a different model, not the float file again

    # the same encode() arguments as the torch backend
    unit = onnx_float.encode(SENTENCES, normalize_embeddings=True, convert_to_tensor=True)
    assert isinstance(unit, torch.Tensor) and torch.allclose(unit.norm(dim=1), torch.ones(len(SENTENCES)))
    single = onnx_float.encode(SENTENCES[0])
    assert single.shape == (32,) and np.abs(single - want[0]).max() < FLOAT_TOLERANCE
    assert onnx_float.encode([]).shape == (0, 32)
    as_list = onnx_float.encode(SENTENCES[:2], convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == 2 and isinstance(as_list[0], torch.Tensor)
    assert onnx_float.encode(SENTENCES, truncate_dim=8).shape == (len(SENTENCES), 8)
    assert float(onnx_float.similarity(got[:1], want[:1])[0, 0]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("arch,pooling", [("bert", "mean"), ("roberta", "cls")])
def test_export_follows_the_folders_pooling_and_the_tokenizers_inputs(arch, pooling, tmp_path):
    """Mean pooling is read from 1_Pooling/config.json; a tokenizer without token_type_ids (RoBERTa's) gives a
    graph without that input."""
    import jtcse
    from jtcse.onnx_backend import export_onnx
    from jtcse.release.export import export_sentence_transformer

    source = build_tiny_model(tmp_path / "source", arch=arch, seed=3)
    if arch == "roberta":  # the tiny RoBERTa borrows MiniLM's tokenizer: make it name RoBERTa's inputs
        config = json.loads((source / "tokenizer_config.json").read_text())
        config["model_input_names"] = ["input_ids", "attention_mask"]
        (source / "tokenizer_config.json").write_text(json.dumps(config))
    folder = tmp_path / "st"
    export_sentence_transformer(source, folder, pooling=pooling, max_seq_length=24)
    entry = export_onnx(folder, quantization="avx2")
    expected_inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if arch == "bert" else [])
    assert entry["inputs"] == expected_inputs and entry["int8"] == "onnx/model_quint8_avx2.onnx"
    want = jtcse.load(folder, device="cpu").encode(SENTENCES)
    got = jtcse.load(folder, backend="onnx").encode(SENTENCES, batch_size=3)
    assert jtcse.load(folder, backend="onnx").pooling == pooling
    assert np.abs(got - want).max() < FLOAT_TOLERANCE
    int8 = jtcse.load(folder, backend="onnx", file_name=entry["int8"]).encode(SENTENCES)
    assert cosines(int8, want).min() > INT8_MIN_COSINE


def test_a_package_without_onnx_files_still_loads_with_torch(inputs, tmp_path, monkeypatch, caplog):  # noqa: F811
    """onnx/onnxruntime not installed: the package is built without the files (one log line) and loads."""
    import jtcse
    import jtcse.onnx_backend as backend

    monkeypatch.setattr(backend, "missing_packages", lambda *names: ["onnx", "onnxruntime"])
    with caplog.at_level(logging.INFO, logger="jtcse"):
        result = build(inputs, tmp_path / "models", check=True)
    skipped = [r.getMessage() for r in caplog.records if "ONNX files skipped" in r.getMessage()]
    assert skipped == [
        "ONNX files skipped: onnx and onnxruntime not installed (the [onnx] extra); the package loads with the "
        "torch backend"
    ]
    assert not (result.path / "distilled" / "onnx").exists()
    assert "onnx" not in json.loads((result.path / "jtcse_package.json").read_text())["models"]["distilled"]
    assert "### ONNX" not in (result.path / "README.md").read_text()
    assert jtcse.load(result.path, device="cpu").encode(SENTENCES).shape == (len(SENTENCES), 32)
    with pytest.raises(UserError, match=r"distilled/onnx/model\.onnx: no such ONNX file \(backend='onnx'"):
        jtcse.load(result.path, backend="onnx")


def test_package_onnx_false_skips_the_export(inputs, tmp_path, caplog):  # noqa: F811
    from jtcse.onnx_backend import package_onnx

    settings = inputs["settings"].model_copy(deep=True)
    settings.package.onnx = False
    with caplog.at_level(logging.INFO, logger="jtcse"):
        assert package_onnx(tmp_path, settings) is None
    assert "ONNX files skipped: package.onnx is false" in caplog.text and not (tmp_path / "onnx").exists()


def test_bad_backend_file_name_or_device_is_one_line(package, tmp_path, monkeypatch):
    import jtcse
    import jtcse.onnx_backend as backend

    with pytest.raises(UserError, match=r"^backend 'openvino' is not supported; use 'torch' or 'onnx'$"):
        jtcse.load(package.path, backend="openvino")
    with pytest.raises(UserError, match="needs backend='onnx'"):
        jtcse.load(package.path, file_name=INT8)
    with pytest.raises(UserError, match=r"model_qint8_arm64\.onnx: no such ONNX file .*file_name='onnx/model_qint8"):
        jtcse.load(package.path, backend="onnx", file_name="onnx/model_qint8_arm64.onnx")
    for outside in ("../twin/twin.json", "/etc/passwd"):
        with pytest.raises(UserError, match="must be a path inside the model folder"):
            jtcse.load(package.path, backend="onnx", file_name=outside)
    with pytest.raises(UserError, match="a twin .* has no ONNX export"):
        jtcse.load(package.path / "twin", backend="onnx")
    with pytest.raises(UserError, match="runs on the CPU"):
        jtcse.load(package.path, backend="onnx", device="cuda")
    monkeypatch.setattr(backend, "missing_packages", lambda *names: list(names))
    with pytest.raises(UserError, match=r"^backend='onnx' needs onnxruntime, which is not installed .*model\.onnx$"):
        jtcse.load(package.path, backend="onnx")
    monkeypatch.undo()
    broken = tmp_path / "distilled"
    shutil.copytree(package.path / "distilled", broken)
    (broken / "onnx" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"model\.onnx: onnxruntime cannot open it"):
        jtcse.load(broken, backend="onnx")


def test_cli_encode_and_similarity_with_the_onnx_backend(package, tmp_path, capsys):
    import jtcse
    from jtcse.cli import main

    sentences = tmp_path / "in.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    args = ["encode", "--model", str(package.path), "--input", str(sentences), "--output", str(out)]
    assert main([*args, "--backend", "onnx", "--file-name", INT8]) == 0
    want = jtcse.load(package.path, backend="onnx", file_name=INT8).encode(SENTENCES)
    assert np.abs(np.load(out) - want).max() < 1e-6
    assert main([*args, "--backend", "onnx"]) == 0
    assert np.abs(np.load(out) - jtcse.load(package.path, device="cpu").encode(SENTENCES)).max() < FLOAT_TOLERANCE
    capsys.readouterr()
    assert main([*args, "--backend", "onnx", "--file-name", "onnx/none.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnx/none.onnx: no such ONNX file" in err
    assert main(["similarity", "a cat", "a cat", "--model", str(package.path), "--backend", "onnx"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(1.0, abs=1e-4)


def test_atomic_path_renames_on_success_and_leaves_nothing_on_failure(tmp_path):
    from jtcse.io import atomic_path

    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.onnx.") and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_package_onnx_sts_puts_each_variants_sts_average_in_the_card(inputs, small_sts_dir, tmp_path):  # noqa: F811
    settings = inputs["settings"].model_copy(deep=True)
    settings.package.onnx_sts = True
    settings.data.sts_dir = small_sts_dir
    result = build({**inputs, "settings": settings}, tmp_path / "models")
    sts = json.loads((result.path / "jtcse_package.json").read_text())["models"]["distilled"]["onnx"]["sts"]
    assert list(sts) == ["torch", "onnx float32", "onnx int8"]
    # Each average is that variant's own evaluation, redone here on the packaged files.
    from jtcse.api import load
    from jtcse.evaluation.sts import STSEvaluator

    evaluator = STSEvaluator(small_sts_dir)
    for variant, kwargs in (
        ("torch", {}),
        ("onnx float32", {"backend": "onnx"}),
        ("onnx int8", {"backend": "onnx", "file_name": INT8}),
    ):
        again = evaluator(load(result.path / "distilled", device="cpu", **kwargs))["avg"]
        assert sts[variant]["avg"] == pytest.approx(again, abs=0.006), variant
        assert sts[variant]["sentences_per_second"] > 0
    # The tiny random model scores near ties, so rank statistics amplify 1e-6 vector differences: float32 is within
    # 0.4 of torch on one CPU's kernels (ATEN_CPU_CAPABILITY=default), 0.00 on another's; int8 further.
    assert sts["onnx float32"]["avg"] == pytest.approx(sts["torch"]["avg"], abs=1.5)
    assert abs(sts["onnx int8"]["avg"] - sts["torch"]["avg"]) < 5
    card = (result.path / "README.md").read_text()
    assert "| file | weights | STS avg (7 tasks) | sentences/s on the build machine |" in card
    assert f"| `distilled/onnx/model.onnx` | float32 | {sts['onnx float32']['avg']:.2f} |" in card
    assert f"| `distilled/{INT8}` | int8, dynamic quantisation" in card
