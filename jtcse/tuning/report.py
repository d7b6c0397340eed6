"""What a study produced: best_params.yaml (for ``jtcse tune-apply``), trials.csv, the plots and summary.md."""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jtcse.config import Settings
from jtcse.io import atomic_savefig, atomic_write_text
from jtcse.tuning.objective import short_value
from jtcse.tuning.settings import (
    BEST_FILE,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    META_KEY,
    SUMMARY_FILE,
    TRIALS_CSV,
)
from jtcse.tuning.storage import TrialCounts, load_study, quiet_experimental_warnings, safe_url, trial_counts

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("jtcse.tuning")


@dataclass
class StudyReport:
    """What a finished study produced; ``files`` maps an output name to its path."""

    study_name: str
    storage: str
    counts: TrialCounts
    best_value: float | None = None
    best_trial: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float | None = None
    files: dict[str, str] = field(default_factory=dict)
    summary: str = ""


def _round(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Dotted ``train`` keys -> values of the best feasible trial (fixed entries included); raises ValueError
    when no trial completed."""
    best = study.best_trial
    values = best.user_attrs.get("overrides") or {f"train.{k}": v for k, v in best.params.items()}
    return {k: _round(v) for k, v in values.items()}


def write_best_params(study: optuna.Study, path: str | os.PathLike, settings: Settings | None = None) -> Path:
    """best_params.yaml: dotted keys -> values, for ``jtcse tune-apply``; ``_meta`` (ignored by it) says where from."""
    path = Path(path)
    best = study.best_trial
    meta = {
        "study": study.study_name,
        "trial": best.number,
        "value": round(float(best.value), 4),
        "metric": study.metric_names[0] if study.metric_names else None,
    }
    if settings is not None:
        meta |= {"storage": safe_url(settings.tune.storage), "trial_steps": settings.tune.trial_steps}
    header = (
        f"# Best trial of Optuna study {study.study_name!r}: trial {best.number}, dev Spearman "
        f"{best.value:.4f}.\n# Apply: jtcse tune-apply --best {path.as_posix()} --params params.yaml "
        f"(the {META_KEY} key is ignored)\n"
    )
    body = yaml.safe_dump({META_KEY: meta, **best_params(study)}, sort_keys=False)
    atomic_write_text(path, header + body)
    return path


def _save_figure(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    atomic_savefig(figure, path, dpi=110, bbox_inches="tight")  # tight: keeps a legend placed outside the axes
    plt.close(figure)


def write_plots(study: optuna.Study, output_dir: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """Optimisation history and parameter importances as PNG; returns (files, notes on what was skipped)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    quiet_experimental_warnings()
    output_dir = Path(output_dir)
    files, notes = {}, []
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        path = output_dir / HISTORY_PLOT
        _save_figure(ovm.plot_optimization_history(study, target_name="dev Spearman (evaluate.selection)"), path)
        files["history_plot"] = str(path)
    else:
        notes.append("no optimisation history: no trial completed")
    varying = {
        name for t in complete for name in t.params if len({json.dumps(u.params.get(name)) for u in complete}) > 1
    }
    if len(complete) < 2 or not varying:
        notes.append("no parameter importances: they need at least two completed trials with different values")
    else:
        try:
            path = output_dir / IMPORTANCE_PLOT
            _save_figure(ovm.plot_param_importances(study, target_name="dev Spearman (evaluate.selection)"), path)
            files["importance_plot"] = str(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            notes.append(f"no parameter importances: {err}")
    return files, notes


def write_trials_csv(study: optuna.Study, path: str | os.PathLike) -> Path:
    path = Path(path)
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "last_step": t.last_step,
                "seconds": t.user_attrs.get("seconds"),
                "worker": t.user_attrs.get("worker"),
                "retry_of": t.system_attrs.get("failed_trial"),
                **{k.removeprefix("train."): v for k, v in t.user_attrs.get("overrides", {}).items()},
            }
        )
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(rows).to_csv(buffer, index=False)
    atomic_write_text(path, buffer.getvalue())
    return path


def _study_span(study: optuna.Study) -> float | None:
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else None


def summary_markdown(
    study: optuna.Study,
    settings: Settings,
    counts: TrialCounts,
    wall_seconds: float | None,
    notes: list[str],
    best_file: str | os.PathLike = f"tune/{BEST_FILE}",
) -> str:
    """The study's summary.md; its "Apply:" line names ``best_file``, the best_params.yaml written."""
    from optuna.trial import TrialState

    tune = settings.tune
    lines = [
        f"# Optuna study `{study.study_name}`",
        "",
        f"Storage `{safe_url(tune.storage)}`; objective: best dev Spearman x 100 (evaluate.selection) within "
        f"{tune.trial_steps} steps (maximised); target {tune.n_trials} finished trials.",
        "",
        "| | |",
        "|---|---|",
    ]
    try:
        best = study.best_trial
    except ValueError:
        best = None
    lines.append(f"| best value | {best.value:.4f} (trial {best.number}) |" if best else "| best value | none |")
    lines += [
        f"| trials completed | {counts.complete} |",
        f"| trials pruned | {counts.pruned} |",
        f"| trials failed | {counts.failed} |",
    ]
    if counts.running or counts.waiting:
        lines.append(f"| trials running / waiting | {counts.running} / {counts.waiting} |")
    if wall_seconds is not None:
        lines.append(f"| wall time of this run | {wall_seconds / 60:.1f} min |")
    span = _study_span(study)
    if span is not None:
        lines.append(f"| wall time of the study | {span / 60:.1f} min |")
    busy = sum(t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False))
    lines.append(f"| training time, all trials | {busy / 60:.1f} min |")
    if best is not None:
        lines += ["", "## Best parameters", "", "| setting | value |", "|---|---|"]
        lines += [f"| `{k}` | {short_value(v)} |" for k, v in best_params(study).items()]
        lines += [
            "",
            f"Apply: `jtcse tune-apply --best {Path(best_file).as_posix()} --params params.yaml`, then `dvc repro`.",
        ]
    trials = study.get_trials(deepcopy=False)
    if trials:
        names = list(dict.fromkeys(k for t in trials for k in t.params))
        lines += [
            "",
            "## Trials",
            "",
            "| # | state | value | step | s | worker | " + " | ".join(names) + " |",
            "|---" * (6 + len(names)) + "|",
        ]
        for t in trials:
            value = (
                f"{t.value:.4f}" if t.value is not None and t.state in (TrialState.COMPLETE, TrialState.PRUNED) else ""
            )
            cells = [
                str(t.number),
                t.state.name.lower(),
                value,
                str(t.last_step if t.last_step is not None else ""),
                str(t.user_attrs.get("seconds", "")),
                str(t.user_attrs.get("worker", "")),
            ]
            cells += [short_value(t.params[n]) if n in t.params else "" for n in names]
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *[f"Note: {n}." for n in notes]]
    return "\n".join(lines) + "\n"


def write_report(
    settings: Settings, output_dir: str | os.PathLike = "tune", *, wall_seconds: float | None = None
) -> StudyReport:
    """Write best_params.yaml (when a trial completed), trials.csv, the plots and summary.md for the study."""
    tune = settings.tune
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    study = load_study(tune)
    counts = trial_counts(study)
    report = StudyReport(
        study_name=tune.study_name, storage=safe_url(tune.storage), counts=counts, wall_seconds=wall_seconds
    )
    notes: list[str] = []
    try:
        best = study.best_trial
    except ValueError as err:
        best = None
        notes.append(f"no best parameters: {err}")
    if best is not None:
        report.best_value, report.best_trial = float(best.value), best.number
        report.best_params = best_params(study)
        report.files["best_params"] = str(write_best_params(study, output_dir / BEST_FILE, settings))
    report.files["trials_csv"] = str(write_trials_csv(study, output_dir / TRIALS_CSV))
    plots, plot_notes = write_plots(study, output_dir)
    report.files |= plots
    report.summary = summary_markdown(
        study, settings, counts, wall_seconds, notes + plot_notes, best_file=output_dir / BEST_FILE
    )
    summary_path = output_dir / SUMMARY_FILE
    atomic_write_text(summary_path, report.summary)
    report.files["summary"] = str(summary_path)
    log.info(
        "study %r: %s; best %s; report in %s",
        tune.study_name,
        counts,
        f"{report.best_value:.4f} (trial {report.best_trial})" if best else "none",
        output_dir,
    )
    return report
