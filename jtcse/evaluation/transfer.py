"""SentEval transfer tasks as SimCSE reports them: a logistic-regression probe on frozen sentence vectors.

Seven tasks, accuracy x 100 on each and their mean (the primary metric):

| task | data | protocol |
|---|---|---|
| MR, CR, SUBJ, MPQA | one sentence per line, label = file (pos/neg, subjective/objective) | stratified ``folds``-fold CV; in each outer fold the L2 strength is chosen by an inner stratified CV of the outer training part (SentEval's InnerKFoldClassifier) |
| SST2 | ``sentence<TAB>label`` train / dev / test | L2 strength chosen on dev, accuracy on test (SentEval's SplitClassifier) |
| TREC | ``COARSE:fine question`` train / test, 6 coarse classes | L2 strength chosen by stratified CV of train, refit on all of train, accuracy on test (KFoldClassifier) |
| MRPC | MSR paraphrase TSV (Quality, #1 ID, #2 ID, #1 String, #2 String) train / test | as TREC, on pair features [u, v, abs(u - v), u * v] |

The readers follow SentEval's: MR/CR/SUBJ/MPQA/TREC are read as Latin-1 (TREC's train file is not valid
UTF-8), SST2 and MRPC as UTF-8 (MRPC with its byte-order mark), every text is whitespace-normalised
(SentEval splits on whitespace and SimCSE's batcher joins the tokens with one space), and blank lines of the
single-file tasks stay samples (CR and MPQA have a few; they are part of the standard counts 3775 and 10606).

The probe is scikit-learn's ``LogisticRegression`` (lbfgs, SentEval's scikit-learn path) over SentEval's C
grids: 2^-2 .. 2^3 for the inner-CV and split protocols, 2^-1 .. 2^5 for the k-fold protocol, fitted along
each grid with warm starts. Folds are shuffled with a fixed seed (SentEval: 1111), so a rerun gives the same
numbers; ``jobs`` processes share the folds (the result does not depend on it).

Deviations from SentEval, on purpose: SimCSE's published numbers use SentEval's PyTorch probe (Adam, early
stopping) rather than scikit-learn's; MRPC's features here add u and v to SentEval's [abs(u - v), u * v] (the
InferSent pair features, as the project's issue asks; ``mrpc_features="senteval"`` gives SentEval's); the
number of inner folds is its own setting (``inner_folds``) because ten times ten fits per C value of four
tasks dominate the suite's time on a CPU.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jtcse.data.readers import DataError
from jtcse.encoding import Encoder, check_batch_size, encode_distinct
from jtcse.errors import InputNotFoundError
from jtcse.evaluation.probe import cross_validated_accuracy, cv_selected_accuracy, dev_selected_accuracy
from jtcse.evaluation.sts import format_table

log = logging.getLogger(__name__)

#: task -> files under the transfer data folder (SentEval's layout and names).
TRANSFER_FILES: dict[str, tuple[str, ...]] = {
    "mr": ("MR/rt-polarity.pos", "MR/rt-polarity.neg"),
    "cr": ("CR/custrev.pos", "CR/custrev.neg"),
    "subj": ("SUBJ/subj.subjective", "SUBJ/subj.objective"),
    "mpqa": ("MPQA/mpqa.pos", "MPQA/mpqa.neg"),
    "sst2": ("SST/binary/sentiment-train", "SST/binary/sentiment-dev", "SST/binary/sentiment-test"),
    "trec": ("TREC/train_5500.label", "TREC/TREC_10.label"),
    "mrpc": ("MRPC/msr_paraphrase_train.txt", "MRPC/msr_paraphrase_test.txt"),
}
TRANSFER_TASKS: tuple[str, ...] = tuple(TRANSFER_FILES)
CV_TASKS = ("mr", "cr", "subj", "mpqa")
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
MRPC_HEADER = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


@dataclass(frozen=True)
class Labelled:
    """Texts and integer labels of one split; ``second`` holds the other sentence of a pair task."""

    first: list[str]
    labels: np.ndarray
    second: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def sentences(self) -> list[str]:
        return [*self.first, *(self.second or [])]


def normalise(text: str) -> str:
    """SentEval's whitespace tokenisation, joined back with single spaces as SimCSE's batcher does."""
    return " ".join(text.split())


def _lines(path: Path, encoding: str) -> list[str]:
    """The file's lines without line ends; a decoding error names the file and line."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, start=1):
        try:
            out.append(line.decode(encoding).rstrip("\r"))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{lineno}: not valid {encoding} ({err.reason})") from None
    return out


def read_polarity(positive: str | Path, negative: str | Path) -> Labelled:
    """MR/CR/SUBJ/MPQA: one text per line; label 1 for the first file, 0 for the second (SentEval's order)."""
    pos = [normalise(t) for t in _lines(Path(positive), "latin-1")]
    neg = [normalise(t) for t in _lines(Path(negative), "latin-1")]
    for path, texts in ((positive, pos), (negative, neg)):
        if not texts:
            raise DataError(f"{path}: no lines")
    return Labelled(pos + neg, np.array([1] * len(pos) + [0] * len(neg)))


def read_sst(path: str | Path) -> Labelled:
    """SST2: ``sentence<TAB>label`` with label 0 or 1."""
    path = Path(path)
    texts, labels = [], []
    for lineno, line in enumerate(_lines(path, "utf-8"), start=1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("\t")
        if not sep or label.strip() not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: expected 'sentence<TAB>0|1', got {line[:80]!r}")
        texts.append(normalise(text))
        labels.append(int(label))
    if not texts:
        raise DataError(f"{path}: no data rows")
    return Labelled(texts, np.array(labels))


def read_trec(path: str | Path) -> Labelled:
    """TREC: ``COARSE:fine question``; the label is the coarse class (6 classes, as SentEval)."""
    path = Path(path)
    texts, labels = [], []
    for lineno, line in enumerate(_lines(path, "latin-1"), start=1):
        if not line.strip():
            continue
        label, _, rest = line.strip().partition(" ")
        coarse = label.split(":", 1)[0]
        if ":" not in label or coarse not in TREC_CLASSES or not rest.strip():
            raise DataError(
                f"{path}:{lineno}: expected 'COARSE:fine question' with COARSE one of "
                f"{', '.join(TREC_CLASSES)}, got {line[:80]!r}"
            )
        texts.append(normalise(rest))
        labels.append(TREC_CLASSES.index(coarse))
    if not texts:
        raise DataError(f"{path}: no data rows")
    return Labelled(texts, np.array(labels))


def read_mrpc(path: str | Path) -> Labelled:
    """MRPC: TAB-separated with a header line (UTF-8 with a byte-order mark); label = Quality (1 = paraphrase)."""
    path = Path(path)
    lines = _lines(path, "utf-8-sig")
    if not lines or tuple(c.strip() for c in lines[0].split("\t")) != MRPC_HEADER:
        raise DataError(f"{path}:1: expected header {'<TAB>'.join(MRPC_HEADER)}")
    first, second, labels = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 5 or cols[0].strip() not in ("0", "1"):
            raise DataError(f"{path}:{lineno}: expected 5 TAB-separated columns starting with 0 or 1, got {len(cols)}")
        labels.append(int(cols[0]))
        first.append(normalise(cols[3]))
        second.append(normalise(cols[4]))
    if not labels:
        raise DataError(f"{path}: no data rows")
    return Labelled(first, np.array(labels), second)


def read_task(data_dir: str | Path, task: str) -> dict[str, Labelled]:
    """One task's splits: ``{"all": ...}`` for the CV tasks, else ``train`` / (``dev``) / ``test``."""
    files = [Path(data_dir) / name for name in TRANSFER_FILES[task]]
    if task in CV_TASKS:
        return {"all": read_polarity(*files)}
    if task == "sst2":
        return dict(zip(("train", "dev", "test"), map(read_sst, files)))
    reader = read_trec if task == "trec" else read_mrpc
    return dict(zip(("train", "test"), map(reader, files)))


def subsample(data: Labelled, limit: int | None, seed: int) -> Labelled:
    """A stratified, seeded subset of at most ``limit`` examples, in file order (all of them if ``limit`` is None)."""
    if limit is None or len(data) <= limit:
        return data
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(data)), train_size=limit, stratify=data.labels, random_state=seed)
    keep = np.sort(keep)
    return Labelled(
        [data.first[i] for i in keep],
        data.labels[keep],
        None if data.second is None else [data.second[i] for i in keep],
    )


def pair_features(u: np.ndarray, v: np.ndarray, kind: str = "full") -> np.ndarray:
    """[u, v, |u - v|, u * v] ("full", InferSent) or SentEval's MRPC features [|u - v|, u * v] ("senteval")."""
    if kind == "full":
        return np.concatenate([u, v, np.abs(u - v), u * v], axis=1)
    if kind == "senteval":
        return np.concatenate([np.abs(u - v), u * v], axis=1)
    raise ValueError(f"pair features must be 'full' or 'senteval', got {kind!r}")


# --- the evaluator --------------------------------------------------------------------------------------------


@dataclass
class TransferTimings:
    """Seconds spent per part of the last run, for the log and the README (not a metric: it varies per run)."""

    encode: float = 0.0
    sentences: int = 0
    probes: dict[str, float] = field(default_factory=dict)


class TransferEvaluator:
    """Evaluates an :class:`Encoder` on SentEval transfer tasks; returns named metrics with one primary metric.

    Every distinct sentence across all tasks and splits is encoded once, in length-sorted batches.
    ``max_train`` caps the examples a probe learns from (a stratified, seeded subset; ``None`` = SentEval's full
    protocol): the CPU profile's budget, since encoding the full sets takes minutes per tower on 2 cores.
    """

    def __init__(
        self,
        data_dir: str | Path,
        tasks: tuple[str, ...] | list[str] | None = None,
        *,
        batch_size: int = 128,
        folds: int = 10,
        inner_folds: int = 10,
        seed: int = 1111,
        max_iter: int = 1000,
        mrpc_features: str = "full",
        max_train: int | None = None,
        jobs: int | None = None,
        primary_metric: str | None = None,
        show_progress: bool = False,
    ):
        self.data_dir = Path(data_dir)
        self.tasks = tuple(tasks or TRANSFER_TASKS)
        unknown = [t for t in self.tasks if t not in TRANSFER_FILES]
        if unknown:
            raise ValueError(f"unknown transfer task(s) {', '.join(unknown)}; known: {', '.join(TRANSFER_TASKS)}")
        if folds < 2 or inner_folds < 2:
            raise ValueError(f"folds and inner_folds must be at least 2, got {folds} and {inner_folds}")
        if mrpc_features not in ("full", "senteval"):
            raise ValueError(f"pair features must be 'full' or 'senteval', got {mrpc_features!r}")
        missing = [f for t in self.tasks for f in TRANSFER_FILES[t] if not (self.data_dir / f).is_file()]
        if missing:
            raise InputNotFoundError(f"{self.data_dir}: missing transfer file(s) {', '.join(missing)}")
        self.batch_size = check_batch_size(batch_size)
        self.folds, self.inner_folds, self.seed = folds, inner_folds, seed
        self.max_iter, self.mrpc_features, self.show_progress = max_iter, mrpc_features, show_progress
        self.jobs = jobs or os.cpu_count() or 1
        if max_train is not None and max_train < 2 * folds:
            raise ValueError(f"max_train ({max_train}) must leave at least 2 examples per fold ({folds} folds)")
        # The cap applies to what the probe trains on (a CV task's whole set, else train); dev and test stay whole.
        self.splits: dict[str, dict[str, Labelled]] = {
            task: {
                name: subsample(split, max_train, seed) if name in ("all", "train") else split
                for name, split in read_task(self.data_dir, task).items()
            }
            for task in self.tasks
        }
        self.primary_metric = primary_metric or ("avg" if len(self.tasks) > 1 else self.tasks[0])
        self.timings = TransferTimings()

    @classmethod
    def from_settings(
        cls, transfer, *, batch_size: int, data_dir: str | Path | None = None, show_progress: bool = False
    ) -> TransferEvaluator:
        """The evaluator a ``transfer:`` settings section describes (``data_dir`` overrides its folder)."""
        return cls(
            data_dir or transfer.data_dir,
            transfer.tasks,
            batch_size=batch_size,
            folds=transfer.folds,
            inner_folds=transfer.inner_folds,
            seed=transfer.seed,
            max_iter=transfer.max_iter,
            mrpc_features=transfer.mrpc_features,
            max_train=transfer.max_train,
            jobs=transfer.jobs,
            show_progress=show_progress,
        )

    def sentences(self) -> list[str]:
        return sorted({s for splits in self.splits.values() for split in splits.values() for s in split.sentences()})

    def __call__(self, encoder: Encoder) -> dict[str, float]:
        started = time.perf_counter()
        count, vectors_of = encode_distinct(
            encoder, self.sentences(), batch_size=self.batch_size, show_progress=self.show_progress
        )
        self.timings = TransferTimings(encode=time.perf_counter() - started, sentences=count)
        log.info("transfer: encoded %d distinct sentences in %.1f s", count, self.timings.encode)
        results: dict[str, float] = {}
        for task, splits in self.splits.items():
            started = time.perf_counter()
            data = {name: self._features(split, vectors_of) for name, split in splits.items()}
            results[task] = self.score_task(task, data)
            self.timings.probes[task] = time.perf_counter() - started
            log.info("transfer: %s %.2f (probe %.1f s)", task, results[task], self.timings.probes[task])
        if len(self.tasks) > 1:
            results["avg"] = float(np.mean([results[t] for t in self.tasks]))
        return results

    def _features(self, split: Labelled, vectors_of) -> tuple[np.ndarray, np.ndarray]:
        first = vectors_of(split.first)
        if split.second is None:
            return first, split.labels
        return pair_features(first, vectors_of(split.second), self.mrpc_features), split.labels

    def score_task(self, task: str, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
        common = dict(seed=self.seed, max_iter=self.max_iter)
        if task in CV_TASKS:
            return cross_validated_accuracy(
                *data["all"], folds=self.folds, inner_folds=self.inner_folds, jobs=self.jobs, **common
            )
        if task == "sst2":
            return dev_selected_accuracy(data["train"], data["dev"], data["test"], **common)
        return cv_selected_accuracy(data["train"], data["test"], folds=self.folds, jobs=self.jobs, **common)


def format_transfer_table(results: dict[str, dict[str, float]] | dict[str, float], title: str = "model") -> str:
    """A markdown table: one row per model, one column per transfer task (accuracy x 100) and the average."""
    return format_table(results, title, TRANSFER_TASKS)
