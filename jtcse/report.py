"""The results people look at: a markdown table and a bar chart of the seven STS tasks per model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jtcse.evaluation.sts import STS_TASKS, format_table
from jtcse.io import atomic_file, atomic_write_text


def load_rows(named_paths: dict[str, str | Path]) -> dict[str, dict[str, float]]:
    return {name: json.loads(Path(p).read_text(encoding="utf-8")) for name, p in named_paths.items()
            if p and Path(p).is_file()}


def bar_chart(rows: dict[str, dict[str, float]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = [*STS_TASKS, "avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (name, metrics) in enumerate(rows.items()):
        ax.bar(np.arange(len(tasks)) + i * width, [metrics.get(t, 0.0) for t in tasks], width, label=name)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2, tasks)
    ax.set_ylabel("Spearman x 100")
    low = min(min(m.get(t, 100) for t in tasks) for m in rows.values()) if rows else 0
    ax.set_ylim(max(0, low - 5), 100)
    ax.legend(loc="upper left", ncol=max(1, len(rows)))
    ax.set_title("STS (cosine, Spearman x 100)")
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="STS results table and bar chart")
    parser.add_argument("--base")
    parser.add_argument("--twin")
    parser.add_argument("--distilled")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--plot", help="write the bar chart (PNG) here")
    args = parser.parse_args(argv)
    rows = load_rows({"base": args.base, "twin (JTCSE)": args.twin, "distilled (JTCSE-D)": args.distilled})
    table = format_table(rows)
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, "# STS results (Spearman x 100)\n\n" + table + "\n")
    if args.plot:
        bar_chart(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
