"""Recipe search on the dev sets only (STS-B dev + SICK-R dev): which towers and which twin stage give a model that
beats the base it starts from (issue 22).

A cell is a pair of stage-1 towers and a twin stage. A tower is either the untouched base (``base``: nothing
trained, which is what stage 1 ships when no step beats step 0 on dev) or a stage-1 run with its own settings
(pooling, lr, augmentation). Every cell's step 0 is its ensemble (the towers combined, no joint training), so
the table shows what the towers' combination buys and what the twin stage adds on top. Test sets are never read.

    python bench/recipe_search.py --reuse-dir runs/bench/recipe-search           # every cell, resumable
    python bench/recipe_search.py --cells mixed_jtcse --reuse-dir runs/bench/recipe-search

Writes bench/results/recipe-search/recipe_search.{json,md,png} (atomically). A finished stage (its summary.json
written) is reused; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

log = logging.getLogger("bench.recipe_search")


@dataclass(frozen=True)
class Tower:
    """A stage-1 tower: ``overrides`` of the ``pretrain.tower_*`` / ``pretrain`` settings; None: the untouched base."""

    name: str
    pooling: str
    overrides: dict[str, Any] | None = None


@dataclass(frozen=True)
class Cell:
    name: str
    label: str
    tower_a: Tower
    tower_b: Tower
    train: dict[str, Any] = field(default_factory=dict)


BASE_MEAN = Tower("base_mean", "mean")
CLS_SIMCSE = Tower("cls_simcse", "cls", {"pooling": "cls", "seed": 2})
# With mean pooling this base already tells a sentence's two dropout views apart from the batch (stage-1 InfoNCE
# ~1e-4): word deletion makes the positive harder, so the loss has a gradient to give.
MEAN_DELETION = Tower("mean_deletion", "mean", {"pooling": "mean", "seed": 2, "augment": "word_deletion"})
MIXED = {"twin_normalize": True, "twin_combine": "concat"}
SAME = {"twin_normalize": True, "twin_combine": "sum"}
GENTLE = {"lr": 2e-6, "dropout": 0.01}
STANDARD = {"lr": 1e-5, "dropout": None}  # the twin stage before this search (dropout null: the checkpoint's 0.1)

# pooling x tower diversity x twin-stage lr/dropout. A mean-pooled stage-1 tower without augmentation is the base:
# SimCSE with mean pooling lowers this base's dev mean at every lr tried (2e-6 .. 1e-5), so stage 1 keeps step 0.
CELLS: tuple[Cell, ...] = (
    Cell(
        "mixed_jtcse",
        "base (mean) + SimCSE (cls), normalised concat; lr 1e-5, dropout 0.1",
        BASE_MEAN,
        CLS_SIMCSE,
        {**MIXED, **STANDARD},
    ),
    Cell(
        "mixed_gentle",
        "base (mean) + SimCSE (cls), normalised concat; lr 2e-6, dropout 0.01",
        BASE_MEAN,
        CLS_SIMCSE,
        {**MIXED, **GENTLE},
    ),
    Cell(
        "mean_gentle",
        "base (mean) + base (mean), normalised sum; lr 2e-6, dropout 0.01",
        BASE_MEAN,
        BASE_MEAN,
        {**SAME, **GENTLE},
    ),
    Cell(
        "mean_jtcse",
        "base (mean) + base (mean), normalised sum; lr 1e-5, dropout 0.1",
        BASE_MEAN,
        BASE_MEAN,
        {**SAME, **STANDARD},
    ),
    # The bridge designs at the chosen recipe (mean_gentle is stream x 3): issue 23 asks for a cheaper bridge with
    # dev quality no worse.
    Cell(
        "mean_gentle_side",
        "as mean_gentle, bridge side (last layer, attention block + feed-forward)",
        BASE_MEAN,
        BASE_MEAN,
        {**SAME, **GENTLE, "cross_attention.mode": "side"},
    ),
    Cell(
        "mean_gentle_attention",
        "as mean_gentle, bridge attention (last layer, attention block only)",
        BASE_MEAN,
        BASE_MEAN,
        {**SAME, **GENTLE, "cross_attention.mode": "attention"},
    ),
    Cell(
        "mean_gentle_tncse",
        "as mean_gentle, no bridge term (w_cross 0: TNCSE)",
        BASE_MEAN,
        BASE_MEAN,
        {**SAME, **GENTLE, "w_cross": 0.0},
    ),
    Cell(
        "mean_deletion_gentle",
        "base (mean) + SimCSE with word deletion 0.1 (mean), normalised sum; lr 2e-6, dropout 0.01",
        BASE_MEAN,
        MEAN_DELETION,
        {**SAME, **GENTLE},
    ),
)


def _tower_path(ws: Path, settings, tower: Tower, train: bool = True) -> tuple[str, dict] | None:
    """The tower's folder, training it (stage 1 as tower B's settings) when it is not finished; None when it is
    not finished and ``train`` is off."""
    from jtcse.config import apply_overrides
    from jtcse.formats import resolve_model_path
    from jtcse.training.stages import train_tower

    if tower.overrides is None:
        return resolve_model_path(settings.model.base), {"trained": False}
    folder = ws / "towers" / tower.name
    summary = folder / "metrics" / "summary.json"
    if not summary.is_file() and not train:
        return None
    if not summary.is_file():
        tower_settings = apply_overrides(settings, {f"pretrain.tower_b.{k}": v for k, v in tower.overrides.items()})
        log.info("stage 1: %s", tower.name)
        train_tower(
            tower_settings,
            which="b",
            output=folder / "model",
            checkpoint_dir=folder / "checkpoints",
            metrics_dir=folder / "metrics",
        )
    return str(folder / "model"), json.loads(summary.read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def run_cell(ws: Path, settings, cell: Cell, train: bool = True) -> dict[str, Any] | None:
    """Train what the cell lacks and read its results; with ``train`` off, report what it has so far (an
    interrupted cell is marked unfinished) or None when it never started."""
    from jtcse.config import apply_overrides
    from jtcse.training.stages import train_twin

    towers = [_tower_path(ws, settings, t, train) for t in (cell.tower_a, cell.tower_b)]
    folder = ws / "cells" / cell.name
    if None in towers or not (folder / "metrics" / "eval.csv").is_file() and not train:
        return None
    (path_a, summary_a), (path_b, summary_b) = towers
    overrides = {
        "model.pooling": cell.tower_a.pooling,
        "pretrain.tower_a.pooling": cell.tower_a.pooling,
        "pretrain.tower_b.pooling": cell.tower_b.pooling,
        **{f"train.{k}": v for k, v in cell.train.items()},
    }
    finished = (folder / "metrics" / "summary.json").is_file()
    if not finished and train:
        log.info("twin stage: %s", cell.name)
        started = time.perf_counter()
        train_twin(
            apply_overrides(settings, overrides),
            tower_a=path_a,
            tower_b=path_b,
            output=folder / "model",
            checkpoint_dir=folder / "checkpoints",
            metrics_dir=folder / "metrics",
        )
        log.info("%s: %.0f s", cell.name, time.perf_counter() - started)
        finished = True
    evals = _rows(folder / "metrics" / "eval.csv")
    if not evals:  # interrupted before its step-0 evaluation was written
        return None
    diagnostics = folder / "metrics" / "diagnostics.csv"
    first = next(iter(_rows(diagnostics)), {}) if diagnostics.is_file() else {}
    best = max(evals, key=lambda r: float(r["dev_mean"]))
    return {
        "name": cell.name,
        "label": cell.label,
        "finished": finished,
        "overrides": overrides,
        "towers": {"a": cell.tower_a.name, "b": cell.tower_b.name},
        "tower_dev_mean": {
            "a": summary_a.get("best_dev_mean"),
            "b": summary_b.get("best_dev_mean"),
        },
        "ensemble": {k: float(evals[0][k]) for k in ("stsb_dev", "sickr_dev", "dev_mean")},
        "best": {k: float(best[k]) for k in ("stsb_dev", "sickr_dev", "dev_mean")},
        "best_step": int(best["step"]),
        "curve": [{k: float(v) for k, v in r.items()} for r in evals],
        "cos_towers_step0": float(first["cos_towers"]) if first.get("cos_towers") else None,
    }


def base_dev(settings) -> dict[str, dict[str, float]]:
    from jtcse.encoding import TowerEncoder
    from jtcse.evaluation.sts import dev_evaluator
    from jtcse.formats import resolve_model_path

    dev = dev_evaluator(settings.data.sts_dir, "dev_mean", batch_size=settings.evaluate.batch_size)
    path = resolve_model_path(settings.model.base)
    return {
        pooling: dev(TowerEncoder.from_pretrained(path, pooling, settings.evaluate.max_length, "cpu"))
        for pooling in ("cls", "mean")
    }


def render_markdown(report: dict) -> str:
    base = report["base"]
    lines = [
        "# Recipe search on the dev sets (STS-B dev, SICK-R dev; Spearman x 100)",
        "",
        f"Base `{report['settings']['model']['base']}`: dev mean {base['mean']['dev_mean']:.2f} with mean pooling, "
        f"{base['cls']['dev_mean']:.2f} with CLS. A cell's step 0 is its ensemble (the two towers combined, no "
        "joint training); 'best' is the twin stage's best evaluation, step 0 included. Test sets are not read.",
        "",
        "| cell | towers (A + B) | tower dev A / B | cos(A, B) at step 0 | ensemble dev | best dev (step) | "
        "best STS-B / SICK-R dev | beats base mean? |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in report["cells"]:
        ta, tb = c["tower_dev_mean"]["a"], c["tower_dev_mean"]["b"]
        lines.append(
            f"| {c['name']}{'' if c['finished'] else ' (unfinished)'} | {c['label']} | {common.fmt(ta) if ta else 'base'} / {common.fmt(tb) if tb else 'base'} "
            f"| {common.fmt(c['cos_towers_step0'], 3) if c['cos_towers_step0'] is not None else ''} "
            f"| {c['ensemble']['dev_mean']:.2f} | {c['best']['dev_mean']:.2f} ({c['best_step']}) "
            f"| {c['best']['stsb_dev']:.2f} / {c['best']['sickr_dev']:.2f} "
            f"| {'yes' if c['best']['dev_mean'] > base['mean']['dev_mean'] else 'no'} |"
        )
    if report.get("not_started"):
        lines += ["", f"Not run yet: {', '.join(report['not_started'])}."]
    lines += ["", f"Command: `{report['command']}`", ""]
    return "\n".join(lines)


def render_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for c in report["cells"]:
        ax.plot([r["step"] for r in c["curve"]], [r["dev_mean"] for r in c["curve"]], marker="o", label=c["name"])
    ax.axhline(report["base"]["mean"]["dev_mean"], color="k", ls="--", label="base, mean pooling")
    ax.set_xlabel("twin-stage step")
    ax.set_ylabel("dev mean (STS-B dev, SICK-R dev)")
    ax.set_title("recipe search: the twin stage's dev curve per cell")
    ax.legend(fontsize=8)
    common.write_png(fig, path)


def run(args: argparse.Namespace) -> dict:
    from jtcse.io import atomic_write_json, atomic_write_text

    settings, overrides = common.run_settings(args)
    cells = [c for c in CELLS if not args.cells or c.name in args.cells]
    unknown = set(args.cells or ()) - {c.name for c in CELLS}
    if unknown:
        raise SystemExit(f"--cells: unknown {sorted(unknown)}; known: {[c.name for c in CELLS]}")
    out = Path(args.out)
    with common.work_dir(args.reuse_dir, "jtcse-recipe-search-") as ws:
        results, not_started = [], []
        for cell in cells:
            result = run_cell(ws, settings, cell, train=not args.report_only)
            if result is None:
                log.info("%s: not started; left out of the report", cell.name)
                not_started.append(cell.name)
                continue
            results.append(result)
            log.info(
                "%s: ensemble %.2f, best %.2f",
                cell.name,
                results[-1]["ensemble"]["dev_mean"],
                results[-1]["best"]["dev_mean"],
            )
    report = {
        "benchmark": "recipe_search",
        "command": "python bench/recipe_search.py " + " ".join(sys.argv[1:]),
        "overrides": overrides,
        "base": base_dev(settings),
        "settings": common.settings_dict(settings),
        "environment": common.environment(),
        "cells": results,
        "not_started": not_started,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recipe_search.json", report)
    atomic_write_text(out / "recipe_search.md", render_markdown(report))
    render_plot(report, out / "recipe_search.png")
    log.info("wrote %s", out / "recipe_search.md")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = common.training_bench_parser(__doc__, set_help="override a setting of every cell (dotted key=value)")
    parser.add_argument("--cells", nargs="+", help="cells to run (default: all)")
    parser.add_argument("--reuse-dir", help="keep and reuse the work here (resumable)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the cells' results so far (an interrupted cell is marked unfinished)",
    )
    parser.add_argument("--out", default=str(common.RESULTS / "recipe-search"), help="results folder")
    return parser


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
