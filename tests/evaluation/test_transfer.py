import json

import numpy as np
import pytest

from jtcse.data.readers import DataError
from jtcse.encoding import Encoder
from jtcse.evaluation.probe import cross_validated_accuracy, cv_selected_accuracy, dev_selected_accuracy
from jtcse.evaluation.transfer import (
    TRANSFER_FILES,
    TRANSFER_TASKS,
    TransferEvaluator,
    pair_features,
    read_mrpc,
    read_polarity,
    read_sst,
    read_task,
    read_trec,
)

# --- the readers, on tiny files in each real format -----------------------------------------------------------


def test_polarity_files_label_by_file_keep_blank_lines_and_read_latin1(tmp_path):
    (tmp_path / "a.pos").write_bytes(b"a  fine\tfilm .\n\ncaf\xe9 au lait\n")  # Latin-1, a blank line
    (tmp_path / "a.neg").write_text("dull .\n", encoding="ascii")
    data = read_polarity(tmp_path / "a.pos", tmp_path / "a.neg")
    assert data.first == ["a fine film .", "", "café au lait", "dull ."]
    assert data.labels.tolist() == [1, 1, 1, 0]
    assert data.second is None


def test_sst_reads_sentence_tab_label_and_names_a_bad_line(tmp_path):
    path = tmp_path / "sentiment-dev"
    path.write_text("it 's a charming journey . \t1\nunflinchingly bleak \t0\n", encoding="utf-8")
    data = read_sst(path)
    assert data.first == ["it 's a charming journey .", "unflinchingly bleak"]
    assert data.labels.tolist() == [1, 0]
    path.write_text("good\t1\nno label here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"sentiment-dev:2: expected 'sentence<TAB>0\|1'"):
        read_sst(path)


def test_trec_takes_the_coarse_class_and_reads_latin1(tmp_path):
    path = tmp_path / "train_5500.label"
    path.write_bytes(
        b"NUM:dist How far is it from Denver to Aspen ?\nHUM:desc Who was Galil\xe9e ?\n"
        b"ABBR:exp What does NASA stand for ?\n"
    )
    data = read_trec(path)
    assert data.first == ["How far is it from Denver to Aspen ?", "Who was Galilée ?", "What does NASA stand for ?"]
    assert data.labels.tolist() == [5, 3, 0]  # ABBR, DESC, ENTY, HUM, LOC, NUM
    path.write_text("FOO:bar What ?\n", encoding="ascii")
    with pytest.raises(DataError, match=r"train_5500.label:1: expected 'COARSE:fine question'"):
        read_trec(path)


def test_mrpc_skips_the_bom_header_and_reads_both_strings(tmp_path):
    path = tmp_path / "msr_paraphrase_train.txt"
    path.write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused him .\n"
        "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n",
        encoding="utf-8",
    )
    data = read_mrpc(path)
    assert data.first == ["Amrozi accused his brother .", "Yucaipa owned Dominick 's ."]
    assert data.second == ["Referring to him , Amrozi accused him .", "Yucaipa bought Dominick 's in 1995 ."]
    assert data.labels.tolist() == [1, 0]
    path.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tonly one string\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"msr_paraphrase_train.txt:2: expected 5 TAB-separated columns"):
        read_mrpc(path)


def test_the_bundle_has_the_standard_senteval_counts(data_dir):
    counts = {t: {k: len(v) for k, v in read_task(data_dir / "transfer", t).items()} for t in TRANSFER_TASKS}
    assert counts == {
        "mr": {"all": 10662},
        "cr": {"all": 3775},
        "subj": {"all": 10000},
        "mpqa": {"all": 10606},
        "sst2": {"train": 67349, "dev": 872, "test": 1821},
        "trec": {"train": 5452, "test": 500},
        "mrpc": {"train": 4076, "test": 1725},
    }


# --- the probe, on synthetic data with a known answer ---------------------------------------------------------


def blobs(n_per_class: int, flipped: int, seed: int, dim: int = 5):
    """Two well-separated classes; the labels of the first ``flipped`` points of each class are swapped.

    A linear probe learns the true boundary, so it gets every clean point right and every flipped one wrong:
    the accuracy is known exactly.
    """
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(-4.0, 0.5, (n_per_class, dim)), rng.normal(4.0, 0.5, (n_per_class, dim))])
    y = np.array([0] * n_per_class + [1] * n_per_class)
    y[:flipped] = 1
    y[n_per_class : n_per_class + flipped] = 0
    return x, y


def test_cross_validation_reaches_the_known_accuracy():
    x, y = blobs(100, flipped=5, seed=0)  # 10 of 200 points are mislabelled: 95 % is the best possible
    assert cross_validated_accuracy(x, y, folds=5, inner_folds=2, seed=1111, max_iter=200) == pytest.approx(95.0)
    clean = blobs(50, flipped=0, seed=1)
    assert cross_validated_accuracy(*clean, folds=5, inner_folds=2, seed=1111, max_iter=200) == pytest.approx(100.0)


def test_split_protocols_reach_the_known_test_accuracy():
    train, dev = blobs(60, flipped=3, seed=2), blobs(20, flipped=0, seed=3)
    test = blobs(20, flipped=2, seed=4)  # 4 of 40 test labels are wrong: 90 %
    assert dev_selected_accuracy(train, dev, test, seed=1111, max_iter=200) == pytest.approx(90.0)
    assert cv_selected_accuracy(train, test, folds=5, seed=1111, max_iter=200) == pytest.approx(90.0)


def test_cv_splits_are_seeded_and_stratified():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(120, 4)), np.array([0] * 90 + [1] * 30)  # noise: the accuracy depends on the folds
    first = cross_validated_accuracy(x, y, folds=4, inner_folds=2, seed=7, max_iter=100)
    assert cross_validated_accuracy(x, y, folds=4, inner_folds=2, seed=7, max_iter=100) == first
    from jtcse.evaluation.probe import _folds

    assert all(np.bincount(y[test]).tolist() in ([22, 8], [23, 7]) for _, test in _folds(y, 4, 7))


def test_warm_started_grid_and_parallel_folds_give_the_cold_serial_answer():
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from jtcse.evaluation.probe import C_GRID_KFOLD, _folds, select_c_by_cv

    rng = np.random.default_rng(6)
    x = rng.normal(size=(150, 6))
    y = (x[:, 0] + 0.8 * rng.normal(size=150) > 0).astype(int)  # noisy labels: C matters
    with threadpool_limits(limits=1):  # see _one_blas_thread: threads only slow these tiny fits down
        naive = [
            np.mean(
                [
                    LogisticRegression(C=c, max_iter=500, random_state=1111).fit(x[tr], y[tr]).score(x[te], y[te])
                    for tr, te in _folds(y, 5, 1111)
                ]
            )
            * 100
            for c in C_GRID_KFOLD
        ]
    c, score = select_c_by_cv(x, y, C_GRID_KFOLD, folds=5, seed=1111, max_iter=500)
    assert c == C_GRID_KFOLD[int(np.argmax(naive))] and score == pytest.approx(max(naive), abs=1e-9)
    assert select_c_by_cv(x, y, C_GRID_KFOLD, folds=5, seed=1111, max_iter=500, jobs=2) == (c, score)
    serial = cross_validated_accuracy(x, y, folds=4, inner_folds=3, seed=1111, max_iter=500, jobs=1)
    assert cross_validated_accuracy(x, y, folds=4, inner_folds=3, seed=1111, max_iter=500, jobs=2) == serial


def test_subsample_is_stratified_seeded_and_keeps_pairs_aligned():
    from jtcse.evaluation.transfer import Labelled, subsample

    labels = np.array([0] * 300 + [1] * 100)
    data = Labelled([f"a{i}" for i in range(400)], labels, [f"b{i}" for i in range(400)])
    small = subsample(data, 40, seed=3)
    assert len(small) == 40 and np.bincount(small.labels).tolist() == [30, 10]
    assert [a[1:] for a in small.first] == [b[1:] for b in small.second]  # pair i keeps its partner
    assert [int(a[1:]) for a in small.first] == sorted(int(a[1:]) for a in small.first)
    assert all(labels[int(a[1:])] == y for a, y in zip(small.first, small.labels))
    assert subsample(data, 40, seed=3).first == small.first and subsample(data, 40, seed=4).first != small.first
    assert subsample(data, None, seed=3) is data and subsample(data, 1000, seed=3) is data


def test_max_train_caps_what_the_probes_learn_from_not_dev_or_test(small_transfer_dir):
    evaluator = TransferEvaluator(small_transfer_dir, ["mr", "sst2", "mrpc"], folds=2, max_train=20)
    sizes = {t: {k: len(v) for k, v in splits.items()} for t, splits in evaluator.splits.items()}
    assert sizes == {"mr": {"all": 20}, "sst2": {"train": 20, "dev": 40, "test": 40}, "mrpc": {"train": 20, "test": 40}}
    with pytest.raises(ValueError, match=r"max_train \(3\) must leave at least 2 examples per fold"):
        TransferEvaluator(small_transfer_dir, ["mr"], folds=2, max_train=3)


def test_pair_features_match_their_definition():
    u, v = np.array([[1.0, -2.0]]), np.array([[3.0, 1.0]])
    assert pair_features(u, v).tolist() == [[1.0, -2.0, 3.0, 1.0, 2.0, 3.0, 3.0, -2.0]]
    assert pair_features(u, v, "senteval").tolist() == [[2.0, 3.0, 3.0, -2.0]]
    with pytest.raises(ValueError, match="'full' or 'senteval'"):
        pair_features(u, v, "concat")


# --- the evaluator and the CLI end to end ---------------------------------------------------------------------


class CountingEncoder(Encoder):
    """A real tower encoder that records what it was asked to encode."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    @property
    def dimension(self):
        return self.inner.dimension

    def encode(self, sentences, **kwargs):
        self.calls.append(list(sentences))
        return self.inner.encode(sentences, **kwargs)


def test_tiny_model_end_to_end_encodes_each_distinct_sentence_once(tiny_bert, small_transfer_dir):
    from jtcse.api import load

    evaluator = TransferEvaluator(small_transfer_dir, folds=2, inner_folds=2, max_iter=50, batch_size=64)
    encoder = CountingEncoder(load(tiny_bert, device="cpu", max_length=32))
    results = evaluator(encoder)
    assert set(results) == {*TRANSFER_TASKS, "avg"} and evaluator.primary_metric == "avg"
    assert all(0.0 <= results[t] <= 100.0 for t in TRANSFER_TASKS)
    assert results["avg"] == pytest.approx(np.mean([results[t] for t in TRANSFER_TASKS]))
    assert len(encoder.calls) == 1
    every = [s for splits in evaluator.splits.values() for split in splits.values() for s in split.sentences()]
    assert sorted(encoder.calls[0]) == sorted(set(every))  # one call, each distinct sentence exactly once
    assert evaluator.timings.sentences == len(set(every)) and set(evaluator.timings.probes) == set(TRANSFER_TASKS)


def test_missing_file_and_unknown_task_are_named(small_transfer_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing transfer file\(s\) MR/rt-polarity.pos"):
        TransferEvaluator(tmp_path, ["mr"])
    with pytest.raises(ValueError, match="unknown transfer task"):
        TransferEvaluator(small_transfer_dir, ["sst5"])


def test_cli_suite_transfer_writes_metrics_and_plot_data(tiny_bert, small_transfer_dir, tmp_path, capsys):
    from jtcse.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("transfer:\n  tasks: [cr, trec, mrpc]\n  folds: 2\n  inner_folds: 2\n  max_iter: 50\n")
    out = tmp_path / "m" / "transfer.json"
    rc = main(
        [
            "evaluate",
            "--suite",
            "transfer",
            "--model",
            str(tiny_bert),
            "--data-dir",
            str(small_transfer_dir),
            "--params",
            str(params),
            "--output",
            str(out),
            "--plot-data",
            str(tmp_path / "t.csv"),
            "--max-length",
            "32",
            "--name",
            "tiny",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    results = json.loads(out.read_text())
    assert set(results) == {"cr", "trec", "mrpc", "avg"}
    printed = capsys.readouterr().out
    assert "| model | cr | trec | mrpc | avg |" in printed and "| tiny |" in printed
    assert "transfer suite:" in printed and "distinct sentences encoded in" in printed
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == "task,accuracy"
    assert len(TRANSFER_FILES) == 7


def test_cli_bad_transfer_setting_is_one_line_exit_2(tiny_bert, small_transfer_dir, tmp_path, capsys):
    from jtcse.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("transfer:\n  folds: 1\n")
    rc = main(
        [
            "evaluate",
            "--suite",
            "transfer",
            "--model",
            str(tiny_bert),
            "--data-dir",
            str(small_transfer_dir),
            "--params",
            str(params),
            "--output",
            str(tmp_path / "x.json"),
        ]
    )
    assert rc == 2
    assert "transfer.folds" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_report_suite_transfer_writes_the_transfer_table(tmp_path, capsys):
    from jtcse.cli import main

    scores = {t: 70.0 + i for i, t in enumerate(TRANSFER_TASKS)} | {"avg": 73.0}
    (tmp_path / "base.json").write_text(json.dumps(scores))
    (tmp_path / "twin.json").write_text(json.dumps({**scores, "mr": 80.125}))
    assert (
        main(
            [
                "report",
                "--suite",
                "transfer",
                "--base",
                str(tmp_path / "base.json"),
                "--twin",
                str(tmp_path / "twin.json"),
                "--distilled",
                str(tmp_path / "absent.json"),
                "--markdown",
                str(tmp_path / "t.md"),
            ]
        )
        == 0
    )
    lines = (tmp_path / "t.md").read_text().splitlines()
    assert lines[0] == "# SentEval transfer results (logistic-regression probe, accuracy x 100)"
    assert lines[2] == "| model | mr | cr | subj | mpqa | sst2 | trec | mrpc | avg |"
    assert lines[4] == "| base (cls pooling) | 70.00 | 71.00 | 72.00 | 73.00 | 74.00 | 75.00 | 76.00 | 73.00 |"
    assert lines[5].startswith("| twin (JTCSE) | 80.12 |") and len(lines) == 6
