"""Reading the STS/SICK files and the unlabelled corpus, and the deterministic training stream."""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jtcse.errors import InputNotFoundError, UserError

log = logging.getLogger(__name__)

STS_COLUMNS = ("sentence1", "sentence2", "score", "subset")

# Gold-score scale per file stem: SemEval STS and STS-B use 0..5, SICK relatedness 1..5. A score outside the scale
# means a column shift or a wrong file, not an unusual annotation. `jtcse validate` and every reader apply it.
STS_SCORE_RANGES: dict[str, tuple[float, float]] = {
    **{f"sts{y}.test": (0.0, 5.0) for y in (12, 13, 14, 15, 16)},
    **{f"stsb.{s}": (0.0, 5.0) for s in ("train", "dev", "test")},
    **{f"sickr.{s}": (1.0, 5.0) for s in ("train", "dev", "test")},
}

UTF8_BOM = b"\xef\xbb\xbf"
# A plain decimal number. float() also takes "nan", "inf" and "1_0": none of them is a score.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class DataError(UserError):
    """Malformed input data; the message names the file and line."""


def missing_input(path: str | Path, what: str) -> InputNotFoundError:
    """The error for an input that is not there; for DVC-tracked data it says to run ``dvc pull``."""
    path = Path(path)
    tracked = next(
        (a for a in (path.absolute(), *path.absolute().parents) if a.parent.joinpath(a.name + ".dvc").is_file()), None
    )
    hint = f"; {tracked.name}/ is tracked by DVC: run `dvc pull`" if tracked is not None else ""
    return InputNotFoundError(f"{path}: {what} not found{hint}")


def decode_lines(data: bytes) -> tuple[list[str], list[str]]:
    """The one rule for every text file jtcse reads: UTF-8, LF or CRLF line ends, an optional BOM at the start.

    Returns the lines (without line ends) and, per line, '' or what is wrong with its bytes, so that a checker
    can report every bad line and a reader the first one.
    """
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    chunks = data.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()  # the file's final LF does not start a new line
    chunks = [c[:-1] if c.endswith(b"\r") else c for c in chunks]
    try:
        texts = b"\n".join(chunks).decode("utf-8").split("\n") if chunks else []
        return texts, [""] * len(texts)
    except UnicodeDecodeError:
        pass
    texts, notes = [], []
    for chunk in chunks:
        try:
            texts.append(chunk.decode("utf-8"))
            notes.append("")
        except UnicodeDecodeError as exc:
            texts.append(chunk.decode("utf-8", errors="backslashreplace"))
            notes.append(f"{exc.reason} 0x{chunk[exc.start]:02x} at byte {exc.start + 1}")
    return texts, notes


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """The lines of a UTF-8 text file (:func:`decode_lines`); a missing file or a bad byte is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a {what}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise missing_input(path, what) from None
    texts, notes = decode_lines(data)
    for lineno, note in enumerate(notes, start=1):
        if note:
            raise DataError(f"{path}:{lineno}: not valid UTF-8 ({note}); save the file as UTF-8")
    return texts


def parse_score(text: str) -> float | None:
    """A gold score: a plain finite decimal number, else None (NaN, inf, empty, words)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def score_range(path: str | Path) -> tuple[float, float] | None:
    """The gold-score scale of an STS file, known from its name (sts12.test.tsv -> 0..5); None if unknown."""
    return STS_SCORE_RANGES.get(Path(path).name.removesuffix(".tsv"))


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
    """Read a TSV with header sentence1, sentence2, score, subset: the rules `jtcse validate` checks, per line.

    Splits on TAB only: the files are unquoted, and a reader that treats '"' as a quote merges rows. Every line
    has exactly the four fields, both sentences are non-blank, the score is a finite number on the file's scale.
    """
    path = Path(path)
    lines = read_lines(path, "STS file")
    expected = "<TAB>".join(STS_COLUMNS)
    if not lines:
        raise DataError(f"{path}: empty file, expected the header {expected} and scored pairs")
    header = lines[0].split("\t")
    if tuple(header) != STS_COLUMNS:
        missing = [c for c in STS_COLUMNS if c not in header]
        detail = f"missing column(s) {', '.join(missing)}" if missing else f"columns {header}"
        raise DataError(f"{path}:1: header {'<TAB>'.join(header)!r}: {detail}; expected {expected}")
    bounds = score_range(path)
    scale = f" from {bounds[0]:g} to {bounds[1]:g}" if bounds else ""
    s1, s2, scores, subsets = [], [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        row = line.split("\t")
        if len(row) != len(STS_COLUMNS):
            raise DataError(
                f"{path}:{lineno}: {len(row)} TAB-separated field(s), expected {len(STS_COLUMNS)} "
                f"({', '.join(STS_COLUMNS)})"
            )
        for column, text in zip(STS_COLUMNS[:2], row[:2]):
            if not text.strip():
                raise DataError(f"{path}:{lineno}: {column} is blank")
        score = parse_score(row[2])
        if score is None:
            raise DataError(f"{path}:{lineno}: score {row[2]!r} is not a number; expected a finite number{scale}")
        if bounds and not bounds[0] <= score <= bounds[1]:
            raise DataError(f"{path}:{lineno}: score {score:g} is outside the scale of this file{scale}")
        s1.append(row[0])
        s2.append(row[1])
        scores.append(score)
        subsets.append(row[3])
    if not scores:
        raise DataError(f"{path}: no data rows after the header")
    return STSPairs(s1, s2, scores, subsets)


def read_corpus(path: str | Path, max_sentences: int | None = None) -> list[str]:
    """Read one sentence per line; blank lines are an error (the validate stage guards the real corpus)."""
    path = Path(path)
    lines = read_lines(path, "corpus")
    if not lines:
        raise DataError(f"{path}: empty corpus, expected one sentence per line")
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: all {len(lines)} line(s) are blank, expected one sentence per line")
    sentences: list[str] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{path}:{lineno}: blank line; the corpus holds one sentence per line, none blank")
        sentences.append(line)
        if max_sentences is not None and len(sentences) >= max_sentences:
            break
    if len(sentences) < 2:
        raise DataError(f"{path}: needs at least 2 sentences, found {len(sentences)}")
    return sentences


def check_corpus_fits(sentences: list[str], batch_size: int, *, corpus: str | Path, key: str) -> None:
    """Refuse a corpus whose distinct sentences cannot fill one batch: every batch would then hold a sentence
    twice, and InfoNCE would push a sentence away from itself (a false negative). Warn when many lines repeat."""
    distinct = len(set(sentences))
    if distinct < batch_size:
        raise DataError(
            f"{corpus}: {distinct} distinct sentence(s) in {len(sentences)} line(s), fewer than "
            f"{key} ({batch_size}); a batch needs {batch_size} different sentences "
            "(lower the batch size or add sentences)"
        )
    repeats = len(sentences) - distinct
    if repeats > 0.1 * len(sentences):
        log.warning(
            "%s: %d of %d lines repeat an earlier line; a repeat in a batch is a false negative",
            corpus,
            repeats,
            len(sentences),
        )


def read_sentences(path: str | Path, stdin=None) -> list[str]:
    """Sentences to encode, one per line of a UTF-8 file, or of ``stdin`` (a binary stream) when ``path`` is "-".

    Row i of the output is line i, so blank lines are kept (:func:`blank_lines_warning` says how many); a file with
    no sentence at all is an error."""
    label = "<stdin>" if str(path) == "-" else str(path)
    if str(path) == "-":
        lines, notes = decode_lines(stdin.read())
        bad = next((i for i, note in enumerate(notes, start=1) if note), None)
        if bad is not None:
            raise DataError(f"{label}:{bad}: not valid UTF-8 ({notes[bad - 1]}); send UTF-8 text")
    else:
        lines = read_lines(path, "input file")
    if not lines:
        raise DataError(f"{label}: empty {'input' if label == '<stdin>' else 'file'}, expected one sentence per line")
    if not any(line.strip() for line in lines):
        raise DataError(f"{label}: all {len(lines)} line(s) are blank, expected one sentence per line")
    return lines


def blank_lines_warning(label: str, lines: list[str]) -> str | None:
    """What to tell the user about the blank lines of :func:`read_sentences`' result (None when there are none)."""
    blank = [lineno for lineno, line in enumerate(lines, start=1) if not line.strip()]
    if not blank:
        return None
    shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
    return (
        f"{label}: {len(blank)} blank line{'s' if len(blank) > 1 else ''} (line {shown}) encoded as empty "
        "sentences; each output row still matches its input line"
    )


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
