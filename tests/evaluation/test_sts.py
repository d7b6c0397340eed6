import argparse
import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from jtcse.data.readers import read_sts
from jtcse.encoding import Encoder
from jtcse.evaluation.sts import STSEvaluator
from tests.conftest import write_sts


class LookupEncoder(Encoder):
    """Fixed vectors per sentence: the evaluator's arithmetic checked without any model."""

    def __init__(self, table):
        self.table = table

    @property
    def dimension(self):
        return 2

    def encode(self, sentences, batch_size=64, normalize=False, show_progress=False):
        return np.array([self.table[s] for s in sentences], dtype=np.float32)


def angle_vector(theta):
    return [np.cos(theta), np.sin(theta)]


def test_spearman_equals_scipy_on_the_same_numbers(tmp_path):
    rng = np.random.default_rng(0)
    rows, table = [], {}
    for i in range(30):
        a, b = f"left {i}", f"right {i}"
        ta, tb = rng.uniform(0, 1.5), rng.uniform(0, 1.5)
        table[a], table[b] = angle_vector(ta), angle_vector(tb)
        rows.append((a, b, round(float(rng.uniform(0, 5)), 2), "only"))
    write_sts(tmp_path / "t.tsv", rows)
    result = STSEvaluator(tmp_path, {"t": "t.tsv"})(LookupEncoder(table))
    cos = [np.cos(np.arctan2(table[a][1], table[a][0]) - np.arctan2(table[b][1], table[b][0])) for a, b, *_ in rows]
    expected = spearmanr(cos, [r[2] for r in rows]).statistic * 100
    assert result["t"] == pytest.approx(expected, abs=1e-4)


def test_all_aggregation_differs_from_subset_mean(tmp_path):
    # Each subset is perfectly ranked inside itself, but subset "high" has low cosines: pooled, the order breaks.
    rows, table = [], {}
    for i in range(10):
        for subset, offset, base_score in (("low", 0.0, 0.0), ("high", 0.6, 2.5)):
            a, b = f"{subset} a{i}", f"{subset} b{i}"
            table[a], table[b] = angle_vector(0.0), angle_vector(offset + 0.5 - i * 0.05)
            rows.append((a, b, base_score + i * 0.2, subset))
    write_sts(tmp_path / "y.tsv", rows)
    evaluator = STSEvaluator(tmp_path, {"y": "y.tsv"})
    result = evaluator(LookupEncoder(table))
    assert evaluator.subset_means["y"] == pytest.approx(100.0)
    assert result["y"] < 50.0


def test_average_is_plain_mean_of_tasks(tmp_path):
    rows = [(f"a{i}", f"b{i}", float(i), "s") for i in range(5)]
    table = {f"a{i}": angle_vector(0.0) for i in range(5)} | {f"b{i}": angle_vector(1.0 - 0.2 * i) for i in range(5)}
    write_sts(tmp_path / "one.tsv", rows)
    write_sts(tmp_path / "two.tsv", [(a, b, -s, sub) for a, b, s, sub in rows])
    result = STSEvaluator(tmp_path, {"one": "one.tsv", "two": "two.tsv"})(LookupEncoder(table))
    assert result["one"] == pytest.approx(100.0) and result["two"] == pytest.approx(-100.0)
    assert result["avg"] == pytest.approx(0.0)


def test_quotes_are_not_quote_characters(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('sentence1\tsentence2\tscore\tsubset\n"he said\tno\t1.0\tx\nok\t"fine"\t2.0\tx\n', encoding="utf-8")
    pairs = read_sts(path)
    assert pairs.sentence1 == ['"he said', "ok"] and pairs.scores == [1.0, 2.0]


def test_cli_evaluate_writes_the_seven_tasks(tiny_bert, small_sts_dir, tmp_path, capsys):
    from jtcse.cli import main

    out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_bert),
                "--model-b",
                str(tiny_bert),
                "--pooling",
                "cls",
                "--data-dir",
                str(small_sts_dir),
                "--output",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())
    assert list(metrics) == ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr", "avg"]
    assert metrics["avg"] == pytest.approx(np.mean([metrics[k] for k in list(metrics)[:7]]), abs=1e-3)
    assert "| sts12 |" in capsys.readouterr().out


def test_dev_selection_metrics(small_sts_dir):
    from jtcse.evaluation.sts import DEV_MEAN, DEV_TASKS, dev_evaluator

    rng = np.random.default_rng(0)
    sentences = {
        s for f in DEV_TASKS.values() for p in [read_sts(small_sts_dir / f)] for s in (*p.sentence1, *p.sentence2)
    }
    encoder = LookupEncoder({s: angle_vector(rng.uniform(0, 1.5)) for s in sentences})
    both = dev_evaluator(small_sts_dir, DEV_MEAN)
    scores = both(encoder)
    assert both.primary_metric == "dev_mean" and set(scores) == {"stsb_dev", "sickr_dev", "dev_mean"}
    assert scores["dev_mean"] == pytest.approx((scores["stsb_dev"] + scores["sickr_dev"]) / 2)
    paper = dev_evaluator(small_sts_dir, "stsb_dev")
    assert paper.primary_metric == "stsb_dev" and paper(encoder) == pytest.approx(scores)
    with pytest.raises(ValueError, match="evaluate.selection must be one of stsb_dev, dev_mean"):
        dev_evaluator(small_sts_dir, "sts12")


def test_cli_evaluate_normalize_makes_the_ad_hoc_twin_sum_unit_vectors(tiny_bert, small_sts_dir, tmp_path, capsys):
    from jtcse.cli import main
    from jtcse.commands.evaluate import _evaluation_encoder, evaluate_command_parser

    parser = argparse.ArgumentParser()
    evaluate_command_parser(parser.add_subparsers())
    common = ["evaluate", "--model", str(tiny_bert), "--pooling", "mean", "--device", "cpu", "--output", "x.json"]
    twin = _evaluation_encoder(parser.parse_args([*common, "--model-b", str(tiny_bert), "--normalize"]))
    tower = _evaluation_encoder(parser.parse_args(common))
    sentences = ["a cat sits on the mat", "stocks fell sharply today"]
    unit = tower.encode(sentences)
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    np.testing.assert_allclose(twin.encode(sentences), 2 * unit, atol=1e-5)

    bad = [*common[:-2], "--data-dir", str(small_sts_dir), "--output", str(tmp_path / "m.json"), "--normalize"]
    assert main(bad) == 2
    assert "--normalize: only for a twin made of --model and --model-b" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
