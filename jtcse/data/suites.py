"""The expectation suites of the data gate: each STS/SICK file and the corpus as a pandas table (indexed by the
file's line number) with the great-expectations expectations it is held to, and the one-line explanation of a
failed expectation. :mod:`jtcse.data.validation` runs them.

Anything GX cannot express directly on raw text (UTF-8 validity, field count, word count, membership in the 26k
evaluation sentences) is first computed here as a plain pandas column and then asserted with an ordinary
expectation; the reason in each case is noted next to the code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from jtcse.data.bundle_facts import DEFAULT_EXPECTED_ROWS, EVAL_STEMS, KNOWN_DUPLICATE_PAIR_ROWS
from jtcse.data.readers import STS_COLUMNS, STS_SCORE_RANGES, decode_lines, missing_input, parse_score

logger = logging.getLogger(__name__)

# Whitespace-only/empty text. Python's \s covers Unicode spaces too, so a line
# made of e.g. NBSPs is also caught.
_BLANK_REGEX = r"^\s*$"

_EXAMPLE_CHARS = 80


@dataclass
class Table:
    """One file as GX will see it, plus what is needed to explain failures.

    ``frame`` is indexed by the 1-based line number in the file (header
    included), so GX's unexpected index *is* the line a human should open.
    """

    file: str
    frame: pd.DataFrame
    raw: pd.Series
    expectations: list[Any] = field(default_factory=list)
    # Failures found before GX could run (missing file); same shape as GX ones.
    static_failures: dict[str, tuple[int, str]] = field(default_factory=dict)
    # For leakage examples: normalised sentence -> "file line N".
    leak_origin: dict[str, str] = field(default_factory=dict)


def _normalise(text: str) -> str:
    """Key used for leakage: case and spacing differences must not hide a copy."""
    return " ".join(text.casefold().split())


def _display_name(path: Path, data_dir: Path) -> str:
    """Name files relative to the bundle so messages match MANIFEST.md."""
    try:
        return path.resolve().relative_to(data_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _read_lines(path: Path) -> tuple[list[str], list[bool], list[str]]:
    """The file's lines by the readers' own rule (jtcse.data.readers.decode_lines: UTF-8, LF or CRLF, optional BOM).

    A decode error must become a reported failure with its line number, not a traceback, so undecodable lines
    are kept (backslash-escaped) and flagged. Returns (texts, utf8_ok flags, decode-error notes).
    """
    texts, notes = decode_lines(path.read_bytes())
    return texts, [not n for n in notes], notes


def _excerpt(value: Any) -> str:
    """Short, single-line rendering of an offending value for the message."""
    if hasattr(value, "item"):  # numpy scalar -> plain Python for a clean repr
        value = value.item()
    text = repr(value)
    if len(text) > _EXAMPLE_CHARS:
        text = text[: _EXAMPLE_CHARS - 3] + "..."
    return text


def _load_sts(path: Path, file: str, stem: str, gxe: Any, expected_rows: int) -> Table:
    """Parse a normalised STS TSV by hand and attach its expectations.

    Parsed manually (split on TAB only) instead of pandas.read_csv because a
    malformed row must become a counted failure with a line number; read_csv
    would either raise on the first extra field or silently pad NaN.
    """
    texts, utf8_ok, notes = _read_lines(path)
    header = texts[0].split("\t") if texts else []
    body = texts[1:]
    lines = range(2, len(body) + 2)
    width = len(header)
    rows = [t.split("\t") for t in body]
    n_fields = [len(r) for r in rows]
    # Pad/truncate to the header width so every column is defined; the
    # n_fields expectation reports the malformed rows themselves.
    cells = [(r + [""] * width)[:width] for r in rows]
    columns = _unique_names(header)
    frame = pd.DataFrame(cells, columns=columns, index=lines, dtype=object)
    frame["n_fields"] = n_fields
    frame["utf8_valid"] = utf8_ok[1:]
    raw = pd.Series([f"{n} ({t})" if n else t for t, n in zip(body, notes[1:])], index=lines, dtype=object)

    header_ok = tuple(columns[: len(STS_COLUMNS)]) == STS_COLUMNS
    if header_ok:
        # Scores stay text in the file; a numeric copy lets GX range-check
        # them, and NaN (unparseable score) is caught by the not-null check
        # because ExpectColumnValuesToBeBetween ignores nulls.
        # The readers' rule (jtcse.data.readers.parse_score): 'nan', 'inf' or words are no score.
        frame["score_value"] = pd.Series([parse_score(v) for v in frame["score"]], index=frame.index, dtype=float)
    derived = [c for c in ("n_fields", "utf8_valid", "score_value") if c in frame.columns]

    exps: list[Any] = [
        # The derived columns are appended by this module, so they belong to
        # the expected layout; a wrong header shows up in the first four names.
        gxe.ExpectTableColumnsToMatchOrderedList(column_list=[*STS_COLUMNS, *derived], meta={"kind": "columns"}),
        gxe.ExpectTableRowCountToEqual(value=expected_rows, meta={"kind": "rows"}),
        gxe.ExpectColumnValuesToBeInSet(column="n_fields", value_set=[len(STS_COLUMNS)]),
        gxe.ExpectColumnValuesToBeInSet(column="utf8_valid", value_set=[True]),
    ]
    if not header_ok:
        # Row checks on misnamed columns would only add noise (or GX errors for
        # missing columns); the header failure already names the file.
        logger.warning("%s: unexpected header %r; row-level checks skipped", file, header)
        return Table(file, frame, raw, exps)

    lo, hi = STS_SCORE_RANGES[stem]
    n = len(frame)
    known_dups = KNOWN_DUPLICATE_PAIR_ROWS.get(stem, 0)
    official = DEFAULT_EXPECTED_ROWS.get(stem, 0)
    dup_mostly = 1.0
    if known_dups and official:
        # Tiny epsilon: GX compares a float ratio, and the real file sits
        # exactly at the boundary (see KNOWN_DUPLICATE_PAIR_ROWS).
        dup_mostly = max(0.0, 1.0 - known_dups / official - 1e-9)
    exps += [
        gxe.ExpectColumnValuesToNotMatchRegex(column="sentence1", regex=_BLANK_REGEX),
        gxe.ExpectColumnValuesToNotMatchRegex(column="sentence2", regex=_BLANK_REGEX),
        gxe.ExpectColumnValuesToNotBeNull(column="score_value", meta={"show": "score"}),
        gxe.ExpectColumnValuesToBeBetween(column="score_value", min_value=lo, max_value=hi, meta={"show": "score"}),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["sentence1", "sentence2"],
            mostly=dup_mostly,
            meta={"show": "pair", "known_duplicate_rows_in_official_release": known_dups},
        ),
    ]
    logger.debug("%s: %d rows, duplicate-pair mostly=%.6f", file, n, dup_mostly)
    return Table(file, frame, raw, exps)


def _unique_names(names: list[str]) -> list[str]:
    """Make header names unique so a broken header cannot crash pandas/GX."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        if name in seen:
            seen[name] += 1
            out.append(f"{name}.{seen[name]}")
        else:
            seen[name] = 0
            out.append(name)
    return out


def _load_corpus(
    path: Path,
    file: str,
    gxe: Any,
    min_words: int,
    max_words: int,
    eval_origin: dict[str, str],
) -> Table:
    """Build the corpus table with the derived columns its checks need."""
    texts, utf8_ok, notes = _read_lines(path)
    lines = range(1, len(texts) + 1)
    frame = pd.DataFrame({"text": texts}, index=lines, dtype=object)
    frame["utf8_valid"] = utf8_ok
    # Word count as a column: ExpectColumnValueLengthsToBeBetween counts
    # characters, not words.
    frame["n_words"] = [len(t.split()) for t in texts]
    norm = [_normalise(t) for t in texts]
    # Leakage is computed here as a boolean column rather than with
    # ExpectColumnValuesToNotBeInSet(value_set=<26k eval sentences>): that
    # expectation took ~5 s on 43k lines and embeds the whole value set in the
    # suite, the results and the Data Docs HTML. A hashed set lookup is
    # milliseconds and the expectation on the flag is equivalent.
    frame["matches_eval_sentence"] = [k in eval_origin for k in norm]
    raw = pd.Series([f"{n} ({t})" if n else t for t, n in zip(texts, notes)], index=lines, dtype=object)
    exps = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"kind": "rows"}),
        gxe.ExpectColumnValuesToBeInSet(column="utf8_valid", value_set=[True]),
        gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=_BLANK_REGEX),
        gxe.ExpectColumnValuesToBeBetween(
            column="n_words", min_value=min_words, max_value=max_words, meta={"show": "words"}
        ),
        gxe.ExpectColumnValuesToNotBeInSet(column="matches_eval_sentence", value_set=[True], meta={"show": "leak"}),
    ]
    leak_origin = {k: eval_origin[k] for k in norm if k in eval_origin}
    return Table(file, frame, raw, exps, leak_origin=leak_origin)


def expectation_name(config: Any) -> str:
    """Stable, human-readable key: expectation type plus the column(s) it checks."""
    kwargs = config.kwargs
    if "column" in kwargs:
        return f"{config.type}({kwargs['column']})"
    if "column_list" in kwargs and config.type == "expect_compound_columns_to_be_unique":
        return f"{config.type}({','.join(kwargs['column_list'])})"
    return config.type


def explain_failure(table: Table, config: Any, result: Any) -> tuple[int, str]:
    """Turn one failed GX result into (failing row count, example text)."""
    meta = config.meta or {}
    kind = meta.get("kind")
    res = result.result or {}
    n_rows = len(table.frame)
    if result.exception_info and result.exception_info.get("raised_exception"):
        msg = str(result.exception_info.get("exception_message", "")).splitlines()
        return n_rows, f"could not evaluate: {msg[0] if msg else 'unknown error'}"
    if kind == "columns":
        observed = list(res.get("observed_value") or [])
        data_cols = observed[: len(observed) - (len(config.kwargs["column_list"]) - len(STS_COLUMNS))]
        return n_rows, f"line 1: header {data_cols}, expected {list(STS_COLUMNS)}"
    if kind == "rows":
        observed = int(res.get("observed_value") or 0)
        if "value" in config.kwargs:
            expected = int(config.kwargs["value"])
            return abs(observed - expected), f"observed {observed} rows, expected {expected}"
        return max(1, observed), f"observed {observed} rows"
    count = int(res.get("unexpected_count") or 0)
    index = res.get("partial_unexpected_index_list") or []
    if not index:
        return count, "no example available"
    line = index[0]
    if isinstance(line, dict):  # GX may return {index_col: value} records
        line = next(iter(line.values()))
    line = int(line)
    show = meta.get("show")
    frame = table.frame
    if show == "pair":
        value = f"{_excerpt(frame.at[line, 'sentence1'])} / {_excerpt(frame.at[line, 'sentence2'])}"
    elif show == "leak":
        text = frame.at[line, "text"]
        value = f"{_excerpt(text)} also in {table.leak_origin.get(_normalise(text), '?')}"
    elif show == "words":
        value = f"{int(frame.at[line, 'n_words'])} words: {_excerpt(frame.at[line, 'text'])}"
    elif show in frame.columns:
        value = _excerpt(frame.at[line, show])
    elif config.kwargs.get("column") in ("n_fields", "utf8_valid"):
        value = _excerpt(table.raw.at[line])
    else:
        value = _excerpt(frame.at[line, config.kwargs["column"]])
    return count, f"line {line}: {value}"


def _missing_table(file: str, expected_count: int) -> Table:
    """A file that is not there: one static failure, no expectations to run."""
    return Table(
        file,
        pd.DataFrame(),
        pd.Series(dtype=object),
        static_failures={"file_exists": (expected_count, "file is missing")},
    )


def load_tables(
    data_dir: Path, corpus: Path, gxe: Any, *, min_words: int, max_words: int, rows_wanted: dict[str, int]
) -> list[Table]:
    """Every STS/SICK file of ``data_dir/sts`` and the corpus as tables with their expectations attached
    (a missing file becomes a table with a static failure)."""
    sts_dir = data_dir / "sts"
    if not sts_dir.is_dir():  # nothing to validate: one line that says what to do, not twelve missing files
        raise missing_input(sts_dir, "STS data folder")
    tables: list[Table] = []
    eval_origin: dict[str, str] = {}
    for stem in STS_SCORE_RANGES:
        path = sts_dir / f"{stem}.tsv"
        file = _display_name(path, data_dir)
        if not path.is_file():
            tables.append(_missing_table(file, rows_wanted.get(stem, 0)))
            continue
        table = _load_sts(path, file, stem, gxe, rows_wanted[stem])
        tables.append(table)
        if stem in EVAL_STEMS and {"sentence1", "sentence2"} <= set(table.frame.columns):
            for col in ("sentence1", "sentence2"):
                for line, text in table.frame[col].items():
                    eval_origin.setdefault(_normalise(text), f"{file} line {line}")
    extra = sorted(p.name for p in sts_dir.glob("*.tsv") if p.name[:-4] not in STS_SCORE_RANGES)
    if extra:
        logger.warning("ignoring unknown files under %s: %s", sts_dir, extra)
    eval_origin.pop("", None)  # empty sentences are reported by their own check

    corpus_file = _display_name(corpus, data_dir)
    if corpus.is_file():
        tables.append(_load_corpus(corpus, corpus_file, gxe, min_words, max_words, eval_origin))
    else:
        tables.append(_missing_table(corpus_file, 0))
    return tables
