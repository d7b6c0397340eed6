"""Bad input gets one clear line, exit status 2 and no traceback; a bug keeps its traceback and exit 1.

Every case runs the real command line (``jtcse.cli.main``) or the library reader it calls, on a real file, and
checks the exact line the user sees: it names the file and line, or the settings key, and says what is expected.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jtcse import cli
from jtcse.config import load_settings
from jtcse.data.readers import DataError, check_corpus_fits, read_corpus, read_sentences, read_sts
from jtcse.errors import ConfigError, UserError
from jtcse.evaluation.sts import DEV_TASKS, STS_TASKS
from tests.conftest import REPO
from tests.data.test_validation import bundle  # noqa: F401  (fixture: a small valid copy of the bundle)

HEADER = "sentence1\tsentence2\tscore\tsubset"
GOOD_ROWS = [
    "A man plays a guitar.\tSomeone plays music.\t4.2\theadlines",
    "A dog runs in a park.\tA cat sleeps on a sofa.\t0.8\theadlines",
    "Two kids eat ice cream.\tChildren are eating.\t3.6\theadlines",
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``jtcse argv`` in this process; return (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def user_error_line(capsys, *argv: str) -> str:
    """The command must fail with exactly one line on stderr, ``jtcse: error: ...``, and exit status 2."""
    code, _, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.startswith("jtcse: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.fixture()
def sts_dir(tmp_path, small_sts_dir) -> Path:
    """A writable copy of the small STS folder (every evaluation file)."""
    out = tmp_path / "sts"
    out.mkdir()
    for name in (*STS_TASKS.values(), *DEV_TASKS.values()):
        (out / name).write_bytes((small_sts_dir / name).read_bytes())
    return out


@pytest.fixture()
def params_file(tmp_path, tiny_settings) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_settings.model_dump(mode="json", by_alias=True)), encoding="utf-8")
    return path


def edit_params(path: Path, section: str, **values) -> Path:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw[section].update(values)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ STS files


@pytest.mark.parametrize(
    "rows, header, expected",
    [
        (
            GOOD_ROWS,
            "sentence1\tsentence2\tscore",
            r"stsb\.dev\.tsv:1: header 'sentence1<TAB>sentence2<TAB>score': missing column\(s\) subset; expected "
            r"sentence1<TAB>sentence2<TAB>score<TAB>subset$",
        ),
        (
            [GOOD_ROWS[0], "A man plays a guitar.\tSomeone plays music.\t4.2"],
            HEADER,
            r"stsb\.dev\.tsv:3: 3 TAB-separated field\(s\), expected 4 \(sentence1, sentence2, score, subset\)$",
        ),
        (
            [GOOD_ROWS[0], "A man.\tA woman.\tabc\theadlines"],
            HEADER,
            r"stsb\.dev\.tsv:3: score 'abc' is not a number; expected a finite number from 0 to 5$",
        ),
        (
            [GOOD_ROWS[0], "A man.\tA woman.\tnan\theadlines"],
            HEADER,
            r"stsb\.dev\.tsv:3: score 'nan' is not a number; expected a finite number from 0 to 5$",
        ),
        (
            [GOOD_ROWS[0], "A man.\tA woman.\t7.5\theadlines"],
            HEADER,
            r"stsb\.dev\.tsv:3: score 7\.5 is outside the scale of this file from 0 to 5$",
        ),
        ([GOOD_ROWS[0], "\tA woman.\t2.0\theadlines"], HEADER, r"stsb\.dev\.tsv:3: sentence1 is blank$"),
    ],
)
def test_a_broken_sts_file_is_one_line_naming_file_and_line(tmp_path, rows, header, expected):
    path = write(tmp_path / "stsb.dev.tsv", "\n".join([header, *rows]) + "\n")
    with pytest.raises(DataError, match=expected):
        read_sts(path)


def test_an_empty_or_header_only_sts_file_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"sts12\.test\.tsv: empty file, expected the header sentence1<TAB>"):
        read_sts(write(tmp_path / "sts12.test.tsv", ""))
    with pytest.raises(DataError, match=r"sts12\.test\.tsv: no data rows after the header$"):
        read_sts(write(tmp_path / "sts12.test.tsv", HEADER + "\n"))


def test_crlf_line_ends_and_a_bom_read_exactly_like_the_plain_file(tmp_path):
    plain = read_sts(write(tmp_path / "a" / "stsb.dev.tsv", "\n".join([HEADER, *GOOD_ROWS]) + "\n"))
    windows = read_sts(
        write(tmp_path / "b" / "stsb.dev.tsv", b"\xef\xbb\xbf" + ("\r\n".join([HEADER, *GOOD_ROWS]) + "\r\n").encode())
    )
    assert windows == plain and windows.subsets == ["headlines"] * 3  # no stray '\r' in the last column


def test_validate_and_evaluate_apply_the_same_rules(bundle):  # noqa: F811  (the fixture imported above)
    """One reader, one rule: what `validate` rejects, `evaluate` rejects (and CRLF + BOM pass both)."""
    from jtcse.data.validation import DataValidationError, validate_data
    from tests.data.test_validation import FIXTURE_ROWS

    data = bundle
    crlf = data / "sts" / "sts13.test.tsv"
    crlf.write_bytes(b"\xef\xbb\xbf" + crlf.read_bytes().replace(b"\n", b"\r\n"))
    lines = (data / "sts" / "sts12.test.tsv").read_text().splitlines()
    lines[2] = lines[2].rsplit("\t", 2)[0] + "\tnan\theadlines"
    (data / "sts" / "sts12.test.tsv").write_text("\n".join(lines) + "\n")
    lines = (data / "sts" / "sts14.test.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 2)[0] + "\t6.0\theadlines"
    (data / "sts" / "sts14.test.tsv").write_text("\n".join(lines) + "\n")

    with pytest.raises(DataValidationError) as info:
        validate_data(data, data / "corpus" / "train.txt", expected_rows=FIXTURE_ROWS)
    message = str(info.value)
    assert (
        "sts/sts12.test.tsv: expectation expect_column_values_to_not_be_null(score_value) failed on 1 rows (e.g. line 3"
        in message
    )
    assert (
        "sts/sts14.test.tsv: expectation expect_column_values_to_be_between(score_value) failed on 1 rows (e.g. line 4"
        in message
    )
    assert "sts13" not in message  # CRLF and a BOM are fine for validate ...
    assert len(read_sts(crlf)) == 4  # ... and for evaluate
    with pytest.raises(DataError, match=r"sts12\.test\.tsv:3: score 'nan' is not a number"):
        read_sts(data / "sts" / "sts12.test.tsv")
    with pytest.raises(DataError, match=r"sts14\.test\.tsv:4: score 6 is outside the scale"):
        read_sts(data / "sts" / "sts14.test.tsv")


def test_evaluate_reports_a_broken_sts_file_as_one_line(tiny_bert, sts_dir, tmp_path, capsys):
    target = sts_dir / "sts15.test.tsv"
    rows = target.read_bytes().splitlines()
    rows[7] = rows[7].replace(b"\t", b" ", 1)
    target.write_bytes(b"\n".join(rows) + b"\n")
    line = user_error_line(
        capsys, "evaluate", "--model", tiny_bert, "--data-dir", sts_dir, "--output", tmp_path / "m.json"
    )
    assert (
        line == f"jtcse: error: {target}:8: 3 TAB-separated field(s), expected 4 (sentence1, sentence2, score, subset)"
    )
    assert not (tmp_path / "m.json").exists()


def test_a_latin1_byte_in_an_sts_file_names_file_and_line(tiny_bert, sts_dir, tmp_path, capsys):
    target = sts_dir / "stsb.test.tsv"
    rows = target.read_bytes().splitlines()
    rows[4] = rows[4].replace(b"a", b"caf\xe9", 1)
    target.write_bytes(b"\n".join(rows) + b"\n")
    line = user_error_line(
        capsys, "evaluate", "--model", tiny_bert, "--data-dir", sts_dir, "--output", tmp_path / "m.json"
    )
    assert line.startswith(f"jtcse: error: {target}:5: not valid UTF-8 (invalid continuation byte 0xe9 at byte ")


def test_a_dev_file_whose_scores_are_all_equal_is_refused(tiny_settings, sts_dir, tmp_path, capsys):
    """Spearman against constant gold scores is NaN: refused on read, so training never selects on NaN."""
    from jtcse.evaluation.sts import STSEvaluator

    dev = sts_dir / "stsb.dev.tsv"
    rows = dev.read_text(encoding="utf-8").splitlines()
    dev.write_text(
        "\n".join([rows[0], *(r.rsplit("\t", 2)[0] + "\t2.5\t" + r.rsplit("\t", 1)[1] for r in rows[1:])]) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match=r"stsb\.dev\.tsv: every pair has the score 2\.5; Spearman is undefined"):
        STSEvaluator(sts_dir, DEV_TASKS)


# ---------------------------------------------------------------------------------------- NaN never a result


def test_a_nan_dev_score_stops_train_tower_before_any_claim_of_a_saved_model(params_file, sts_dir, tmp_path, capsys):
    """Issue 15 item 3: one 'nan' in stsb.dev.tsv used to print 'saved to <dir>' for a folder that did not exist."""
    dev = sts_dir / "stsb.dev.tsv"
    rows = dev.read_text(encoding="utf-8").splitlines()
    rows[5] = rows[5].rsplit("\t", 2)[0] + "\tnan\t" + rows[5].rsplit("\t", 1)[1]
    dev.write_text("\n".join(rows) + "\n", encoding="utf-8")
    edit_params(params_file, "data", sts_dir=str(sts_dir))
    code, out, err = run_cli(
        capsys,
        "train-tower",
        "--tower",
        "a",
        "--params",
        params_file,
        "--output",
        tmp_path / "tower",
        "--checkpoint-dir",
        tmp_path / "ck",
        "--metrics-dir",
        tmp_path / "m",
    )
    assert code == 2 and "saved to" not in out and "Traceback" not in err
    assert f"jtcse: error: {dev}:6: score 'nan' is not a number; expected a finite number from 0 to 5" in err
    assert not (tmp_path / "tower").exists() and not (tmp_path / "m" / "summary.json").exists()


def test_a_collapsed_model_never_claims_a_saved_model(tiny_settings, tiny_bert, tmp_path):
    """Every sentence mapped to the same vector: the dev Spearman is NaN, and no best model is ever published."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from jtcse.training.stages import train_tower

    collapsed = tmp_path / "collapsed"
    model = BertModel.from_pretrained(tiny_bert)
    with torch.no_grad():  # the last LayerNorm outputs zeros: every token state, every sentence vector is 0
        model.encoder.layer[-1].output.LayerNorm.weight.zero_()
        model.encoder.layer[-1].output.LayerNorm.bias.zero_()
    model.save_pretrained(collapsed)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(collapsed)
    with pytest.raises(
        FloatingPointError,
        match=r"tower a: dev dev_mean is nan at step 0: the model gives every "
        r"pair the same similarity",
    ):
        train_tower(
            tiny_settings,
            which="a",
            output=tmp_path / "tower",
            checkpoint_dir=tmp_path / "ck",
            metrics_dir=tmp_path / "m",
            init=str(collapsed),
        )
    assert not (tmp_path / "tower").exists() and not (tmp_path / "m" / "summary.json").exists()


def test_json_is_strict_nan_is_never_written(tmp_path):
    from jtcse.io import atomic_write_json
    from jtcse.release.packaging import read_metrics

    with pytest.raises(ValueError, match=r"m\.json: refusing to write a non-finite number as JSON"):
        atomic_write_json(tmp_path / "m.json", {"sts12": math.nan})
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind
    write(tmp_path / "old.json", '{"sts12": NaN, "avg": 70.0}')
    with pytest.raises(UserError, match=r"old\.json: not valid JSON \(NaN is not a number in strict JSON\)"):
        read_metrics(tmp_path / "old.json")


# --------------------------------------------------------------------------------------------------- corpus


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", r"c\.txt: empty corpus, expected one sentence per line$"),
        (b"\n  \n\t\n", r"c\.txt: all 3 line\(s\) are blank, expected one sentence per line$"),
        (
            b"First sentence here.\n\nThird sentence here.\n",
            r"c\.txt:2: blank line; the corpus holds one sentence per line, none blank$",
        ),
        (
            b"First sentence here.\nCaf\xe9 au lait is good.\n",
            r"c\.txt:2: not valid UTF-8 \(invalid continuation byte 0xe9 at byte 4\); save the file as UTF-8$",
        ),
        (b"Only one sentence.\n", r"c\.txt: needs at least 2 sentences, found 1$"),
    ],
)
def test_a_bad_corpus_is_one_line(tmp_path, content, expected):
    with pytest.raises(DataError, match=expected):
        read_corpus(write(tmp_path / "c.txt", content))


def test_a_corpus_bom_and_crlf_are_not_part_of_the_sentences(tmp_path):
    path = write(tmp_path / "c.txt", b"\xef\xbb\xbfFirst sentence.\r\nSecond sentence.\r\n")
    assert read_corpus(path) == ["First sentence.", "Second sentence."]


def test_a_corpus_that_cannot_fill_one_batch_is_refused(tmp_path):
    with pytest.raises(
        DataError,
        match=r"c\.txt: 5 distinct sentence\(s\) in 5 line\(s\), fewer than "
        r"pretrain\.batch_size \(8\); a batch needs 8 different sentences",
    ):
        check_corpus_fits([f"sentence {i}" for i in range(5)], 8, corpus=tmp_path / "c.txt", key="pretrain.batch_size")
    with pytest.raises(
        DataError,
        match=r"c\.txt: 1 distinct sentence\(s\) in 50 line\(s\), fewer than "
        r"train\.batch_size \(8\)",
    ):
        check_corpus_fits(["the same sentence"] * 50, 8, corpus=tmp_path / "c.txt", key="train.batch_size")


def test_train_tower_on_an_all_duplicate_corpus_is_one_line(params_file, tmp_path, capsys):
    corpus = write(tmp_path / "dup.txt", "A sentence repeated over and over.\n" * 40)
    edit_params(params_file, "data", corpus=str(corpus))
    line = user_error_line(
        capsys,
        "train-tower",
        "--tower",
        "a",
        "--params",
        params_file,
        "--output",
        tmp_path / "tower",
        "--checkpoint-dir",
        tmp_path / "ck",
    )
    assert line == (
        f"jtcse: error: {corpus}: 1 distinct sentence(s) in 40 line(s), fewer than pretrain.batch_size "
        "(8); a batch needs 8 different sentences (lower the batch size or add sentences)"
    )
    assert not (tmp_path / "tower").exists()


def test_tune_refuses_a_corpus_that_cannot_fill_a_batch_before_any_trial(params_file, tiny_bert, tmp_path, capsys):
    corpus = write(tmp_path / "few.txt", "".join(f"Sentence number {i} is here.\n" for i in range(5)))
    edit_params(params_file, "data", corpus=str(corpus))
    edit_params(params_file, "tune", space={"cross_attention": {"num_layers": {"choices": [1, 2]}}})
    db = tmp_path / "optuna.db"
    line = user_error_line(
        capsys,
        "tune",
        "--params",
        params_file,
        "--tower-a",
        tiny_bert,
        "--tower-b",
        tiny_bert,
        "--storage",
        f"sqlite:///{db}",
        "--output-dir",
        tmp_path / "tune",
    )
    assert line == (
        f"jtcse: error: {corpus}: 5 distinct sentence(s) in 5 line(s), fewer than train.batch_size (8); "
        "a batch needs 8 different sentences (lower the batch size or add sentences)"
    )
    assert not db.exists()  # stopped before the study was created: no trial ran


def test_data_not_pulled_says_to_run_dvc_pull(tmp_path, capsys, tiny_bert, monkeypatch):
    project = tmp_path / "clone"
    write(project / "data.dvc", "outs:\n- md5: 0123.dir\n  path: data\n")
    monkeypatch.chdir(project)
    line = user_error_line(capsys, "evaluate", "--model", tiny_bert, "--data-dir", "data/sts", "--output", "m.json")
    assert line == "jtcse: error: data/sts: STS data folder not found; data/ is tracked by DVC: run `dvc pull`"
    write(project / "params.yaml", "model:\n  base: minilm\n")
    line = user_error_line(capsys, "validate", "--params", "params.yaml", "--data-dir", "data")
    assert line == "jtcse: error: data/sts: STS data folder not found; data/ is tracked by DVC: run `dvc pull`"
    with pytest.raises(
        UserError, match=r"data/corpus/train\.txt: corpus not found; data/ is tracked by DVC: run `dvc pull`"
    ):
        read_corpus("data/corpus/train.txt")


# --------------------------------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "train:\n  lr: 1.0e-5\n  steps: [3\n",
            r"p\.yaml:4: invalid YAML: expected ',' or '\]', but got '<stream end>' "
            r"\(while parsing a flow sequence at line 3\)$",
        ),
        ("train:\n  lr: 1.0e-5\n   steps: 3\n", r"p\.yaml:3: invalid YAML: mapping values are not allowed here$"),
        ("", r"p\.yaml: no settings \(the file is empty or holds only comments\)"),
        ("# only a comment\n\n", r"p\.yaml: no settings \(the file is empty or holds only comments\)"),
        (
            "train:\n  lr: 1.0e-5\nmodel:\n  pooling: cls\ntrain:\n  steps: 5\n",
            r"p\.yaml:5: duplicate key 'train' \(first at line 1\); a repeated key or section replaces the earlier one",
        ),
        ("train:\n  lr: 1.0e-5\n  lr: 2.0e-5\n", r"p\.yaml:3: duplicate key 'lr' \(first at line 2\)"),
        ("train:\n  w_nse: 1.0\n", r"p\.yaml: train\.w_nse: Extra inputs are not permitted$"),
        ("train:\n  steps: true\n", r"p\.yaml: train\.steps: expected an integer, got true \(a boolean\)$"),
        ("runtime:\n  bf16: 1\n", r"p\.yaml: runtime\.bf16: expected true or false, got 1$"),
        ("train:\n  steps: '10'\n", r"p\.yaml: train\.steps: expected an integer, got the text '10'$"),
        ("train:\n  lr: 0\n", r"p\.yaml: train\.lr: Input should be greater than 0 \(got 0\)$"),
        ("train:\n  lr: -1.0e-5\n", r"p\.yaml: train\.lr: Input should be greater than 0 \(got -1e-05\)$"),
        (
            "pretrain:\n  batch_size: 1\n",
            r"p\.yaml: pretrain\.batch_size: Input should be greater than or equal to 2 \(got 1\)$",
        ),
        ("distill:\n  steps: 0\n", r"p\.yaml: distill\.steps: Input should be greater than or equal to 1 \(got 0\)$"),
        ("train:\n  temperature: 0.0\n", r"p\.yaml: train\.temperature: Input should be greater than 0 \(got 0\.0\)$"),
        (
            "train:\n  temperature: -0.05\n",
            r"p\.yaml: train\.temperature: Input should be greater than 0 \(got -0\.05\)$",
        ),
        ("tune:\n  storage: not a url\n", r"p\.yaml: tune\.storage: 'not a url' is not a SQLAlchemy database URL"),
        (
            "tune:\n  storage: foo://host/db\n",
            r"p\.yaml: tune\.storage: 'foo://host/db': no SQLAlchemy dialect/driver 'foo'",
        ),
        (b"train:\n  lr: 1.0e-5 # caf\xe9\n", r"p\.yaml:2: not valid UTF-8 \(invalid continuation byte\)$"),
    ],
)
def test_bad_params_are_one_line_naming_file_line_or_key(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path / "p.yaml", text))


def test_a_number_written_1e_5_is_still_a_number(tmp_path):
    """PyYAML reads `1e-5` (no dot) as a string; strict types must not refuse what users write every day."""
    assert load_settings(write(tmp_path / "p.yaml", "train:\n  lr: 1e-5\n")).train.lr == 1e-5


def test_the_cli_prints_a_params_error_as_one_line(tmp_path, capsys):
    path = write(tmp_path / "p.yaml", "train:\n  steps: true\n")
    line = user_error_line(
        capsys, "train", "--params", path, "--tower-a", "x", "--tower-b", "y", "--output", tmp_path / "t"
    )
    assert line == f"jtcse: error: {path}: train.steps: expected an integer, got true (a boolean)"


def test_a_bridge_layout_that_does_not_divide_the_towers_is_one_line(params_file, tiny_bert, tmp_path, capsys):
    edit_params(params_file, "train", cross_attention={"num_layers": 3})
    line = user_error_line(
        capsys,
        "train",
        "--params",
        params_file,
        "--tower-a",
        tiny_bert,
        "--tower-b",
        tiny_bert,
        "--output",
        tmp_path / "twin",
        "--checkpoint-dir",
        tmp_path / "ck",
    )
    assert line == (
        f"jtcse: error: train.cross_attention.num_layers: 3 does not divide the 4 layers of {tiny_bert}; "
        "use one of [1, 2, 4], or 0 for no bridge"
    )
    assert not (tmp_path / "twin").exists()


# --------------------------------------------------------------------------------------------------- models


@pytest.fixture()
def sentences(tmp_path) -> Path:
    return write(tmp_path / "in.txt", "A man plays a guitar.\nSomeone plays music.\n")


def test_a_model_that_does_not_exist_is_one_line(sentences, tmp_path, capsys):
    missing = tmp_path / "no" / "such_model"
    line = user_error_line(capsys, "encode", "--model", missing, "--input", sentences, "--output", tmp_path / "v.npy")
    assert line == f"jtcse: error: model '{missing}': folder {missing} does not exist"


def test_a_hub_name_offline_is_one_line(sentences, tmp_path, capsys):
    line = user_error_line(
        capsys, "encode", "--model", "no-such-org/no-such-model", "--input", sentences, "--output", tmp_path / "v.npy"
    )
    assert line == (
        "jtcse: error: model 'no-such-org/no-such-model': not a local folder, and not in the local Hugging "
        "Face cache (jtcse runs offline); give a model folder, 'minilm', or a hub id downloaded before"
    )


def test_a_folder_that_is_not_an_encoder_is_one_line(sentences, tiny_bert, tmp_path, capsys):
    from transformers import GPT2Config, GPT2Model

    gpt = tmp_path / "gpt"
    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100, n_positions=32)).save_pretrained(gpt)
    line = user_error_line(capsys, "encode", "--model", gpt, "--input", sentences, "--output", tmp_path / "v.npy")
    assert line == (
        f"jtcse: error: model '{gpt}': model_type 'gpt2' is not a BERT-like encoder (expected e.g. bert, "
        "roberta, distilbert: an encoder trained with masked language modelling)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    line = user_error_line(capsys, "encode", "--model", empty, "--input", sentences, "--output", tmp_path / "v.npy")
    assert line == f"jtcse: error: model '{empty}': {empty} has no config.json; not a Hugging Face model folder"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for file in tiny_bert.iterdir():
        if file.suffix != ".safetensors":
            (pickled / file.name).write_bytes(file.read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not unpickled")
    line = user_error_line(capsys, "encode", "--model", pickled, "--input", sentences, "--output", tmp_path / "v.npy")
    assert line == (
        f"jtcse: error: model '{pickled}': {pickled} has only pickle weights (pytorch_model.bin), which "
        "jtcse never unpickles; save the model with safetensors "
        "(model.save_pretrained(folder, safe_serialization=True))"
    )


def test_a_missing_base_model_stops_training_with_one_line(params_file, tmp_path, capsys):
    edit_params(params_file, "model", base=str(tmp_path / "nowhere" / "bert"))
    line = user_error_line(
        capsys,
        "train-tower",
        "--tower",
        "a",
        "--params",
        params_file,
        "--output",
        tmp_path / "tower",
        "--checkpoint-dir",
        tmp_path / "ck",
    )
    assert (
        line
        == f"jtcse: error: model '{tmp_path / 'nowhere' / 'bert'}': folder {tmp_path / 'nowhere' / 'bert'} does not exist"
    )


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_one_line(sentences, tiny_bert, tmp_path, capsys, params_file):
    line = user_error_line(
        capsys, "encode", "--model", tiny_bert, "--input", sentences, "--output", tmp_path / "v.npy", "--device", "cuda"
    )
    assert line == (
        "jtcse: error: device 'cuda' was asked for (runtime.device or --device) but torch sees no CUDA "
        "device; use 'auto' or 'cpu'"
    )
    edit_params(params_file, "runtime", device="cuda")
    line = user_error_line(
        capsys,
        "train-tower",
        "--tower",
        "a",
        "--params",
        params_file,
        "--output",
        tmp_path / "tower",
        "--checkpoint-dir",
        tmp_path / "ck",
    )
    assert "but torch sees no CUDA device; use 'auto' or 'cpu'" in line


# --------------------------------------------------------------------------------------------------- encode


def test_encode_input_problems_are_one_line(tiny_bert, tmp_path, capsys):
    out = tmp_path / "v.npy"
    for content, expected in [
        (b"", "empty file, expected one sentence per line"),
        (b"\n\n  \n", "all 3 line(s) are blank, expected one sentence per line"),
    ]:
        path = write(tmp_path / "in.txt", content)
        assert (
            user_error_line(capsys, "encode", "--model", tiny_bert, "--input", path, "--output", out)
            == f"jtcse: error: {path}: {expected}"
        )
    path = write(tmp_path / "in.txt", b"Fine line.\nBad \xff byte.\n")
    assert (
        user_error_line(capsys, "encode", "--model", tiny_bert, "--input", path, "--output", out)
        == f"jtcse: error: {path}:2: not valid UTF-8 (invalid start byte 0xff at byte 5); save the file as UTF-8"
    )
    assert (
        user_error_line(capsys, "encode", "--model", tiny_bert, "--input", tmp_path / "nope.txt", "--output", out)
        == f"jtcse: error: {tmp_path / 'nope.txt'}: input file not found"
    )
    assert not out.exists()


def test_encode_keeps_blank_lines_as_rows_and_warns_with_a_count(tiny_bert, tmp_path, capsys, caplog):
    path = write(tmp_path / "in.txt", "A man plays a guitar.\n\nSomeone plays music.\n\n")
    code, out, err = run_cli(capsys, "encode", "--model", tiny_bert, "--input", path, "--output", tmp_path / "v.npy")
    assert code == 0 and np.load(tmp_path / "v.npy").shape == (4, 32)  # row i is line i
    assert f"jtcse: warning: {path}: 2 blank lines (line 2, 4) encoded as empty sentences" in err
    assert read_sentences(path) == ["A man plays a guitar.", "", "Someone plays music.", ""]


def test_encode_and_evaluate_refuse_a_bad_output_or_batch_size(tiny_bert, sentences, sts_dir, tmp_path, capsys):
    folder = tmp_path / "existing_folder"
    folder.mkdir()
    assert (
        user_error_line(capsys, "encode", "--model", tiny_bert, "--input", sentences, "--output", folder)
        == f"jtcse: error: --output {folder}: is a folder, expected a file name (e.g. {folder / 'out'})"
    )
    assert (
        user_error_line(capsys, "evaluate", "--model", tiny_bert, "--data-dir", sts_dir, "--output", folder)
        == f"jtcse: error: --output {folder}: is a folder, expected a file name (e.g. {folder / 'out'})"
    )
    missing = tmp_path / "no_such_folder" / "v.npy"
    assert (
        user_error_line(capsys, "encode", "--model", tiny_bert, "--input", sentences, "--output", missing)
        == f"jtcse: error: --output {missing}: folder {missing.parent} does not exist"
    )
    for size in ("0", "-1"):
        for argv in (
            ["encode", "--model", tiny_bert, "--input", sentences, "--output", tmp_path / "v.npy"],
            ["evaluate", "--model", tiny_bert, "--data-dir", sts_dir, "--output", tmp_path / "m.json"],
        ):
            assert (
                user_error_line(capsys, *argv, "--batch-size", size)
                == f"jtcse: error: batch size (--batch-size) must be a positive integer, got {size}"
            )
    assert not (tmp_path / "v.npy").exists() and not (tmp_path / "m.json").exists()


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tiny_bert, sentences, tmp_path, capsys, monkeypatch):
    out = tmp_path / "v.npy"
    np.save(out, np.ones((2, 2), dtype=np.float32))

    real_fsync = os.fsync

    def full_disk(fd):  # what the kernel answers when the disk is full and the written pages cannot be stored
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".v.npy."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    line = user_error_line(capsys, "encode", "--model", tiny_bert, "--input", sentences, "--output", out)
    assert line == f"jtcse: error: no space left on device writing {out}; free some space and rerun"
    monkeypatch.undo()
    assert np.load(out).shape == (2, 2) and sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "v.npy"]


# ------------------------------------------------------------------------------------------- study storage


def test_a_malformed_storage_url_is_one_line(tmp_path, capsys):
    line = user_error_line(
        capsys, "tune-report", "--params", REPO / "params.yaml", "--storage", "not a url", "--output-dir", tmp_path
    )
    assert line == (
        "jtcse: error: tune options: tune.storage: 'not a url' is not a SQLAlchemy database URL "
        "(e.g. sqlite:///tune/optuna.db)"
    )


def test_a_database_that_refuses_is_one_line_fast(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql+psycopg://jtcse@127.0.0.1:{port}/optuna"
    started = time.monotonic()
    line = user_error_line(
        capsys, "tune-report", "--params", REPO / "params.yaml", "--storage", url, "--output-dir", tmp_path
    )
    assert time.monotonic() - started < 10
    assert line.startswith(f"jtcse: error: tune.storage {url}: cannot open the study database (") and line.endswith(
        "); is the server running and the URL right?"
    )


def test_a_database_that_never_answers_fails_within_the_connect_timeout(tmp_path, capsys, monkeypatch):
    """A server that accepts the TCP connection and then says nothing (a hung or firewalled host)."""
    from jtcse.tuning import storage

    monkeypatch.setattr(storage, "CONNECT_TIMEOUT_SECONDS", 2)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nobody ever replies
    url = f"postgresql+psycopg://jtcse@127.0.0.1:{silent.getsockname()[1]}/optuna"
    try:
        started = time.monotonic()
        line = user_error_line(
            capsys, "tune-report", "--params", REPO / "params.yaml", "--storage", url, "--output-dir", tmp_path
        )
        waited = time.monotonic() - started
    finally:
        silent.close()
    assert 1.5 <= waited < 30, waited
    assert line.startswith(f"jtcse: error: tune.storage {url}: cannot open the study database (")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.mark.parametrize(
    "url,shown",
    [
        ("foo://user:secret1@127.0.0.1/db", "foo://user:***@127.0.0.1/db"),
        ("postgresql+psycopg://user@127.0.0.1:{port}/db?password=qsecret", "db?password=***"),
        ("postgresql+psycopg://user:s%40cret2@127.0.0.1:{port}/db", "postgresql+psycopg://user:***@127.0.0.1:"),
        (
            "postgresql+psycopg://u:pw3@127.0.0.1:{port}/db?sslmode=disable&PASSWORD=pw4",
            "db?sslmode=disable&PASSWORD=***",
        ),
    ],
)
def test_storage_passwords_are_masked_in_every_message(url, shown, tmp_path, capsys):
    """Issue 21 item 5: a password in the userinfo or in the query never reaches a message."""
    url = url.format(port=closed_port())
    line = user_error_line(
        capsys, "tune-report", "--params", REPO / "params.yaml", "--storage", url, "--output-dir", tmp_path
    )
    assert shown in line, line
    for secret in ("secret1", "qsecret", "s%40cret2", "s@cret2", "pw3", "pw4"):
        assert secret not in line, line


def test_mask_url_keeps_everything_but_the_passwords():
    from jtcse.config.search import mask_text, mask_url

    assert mask_url("postgresql+psycopg://user:pa:ss@h:5432/db?x=a@b&password=p") == (
        "postgresql+psycopg://user:***@h:5432/db?x=a@b&password=***"
    )
    assert mask_url("postgresql://h:5432/db?user=u") == "postgresql://h:5432/db?user=u"  # a port is not a password
    assert mask_url("sqlite:///tune/optuna.db") == "sqlite:///tune/optuna.db"
    assert mask_text('password authentication failed: "s@cret"', "postgresql://u:s%40cret@h/db") == (
        'password authentication failed: "***"'
    )


def test_a_mysql_url_without_its_driver_is_one_line_naming_the_package(tmp_path, capsys):
    """Issue 21 item 5: mysql:// without MySQLdb was an ImportError traceback, exit 1."""
    pytest.importorskip("sqlalchemy")
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("the MySQL driver is installed here")
    line = user_error_line(
        capsys,
        "tune-report",
        "--params",
        REPO / "params.yaml",
        "--storage",
        "mysql://u:pw5@127.0.0.1/db",
        "--output-dir",
        tmp_path,
    )
    assert line == (
        "jtcse: error: tune options: tune.storage: 'mysql://u:***@127.0.0.1/db': the database driver of 'mysql' is "
        "not installed (Python module MySQLdb, from the package mysqlclient); install it, or use sqlite:///path.db "
        "or postgresql+psycopg://user@host:port/db"
    )


@pytest.mark.parametrize(
    "entry,key",
    [
        ("temperature: {low: 0.03, high: .inf}", "tune.space.temperature.range: high must be a finite number, got inf"),
        ("lr: {low: .nan, high: 0.001}", "tune.space.lr.range: low must be a finite number, got nan"),
        ("w_tm: {low: 0.1, high: 1.0, step: .inf}", "tune.space.w_tm.range: step must be a finite number, got inf"),
    ],
)
def test_search_space_bounds_must_be_finite(entry, key, tmp_path, capsys):
    """Issue 21 item 10: `high: .inf` was accepted; every trial then failed with OverflowError."""
    params = write(tmp_path / "params.yaml", f"tune:\n  space:\n    {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(params)
    assert str(caught.value) == f"{params}: {key}"
    line = user_error_line(capsys, "tune-report", "--params", params, "--output-dir", tmp_path / "tune")
    assert line == f"jtcse: error: {params}: {key}"


# ------------------------------------------------------------------------------------------------ bugs stay


def test_a_bug_keeps_its_traceback_and_exit_status_1(tmp_path):
    """Only UserError is bad input: a plain ValueError from inside jtcse is a bug and must stay visible."""
    code = (
        "import sys, jtcse.cli as c, jtcse.commands.encode as e\n"
        "def broken(args):\n    raise ValueError('an internal invariant broke')\n"
        "e.similarity_command = broken\n"
        "sys.exit(c.main(['similarity', 'a', 'b', '--model', 'x']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 1
    assert (
        "Traceback (most recent call last)" in proc.stderr and "ValueError: an internal invariant broke" in proc.stderr
    )
    assert "jtcse: error:" not in proc.stderr


def test_the_installed_command_prints_one_line_and_no_traceback(tmp_path):
    """The real process, not just main(): exit status 2 and exactly one line on stderr."""
    path = write(tmp_path / "p.yaml", "train:\n  lr: 0\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jtcse.cli",
            "train",
            "--params",
            str(path),
            "--tower-a",
            "a",
            "--tower-b",
            "b",
            "--output",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"jtcse: error: {path}: train.lr: Input should be greater than 0 (got 0)"
    ]
