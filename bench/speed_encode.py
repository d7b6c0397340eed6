"""Speed, part `encode`: the distilled model's encoding side by side, on the same folder, sentences and batch.

  jtcse torch             jtcse.load(pkg).encode                                   (torch)
  jtcse onnx float32      jtcse.load(pkg, backend="onnx").encode                   (onnxruntime, onnx/model.onnx)
  jtcse onnx int8         jtcse.load(pkg, backend="onnx", file_name=<int8>).encode (onnxruntime, int8 weights)
  sentence-transformers   SentenceTransformer(pkg/distilled).encode                (torch; the reference: ratio 1)

Sentences/s are medians over repeats; within a repeat the variants run in a rotating order, so a slow patch of a
shared machine hits every variant alike. Each variant's vectors are compared with jtcse torch's (max abs
difference, min cosine). Then (unless turned off) the seven-task STS average (STS12-16, STS-B, SICK-R test;
jtcse.evaluation.sts.STSEvaluator) of the ONNX float32 and int8 files: the quality int8 costs.

Without a package (``--package``), the base model (``model.base``) is written in the package's layout by the
library's own export (jtcse.release.export.export_sentence_transformer, ``model.pooling``,
``evaluate.max_length``) and exported to ONNX (jtcse.onnx_backend.export_onnx, ``package.onnx_quantization``),
once per work folder. Run by bench/speed.py (``--parts encode``) and by bench/onnx_encode.py (alone).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from bench import common

log = logging.getLogger("bench.speed.encode")

TITLE = "Encoding: jtcse (torch, ONNX float32, ONNX int8) vs sentence-transformers"

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
    """(what jtcse.load opens, the sentence-transformers folder, the ONNX entry, a description of the source).
    Without ``package`` the base model is exported into ``work/model`` (kept there: later runs reuse it)."""
    from jtcse.io import atomic_write_json

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
    from jtcse.formats import resolve_model_path
    from jtcse.onnx_backend import export_onnx
    from jtcse.release.export import export_sentence_transformer

    folder, done = Path(work) / "model", Path(work) / "model.done.json"
    pooling, max_length = settings.model.pooling, settings.evaluate.max_length
    quantization = settings.package.onnx_quantization
    source = f"the base model {settings.model.base} in the package's layout ({pooling} pooling)"
    want = {"base": str(settings.model.base), "pooling": pooling, "max_length": max_length, "q": quantization}
    if done.is_file():
        record = json.loads(done.read_text(encoding="utf-8"))
        if record.get("made_from") == want:
            return folder, folder, record["entry"], source
    export_sentence_transformer(
        resolve_model_path(settings.model.base), folder, pooling=pooling, max_seq_length=max_length
    )
    started = time.perf_counter()
    entry = export_onnx(folder, quantization=quantization)
    entry["export_seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(done, {"made_from": want, "entry": entry})
    return folder, folder, entry, source


def agreement(got, want) -> dict[str, float]:
    import numpy as np

    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
    return {"max_abs_diff": float(np.abs(got - want).max()), "min_cosine": float(cos.min())}


def render(report: dict) -> list[str]:
    onnx = report["onnx"]
    lines = [
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
    for note in report["notes"]:
        lines += ["", f"Note: {note}"]
    return lines


def measure_encode(
    settings,
    *,
    package: str | None,
    work: Path,
    sentences: int,
    batch_size: int,
    repeats: int,
    sts: bool,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Encode ``sentences`` distinct STS test sentences with every variant (see the module's doc)."""
    import torch

    import jtcse

    notes = list(notes or [])
    path, st_dir, entry, source = model_folder(settings, package, work)
    if not package:
        notes.append("no --package: the base model stands in for the distilled model (same architecture)")
    texts = sts_sentences(settings.data.sts_dir, sentences)
    encoders = {
        "jtcse_torch": jtcse.load(path, device="cpu"),
        "jtcse_onnx_float32": jtcse.load(path, backend="onnx", file_name=entry["float32"]),
        "jtcse_onnx_int8": jtcse.load(path, backend="onnx", file_name=entry["int8"]),
    }
    variants = {
        name: (lambda enc=enc: enc.encode(texts, batch_size=batch_size, show_progress_bar=False))
        for name, enc in encoders.items()
    }
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        notes.append("sentence-transformers is not installed: its row is missing")
    else:
        st = SentenceTransformer(str(st_dir), device="cpu")
        variants[REFERENCE] = lambda: st.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )
    vectors = {name: fn() for name, fn in variants.items()}  # warm-up, and the vectors compared below
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(common.time_call(variants[name])[0])
        log.info(
            "encode repeat %d/%d: %s",
            r + 1,
            repeats,
            ", ".join(f"{k} {len(texts) / v[-1]:.0f}/s" for k, v in times.items()),
        )
    rates = {name: len(texts) / common.median(t) for name, t in times.items()}
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
    by_key = {r["key"]: r for r in rows}
    report: dict[str, Any] = {
        "source": source,
        "folder": str(path),
        "onnx": {**entry, "size_mb": sizes},
        "sentences": len(texts),
        "batch_size": batch_size,
        "max_seq_length": encoders["jtcse_torch"].max_seq_length,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "torch_vs_sentence_transformers": by_key["jtcse_torch"]["vs_sentence_transformers"],
        "int8_vs_sentence_transformers": by_key["jtcse_onnx_int8"]["vs_sentence_transformers"],
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
    return report


def measure(ctx) -> dict[str, Any]:
    s = ctx.sizes
    return measure_encode(
        ctx.settings,
        package=ctx.package,
        work=ctx.work,
        sentences=s["encode_sentences"],
        batch_size=s["encode_batch"],
        repeats=s["encode_repeats"],
        sts=s["encode_sts"],
    )


def targets(e: dict) -> list[dict]:
    rows = [
        {
            "key": "jtcse_vs_st_encode",
            "what": "jtcse.load(...).encode rate / SentenceTransformer(...).encode rate, same folder",
            "value": e["torch_vs_sentence_transformers"],
            "op": ">=",
            "target": 1.0,
        },
        {
            "key": "onnx_int8_vs_st_encode",
            "what": 'jtcse.load(..., backend="onnx") int8 rate / SentenceTransformer torch rate',
            "value": e["int8_vs_sentence_transformers"],
            "op": ">=",
            "target": 2.0,
        },
    ]
    if "sts_int8_minus_float32" in e:
        rows.append(
            {
                "key": "int8_sts_loss",
                "what": "quality guard: |seven-task STS avg of int8 - float32| (points)",
                "value": abs(e["sts_int8_minus_float32"]),
                "op": "<=",
                "target": 0.5,
            }
        )
    return rows


def bars(e: dict) -> list[tuple[str, float]]:
    return [(f"{r['variant']} / sentence-transformers enc. rate", r["vs_sentence_transformers"]) for r in e["rows"][:3]]
