"""Bridge ablation: stage 2 from the same towers under each cross-attention design, scored on dev and test.

Each cell is one ``train`` override set on top of the params file (mode x num_layers x w_cross, plus any other
``train.*`` key), trained from seed s's stage-1 towers, which every cell shares. Reported per cell: the dev
metrics at the kept (best-on-dev) step, the seven-task test average, and the stage-2 diagnostics (loss terms,
their gradient norms, tower cosine, anisotropy and E_CLS) at step 0 and at the end. The table is sorted by the
selection metric (``evaluate.selection``): designs are chosen on dev, the test columns only report.

    python bench/ablation.py --reuse-dir runs/bench/quality              # the default grid, seed 1
    python bench/ablation.py --cells tncse stream3 side --seeds 1 2 3 --out bench/results/ablation-x

Writes ablation.json, ablation.md and ablation.png (atomically) to --out; with --reuse-dir every trained cell is
kept and reused by later runs with the same settings (an interrupted cell resumes from its checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.workspace import Workspace, seeded_overrides  # noqa: E402

log = logging.getLogger("bench.ablation")

CA = "train.cross_attention."
#: The default grid, in the order it is run (most informative first, so an interrupted run still says most).
CELLS: dict[str, dict[str, Any]] = {
    "tncse": {CA + "num_layers": 0},
    "stream3": {CA + "mode": "stream", CA + "num_layers": 3, "train.w_cross": 1.0},
    "side": {CA + "mode": "side", CA + "num_layers": 1, "train.w_cross": 1.0},
    "mix3": {CA + "mode": "mix", CA + "num_layers": 3, "train.w_cross": 1.0},
    "stream6": {CA + "mode": "stream", CA + "num_layers": 6, "train.w_cross": 1.0},
    "stream2": {CA + "mode": "stream", CA + "num_layers": 2, "train.w_cross": 1.0},
    "stream3_w0.3": {CA + "mode": "stream", CA + "num_layers": 3, "train.w_cross": 0.3},
    "stream3_w3": {CA + "mode": "stream", CA + "num_layers": 3, "train.w_cross": 3.0},
    "stream3_noclip": {CA + "mode": "stream", CA + "num_layers": 3, "train.w_cross": 1.0, "train.max_grad_norm": None},
}
DIAGNOSTIC_KEYS = (
    "loss_nce",
    "loss_icnce",
    "loss_cross",
    "loss_tm",
    "grad_nce",
    "grad_icnce",
    "grad_cross",
    "grad_tm",
    "grad_total",
    "cos_towers",
    "aniso_h",
    "aniso_c",
    "e_cls_a",
    "e_cls_b",
)


def parse_cell(item: str) -> tuple[str, dict[str, Any]]:
    """A grid name, or ``name:key=value,key=value`` as quality.py's --design."""
    if ":" not in item:
        if item not in CELLS:
            raise SystemExit(f"--cells: unknown cell {item!r}; known: {', '.join(CELLS)} (or name:key=value,...)")
        return item, CELLS[item]
    return common.parse_design(item)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _number(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def cell_record(metrics_dir: Path, summary: dict) -> dict[str, Any]:
    """Dev metrics at the kept step and the diagnostics at step 0 and at the last evaluation."""
    evals = _csv_rows(metrics_dir / "eval.csv")
    best = next((r for r in evals if int(r["step"]) == summary.get("best_step")), evals[-1] if evals else {})
    diagnostics = _csv_rows(metrics_dir / "diagnostics.csv")
    pick = lambda row: {k: _number(row.get(k)) for k in DIAGNOSTIC_KEYS} if row else {}  # noqa: E731
    return {
        "dev_at_best": {k: _number(v) for k, v in best.items() if k != "step"},
        "diagnostics_first": pick(diagnostics[0] if diagnostics else None),
        "diagnostics_last": pick(diagnostics[-1] if diagnostics else None),
        "diagnostics_steps": [int(r["step"]) for r in diagnostics],
    }


def render_markdown(report: dict) -> str:
    selection = report["selection"]
    s = report["settings"]
    lines = [
        "# Bridge ablation (stage 2 from shared towers)",
        "",
        f"Base `{s['model']['base']}`, pooling `{s['model']['pooling']}`; stage 1 {s['pretrain']['steps']} steps, "
        f"stage 2 {s['train']['steps']} steps x batch {s['train']['batch_size']}, lr {s['train']['lr']}; "
        f"selection `{selection}`; seeds {report['seeds']}; commit `{report['environment']['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if report['environment'].get('git_dirty') else ''}; "
        f"{report['environment']['created']}.",
        *(
            [f"Overrides of the params file: {', '.join(f'`{k}={v}`' for k, v in report['overrides'].items())}."]
            if report.get("overrides")
            else []
        ),
        "",
        "Sorted by the dev selection metric; test columns only report (designs are chosen on dev).",
        "",
        "| cell | mode | layers | w_cross | other | best step | STS-B dev | SICK-R dev | dev mean | test avg (7) | seeds | train s |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(mean: float | None, std: float | None = None) -> str:
        if mean is None:
            return ""
        return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"

    for cell in report["cells"]:
        o = cell["overrides"]
        layers = o.get(CA + "num_layers", s["train"]["cross_attention"]["num_layers"])
        mode = "none" if layers == 0 else o.get(CA + "mode", s["train"]["cross_attention"]["mode"])
        w_cross = "" if layers == 0 else o.get("train.w_cross", s["train"]["w_cross"])
        other = ", ".join(
            f"{k.removeprefix('train.')}={v}"
            for k, v in o.items()
            if k not in (CA + "mode", CA + "num_layers", "train.w_cross")
        )
        d = cell["dev"]
        lines.append(
            f"| {cell['name']} | {mode} | {layers} | {w_cross} | {other} | {'/'.join(str(b) for b in cell['best_steps'])} | "
            f"{fmt(*d.get('stsb_dev', (None, None)))} | {fmt(*d.get('sickr_dev', (None, None)))} | "
            f"{fmt(*d.get('dev_mean', (None, None)))} | {fmt(cell['test']['mean']['avg'], cell['test']['std']['avg'])} | "
            f"{cell['test']['n_seeds']} | {cell['test']['train_s']:.0f} |"
        )
    missing = [n for n in report.get("cells_planned", []) if n not in {c["name"] for c in report["cells"]}]
    if missing:
        lines += ["", f"Not run yet (the run was interrupted or is still going): {', '.join(missing)}."]
    lines += [
        "",
        "## Diagnostics at step 0 and at the end (first seed)",
        "",
        "Gradient norms are of each *weighted* term over the towers' parameters, before clipping; cosines and "
        "E_CLS are on the fixed probe set (the first corpus sentences), eval mode.",
        "",
        "| cell | step | loss nce | loss icnce | loss cross | loss tm | grad nce | grad icnce | grad cross | "
        "grad tm | cos(A,B) | aniso h | aniso c | E_CLS A | E_CLS B |",
        "|---|---:|" + "---:|" * 13,
    ]
    for cell in report["cells"]:
        rec = cell["per_seed"][str(report["seeds"][0])] if str(report["seeds"][0]) in cell["per_seed"] else None
        if not rec or not rec["diagnostics_first"]:
            continue
        for row, step in (
            (rec["diagnostics_first"], rec["diagnostics_steps"][0]),
            (rec["diagnostics_last"], rec["diagnostics_steps"][-1]),
        ):
            vals = [row.get(k) for k in DIAGNOSTIC_KEYS if k != "grad_total"]
            lines.append(
                f"| {cell['name']} | {step} | " + " | ".join("" if v is None else f"{v:.4g}" for v in vals) + " |"
            )
    return "\n".join(lines) + "\n"


def render_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    names = [c["name"] for c in cells]
    dev = [c["dev"].get(report["selection"], (None, None))[0] or 0.0 for c in cells]
    test = [c["test"]["mean"]["avg"] for c in cells]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(cells) + 1.8), sharey=True)
    for ax, values, title in ((axes[0], dev, f"dev ({report['selection']})"), (axes[1], test, "test: 7-task avg")):
        bars = ax.barh(names, values, color=["#888" if n == "tncse" else "#3b75af" for n in names])
        ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
        lo, hi = min(values), max(values)
        ax.set_xlim(lo - max(0.5, (hi - lo)), hi + max(0.5, (hi - lo) * 0.5))
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle("Bridge ablation: Spearman x 100 (grey: TNCSE, no bridge)", fontsize=10)
    fig.tight_layout()
    common.write_png(fig, path)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    from jtcse.api import load_twin
    from jtcse.evaluation.sts import STS_TASKS, STSEvaluator
    from jtcse.io import atomic_write_json, atomic_write_text

    settings, overrides = common.run_settings(args)
    cells = [parse_cell(c) for c in (args.cells or list(CELLS))]
    seeds = list(dict.fromkeys(args.seeds))
    out = Path(args.out)
    evaluator = STSEvaluator(settings.data.sts_dir, STS_TASKS, batch_size=settings.evaluate.batch_size)
    with common.work_dir(args.reuse_dir, "jtcse-ablation-") as work:
        ws = Workspace(work, settings)
        selection = settings.evaluate.selection
        results: list[dict] = []

        def write_report() -> dict:
            """Written after every cell, so an interrupted run still leaves the table of what finished."""
            ordered = sorted(results, key=lambda c: -(c["dev"].get(selection, (float("-inf"),))[0]))
            report = {
                "benchmark": "ablation",
                "command": " ".join(sys.argv) if __name__ == "__main__" else None,
                "profile": args.profile,
                "params_file": str(args.params),
                "overrides": overrides,
                "seeds": seeds,
                "selection": selection,
                "settings": common.settings_dict(settings),
                "environment": common.environment(),
                "work_dir": str(work) if args.reuse_dir else None,
                "cells_planned": [name for name, _ in cells],
                "cells": ordered,
            }
            atomic_write_json(out / "ablation.json", report)
            atomic_write_text(out / "ablation.md", render_markdown(report))
            render_plot(report, out / "ablation.png")
            log.info(
                "wrote %s, %s, %s (%d of %d cells)",
                out / "ablation.json",
                out / "ablation.md",
                out / "ablation.png",
                len(results),
                len(cells),
            )
            return report

        report: dict = {}
        for i, (name, cell) in enumerate(cells, start=1):
            per_seed: dict[int, dict] = {}
            records: dict[str, dict] = {}
            for seed in seeds:
                log.info("[%d/%d] cell %s, seed %d: %s", i, len(cells), name, seed, cell)
                stage = ws.twin(seed, design=cell, name=f"ablation_{name}")
                scores, eval_s, _ = ws.test_scores(
                    seed,
                    stage,
                    lambda: evaluator(
                        load_twin(stage.path, device=settings.runtime.device, max_length=settings.evaluate.max_length)
                    ),
                )
                per_seed[seed] = {
                    "scores": {k: round(v, 4) for k, v in scores.items()},
                    "train_s": round(stage.total_seconds(), 2),
                    "eval_s": round(eval_s, 2),
                    "stage_summary": stage.summary,
                    "seeds_used": seeded_overrides(settings, seed),
                }
                records[str(seed)] = {
                    **per_seed[seed],
                    **cell_record(work / f"seed{seed}" / "metrics" / f"ablation_{name}", stage.summary),
                }
                log.info(
                    "cell %s seed %d: dev %s, test avg %.2f",
                    name,
                    seed,
                    records[str(seed)]["dev_at_best"],
                    scores["avg"],
                )
            dev = {}
            for k in sorted({k for r in records.values() for k in r["dev_at_best"]}):
                values = [r["dev_at_best"][k] for r in records.values() if r["dev_at_best"].get(k) is not None]
                dev[k] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)
            results.append(
                {
                    "name": name,
                    "overrides": cell,
                    "per_seed": records,
                    "dev": dev,
                    "best_steps": [r["stage_summary"].get("best_step") for r in records.values()],
                    "test": common.summarise(per_seed),
                }
            )
            report = write_report()
    return report


def build_parser() -> argparse.ArgumentParser:
    p = common.training_bench_parser(
        __doc__, set_help="override a setting for every cell, dotted key, YAML value (repeatable)"
    )
    p.add_argument(
        "--cells",
        nargs="+",
        help=f"cells to run: grid names ({', '.join(CELLS)}) or "
        "name:key=value,... (keys under train. unless they name a section); default: the whole grid",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds (1 = the params file; default: 1)")
    p.add_argument(
        "--out", default=str(common.RESULTS / "ablation"), help="results folder (default: bench/results/ablation)"
    )
    p.add_argument(
        "--reuse-dir", help="persistent work dir (shared with bench/quality.py's towers), e.g. runs/bench/quality"
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
