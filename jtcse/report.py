"""The results people look at: a markdown table and a bar chart per model, of the seven STS tasks
(Spearman x 100) or of the SentEval transfer tasks (``--suite transfer``, accuracy x 100)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jtcse.evaluation.sts import STS_TASKS, format_table
from jtcse.evaluation.transfer import TRANSFER_TASKS
from jtcse.io import atomic_write_text


def load_rows(named_paths: dict[str, str | Path]) -> dict[str, dict[str, float]]:
    return {name: json.loads(Path(p).read_text(encoding="utf-8")) for name, p in named_paths.items()
            if p and Path(p).is_file()}


#: suite -> (tasks, unit of the scores, heading of the markdown report)
SUITES = {
    "sts": (tuple(STS_TASKS), "Spearman x 100", "STS results (Spearman x 100)"),
    "transfer": (TRANSFER_TASKS, "accuracy x 100", "SentEval transfer results (logistic-regression probe, accuracy x 100)"),
}


def bar_chart(rows: dict[str, dict[str, float]], path: str | Path, suite: str = "sts") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = [*SUITES[suite][0], "avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, (name, metrics) in enumerate(rows.items()):
        ax.bar(np.arange(len(tasks)) + i * width, [metrics.get(t, 0.0) for t in tasks], width, label=name)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2, tasks)
    ax.set_ylabel(SUITES[suite][1])
    low = min(min(m.get(t, 100) for t in tasks) for m in rows.values()) if rows else 0
    ax.set_ylim(max(0, low - 5), 100)
    ax.legend(loc="upper left", ncol=max(1, len(rows)))
    ax.set_title("STS (cosine, Spearman x 100)" if suite == "sts" else "SentEval transfer (accuracy x 100)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="STS or transfer results table and bar chart")
    parser.add_argument("--suite", choices=sorted(SUITES), default="sts", help="which metrics files these are")
    parser.add_argument("--base")
    parser.add_argument("--twin")
    parser.add_argument("--distilled")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--plot", help="write the bar chart (PNG) here")
    args = parser.parse_args(argv)
    rows = load_rows({"base": args.base, "twin (JTCSE)": args.twin, "distilled (JTCSE-D)": args.distilled})
    tasks, _, heading = SUITES[args.suite]
    table = format_table(rows, tasks=tasks)
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, f"# {heading}\n\n" + table + "\n")
    if args.plot:
        bar_chart(rows, args.plot, args.suite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
