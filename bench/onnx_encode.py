"""ONNX encode benchmark: the packaged distilled model run four ways on the same folder, same sentences, same batch.

  jtcse torch             jtcse.load(pkg).encode                                   (torch)
  jtcse onnx float32      jtcse.load(pkg, backend="onnx").encode                   (onnxruntime, onnx/model.onnx)
  jtcse onnx int8         jtcse.load(pkg, backend="onnx", file_name=<int8>).encode (onnxruntime, int8 weights)
  sentence-transformers   SentenceTransformer(pkg/distilled).encode                (torch; the reference: ratio 1)

Sentences/s are medians over repeats; within a repeat the variants run one after the other in a rotating order, so
a slow patch of a shared machine hits every variant alike. Each variant's vectors are compared with jtcse torch's
(max abs difference, min cosine). Then (unless --no-sts) the seven-task STS average (STS12-16, STS-B, SICK-R test;
jtcse.evaluation.sts.STSEvaluator) of the ONNX float32 and int8 files: the quality int8 costs.

    python bench/onnx_encode.py --package models/jtcse-minilm-0.1.0
    python bench/onnx_encode.py              # no package: the base model (params.yaml model.base) in the
                                             # package's layout, exported to ONNX in a temporary folder
    python bench/onnx_encode.py --quick      # a few sentences, one repeat, no STS: checks the script works

Writes bench/results/onnx_encode.json and onnx_encode.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

log = logging.getLogger("bench.onnx_encode")

REFERENCE = "sentence_transformers_torch"
LABELS = {
    "jtcse_torch": "jtcse torch",
    "jtcse_onnx_float32": "jtcse onnx float32",
    "jtcse_onnx_int8": "jtcse onnx int8",
    REFERENCE: "sentence-transformers torch",
}


def sts_sentences(sts_dir: Path, n: int) -> list[str]:
    """The first ``n`` distinct sentences of the STS test files, in file order."""
    from jtcse.data.readers import read_sts
    from jtcse.evaluation.sts import STS_TASKS

    seen: dict[str, None] = {}
    for name in STS_TASKS.values():
        pairs = read_sts(Path(sts_dir) / name)
        for sentence in (s for pair in zip(pairs.sentence1, pairs.sentence2) for s in pair):
            seen.setdefault(sentence)
            if len(seen) >= n:
                return list(seen)
    return list(seen)


def model_folder(settings, package: str | None, work: Path) -> tuple[Path, Path, dict, str]:
    """(what jtcse.load opens, the sentence-transformers folder, the ONNX entry, a description of the source)."""
    if package:
        pkg = Path(package)
        manifest_path = pkg / "jtcse_package.json"
        if not manifest_path.is_file():
            raise SystemExit(f"--package {pkg}: not a package (no jtcse_package.json)")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        default = manifest["default"]
        entry = manifest["models"][default].get("onnx")
        if not entry:
            raise SystemExit(f"--package {pkg}: no ONNX files (rebuild it with the [onnx] extra installed)")
        return pkg, pkg / default, entry, f"package {pkg}"
    from jtcse.onnx_backend import export_onnx
    from jtcse.release.export import export_sentence_transformer

    folder = work / "distilled"
    pooling, max_length = settings.model.pooling, settings.evaluate.max_length
    export_sentence_transformer(settings.model.base, folder, pooling=pooling, max_seq_length=max_length)
    started = time.perf_counter()
    entry = export_onnx(folder, quantization=settings.package.onnx_quantization)
    entry["export_seconds"] = round(time.perf_counter() - started, 1)
    return folder, folder, entry, f"the base model {settings.model.base} in the package's layout ({pooling} pooling)"


def agreement(got, want) -> dict[str, float]:
    import numpy as np

    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    return {"max_abs_diff": float(np.abs(got - want).max()), "min_cosine": float(cos.min())}


def run(args: argparse.Namespace) -> dict:
    import torch

    import jtcse
    from jtcse.io import atomic_write_json, atomic_write_text

    settings = common.load_bench_settings(args.params, common.parse_set(args.set))
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    n = args.sentences or (64 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 5)
    sts = not (args.no_sts or args.quick)
    out = Path(args.out)
    notes: list[str] = list(args.note)
    with tempfile.TemporaryDirectory(prefix="jtcse-onnx-bench-") as tmp:
        path, st_dir, entry, source = model_folder(settings, args.package, Path(tmp))
        if not args.package:
            notes.append("no --package: the base model stands in for the distilled model (same architecture)")
        sentences = sts_sentences(settings.data.sts_dir, n)
        batch = args.batch_size
        encoders = {
            "jtcse_torch": jtcse.load(path, device="cpu"),
            "jtcse_onnx_float32": jtcse.load(path, backend="onnx", file_name=entry["float32"]),
            "jtcse_onnx_int8": jtcse.load(path, backend="onnx", file_name=entry["int8"]),
        }
        variants = {
            name: (lambda enc=enc: enc.encode(sentences, batch_size=batch, show_progress_bar=False))
            for name, enc in encoders.items()
        }
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            notes.append("sentence-transformers is not installed: its row is missing")
        else:
            st = SentenceTransformer(str(st_dir), device="cpu")
            variants[REFERENCE] = lambda: st.encode(
                sentences, batch_size=batch, convert_to_numpy=True, show_progress_bar=False
            )
        vectors = {name: fn() for name, fn in variants.items()}  # warm-up, and the vectors compared below
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(common.time_call(variants[name])[0])
            log.info(
                "repeat %d/%d: %s",
                r + 1,
                repeats,
                ", ".join(f"{k} {len(sentences) / v[-1]:.0f}/s" for k, v in times.items()),
            )
        rates = {name: len(sentences) / common.median(t) for name, t in times.items()}
        reference = rates.get(REFERENCE)
        rows = [
            {
                "key": name,
                "variant": LABELS[name],
                "sentences_per_s": round(rates[name], 1),
                "vs_sentence_transformers": round(rates[name] / reference, 3) if reference else None,
                **agreement(vectors[name], vectors["jtcse_torch"]),
            }
            for name in variants
        ]
        sizes = {k: round((st_dir / entry[k]).stat().st_size / 1e6, 1) for k in ("float32", "int8")}
        report: dict[str, Any] = {
            "benchmark": "onnx_encode",
            "source": source,
            "onnx": {**entry, "size_mb": sizes},
            "sentences": len(sentences),
            "batch_size": batch,
            "max_seq_length": encoders["jtcse_torch"].max_seq_length,
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "rows": rows,
            "int8_vs_sentence_transformers": next(r for r in rows if r["key"] == "jtcse_onnx_int8")[
                "vs_sentence_transformers"
            ],
            "notes": notes,
        }
        if sts:
            from jtcse.evaluation.sts import STSEvaluator

            evaluator = STSEvaluator(settings.data.sts_dir, batch_size=settings.evaluate.batch_size)
            report["sts"] = {}
            for name in ("jtcse_onnx_float32", "jtcse_onnx_int8"):
                started = time.perf_counter()
                report["sts"][name] = {k: round(v, 2) for k, v in evaluator(encoders[name]).items()}
                log.info("STS %s: avg %.2f (%.0f s)", name, report["sts"][name]["avg"], time.perf_counter() - started)
            report["sts_int8_minus_float32"] = round(
                report["sts"]["jtcse_onnx_int8"]["avg"] - report["sts"]["jtcse_onnx_float32"]["avg"], 2
            )
    report["environment"] = common.environment()
    atomic_write_json(out / "onnx_encode.json", report)
    atomic_write_text(out / "onnx_encode.md", render_markdown(report))
    log.info("wrote %s and %s", out / "onnx_encode.json", out / "onnx_encode.md")
    return report


def render_markdown(report: dict) -> str:
    env = report["environment"]
    onnx = report["onnx"]
    lines = [
        "# ONNX encode benchmark",
        "",
        f"Model: {report['source']}. {report['sentences']} STS test sentences, batch {report['batch_size']}, "
        f"max {report['max_seq_length']} tokens, CPU, {report['threads']} threads (torch and onnxruntime alike), "
        f"median of {report['repeats']} interleaved repeats.",
        f"ONNX files: `{onnx['float32']}` ({onnx['size_mb']['float32']} MB), `{onnx['int8']}` "
        f"({onnx['size_mb']['int8']} MB; `{onnx['quantization']}` preset, dynamic quantisation), opset {onnx['opset']}.",
        "",
        "| variant | sentences/s | vs sentence-transformers | max abs diff vs jtcse torch | min cosine |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        ratio = row["vs_sentence_transformers"]
        lines.append(
            f"| {row['variant']} | {row['sentences_per_s']:.0f} | {common.fmt(ratio)}x | "
            f"{row['max_abs_diff']:.2e} | {row['min_cosine']:.5f} |"
        )
    if "sts" in report:
        tasks = [k for k in report["sts"]["jtcse_onnx_float32"] if k != "avg"]
        lines += [
            "",
            "Seven-task STS (Spearman x 100, test splits, STS12-16 'all' aggregation):",
            "",
            f"| variant | {' | '.join(tasks)} | avg |",
            f"|---|{'---:|' * (len(tasks) + 1)}",
        ]
        for name, scores in report["sts"].items():
            lines.append(
                f"| {LABELS[name]} | {' | '.join(f'{scores[t]:.2f}' for t in tasks)} | **{scores['avg']:.2f}** |"
            )
        lines += ["", f"int8 - float32: {report['sts_int8_minus_float32']:+.2f} points."]
    lines += [
        "",
        f"Machine: {env['hardware']}; torch {env['torch']}, transformers {env.get('transformers', '?')}; "
        f"load average at the end {env['load_average']}; commit {env['git_commit']}"
        f"{' (uncommitted changes)' if env['git_dirty'] else ''}; {env['created']}.",
    ]
    lines += [f"\nNote: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


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
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument("--note", action="append", default=[], help="a note for the report, e.g. what the package is")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
