"""STS evaluation as SimCSE's SentEval fork does it (the protocol behind the published JTCSE numbers).

Cosine similarity of the two sentences' vectors against the gold score, Spearman x 100. STS12-16 use the
"all" aggregation: every subset of a year is concatenated and one Spearman is taken over the whole, which is
not the mean of per-subset Spearmans (subsets have different score distributions). STS-B and SICK-R use their
test splits. Model selection (``evaluate.selection``) uses the dev splits only: STS-B dev as the paper, or the mean
of STS-B dev and SICK-R dev; both are always computed and logged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from jtcse.data.readers import DataError, STSPairs, missing_input, read_sts
from jtcse.encoding import Encoder, check_batch_size, encode_distinct

STS_TASKS: dict[str, str] = {
    "sts12": "sts12.test.tsv",
    "sts13": "sts13.test.tsv",
    "sts14": "sts14.test.tsv",
    "sts15": "sts15.test.tsv",
    "sts16": "sts16.test.tsv",
    "stsb": "stsb.test.tsv",
    "sickr": "sickr.test.tsv",
}
DEV_TASKS: dict[str, str] = {"stsb_dev": "stsb.dev.tsv", "sickr_dev": "sickr.dev.tsv"}
#: Name of the dev average (the mean of every DEV_TASKS score) among a dev evaluator's metrics.
DEV_MEAN = "dev_mean"
SELECTION_METRICS = ("stsb_dev", DEV_MEAN)


def cosine_scores(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    emb1 = emb1 / np.clip(np.linalg.norm(emb1, axis=1, keepdims=True), 1e-12, None)
    emb2 = emb2 / np.clip(np.linalg.norm(emb2, axis=1, keepdims=True), 1e-12, None)
    return (emb1 * emb2).sum(axis=1)


def spearman100(predicted: np.ndarray, gold: np.ndarray) -> float:
    return float(spearmanr(predicted, gold).statistic * 100.0)


class STSEvaluator:
    """Evaluates an :class:`Encoder` on a set of STS files; returns named metrics with one primary metric.

    Every distinct sentence across all tasks is encoded once.
    """

    def __init__(
        self,
        data_dir: str | Path,
        tasks: dict[str, str] | None = None,
        batch_size: int = 128,
        primary_metric: str | None = None,
        show_progress: bool = False,
        average_name: str = "avg",
    ):
        self.data_dir = Path(data_dir)
        self.tasks = dict(tasks or STS_TASKS)
        self.batch_size = check_batch_size(batch_size)
        self.show_progress = show_progress
        self.average_name = average_name
        if not self.data_dir.is_dir():
            raise missing_input(self.data_dir, "STS data folder")
        missing = [f for f in self.tasks.values() if not (self.data_dir / f).is_file()]
        if missing:
            raise missing_input(self.data_dir / missing[0], f"STS file ({len(missing)} of {len(self.tasks)} missing)")
        self.pairs: dict[str, STSPairs] = {t: read_sts(self.data_dir / f) for t, f in self.tasks.items()}
        for task, pairs in self.pairs.items():
            if len(set(pairs.scores)) == 1:  # Spearman against constant gold scores is NaN
                raise DataError(
                    f"{self.data_dir / self.tasks[task]}: every pair has the score {pairs.scores[0]:g}; "
                    "Spearman is undefined (a gold-score column lost in a conversion?)"
                )
        self.primary_metric = primary_metric or (average_name if len(self.tasks) > 1 else next(iter(self.tasks)))
        if self.primary_metric not in (*self.tasks, average_name):
            raise ValueError(f"primary metric {self.primary_metric!r} is none of {[*self.tasks, average_name]}")
        self.subset_means: dict[str, float] = {}

    @property
    def metric_names(self) -> list[str]:
        """The keys :meth:`__call__` returns: one per task, then the average when there are several."""
        return [*self.tasks, *([self.average_name] if len(self.tasks) > 1 else [])]

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        _, vectors_of = encode_distinct(
            encoder,
            (s for p in self.pairs.values() for s in (*p.sentence1, *p.sentence2)),
            batch_size=self.batch_size,
            show_progress=self.show_progress,
        )
        results: dict[str, float] = {}
        for task, pairs in self.pairs.items():
            predicted = cosine_scores(vectors_of(pairs.sentence1), vectors_of(pairs.sentence2))
            results[task] = self.score_task(predicted, pairs)
            self.subset_means[task] = self.subset_mean(predicted, pairs)
        if len(self.tasks) > 1:
            results[self.average_name] = float(np.mean([results[t] for t in self.tasks]))
        return results

    @staticmethod
    def score_task(predicted: np.ndarray, pairs: STSPairs) -> float:
        """The "all" aggregation: one Spearman over the concatenation of every subset."""
        return spearman100(predicted, np.asarray(pairs.scores))

    @staticmethod
    def subset_mean(predicted: np.ndarray, pairs: STSPairs) -> float:
        """Mean of per-subset Spearmans (reported for reference only; not the protocol's number)."""
        subsets = np.asarray(pairs.subsets)
        gold = np.asarray(pairs.scores)
        return float(np.mean([spearman100(predicted[subsets == s], gold[subsets == s]) for s in np.unique(subsets)]))


def dev_evaluator(data_dir: str | Path, selection: str = DEV_MEAN, batch_size: int = 128) -> STSEvaluator:
    """The evaluator of model selection: every dev task and their mean, ``selection`` as the primary metric.

    Both dev sets are logged whatever selects, so a curve shows when one of them is being overfitted; with
    ``stsb_dev`` selection a data folder without SICK-R dev is accepted (STS-B dev alone)."""
    if selection not in SELECTION_METRICS:
        raise ValueError(f"evaluate.selection must be one of {', '.join(SELECTION_METRICS)}, got {selection!r}")
    tasks = dict(DEV_TASKS)
    if selection != DEV_MEAN:
        tasks = {t: f for t, f in tasks.items() if t == selection or (Path(data_dir) / f).is_file()}
    return STSEvaluator(data_dir, tasks, batch_size=batch_size, primary_metric=selection, average_name=DEV_MEAN)


def format_table(
    results: dict[str, dict[str, float]] | dict[str, float], title: str = "model", tasks: tuple[str, ...] | None = None
) -> str:
    """A markdown table: one row per model, one column per task (default: the STS tasks) and the average."""
    rows = results if results and isinstance(next(iter(results.values())), dict) else {title: results}
    columns = [t for t in (*(tasks or STS_TASKS), "avg") if any(t in r for r in rows.values())]
    header = "| model | " + " | ".join(columns) + " |"
    line = "|---|" + "---:|" * len(columns)
    body = [
        "| " + name + " | " + " | ".join(f"{r[c]:.2f}" if c in r else "" for c in columns) + " |"
        for name, r in rows.items()
    ]
    return "\n".join([header, line, *body])
