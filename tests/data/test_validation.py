"""Tests for the data-validation gate (jtcse.data.validation, jtcse.data.suites).

Each corruption below is one the gate exists to stop before training: it must
be reported with the file and the expectation that caught it, on one line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

from jtcse.data.bundle_facts import DEFAULT_EXPECTED_ROWS  # noqa: E402  (env var must be set first)
from jtcse.data.validation import DataValidationError, validate_data  # noqa: E402

REAL_DATA = Path("/work/shared/data")
HEADER = "sentence1\tsentence2\tscore\tsubset"
ROWS_PER_FILE = 4


def _pairs(stem: str, n: int = ROWS_PER_FILE) -> list[tuple[str, str, str, str]]:
    lo = 1 if stem.startswith("sickr") else 0
    return [
        (
            f"A {stem} cat number {i} sits on the mat.",
            f"The {stem} dog number {i} runs in the park.",
            f"{lo + (i % 4):.1f}",
            "SICK" if stem.startswith("sickr") else "headlines",
        )
        for i in range(n)
    ]


def _write_tsv(path: Path, rows: list[tuple[str, ...]], header: str = HEADER) -> None:
    path.write_text(header + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")


CORPUS_LINES = [
    "Training sentences are plain text with one sentence on each line.",
    "The quick brown fox jumps over the lazy dog.",
    "Contrastive learning pulls two views of a sentence together.",
    "Dropout noise provides the minimal data augmentation here.",
    # Train-split text is allowed in the corpus; only dev/test text is leakage.
    "A stsb.train cat number 0 sits on the mat.",
]


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    """A small, valid copy of the bundle layout."""
    sts = tmp_path / "data" / "sts"
    sts.mkdir(parents=True)
    for stem in DEFAULT_EXPECTED_ROWS:
        _write_tsv(sts / f"{stem}.tsv", _pairs(stem))
    corpus = tmp_path / "data" / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(CORPUS_LINES) + "\n", encoding="utf-8")
    return tmp_path / "data"


FIXTURE_ROWS = {stem: ROWS_PER_FILE for stem in DEFAULT_EXPECTED_ROWS}


def _run(data: Path, **kwargs):
    kwargs.setdefault("expected_rows", FIXTURE_ROWS)
    return validate_data(data, data / "corpus" / "train.txt", **kwargs)


def _error(data: Path, **kwargs) -> str:
    with pytest.raises(DataValidationError) as info:
        _run(data, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "the error must stay on one line"
    return message


def _edit_line(path: Path, index: int, new: str) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[index] = new
    path.write_text("\n".join(lines), encoding="utf-8")


def test_valid_fixture_passes_and_writes_docs_and_report(bundle: Path, tmp_path: Path) -> None:
    docs, report = tmp_path / "docs", tmp_path / "out" / "report.json"
    summary = _run(bundle, docs_dir=docs, report=report)

    assert (docs / "index.html").is_file()
    on_disk = json.loads(report.read_text(encoding="utf-8"))
    assert on_disk == summary
    assert set(summary) == {f"sts/{s}.tsv" for s in DEFAULT_EXPECTED_ROWS} | {"corpus/train.txt"}
    for file, checks in summary.items():
        assert checks, file
        for name, result in checks.items():
            assert result["success"] is True, (file, name)
            assert isinstance(result["unexpected_count"], int)
    assert "expect_column_values_to_not_be_in_set(matches_eval_sentence)" in summary["corpus/train.txt"]
    assert not list(report.parent.glob("*.tmp")), "atomic write must not leave temp files"


# Every corruption is injected into its own file (or its own line) and all of
# them are validated in ONE call: that is what the gate promises (collect all
# failures, one line), and it keeps the suite fast (GX costs ~1.5 s per call).
# The exact failure count guards against a corruption being "caught" only by
# accident or against one corruption triggering unrelated failures.


def test_sts_corruptions_are_each_caught(bundle: Path) -> None:
    sts = bundle / "sts"
    # empty (whitespace-only) sentence
    _edit_line(sts / "sts13.test.tsv", 2, "   \tsecond sentence here\t2.0\theadlines")
    # score out of range: 0.5 is fine for STS but below SICK's 1..5 scale
    _edit_line(sts / "sickr.test.tsv", 1, "first one\tsecond one\t0.5\tSICK")
    # score that is not a number
    _edit_line(sts / "stsb.test.tsv", 1, "first one\tsecond one\thigh\tMSRvid")
    # duplicate pair: sts12 tolerates its official share of repeats
    # (272/3108 rows); one repeated pair in 4 rows is far above that
    lines = (sts / "sts12.test.tsv").read_text(encoding="utf-8").split("\n")
    _edit_line(sts / "sts12.test.tsv", 3, lines[1])
    # wrong header
    _edit_line(sts / "sts15.test.tsv", 0, "sentence_A\tsentence_B\tscore\tsubset")
    # a row with an extra TAB-separated field
    _edit_line(sts / "sts16.test.tsv", 4, "a b c\td e f\t3\theadlines\textra")
    # a missing file
    (sts / "sickr.dev.tsv").unlink()
    # wrong row count (the file has 4 rows)
    rows = dict(FIXTURE_ROWS, **{"stsb.train": ROWS_PER_FILE + 1})

    msg = _error(bundle, expected_rows=rows)

    expected = [
        "sts/sts13.test.tsv: expectation expect_column_values_to_not_match_regex(sentence1) failed on 1 rows (e.g. line 3: '   ')",
        "sts/sickr.test.tsv: expectation expect_column_values_to_be_between(score_value) failed on 1 rows (e.g. line 2: '0.5')",
        "sts/stsb.test.tsv: expectation expect_column_values_to_not_be_null(score_value) failed on 1 rows (e.g. line 2: 'high')",
        "sts/stsb.train.tsv: expectation expect_table_row_count_to_equal failed on 1 rows (observed 4 rows, expected 5)",
        "sts/sts12.test.tsv: expectation expect_compound_columns_to_be_unique(sentence1,sentence2) failed on 2 rows (e.g. line 2: ",
        "sts/sts15.test.tsv: expectation expect_table_columns_to_match_ordered_list failed on 4 rows (e.g. line 1: header ['sentence_A', 'sentence_B', 'score', 'subset']",
        "sts/sts16.test.tsv: expectation expect_column_values_to_be_in_set(n_fields) failed on 1 rows (e.g. line 5: 'a b c",
        "sts/sickr.dev.tsv: expectation file_exists failed on 4 rows (file is missing)",
    ]
    for fragment in expected:
        assert fragment in msg
    assert len(msg.split("; ")) == len(expected), msg


def test_corpus_corruptions_are_each_caught(bundle: Path, tmp_path: Path) -> None:
    dev_sentence = _pairs("stsb.dev")[2][1]  # line 4 of sts/stsb.dev.tsv
    leaked = "  " + dev_sentence.upper().replace(" ", " \t ") + " "
    path = bundle / "corpus/train.txt"
    n = len(CORPUS_LINES)
    path.write_bytes(
        ("\n".join(CORPUS_LINES) + "\n").encode("utf-8")
        + b"Caf\xe9 latin-1 bytes are not UTF-8 at all.\n"  # line n+1
        + ("word " * 200).encode("utf-8")
        + b"\n"  # line n+2: too long
        + b"\n"  # line n+3: empty (also below min_words)
        + leaked.encode("utf-8")
        + b"\n"  # line n+4: stsb.dev sentence, other case/spacing
    )
    report = tmp_path / "report.json"

    msg = _error(bundle, report=report)

    expected = [
        f"corpus/train.txt: expectation expect_column_values_to_be_in_set(utf8_valid) failed on 1 rows (e.g. line {n + 1}: 'invalid continuation byte 0xe9 at byte 4",
        f"corpus/train.txt: expectation expect_column_values_to_be_between(n_words) failed on 2 rows (e.g. line {n + 2}: 200 words: ",
        f"corpus/train.txt: expectation expect_column_values_to_not_match_regex(text) failed on 1 rows (e.g. line {n + 3}: '')",
        f"corpus/train.txt: expectation expect_column_values_to_not_be_in_set(matches_eval_sentence) failed on 1 rows (e.g. line {n + 4}: '  THE ",
        "also in sts/stsb.dev.tsv line 4",
    ]
    for fragment in expected:
        assert fragment in msg
    assert len(msg.split("; ")) == 4, msg
    # The report is written even when the gate fails: that is when it is read.
    checks = json.loads(report.read_text(encoding="utf-8"))["corpus/train.txt"]
    assert checks["expect_column_values_to_be_in_set(utf8_valid)"] == {"success": False, "unexpected_count": 1}
    assert checks["expect_column_values_to_be_between(n_words)"] == {"success": False, "unexpected_count": 2}


def test_duplicates_within_official_share_pass(bundle: Path) -> None:
    # 2 duplicate-pair rows out of 40 (5%) stay under sts12's official 8.75%.
    rows = _pairs("sts12.test", 40)
    rows[5] = rows[4]
    _write_tsv(bundle / "sts/sts12.test.tsv", rows)
    summary = _run(bundle, expected_rows=dict(FIXTURE_ROWS, **{"sts12.test": 40}))
    dup = summary["sts/sts12.test.tsv"]["expect_compound_columns_to_be_unique(sentence1,sentence2)"]
    assert dup == {"success": True, "unexpected_count": 2}


@pytest.mark.skipif(not (REAL_DATA / "sts").is_dir(), reason=f"real data bundle not found at {REAL_DATA}")
def test_real_bundle_passes(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = validate_data(
        REAL_DATA, REAL_DATA / "corpus" / "train.txt", docs_dir=tmp_path / "docs", report=tmp_path / "r.json"
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"real-data validation took {elapsed:.1f}s"
    assert (tmp_path / "docs" / "index.html").is_file()
    assert json.loads((tmp_path / "r.json").read_text(encoding="utf-8")) == summary
    assert all(r["success"] for checks in summary.values() for r in checks.values())
    # The official releases repeat some pairs; the gate tolerates exactly those.
    assert (
        summary["sts/sts12.test.tsv"]["expect_compound_columns_to_be_unique(sentence1,sentence2)"]["unexpected_count"]
        == 272
    )


def test_great_expectations_info_noise_is_quiet_and_the_level_restored(bundle: Path, caplog) -> None:
    import logging

    from jtcse.data.validation import GX_NOISY_LOGGERS

    noisy = [logging.getLogger(name) for name in GX_NOISY_LOGGERS]
    before = [logger.level for logger in noisy]
    with caplog.at_level(logging.INFO):
        _run(bundle)
    messages = [record.getMessage() for record in caplog.records]
    assert any("data validation passed" in m for m in messages)  # INFO records are captured here
    assert not [m for m in messages if "_get_default_value called with key" in m]
    assert not [r for r in caplog.records if r.name.startswith("great_expectations") and r.levelno < logging.WARNING]
    # only while validating: importing or running jtcse changes no logging set-up
    assert [logger.level for logger in noisy] == before


def test_validate_prints_a_few_lines_and_no_great_expectations_internals(data_dir: Path, tmp_path: Path) -> None:
    """Issue 21 item 12: GX logged ~220 INFO lines (`_docs_decorators: Skipping registering function ...`) while
    it was imported, before the result; a fresh process, so the import happens here."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "PYTHONPATH": str(REPO), "GX_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jtcse.cli",
            "validate",
            "--data-dir",
            str(data_dir),
            "--report",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = (proc.stderr + proc.stdout).strip().splitlines()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [line for line in lines if "great_expectations" in line], lines[:5]
    assert len(lines) <= 5 and lines[-1].startswith("data valid ("), lines
