"""The results people look at: a markdown table, a bar chart and the DVC plot data, of the seven STS tasks
(Spearman x 100) or of the SentEval transfer tasks (accuracy x 100). ``jtcse report`` (jtcse.commands.report)
writes them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from jtcse.evaluation.sts import STS_TASKS, format_table
from jtcse.evaluation.transfer import TRANSFER_TASKS
from jtcse.io import atomic_savefig, atomic_write_text

TASKS = (*STS_TASKS, "avg")
#: suite -> (tasks, unit of the scores, heading of the markdown report, chart title, plot-data score column)
SUITES = {
    "sts": (
        tuple(STS_TASKS),
        "Spearman x 100",
        "STS results (Spearman x 100)",
        "STS test sets, Spearman x 100 of cosine similarity",
        "spearman",
    ),
    "transfer": (
        TRANSFER_TASKS,
        "accuracy x 100",
        "SentEval transfer results (logistic-regression probe, accuracy x 100)",
        "SentEval transfer tasks, accuracy x 100 of a logistic-regression probe",
        "accuracy",
    ),
}


def load_rows(named_paths: dict[str, str | Path | None]) -> dict[str, dict[str, float]]:
    """Name -> scores for every metrics file that exists (a model not evaluated yet is left out)."""
    return {
        name: json.loads(Path(p).read_text(encoding="utf-8"))
        for name, p in named_paths.items()
        if p and Path(p).is_file()
    }


def y_range(rows: dict[str, dict[str, float]], tasks: tuple[str, ...] = TASKS) -> tuple[float, float]:
    """Bars start a little below the lowest score (a zero baseline hides 2-5 point differences); room for labels."""
    values = [m[t] for m in rows.values() for t in tasks if t in m]
    if not values:
        return 0.0, 100.0
    low = max(0.0, 5 * math.floor((min(values) - 3) / 5))
    high = min(100.0, 5 * math.ceil((max(values) + 3) / 5))
    return low, high


def bar_chart(rows: dict[str, dict[str, float]], path: str | Path, suite: str = "sts") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = (*SUITES[suite][0], "avg")
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(12, 4.8))
    low, high = y_range(rows, tasks)
    for i, (name, metrics) in enumerate(rows.items()):
        values = [metrics.get(t, float("nan")) for t in tasks]
        bars = ax.bar(np.arange(len(tasks)) + i * width, values, width, label=name, bottom=0)
        ax.bar_label(bars, labels=[f"{v:.1f}" if v == v else "" for v in values], rotation=90, fontsize=7, padding=2)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2, tasks)
    ax.set_ylabel(SUITES[suite][1])
    ax.set_ylim(low, high)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=max(1, len(rows)), frameon=False)
    ax.set_title(f"{SUITES[suite][3]} (y axis from {low:g})")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def plot_data(rows: dict[str, dict[str, float]], suite: str = "sts") -> str:
    """Long-format CSV (task, model, score) for the grouped-bars DVC plot."""
    tasks, *_, column = SUITES[suite]
    lines = [f"task,model,{column}"]
    lines += [
        f"{task},{name},{metrics[task]}"
        for task in (*tasks, "avg")
        for name, metrics in rows.items()
        if task in metrics
    ]
    return "\n".join(lines) + "\n"


def write_report(
    rows: dict[str, dict[str, float]],
    suite: str = "sts",
    *,
    markdown: str | Path | None = None,
    plot: str | Path | None = None,
    plot_data_path: str | Path | None = None,
) -> str:
    """The markdown table of ``rows`` (model name -> scores) for ``suite``, written (each if given) as a markdown
    report, a bar chart and the DVC plot data; returns the table."""
    tasks, _, heading, *_ = SUITES[suite]
    table = format_table(rows, tasks=tasks)
    if markdown:
        atomic_write_text(markdown, f"# {heading}\n\n" + table + "\n")
    if plot:
        bar_chart(rows, plot, suite)
    if plot_data_path:
        atomic_write_text(plot_data_path, plot_data(rows, suite))
    return table
