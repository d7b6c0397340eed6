"""Quality benchmark: the seven-task STS table of every model the method compares, trained under one budget.

Rows (same base checkpoint, corpus, step budget and seeds for every trained row):

  1  base checkpoint zero-shot, ``cls`` pooling (1a) and ``mean`` pooling (1b)
  2  unsupervised SimCSE, one tower (tower A, ``pretrain`` settings)
  3  plain twin ensemble: tower A + tower B of row 2's stage, sum of vectors, no joint training
  4  TNCSE: joint twin training from the two towers WITHOUT cross-attention (train.cross_attention.num_layers 0)
  5  JTCSE twin: the three losses + cross-attention, ``train`` settings as given
  6  JTCSE-D: one tower distilled from row 5's twin (``distill`` settings)
  C  optional control (``--rows control``): tower A trained ``train.steps`` more SimCSE steps, so one tower sees
     as many steps as each tower of the twins (pretrain.steps + train.steps)

Work is reused where it is the same thing (the stage cache of bench/workspace.py): towers A and B are trained
once per seed and feed rows 2-5; row 6 distils row 5's twin. Seed ``s`` (>= 1) shifts pretrain.tower_a.seed,
pretrain.tower_b.seed, train.seed and distill.seed by 1000 * (s - 1), so seed 1 is exactly params.yaml. Rows in
``--repeat-rows`` (default SimCSE and JTCSE) run with every seed and report mean and sample std; the other trained
rows use the first seed.

    python bench/quality.py                                   # params.yaml, seeds 1 2 3, all rows
    python bench/quality.py --rows 1 2 5 --seeds 1 --set train.steps=60 --reuse-dir runs/bench/quality

Writes bench/results/quality.json, quality.md and quality.png (atomically).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.workspace import (  # noqa: E402
    SEED_STRIDE,
    NotFinished,
    Stage,
    Workspace,
    encoder_identity,
    saved_towers,
    seeded_overrides,
)

log = logging.getLogger("bench.quality")


@dataclass(frozen=True)
class Row:
    key: str
    number: str
    label: str
    needs_training: bool = True
    control: bool = False


ROWS: tuple[Row, ...] = (
    Row("base_cls", "1a", "base zero-shot (cls)", needs_training=False),
    Row("base_mean", "1b", "base zero-shot (mean)", needs_training=False),
    Row("simcse", "2", "unsup SimCSE (one tower)"),
    Row("ensemble", "3", "SimCSE twin ensemble (A+B, no joint training)"),
    Row("tncse", "4", "TNCSE twin (joint, no cross-attention)"),
    Row("jtcse", "5", "JTCSE twin"),
    Row("jtcse_d", "6", "JTCSE-D (distilled tower)"),
    Row("simcse_long", "C", "control: SimCSE tower, pretrain+train steps", control=True),
)
ROW_BY_KEY = {r.key: r for r in ROWS}
DEFAULT_ROWS = [r.key for r in ROWS if not r.control]
ALIASES = {
    "1": ["base_cls", "base_mean"],
    "1a": ["base_cls"],
    "1b": ["base_mean"],
    "base": ["base_cls", "base_mean"],
    "2": ["simcse"],
    "3": ["ensemble"],
    "4": ["tncse"],
    "5": ["jtcse"],
    "6": ["jtcse_d"],
    "c": ["simcse_long"],
    "control": ["simcse_long"],
    "all": DEFAULT_ROWS,
}


@dataclass(frozen=True)
class RowTable:
    """The rows of one run: the fixed ones plus one JTCSE row per --design (5.1, 5.2, ... after row 5, keys
    design_<name>, usable in --rows and --repeat-rows), with the train overrides of each design."""

    rows: tuple[Row, ...] = ROWS
    designs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def by_key(self) -> dict[str, Row]:
        return {r.key: r for r in self.rows}


def row_table(design_items: list[str] | None = None) -> RowTable:
    rows, designs = list(ROWS), {}
    after = [r.key for r in ROWS].index("jtcse") + 1
    for i, item in enumerate(design_items or [], start=1):
        name, overrides = common.parse_design(item)
        designs[f"design_{name}"] = overrides
        bridged = overrides.get("train.cross_attention.num_layers") != 0
        label = f"{'JTCSE' if bridged else 'TNCSE'} twin, {name}"
        rows.insert(after + i - 1, Row(f"design_{name}", f"5.{i}", label))
    return RowTable(tuple(rows), designs)


def select_rows(items: list[str] | None, table: RowTable | None = None) -> list[str]:
    table = table or RowTable()
    if not items:
        return [r.key for r in table.rows if r.key in DEFAULT_ROWS or r.key in table.designs]
    by_key = table.by_key
    chosen: set[str] = set()
    for item in items:
        for part in item.replace(",", " ").split():
            key = part.strip().lower()
            if key in ALIASES:
                chosen.update(ALIASES[key])
            elif key in by_key or f"design_{key}" in by_key:
                chosen.add(key if key in by_key else f"design_{key}")
            else:
                raise SystemExit(f"--rows: unknown row {part!r}; use 1-6, C or one of {', '.join(by_key)}")
    return [r.key for r in table.rows if r.key in chosen]


def make_encoder(
    row: str, ws: Workspace, seed: int, settings, designs: dict[str, dict[str, Any]] | None = None
) -> tuple[Callable[[], Any], Stage | None]:
    """The row's trained stage (training it when it is missing) and a loader of its encoder: loading waits until
    the test scores are not in the cache."""
    from jtcse.api import load_twin
    from jtcse.encoding import TowerEncoder, TwinEncoder
    from jtcse.formats import resolve_model_path
    from jtcse.training.build import tower_pooling

    device, max_length, pooling = settings.runtime.device, settings.evaluate.max_length, settings.model.pooling

    def tower(path, pooling: str = pooling) -> TowerEncoder:
        return TowerEncoder.from_pretrained(str(path), pooling, max_length, device, settings.model.trust_remote_code)

    def twin(stage: Stage):
        return load_twin(stage.path, device=device, max_length=max_length)

    if row in ("base_cls", "base_mean"):
        return functools.partial(tower, resolve_model_path(settings.model.base), row.split("_")[1]), None
    if row == "simcse":
        stage = ws.tower(seed, "a")
        return functools.partial(tower, stage.path, tower_pooling(settings, "a")), stage
    if row == "ensemble":
        stage = ws.ensemble(seed)  # its "training" is both towers
        a, b = stage.requires
        return lambda: TwinEncoder(
            tower(a.path, tower_pooling(settings, "a")),
            tower(b.path, tower_pooling(settings, "b")),
            settings.train.twin_combine,
            settings.train.twin_normalize,
        ), stage
    if row in ("tncse", "jtcse"):
        stage = ws.twin(seed, cross_attention=row == "jtcse")
        return functools.partial(twin, stage), stage
    if row in (designs or {}):
        # Named like bench/ablation.py's cells, so a design trained there is reused here and vice versa.
        stage = ws.twin(seed, design=designs[row], name=f"ablation_{row.removeprefix('design_')}")
        return functools.partial(twin, stage), stage
    if row == "jtcse_d":
        stage = ws.distilled(seed)
        return functools.partial(tower, stage.path), stage
    if row == "simcse_long":
        stage = ws.simcse_long(seed)
        return functools.partial(tower, stage.path), stage
    raise KeyError(row)


def row_towers(row: str, stage: Stage | None, settings) -> tuple[list[tuple[str | Path, str]], str, bool]:
    """The (weights folder, pooling) of each tower a row's encoder runs, and how they combine."""
    from jtcse.formats import resolve_model_path
    from jtcse.training.build import tower_pooling

    train = settings.train
    if row in ("base_cls", "base_mean"):
        return [(resolve_model_path(settings.model.base), row.split("_")[1])], "sum", False
    if row == "simcse":
        return [(stage.path, tower_pooling(settings, "a"))], "sum", False
    if row == "ensemble":
        a, b = stage.requires
        pools = (tower_pooling(settings, "a"), tower_pooling(settings, "b"))
        return [(a.path, pools[0]), (b.path, pools[1])], train.twin_combine, train.twin_normalize
    return saved_towers(stage.path, settings.model.pooling)


def comparisons(rows: list[dict]) -> list[str]:
    """One line per table row that does not beat the row above it on the average."""
    lines = []
    main = [r for r in rows if not r["control"]]
    for above, row in zip(main, main[1:]):
        a, b = row["mean"]["avg"], above["mean"]["avg"]
        if not a > b:
            lines.append(
                f"row {row['number']} ({row['label']}) does not beat row {above['number']} "
                f"({above['label']}) on avg ({a:.2f} vs {b:.2f})"
            )
    by_key = {r["key"]: r for r in rows}
    if "simcse_long" in by_key and "jtcse" in by_key:
        c, j = by_key["simcse_long"], by_key["jtcse"]
        verb = "beats" if j["mean"]["avg"] > c["mean"]["avg"] else "does not beat"
        lines.append(
            f"control: row 5 ({j['label']}) {verb} row C ({c['label']}) on avg "
            f"({j['mean']['avg']:.2f} vs {c['mean']['avg']:.2f})"
        )
    return lines


def render_markdown(report: dict) -> str:
    from jtcse.evaluation.sts import STS_TASKS

    tasks = [*STS_TASKS, "avg"]
    names = {
        "sts12": "STS12",
        "sts13": "STS13",
        "sts14": "STS14",
        "sts15": "STS15",
        "sts16": "STS16",
        "stsb": "STS-B",
        "sickr": "SICK-R",
        "avg": "avg",
    }
    s = report["settings"]
    lines = [
        "# Quality benchmark: seven-task STS (Spearman x 100)",
        "",
        f"Base `{s['model']['base']}`, pooling `{s['model']['pooling']}`, corpus `{s['data']['corpus']}`"
        f"{' (first ' + str(s['data']['max_sentences']) + ')' if s['data']['max_sentences'] else ''}; "
        f"steps: pretrain {s['pretrain']['steps']} x batch {s['pretrain']['batch_size']}, "
        f"train {s['train']['steps']} x {s['train']['batch_size']}, distill {s['distill']['steps']} x "
        f"{s['distill']['batch_size']}; bridged layers {s['train']['cross_attention']['num_layers']} "
        f"({s['train']['cross_attention']['mode']}); seeds {report['seeds']}.",
        f"Hardware: {report['environment']['hardware']}; commit `{report['environment']['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if report['environment'].get('git_dirty') else ''}; {report['environment']['created']}.",
        *(
            [f"Overrides of the params file: {', '.join(f'`{k}={v}`' for k, v in report['overrides'].items())}."]
            if report.get("overrides")
            else []
        ),
        "",
        "| # | model | " + " | ".join(names[t] for t in tasks) + " | train s | eval s | seeds |",
        "|---|---|" + "---:|" * (len(tasks) + 3),
    ]
    for row in report["rows"]:
        cells = []
        for t in tasks:
            m, sd = row["mean"][t], row["std"][t]
            cells.append(f"{m:.2f} ± {sd:.2f}" if sd is not None else f"{m:.2f}")
        train = common.fmt(row["train_s"], 1) if row["trained"] else "0"
        lines.append(
            f"| {row['number']} | {row['label']} | "
            + " | ".join(cells)
            + f" | {train} | {common.fmt(row['eval_s'], 1)} | {row['n_seeds']} |"
        )
    lines.append("")
    verdicts = report["comparisons"]
    if verdicts:
        lines += [f"- {v}" for v in verdicts]
    elif sum(not r["control"] for r in report["rows"]) > 1:
        lines.append("- every row beats the row above it on avg")
    if report.get("missing"):
        lines.append(f"- not finished when this table was made (left out): {', '.join(report['missing'])}")
    for row in report["rows"]:
        kept = [str(seed) for seed, r in row["per_seed"].items() if r["stage_summary"].get("best_step") == 0]
        if kept:
            lines.append(
                f"- row {row['number']} ({row['label']}): its last training stage kept its starting weights "
                f"(best dev score at step 0) for seed(s) {', '.join(kept)}"
            )
    lines += [
        "",
        "Mean ± sample std over seeds where a row ran with several. *train s*: wall seconds of every training stage "
        "the row's model needs, from the base checkpoint (shared stages counted in full for each row, reused ones at "
        "the time they took; dev evaluations during training included); *eval s*: loading the model and the seven "
        "tasks. Wall times on a shared machine are indicative only.",
    ]
    repeated = [r for r in report["rows"] if r["n_seeds"] > 1]
    if repeated:
        lines += [
            "",
            "## Per seed",
            "",
            "| # | model | seed | " + " | ".join(names[t] for t in tasks) + " | train s |",
            "|---|---|---:|" + "---:|" * (len(tasks) + 1),
        ]
        for row in repeated:
            for seed, r in row["per_seed"].items():
                lines.append(
                    f"| {row['number']} | {row['label']} | {seed} | "
                    + " | ".join(f"{r['scores'][t]:.2f}" for t in tasks)
                    + f" | {r['train_s']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def render_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jtcse.evaluation.sts import STS_TASKS

    tasks = [*STS_TASKS, "avg"]
    names = {"stsb": "STS-B", "sickr": "SICK-R", "avg": "avg"}
    rows = report["rows"]
    x = np.arange(len(tasks))
    width = 0.84 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(12, 5.2))
    for i, row in enumerate(rows):
        means = [row["mean"][t] for t in tasks]
        errs = [row["std"][t] or 0.0 for t in tasks]
        ax.bar(
            x - 0.42 + width * (i + 0.5),
            means,
            width,
            yerr=errs if any(errs) else None,
            capsize=2,
            label=f"{row['number']} {row['label']}",
        )
    ax.set_xticks(x, [names.get(t, t.upper()) for t in tasks])
    ax.set_ylabel("Spearman x 100")
    lo = min(min(r["mean"][t] for t in tasks) for r in rows)
    hi = max(max(r["mean"][t] + (r["std"][t] or 0.0) for t in tasks) for r in rows)
    ax.set_ylim(max(0.0, lo - 5) if lo > 0 else lo - 5, hi + 2)
    ax.set_title("Seven-task STS per model (mean over seeds; error bars: sample std)")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    common.write_png(fig, path)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    from jtcse.evaluation.sts import STS_TASKS, STSEvaluator
    from jtcse.io import atomic_write_json, atomic_write_text

    settings, overrides = common.run_settings(args)
    table = row_table(args.design)
    spec_of = table.by_key
    rows = select_rows(args.rows, table)
    seeds = list(dict.fromkeys(args.seeds))
    repeat = set(select_rows(args.repeat_rows, table)) if args.repeat_rows else set()
    out = Path(args.out)
    evaluator = STSEvaluator(
        settings.data.sts_dir, STS_TASKS, batch_size=settings.evaluate.batch_size, show_progress=True
    )

    with common.work_dir(args.reuse_dir, "jtcse-quality-") as work:
        log.info("rows %s, seeds %s (repeated rows: %s), work dir %s", rows, seeds, sorted(repeat & set(rows)), work)
        ws = Workspace(work, settings, train=not args.report_only)
        results: list[dict] = []
        missing: list[str] = []
        plan = [
            (row, seed)
            for row in rows
            for seed in (seeds if (row in repeat) else seeds[:1])
            if spec_of[row].needs_training or seed == seeds[0]
        ]
        per_row: dict[str, dict[int, dict]] = {}
        for i, (row, seed) in enumerate(plan, start=1):
            log.info("[%d/%d] %s, seed %d", i, len(plan), spec_of[row].label, seed)
            seed_settings = ws.settings_for(seed)
            try:
                load_encoder, stage = make_encoder(row, ws, seed, seed_settings, table.designs)

                def evaluate() -> dict[str, float]:
                    return evaluator(load_encoder())

                towers, combine, normalize = row_towers(row, stage, seed_settings)
                identity = encoder_identity(towers, combine, normalize)
                if stage is None:  # the base rows: nothing trained, cached by content only
                    scores, eval_s, cached = ws.scores_by_content(identity, evaluate)
                else:
                    scores, eval_s, cached = ws.test_scores(seed, stage, evaluate, identity)
            except NotFinished as why:
                log.info("--report-only: %s; %s seed %d left out", why, row, seed)
                missing.append(f"{row} seed {seed}")
                continue
            entry = {
                "scores": {k: round(v, 4) for k, v in scores.items()},
                "train_s": round(stage.total_seconds(), 2) if stage else 0.0,
                "train_stages_s": stage.breakdown() if stage else {},
                "reused_stages": stage.reused_stages() if stage else [],
                "eval_s": round(eval_s, 2),
                "eval_cached": cached,
                "encoder_identity": identity,
                "stage_summary": stage.summary if stage else {},
                "seeds_used": seeded_overrides(settings, seed) if stage else {},
            }
            log.info(
                "%s seed %d: avg %.2f (eval %.1f s%s)", row, seed, scores["avg"], eval_s, ", cached" if cached else ""
            )
            per_row.setdefault(row, {})[seed] = entry
        for row in rows:
            spec = spec_of[row]
            if row not in per_row:
                continue
            results.append(
                {
                    "key": row,
                    "number": spec.number,
                    "label": spec.label,
                    "control": spec.control,
                    "trained": spec.needs_training,
                    "per_seed": per_row[row],
                    **common.summarise(per_row[row]),
                }
            )

    report = {
        "benchmark": "quality",
        "command": " ".join(sys.argv) if __name__ == "__main__" else None,
        "params_file": str(args.params),
        "overrides": overrides,
        "seeds": seeds,
        "seed_derivation": f"seed s shifts pretrain.tower_a.seed, pretrain.tower_b.seed, train.seed, distill.seed by "
        f"{SEED_STRIDE} * (s - 1); seed 1 = the params file",
        "repeated_rows": sorted(repeat & set(rows)),
        "profile": args.profile,
        "row_overrides": {
            "tncse": {"train.cross_attention.num_layers": 0},
            **{k: table.designs[k] for k in rows if k in table.designs},
            "simcse_long": {"pretrain.steps": settings.train.steps, "init": "tower_a"},
        },
        "settings": common.settings_dict(settings),
        "environment": common.environment(),
        "work_dir": str(work) if args.reuse_dir else None,
        "rows": results,
        "missing": missing,
    }
    report["comparisons"] = comparisons(results)
    atomic_write_json(out / "quality.json", report)
    atomic_write_text(out / "quality.md", render_markdown(report))
    render_plot(report, out / "quality.png")
    log.info("wrote %s, %s, %s", out / "quality.json", out / "quality.md", out / "quality.png")
    for line in report["comparisons"]:
        log.info(line)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = common.training_bench_parser(
        __doc__, set_help="override a setting, dotted key, value parsed as YAML (repeatable): --set train.steps=60"
    )
    p.add_argument(
        "--design",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra JTCSE row with these train overrides, e.g. "
        "stream6:cross_attention.mode=stream,cross_attention.num_layers=6 (repeatable)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[1, 2, 3],
        help="seeds of the repeated rows; the first one is used by the others (default: 1 2 3)",
    )
    p.add_argument(
        "--rows", nargs="+", help=f"rows to run: 1-6, C (control), or keys ({', '.join(ROW_BY_KEY)}); default: 1-6"
    )
    p.add_argument(
        "--repeat-rows",
        nargs="*",
        default=["simcse", "jtcse"],
        help="rows run with every seed (default: simcse jtcse; 'all' for 1-6)",
    )
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train and evaluate nothing: the table of what the work dir holds (rows and seeds missing are listed)",
    )
    p.add_argument(
        "--reuse-dir",
        help="persistent work dir for models: finished stages with the same settings are "
        "reused and interrupted ones resume (e.g. runs/bench/quality); default: a temporary dir, deleted",
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
