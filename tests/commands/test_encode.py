"""`jtcse encode` and `jtcse similarity` (jtcse/commands/encode.py): the formats of the suffix, stdin/stdout,
blank lines, pairs and matrices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The stock market fell sharply.",
    "Two dogs run across a snowy field.",
]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_bert) -> Path:
    from jtcse.release.export import export_sentence_transformer

    target = tmp_path_factory.mktemp("cli_model") / "tower"
    export_sentence_transformer(tiny_bert, target, pooling="mean", max_seq_length=32)
    return target


@pytest.fixture(scope="module")
def reference(model) -> np.ndarray:
    import jtcse

    return jtcse.load(model, device="cpu").encode(SENTENCES)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".jsonl"])
def test_encode_writes_the_format_of_the_suffix(model, reference, tmp_path, suffix, capsys):
    from jtcse.cli import main

    text = tmp_path / "in.txt"
    text.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / f"vectors{suffix}"
    assert main(["encode", "--model", str(model), "--input", str(text), "--output", str(out), "--device", "cpu"]) == 0
    if suffix == ".npy":
        got = np.load(out)
    elif suffix == ".csv":
        got = np.loadtxt(out, delimiter=",", dtype=np.float32, ndmin=2)
    else:
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [r["sentence"] for r in rows] == SENTENCES
        got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert got.shape == (4, 32) and got.dtype == np.float32
    assert np.array_equal(got, reference)  # 9 significant digits: float32 round-trips exactly
    assert f"4 sentences -> {out}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.txt", out.name])  # no temporary file left


def test_encode_refuses_an_unknown_suffix_before_any_work(model, tmp_path, capsys):
    from jtcse.cli import main

    text = tmp_path / "in.txt"
    text.write_text("a sentence\n", encoding="utf-8")
    out = tmp_path / "vectors.txt"
    assert main(["encode", "--model", str(model), "--input", str(text), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: unknown output suffix '.txt'; use .npy, .csv or .jsonl (or --format)" in err
    assert not out.exists()
    assert (
        main(
            [
                "encode",
                "--model",
                str(model),
                "--input",
                str(text),
                "--output",
                str(out),
                "--format",
                "csv",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert len(out.read_text().strip().split(",")) == 32


def test_encode_reads_stdin_and_writes_stdout(model, reference):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jtcse.cli",
            "encode",
            "--model",
            str(model),
            "--input",
            "-",
            "--output",
            "-",
            "--device",
            "cpu",
        ],
        input="\n".join(SENTENCES) + "\n",
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["sentence"] for r in rows] == SENTENCES
    assert np.array_equal(np.array([r["embedding"] for r in rows], dtype=np.float32), reference)
    assert "4 sentences -> standard output (jsonl, 4 x 32)" in proc.stderr


def test_blank_lines_are_counted_in_one_warning(model, tmp_path, capsys):
    import jtcse
    from jtcse.cli import main

    lines = [SENTENCES[0], "", SENTENCES[1], "   ", SENTENCES[2]]
    text = tmp_path / "in.txt"
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    assert main(["encode", "--model", str(model), "--input", str(text), "--output", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"jtcse: warning: {text}: 2 blank lines (line 2, 4) encoded as empty sentences" in err
    assert np.array_equal(np.load(out), jtcse.load(model, device="cpu").encode(lines))  # row i is still line i


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_similarity_of_two_sentences_line_pairs_and_a_matrix(model, reference, tmp_path, capsys):
    from jtcse.cli import main

    left, right = tmp_path / "a.txt", tmp_path / "b.txt"
    left.write_text("\n".join(SENTENCES[:2]) + "\n", encoding="utf-8")
    right.write_text("\n".join(SENTENCES[2:]) + "\n", encoding="utf-8")
    full = cosine(reference, reference)
    common = ["--model", str(model), "--device", "cpu"]

    assert main(["similarity", SENTENCES[0], SENTENCES[3], *common]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(full[0, 3], abs=1e-4)

    out = tmp_path / "one.jsonl"
    assert main(["similarity", SENTENCES[0], SENTENCES[3], "--output", str(out), *common]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (row["a"], row["b"]) == (SENTENCES[0], SENTENCES[3]) and abs(row["cosine"] - full[0, 3]) < 1e-5

    assert main(["similarity", "--pairs", str(left), str(right), *common]) == 0
    pairs = np.array([float(x) for x in capsys.readouterr().out.split()])
    assert np.abs(pairs - [full[0, 2], full[1, 3]]).max() < 1e-5

    out = tmp_path / "pairs.jsonl"
    assert main(["similarity", "--pairs", str(left), str(right), "--output", str(out), *common]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["a"], r["b"]) for r in rows] == [(SENTENCES[0], SENTENCES[2]), (SENTENCES[1], SENTENCES[3])]
    assert abs(rows[1]["cosine"] - full[1, 3]) < 1e-5

    out = tmp_path / "matrix.npy"
    assert main(["similarity", "--matrix", str(left), str(right), "--output", str(out), *common]) == 0
    assert np.abs(np.load(out) - full[:2, 2:]).max() < 1e-5
    assert main(["similarity", "--matrix", str(left), *common]) == 0  # one file: against itself, CSV on stdout
    matrix = np.array([[float(x) for x in line.split(",")] for line in capsys.readouterr().out.splitlines()])
    assert matrix.shape == (2, 2) and np.abs(matrix - full[:2, :2]).max() < 1e-5


def test_similarity_refuses_unequal_pairs_and_mixed_arguments(model, tmp_path, capsys):
    from jtcse.cli import main

    left, right = tmp_path / "a.txt", tmp_path / "b.txt"
    left.write_text("one\ntwo\nthree\n", encoding="utf-8")
    right.write_text("one\ntwo\n", encoding="utf-8")
    assert main(["similarity", "--pairs", str(left), str(right), "--model", str(model), "--device", "cpu"]) == 2
    assert f"--pairs: {left} has 3 lines but {right} has 2" in capsys.readouterr().err
    for argv in (["only one"], ["a", "b", "--pairs", str(left), str(left)], ["--matrix", "a", "b", "c"], []):
        assert main(["similarity", *argv, "--model", str(model)]) == 2
        assert "similarity takes two sentences, or --pairs FILE_A FILE_B, or --matrix" in capsys.readouterr().err


def encode_args(model: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "jtcse.cli", "encode", "--model", str(model), "--device", "cpu", *args]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("jtcse")]
    assert len(lines) == 1 and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("closed", ["stdin", "stdout"])
def test_encode_with_a_closed_standard_stream_is_one_line(closed, model, tmp_path):
    """Issue 21 item 8: `--input -` with stdin closed (`<&-`), `--output -` with stdout closed (`>&-`) were an
    AttributeError traceback; now one line, exit 2, before the model is loaded."""
    sentences = tmp_path / "in.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n")
    if closed == "stdin":
        args, redirect = encode_args(model, "--input", "-", "--output", str(tmp_path / "v.npy")), "<&-"
    else:
        args, redirect = encode_args(model, "--input", str(sentences), "--output", "-"), ">&-"
    proc = subprocess.run(
        ["sh", "-c", f'exec "$0" "$@" {redirect}', *args], env=env(), stderr=subprocess.PIPE, text=True, timeout=120
    )
    line = one_error_line(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    if closed == "stdin":
        assert line == "jtcse: error: --input -: standard input is closed; pipe the sentences in, or give a file"
        assert not (tmp_path / "v.npy").exists()
    else:
        assert line == (
            "jtcse: error: --output -: standard output is closed; give a file name (e.g. --output vectors.npy)"
        )


def test_encode_into_a_pipe_closed_by_its_reader_is_one_line_and_never_claims_every_row(model, tmp_path):
    """Issue 21 item 8: `--output - | head -c 100` exited 0 and reported every sentence written. Here the reader
    closes the pipe before anything is written, so the write always meets EPIPE."""
    sentences = tmp_path / "in.txt"
    sentences.write_text("\n".join(SENTENCES * 50) + "\n")
    proc = subprocess.Popen(
        encode_args(model, "--input", str(sentences), "--output", "-"),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # like `head` that has read its bytes and exited
    _, stderr = proc.communicate(timeout=120)
    line = one_error_line(stderr)
    assert proc.returncode == 2
    assert line == (
        "jtcse: error: --output -: standard output was closed before all 200 rows were read (broken pipe); "
        "write to a file with --output to keep them all"
    )
    assert "sentences -> standard output" not in stderr
