"""ONNX encode benchmark alone: the encode part of bench/speed.py (bench/speed_encode.py: jtcse torch, ONNX float32,
ONNX int8 and sentence-transformers on one folder, and the seven-task STS of both ONNX files), written to its own
files.

    python bench/onnx_encode.py --package models/jtcse-minilm-0.1.0
    python bench/onnx_encode.py              # no package: the base model (params.yaml model.base) in the
                                             # package's layout, exported to ONNX in a temporary folder
    python bench/onnx_encode.py --quick      # a few sentences, one repeat, no STS: checks the script works

Writes bench/results/onnx_encode.json and onnx_encode.md. `python bench/speed.py --parts encode` measures the same
inside the speed report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, speed_encode  # noqa: E402


def run(args: argparse.Namespace) -> dict:
    import torch

    from jtcse.io import atomic_write_json, atomic_write_text

    settings = common.load_bench_settings(args.params, common.parse_set(args.set))
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    out = Path(args.out)
    with common.work_dir(args.reuse_dir, "jtcse-onnx-bench-") as work:
        report = {
            "benchmark": "onnx_encode",
            **speed_encode.measure_encode(
                settings,
                package=args.package,
                work=work,
                sentences=args.sentences or (64 if args.quick else 2000),
                batch_size=args.batch_size,
                repeats=args.repeats or (1 if args.quick else 5),
                sts=not (args.no_sts or args.quick),
                notes=args.note,
            ),
        }
    report["environment"] = env = common.environment()
    lines = ["# ONNX encode benchmark", "", *speed_encode.render(report), ""]
    lines.append(
        f"Machine: {env['hardware']}; torch {env['torch']}, transformers {env.get('transformers', '?')}; "
        f"load average at the end {env['load_average']}; commit {env['git_commit']}"
        f"{' (uncommitted changes)' if env['git_dirty'] else ''}; {env['created']}."
    )
    atomic_write_json(out / "onnx_encode.json", report)
    atomic_write_text(out / "onnx_encode.md", "\n".join(lines) + "\n")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--package", help="a package built by `jtcse package` (default: the base model, exported here)")
    p.add_argument("--params", default=str(common.REPO / "params.yaml"), help="settings file (default: params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    p.add_argument("--sentences", type=int, help="distinct STS test sentences to encode (default: 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch, every variant (default: 64)")
    p.add_argument("--repeats", type=int, help="timed repeats of each variant (default: 5)")
    p.add_argument("--no-sts", action="store_true", help="skip the seven-task STS averages of float32 and int8")
    p.add_argument("--quick", action="store_true", help="64 sentences, one repeat, no STS: checks the script works")
    p.add_argument("--reuse-dir", help="keep the exported base model here for later runs (default: a temporary one)")
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument("--note", action="append", default=[], help="a note for the report, e.g. what the package is")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
