"""Reading the STS/SICK files and the unlabelled corpus, and the deterministic training stream."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STS_COLUMNS = ("sentence1", "sentence2", "score", "subset")


class DataError(ValueError):
    """Malformed input data; the message names the file and line."""


@dataclass(frozen=True)
class STSPairs:
    """Scored sentence pairs of one STS file; ``subsets`` keeps the year's sub-dataset of each pair."""

    sentence1: list[str]
    sentence2: list[str]
    scores: list[float]
    subsets: list[str]

    def __len__(self) -> int:
        return len(self.scores)


def read_sts(path: str | Path) -> STSPairs:
    """Read a TSV with header sentence1, sentence2, score, subset.

    Splits on TAB only: the files are unquoted, and a reader that treats '"' as a quote merges rows.
    """
    path = Path(path)
    s1, s2, scores, subsets = [], [], [], []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(header[:4]) != STS_COLUMNS:
            raise DataError(f"{path}:1: expected header {'<TAB>'.join(STS_COLUMNS)}, got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) < 3:
                raise DataError(f"{path}:{lineno}: expected at least 3 TAB-separated columns, got {len(row)}")
            try:
                score = float(row[2])
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {row[2]!r} is not a number") from None
            s1.append(row[0])
            s2.append(row[1])
            scores.append(score)
            subsets.append(row[3] if len(row) > 3 else "")
    if not scores:
        raise DataError(f"{path}: no data rows")
    return STSPairs(s1, s2, scores, subsets)


def read_corpus(path: str | Path, max_sentences: int | None = None) -> list[str]:
    """Read one sentence per line; blank lines are an error (the validate stage guards the real corpus)."""
    path = Path(path)
    sentences: list[str] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from None
            if not line.strip():
                raise DataError(f"{path}:{lineno}: empty line")
            sentences.append(line)
            if max_sentences is not None and len(sentences) >= max_sentences:
                break
    if len(sentences) < 2:
        raise DataError(f"{path}: needs at least 2 sentences, found {len(sentences)}")
    return sentences


class SentenceStream:
    """An endless, seeded stream of corpus batches whose position is the step number alone.

    Epoch e is a permutation drawn from ``Random(seed + e)``; step s takes items ``[s*B, (s+1)*B)`` of the
    concatenated epochs. Resuming at step s therefore needs no saved iterator state.
    """

    def __init__(self, sentences: list[str], batch_size: int, seed: int):
        if batch_size > len(sentences):
            raise DataError(f"batch_size {batch_size} exceeds the corpus size {len(sentences)}")
        self.sentences = sentences
        self.batch_size = batch_size
        self.seed = seed
        self._epoch_cache: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_cache:
            order = list(range(len(self.sentences)))
            random.Random(self.seed + epoch).shuffle(order)
            self._epoch_cache = {epoch: order}  # one epoch at a time is all a batch can span twice
        return self._epoch_cache[epoch]

    def batch(self, step: int) -> list[str]:
        n = len(self.sentences)
        start = step * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, idx = divmod(pos, n)
            out.append(self.sentences[self._order(epoch)[idx]])
        return out

    def batches(self, start_step: int = 0) -> Iterator[list[str]]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1
