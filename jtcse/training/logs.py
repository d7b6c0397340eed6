"""The CSV logs of a training run (train.csv, eval.csv, diagnostics.csv) that DVC plots draw; a checkpoint
carries a copy of them, so a resume continues them from its step."""

from __future__ import annotations

import csv
from pathlib import Path

from jtcse.io import naming_a_full_disk


class CsvLog:
    """Append-only CSV that DVC plots can draw; on resume, rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str]):
        self.path, self.columns = path, columns

    def reset(self, keep_until_step: int | None, source: Path | None = None) -> None:
        """Start the file afresh, or keep the rows up to a checkpoint's step (read from ``source`` if given)."""
        rows = []
        source = source if source is not None and source.is_file() else self.path
        if keep_until_step is not None and source.exists():
            with source.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= keep_until_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict) -> None:
        with naming_a_full_disk(self.path), self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore").writerow(row)
