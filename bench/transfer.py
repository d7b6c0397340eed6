"""Transfer benchmark: the SentEval table (accuracy x 100, logistic-regression probe) of every model the method
compares, with the time each model's suite takes.

A row is ``name=PATH`` or ``name=PATH@POOLING``: a model folder (twin or single tower) or a base checkpoint
name, evaluated here with the ``transfer`` settings of the params file; or ``name=FILE.json``, the metrics a
``dvc repro`` transfer stage wrote with the same settings (read, not recomputed; no time column). The default rows are the make-run
profile's models: the base (cls and mean pooling), the SimCSE tower and the TNCSE twin of
``bench/quality.py``/``bench/ablation.py``'s seed-1 work dir, and the pipeline's JTCSE twin and JTCSE-D tower
(``dvc repro``'s models/). The seed-1 SimCSE tower is the pipeline's tower A (same settings and seed).

    python bench/transfer.py --reuse-dir runs/bench/transfer                  # the default rows
    python bench/transfer.py --rows tncse=runs/bench/quality/seed1/ablation_tncse --reuse-dir runs/bench/transfer

With ``--reuse-dir`` each finished row is kept (keyed by its model, pooling and settings), so an interrupted
run resumes at the next row. Writes bench/results/transfer.json and transfer.md (atomically).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from bench.quality import ROW_BY_KEY  # noqa: E402  (row labels: the same models as the quality table)

log = logging.getLogger("bench.transfer")

QUALITY_SEED1 = "runs/bench/quality/seed1"
DEFAULT_ROWS = (
    "base_cls=metrics/base/transfer.json",
    "base_mean=@base@mean",
    f"simcse={QUALITY_SEED1}/tower_a",
    f"tncse={QUALITY_SEED1}/ablation_tncse",
    "jtcse=metrics/twin/transfer.json",
    "jtcse_d=metrics/distilled/transfer.json",
)


def parse_row(item: str, base: str, default_pooling: str) -> tuple[str, str, str]:
    """``name=PATH[@POOLING]`` -> (name, model, pooling); ``@base`` stands for the params file's model.base."""
    name, sep, spec = item.partition("=")
    if not sep or not name.strip() or not spec.strip():
        raise SystemExit(f"--rows expects name=PATH[@POOLING], got {item!r}")
    if spec.startswith("@base"):
        spec = base + spec[len("@base") :]
    model, _, pooling = spec.partition("@")
    if model.endswith(".json"):
        return name.strip(), model, "-"
    pooling = pooling or default_pooling
    if pooling not in ("cls", "mean"):
        raise SystemExit(f"--rows {name}: pooling must be cls or mean, got {pooling!r}")
    return name.strip(), model, pooling


def fingerprint(model: str, pooling: str, settings) -> str:
    """What a cached row depends on: the model's weights (by file size and mtime), pooling and the settings."""
    path = Path(model)
    files = (
        sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*.safetensors"))
        if path.is_dir()
        else []
    )
    payload = {
        "model": model,
        "pooling": pooling,
        "files": files,
        "transfer": settings.transfer.model_dump(mode="json"),
        "max_length": settings.evaluate.max_length,
        "batch_size": settings.evaluate.batch_size,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cap(max_train: int | None) -> str:
    return "full probe training sets" if max_train is None else f"probe training sets capped at {max_train} examples"


def render_markdown(report: dict) -> str:
    from jtcse.evaluation.transfer import TRANSFER_TASKS

    tasks = [t for t in TRANSFER_TASKS if t in report["tasks"]]
    lines = [
        "# SentEval transfer (accuracy x 100)",
        "",
        f"Base `{report['base']}`; logistic-regression probe, {report['settings']['folds']}-fold CV for MR/CR/SUBJ/"
        f"MPQA (inner {report['settings']['inner_folds']}-fold C choice), official splits for SST2/TREC/MRPC; "
        f"{_cap(report['settings']['max_train'])}; commit "
        f"`{report['environment'].get('git_commit', '?')}`; {report['environment'].get('created', '')}.",
        "",
        "| row | model | pooling | " + " | ".join(t.upper() for t in tasks) + " | avg | suite s |",
        "|---|---|---|" + "---:|" * (len(tasks) + 2),
    ]
    for row in report["rows"]:
        scores = row["scores"]
        cells = " | ".join(f"{scores[t]:.2f}" for t in tasks)
        label = ROW_BY_KEY[row["name"]].label if row["name"] in ROW_BY_KEY else row["name"]
        seconds = "from dvc repro" if row["seconds"] is None else f"{row['seconds']:.0f}"
        lines.append(
            f"| {label} | `{row['model']}` | {row['pooling']} | {cells} | **{scores['avg']:.2f}** | {seconds} |"
        )
    lines += [
        "",
        "Suite time: encoding every distinct sentence once plus the seven probes, on this machine "
        f"({report['environment'].get('cpu_count', '?')} CPU threads).",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict:
    from jtcse.api import load
    from jtcse.evaluation.transfer import TransferEvaluator
    from jtcse.io import atomic_write_json, atomic_write_text

    settings, overrides = common.run_settings(args)
    cfg = settings.transfer
    rows = [parse_row(r, settings.model.base, settings.model.pooling) for r in (args.rows or DEFAULT_ROWS)]
    missing = [m for _, m, _ in rows if m != settings.model.base and not Path(m).exists()]
    if any(m.endswith(".json") for m in missing):
        raise SystemExit(f"--rows: metrics file(s) not found: {', '.join(missing)} (run dvc repro first)")
    if missing:
        raise SystemExit(
            f"--rows: model folder(s) not found: {', '.join(missing)} (train them first: dvc repro, "
            "bench/ablation.py --cells tncse --reuse-dir runs/bench/quality)"
        )
    evaluator = TransferEvaluator.from_settings(cfg, batch_size=settings.evaluate.batch_size)
    out = Path(args.out)
    results: list[dict] = []
    with common.work_dir(args.reuse_dir, "jtcse-transfer-") as work:
        for i, (name, model, pooling) in enumerate(rows, start=1):
            if model.endswith(".json"):
                scores = json.loads(Path(model).read_text(encoding="utf-8"))
                log.info("[%d/%d] %s: read %s", i, len(rows), name, model)
                results.append({"name": name, "model": model, "pooling": "-", "scores": scores, "seconds": None})
                continue
            key = fingerprint(model, pooling, settings)
            cache = work / f"{name}.json"
            cached = json.loads(cache.read_text()) if cache.is_file() else None
            if cached and cached.get("fingerprint") == key:
                log.info("[%d/%d] %s: reused %s", i, len(rows), name, cache)
                results.append(cached)
                continue
            log.info("[%d/%d] %s: %s (%s pooling)", i, len(rows), name, model, pooling)
            started = time.perf_counter()
            encoder = load(
                model, pooling=pooling, device=settings.runtime.device, max_length=settings.evaluate.max_length
            )
            scores = {k: round(v, 4) for k, v in evaluator(encoder).items()}
            record = {
                "name": name,
                "model": model,
                "pooling": pooling,
                "fingerprint": key,
                "scores": scores,
                "seconds": round(time.perf_counter() - started, 1),
                "encode_seconds": round(evaluator.timings.encode, 1),
                "sentences": evaluator.timings.sentences,
                "probe_seconds": {t: round(s, 1) for t, s in evaluator.timings.probes.items()},
            }
            atomic_write_json(cache, record)
            log.info("%s: avg %.2f in %.0f s", name, scores["avg"], record["seconds"])
            results.append(record)
    report = {
        "benchmark": "transfer",
        "command": " ".join(sys.argv) if __name__ == "__main__" else None,
        "params_file": str(args.params),
        "overrides": overrides,
        "base": settings.model.base,
        "tasks": list(cfg.tasks),
        "settings": cfg.model_dump(mode="json"),
        "environment": common.environment(),
        "rows": results,
    }
    atomic_write_json(out / "transfer.json", report)
    atomic_write_text(out / "transfer.md", render_markdown(report))
    log.info("wrote %s and %s", out / "transfer.json", out / "transfer.md")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = common.training_bench_parser(
        __doc__,
        set_help="override a setting, dotted key, YAML value (repeatable), e.g. transfer.max_train=null",
        profile=False,
    )
    p.add_argument(
        "--rows", nargs="+", help="name=PATH[@POOLING] rows (@base = model.base); default: " + " ".join(DEFAULT_ROWS)
    )
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument("--reuse-dir", help="persistent work dir: finished rows are kept, e.g. runs/bench/transfer")
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
