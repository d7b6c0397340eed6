"""Speed benchmark: every speed measurement in one process run, one module per measurement.

  step          bench/speed_step.py: our SimCSE step vs sentence-transformers' own SimCSE step; the JTCSE step vs
                our SimCSE step with its parts (second tower, losses, bridge); FLOPs, this CPU's GEMM peak and the
                share of it each step reaches; a profile of the JTCSE step
  scaling       bench/speed_scaling.py: step time and peak memory at batch 16/32/64/128 x length 32/64/128;
                encoding time of 1k/10k/100k sentences
  encode        bench/speed_encode.py: jtcse.load(...).encode (torch, ONNX float32, ONNX int8) vs
                SentenceTransformer(...).encode on the same folder; seven-task STS of int8 vs float32
  loss          bench/speed_loss.py: the vectorised tensor-modulus loss vs the reference's per-sample loop
  orchestration bench/speed_orchestration.py: a no-change `dvc repro`; a Prefect flow run vs a direct call

    python bench/speed.py                                     # everything, full sizes
    python bench/speed.py --quick                             # tiny sizes (a few minutes): checks it works
    python bench/speed.py --parts step encode --package models/jtcse-minilm-0.1.0

Medians over repeats, repeats interleaved so that a slow patch of a shared machine hits every variant alike.
Each part's result (and each scaling config, each encode size) is written atomically into the work folder
(--reuse-dir, default runs/bench/speed) under a key of what it depends on: an interrupted run, rerun with the same
options, measures only what is missing; --redo measures the selected parts again. Without --package the base model
is exported there once in the package's layout (with its ONNX files) by the library's own export functions.
Writes bench/results/speed.json, speed.md and speed.png; speed.md leads with the target ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (  # noqa: E402
    common,
    speed_encode,
    speed_loss,
    speed_orchestration,
    speed_scaling,
    speed_step,
)

log = logging.getLogger("bench.speed")

#: The parts in the order they run and are reported.
MODULES = {
    "step": speed_step,
    "scaling": speed_scaling,
    "encode": speed_encode,
    "loss": speed_loss,
    "orchestration": speed_orchestration,
}
PARTS = tuple(MODULES)
#: The sizes each part's result depends on (its cache key holds only these, so changing one part's sizes keeps the
#: others' results).
SIZE_KEYS = {
    "step": ("step_", "gemm_"),
    "scaling": ("scaling_", "encode_batch", "encode_scale_sizes"),
    "encode": ("encode_",),
    "loss": ("loss_",),
    "orchestration": ("flow_", "dvc_", "dev_pairs"),
}
FULL: dict[str, Any] = {
    "step_batch": None,  # None: train.batch_size (32)
    "step_max_length": None,  # None: model.max_length (32)
    "step_repeats": 8,
    "step_warmup": 2,
    "gemm_square": 2048,
    "gemm_seconds": 3.0,
    "gemm_repeats": 5,
    "scaling_batches": (16, 32, 64, 128),
    "scaling_lengths": (32, 64, 128),
    "scaling_repeats": 3,
    "scaling_warmup": 1,
    "scaling_max_mib": None,  # None: 60 % of the memory available at the start of the part
    "encode_sentences": 2000,
    "encode_batch": 64,
    "encode_repeats": 5,
    "encode_sts": True,
    "encode_scale_sizes": (1000, 10_000, 100_000),
    "loss_batches": (64, 256),
    "loss_hidden": 768,
    "loss_repeats": 15,
    "flow_repeats": 3,
    "dvc_repeats": 2,
    "dev_pairs": None,
}
QUICK: dict[str, Any] = {
    **FULL,
    "step_batch": 4,
    "step_max_length": 16,
    "step_repeats": 2,
    "step_warmup": 1,
    "gemm_square": 256,
    "gemm_seconds": 0.2,
    "gemm_repeats": 2,
    "scaling_batches": (4, 8),
    "scaling_lengths": (16,),
    "scaling_repeats": 1,
    "encode_sentences": 64,
    "encode_repeats": 1,
    "encode_sts": False,
    "encode_scale_sizes": (100, 300),
    "loss_batches": (16, 32),
    "loss_hidden": 64,
    "loss_repeats": 3,
    "flow_repeats": 1,
    "dvc_repeats": 1,
    "dev_pairs": 60,
}


@dataclass
class Context:
    """What every part's ``measure(ctx)`` reads, and the work folder's result cache."""

    settings: Any
    sizes: dict[str, Any]
    work: Path
    package: str | None
    project_dir: str
    loss_device: str | None
    redo: bool = False

    def _path(self, kind: str, spec: dict) -> Path:
        text = json.dumps({"kind": kind, "spec": spec}, sort_keys=True, default=str)
        return self.work / "cache" / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"

    def lookup(self, kind: str, spec: dict) -> Any | None:
        path = self._path(kind, spec)
        if self.redo or not path.is_file():
            return None
        log.info("reusing %s (%s)", kind, path)
        return json.loads(path.read_text(encoding="utf-8"))["result"]

    def store(self, kind: str, spec: dict, result: Any) -> Any:
        from jtcse.io import atomic_write_json

        atomic_write_json(self._path(kind, spec), {"kind": kind, "spec": spec, "result": result})
        return result

    def cache(self, kind: str, spec: dict, compute: Callable[[], Any]) -> Any:
        found = self.lookup(kind, spec)
        return found if found is not None else self.store(kind, spec, compute())


def target_rows(report: dict) -> list[dict]:
    rows = []
    for name, module in MODULES.items():
        if name in report and hasattr(module, "targets"):
            rows += module.targets(report[name])
    for row in rows:
        value, goal = row["value"], row["target"]
        ok = value is not None and math.isfinite(value) and (value <= goal if row["op"] == "<=" else value >= goal)
        row["met"] = bool(ok)
    return rows


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Speed benchmark",
        "",
        f"Machine: {env['hardware']}, {env['cpu_count']} logical CPUs, torch {env['torch']} with "
        f"{env['torch_threads']} threads, transformers {env.get('transformers', '?')}, sentence-transformers "
        f"{env.get('sentence_transformers', '?')}, onnxruntime {env.get('onnxruntime', '?')}; load average at the "
        f"end {env.get('load_average')}; commit `{env['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if env.get('git_dirty') else ''}; {env['created']}"
        f"{'; **--quick sizes: not a measurement**' if report['quick'] else ''}.",
        "",
    ]
    targets = report["targets"]
    if targets:
        lines += ["| target | measured | target | met |", "|---|---:|---:|---|"]
        lines += [
            f"| {t['what']} | {common.fmt(t['value'])} | {t['op']} {t['target']} | "
            f"{'met' if t['met'] else '**missed**'} |"
            for t in targets
        ]
        lines.append("")
    number = 0
    for name, module in MODULES.items():
        if name not in report:
            continue
        number += 1
        lines += [f"## {number}. {module.TITLE}", "", *module.render(report[name]), ""]
    return "\n".join(lines)


def render_plot(report: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float]] = []
    for name, module in MODULES.items():
        if name in report:
            bars += [(label, v) for label, v in module.bars(report[name]) if v is not None]
    scaling = report.get("scaling")
    if not bars and not scaling:
        return False
    if scaling:
        fig, axes = plt.subplots(2, 2, figsize=(13, 9))
        ax_bars, ax_time, ax_mem, ax_enc = axes.flat
        speed_scaling.plot(scaling, ax_time, ax_mem, ax_enc)
    else:
        fig, ax_bars = plt.subplots(figsize=(8, 0.5 * len(bars) + 1.2))
    if bars:
        labels, values = zip(*bars)
        ax_bars.barh(labels, values, color="tab:blue")
        ax_bars.set_xscale("log")
        ax_bars.axvline(1.0, color="grey", lw=0.8)
        for i, v in enumerate(values):
            ax_bars.text(v, i, f" {v:.2f}", va="center", fontsize=8)
        ax_bars.set_xlabel("ratio (log scale)")
        ax_bars.tick_params(axis="y", labelsize=7)
        ax_bars.invert_yaxis()
    fig.tight_layout()
    common.write_png(fig, path)
    plt.close(fig)
    return True


def environment() -> dict[str, Any]:
    env = common.environment()
    for module in ("sentence_transformers", "onnxruntime"):
        try:
            env[module] = __import__(module).__version__
        except ImportError:  # pragma: no cover - both are in the benchmark's environment
            env[module] = None
    return env


def sizes_for(args: argparse.Namespace, settings) -> dict[str, Any]:
    sizes = dict(QUICK if args.quick else FULL)
    sizes["step_batch"] = args.batch_size or sizes["step_batch"] or settings.train.batch_size
    sizes["step_max_length"] = args.max_length or sizes["step_max_length"] or settings.model.max_length
    for key in ("loss_batches", "scaling_batches", "scaling_lengths", "encode_scale_sizes"):
        if getattr(args, key):
            sizes[key] = tuple(getattr(args, key))
    if args.sentences:
        sizes["encode_sentences"] = args.sentences
    if args.no_sts:
        sizes["encode_sts"] = False
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}


def run(args: argparse.Namespace) -> dict:
    import torch

    from jtcse.io import atomic_write_json, atomic_write_text

    overrides = common.parse_set(args.set)
    settings = common.load_bench_settings(args.params, overrides)
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    parts = [p for p in PARTS if p in (args.parts or PARTS)]
    sizes = sizes_for(args, settings)
    work = Path(args.reuse_dir)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(settings, sizes, work, args.package, args.project_dir, args.loss_device, args.redo)
    report: dict[str, Any] = {
        "benchmark": "speed",
        "quick": bool(args.quick),
        "parts": parts,
        "sizes": sizes,
        "settings": common.settings_dict(settings),
        "overrides": overrides,
        "work_dir": str(work),
    }
    depends = {"settings": report["settings"], "package": args.package, "threads": torch.get_num_threads()}
    for part in parts:
        log.info("--- %s ---", part)
        own = {k: v for k, v in sizes.items() if k.startswith(SIZE_KEYS[part])}
        spec = {**depends, "part": part, "sizes": own}
        if part == "orchestration":
            spec["project_dir"] = str(Path(args.project_dir).resolve())
        report[part] = ctx.cache(f"part_{part}", spec, lambda part=part: MODULES[part].measure(ctx))
    report["environment"] = environment()
    report["targets"] = target_rows(report)
    out = Path(args.out)
    atomic_write_json(out / "speed.json", report)
    atomic_write_text(out / "speed.md", render_markdown(report))
    plotted = render_plot(report, out / "speed.png")
    log.info("wrote %s, %s%s", out / "speed.json", out / "speed.md", f", {out / 'speed.png'}" if plotted else "")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", nargs="+", choices=PARTS, help="which measurements (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats, to check the script works")
    p.add_argument("--params", default=str(common.REPO / "params.yaml"), help="settings file (default: params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument(
        "--reuse-dir",
        default=str(common.REPO / "runs" / "bench" / "speed"),
        help="work folder: finished parts, scaling configs and encode sizes (reused by a rerun with the same "
        "options), and the exported base model (default: runs/bench/speed)",
    )
    p.add_argument("--redo", action="store_true", help="measure the selected parts again, ignoring kept results")
    p.add_argument(
        "--package", help="packaged model folder models/<name>-<version> (default: the base model, exported)"
    )
    p.add_argument("--batch-size", type=int, help="step part's batch (default: train.batch_size)")
    p.add_argument("--max-length", type=int, help="step part's max length (default: model.max_length)")
    p.add_argument("--scaling-batches", nargs="+", type=int, help="scaling grid batches (default: 16 32 64 128)")
    p.add_argument("--scaling-lengths", nargs="+", type=int, help="scaling grid max lengths (default: 32 64 128)")
    p.add_argument("--encode-scale-sizes", nargs="+", type=int, help="sentences to encode (default: 1e3 1e4 1e5)")
    p.add_argument("--sentences", type=int, help="STS sentences of the encode comparison (default: 2000)")
    p.add_argument("--no-sts", action="store_true", help="skip the seven-task STS of the ONNX float32 and int8 files")
    p.add_argument("--loss-batches", nargs="+", type=int, help="batches of the loss part (default: 64 256)")
    p.add_argument("--loss-device", choices=["cpu", "cuda"], help="device of the loss part (default: cuda if present)")
    p.add_argument("--project-dir", default=".", help="DVC project of the no-change `dvc repro` (default: .)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
