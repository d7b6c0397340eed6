"""The ``jtcse`` command line: one sub-command per pipeline stage, arguments mirroring dvc.yaml's deps/outs."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("jtcse")

#: Sub-commands that train; with runtime.nproc_per_node > 1 they relaunch themselves under torchrun.
TRAINING_COMMANDS = ("train-tower", "train", "distill")


def _settings(args):
    from jtcse.config import load_settings

    return load_settings(args.params)


def _add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")


def _add_run_args(p: argparse.ArgumentParser, output_help: str) -> None:
    _add_params(p)
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--checkpoint-dir", help="resumable checkpoints (default: checkpoints/<output name>)")
    p.add_argument("--metrics-dir", help="train.csv / eval.csv / summary.json for DVC plots and metrics")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")


def _checkpoint_dir(args) -> Path:
    return Path(args.checkpoint_dir) if args.checkpoint_dir else Path("checkpoints") / Path(args.output).name


def _report_training(name: str, result, output: str) -> None:
    from jtcse.training import distributed

    if distributed.is_main():  # under torchrun, one line for the run, not one per process
        print(f"{name}: STS-B dev {result.initial_metric:.2f} -> best {result.best_metric:.2f} "
              f"(step {result.best_step}) in {result.seconds / 60:.1f} min; saved to {output}")


def cmd_train_tower(args) -> None:
    from jtcse.training.stages import train_tower

    result = train_tower(_settings(args), which=args.tower, output=args.output, checkpoint_dir=_checkpoint_dir(args),
                         metrics_dir=args.metrics_dir, init=args.init, resume=not args.no_resume)
    _report_training(f"tower {args.tower}", result, args.output)


def cmd_train(args) -> None:
    from jtcse.training.stages import train_twin

    result = train_twin(_settings(args), tower_a=args.tower_a, tower_b=args.tower_b, output=args.output,
                        checkpoint_dir=_checkpoint_dir(args), metrics_dir=args.metrics_dir, resume=not args.no_resume)
    _report_training("jtcse twin", result, args.output)


def cmd_distill(args) -> None:
    from jtcse.training.stages import distill_twin

    result = distill_twin(_settings(args), twin=args.twin, output=args.output, checkpoint_dir=_checkpoint_dir(args),
                          metrics_dir=args.metrics_dir, resume=not args.no_resume)
    _report_training("jtcse-d", result, args.output)


def _evaluation_encoder(args):
    from jtcse.api import load
    from jtcse.encoding import TowerEncoder, TwinEncoder

    encoder = load(args.model, pooling=args.pooling, device=args.device, max_length=args.max_length)
    if args.model_b:
        if not isinstance(encoder, TowerEncoder):
            raise SystemExit(f"--model-b: {args.model} is not a single tower")
        other = TowerEncoder.from_pretrained(args.model_b, args.pooling, args.max_length, args.device)
        encoder = TwinEncoder(encoder, other, args.combine)
    return encoder


def _transfer_evaluator(args):
    from jtcse.config import Settings, load_settings
    from jtcse.evaluation.transfer import TransferEvaluator

    # Outside a project (no params.yaml here) the documented defaults apply; an explicit --params must exist.
    if args.params:
        settings = load_settings(args.params)
    else:
        settings = load_settings("params.yaml") if Path("params.yaml").is_file() else Settings()
    cfg = settings.transfer
    return TransferEvaluator(args.data_dir or cfg.data_dir, cfg.tasks, batch_size=args.batch_size, folds=cfg.folds,
                             inner_folds=cfg.inner_folds, seed=cfg.seed, max_iter=cfg.max_iter,
                             mrpc_features=cfg.mrpc_features, max_train=cfg.max_train, jobs=cfg.jobs,
                             show_progress=True)


def cmd_evaluate(args) -> None:
    from jtcse.evaluation.sts import STS_TASKS, STSEvaluator, format_table
    from jtcse.evaluation.transfer import TRANSFER_TASKS
    from jtcse.io import atomic_write_json, atomic_write_text

    started = time.perf_counter()
    if args.suite == "transfer":
        evaluator, tasks, unit = _transfer_evaluator(args), TRANSFER_TASKS, "accuracy"
    else:
        evaluator = STSEvaluator(args.data_dir or "data/sts", STS_TASKS, batch_size=args.batch_size, show_progress=True)
        tasks, unit = tuple(STS_TASKS), "spearman"
    encoder = _evaluation_encoder(args)
    results = {k: round(v, 4) for k, v in evaluator(encoder).items()}
    name = args.name or Path(args.model).name
    print(format_table({name: results}, tasks=tasks))
    elapsed = time.perf_counter() - started
    if args.suite == "transfer":
        timings = evaluator.timings
        print(f"{args.suite} suite: {elapsed:.0f} s ({timings.sentences} distinct sentences encoded in "
              f"{timings.encode:.0f} s; probes " + ", ".join(f"{t} {s:.0f} s" for t, s in timings.probes.items()) + ")")
    else:
        print(f"{args.suite} suite: {elapsed:.0f} s")
    atomic_write_json(args.output, results)
    log.info("metrics -> %s", args.output)
    if args.plot_data:
        rows = [f"{task},{results[task]}" for task in (*tasks, "avg") if task in results]
        atomic_write_text(args.plot_data, f"task,{unit}\n" + "\n".join(rows) + "\n")


def cmd_encode(args) -> None:
    import numpy as np

    from jtcse.api import load
    from jtcse.data import DataError

    path = Path(args.input)
    lines = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                lines.append(raw.decode("utf-8").rstrip("\r\n"))
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 ({err.reason})") from None
    encoder = load(args.model, pooling=args.pooling, device=args.device)
    vectors = encoder.encode(lines, batch_size=args.batch_size, normalize=args.normalize, show_progress=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, out)
    print(f"{len(lines)} sentences -> {out} {vectors.shape}")


def cmd_similarity(args) -> None:
    from jtcse.api import load

    encoder = load(args.model, pooling=args.pooling, device=args.device)
    a, b = encoder.encode([args.sentence_a, args.sentence_b], normalize=True)
    print(f"{float(a @ b):.4f}")


def cmd_validate(args) -> None:
    from jtcse.validation import validate_data

    settings = _settings(args)
    started = time.perf_counter()
    validate_data(Path(args.data_dir), corpus=Path(args.corpus or settings.data.corpus), docs_dir=args.docs_dir,
                  report=args.report, min_words=settings.validate_data.min_words,
                  max_words=settings.validate_data.max_words)
    print(f"data valid ({time.perf_counter() - started:.1f} s); report -> {args.report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jtcse", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="great-expectations gate over the STS files and the corpus")
    _add_params(p)
    p.add_argument("--data-dir", default="data", help="the DVC-tracked data folder")
    p.add_argument("--corpus", help="corpus file (default: data.corpus)")
    p.add_argument("--docs-dir", help="write Data Docs HTML here")
    p.add_argument("--report", help="write a JSON summary here")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train-tower", help="stage 1: unsupervised SimCSE on one tower")
    _add_run_args(p, "folder for the best tower (HF format)")
    p.add_argument("--tower", choices=["a", "b"], required=True, help="which tower (picks pretrain.seed_a / seed_b)")
    p.add_argument("--init", help="start from this checkpoint instead of model.base")
    p.set_defaults(func=cmd_train_tower)

    p = sub.add_parser("train", help="stage 2: joint JTCSE training of the twin")
    _add_run_args(p, "folder for the best twin (tower_a/, tower_b/, twin.json)")
    p.add_argument("--tower-a", required=True, help="stage-1 tower A")
    p.add_argument("--tower-b", required=True, help="stage-1 tower B")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="stage 3: distil the twin into one tower (JTCSE-D)")
    _add_run_args(p, "folder for the best student tower (HF format)")
    p.add_argument("--twin", required=True, help="trained twin folder")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="seven-task STS evaluation (Spearman x 100) or SentEval transfer (accuracy x 100)")
    p.add_argument("--suite", choices=["sts", "transfer"], default="sts",
                   help="sts (default): cosine Spearman on STS12-16, STS-B, SICK-R; transfer: logistic-regression "
                        "probe on MR, CR, SUBJ, MPQA, SST2, TREC, MRPC")
    p.add_argument("--model", required=True, help="tower, twin folder, package, or any HF / sentence-transformers model")
    p.add_argument("--model-b", help="second tower: evaluate --model and --model-b as a twin")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="tower pooling (default: cls, or the model's own)")
    p.add_argument("--combine", choices=["sum", "concat"], default="sum", help="how a twin's vectors combine")
    p.add_argument("--data-dir", help="folder of the STS TSV files (default data/sts) or of the transfer tasks "
                                      "(default: transfer.data_dir)")
    p.add_argument("--params", help="settings file for the transfer suite (default: params.yaml if present)")
    p.add_argument("--output", required=True, help="JSON file of the per-task scores and their average")
    p.add_argument("--plot-data", help="also write a task,spearman (or task,accuracy) CSV (DVC bar plot)")
    p.add_argument("--name", help="row name in the printed table")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("encode", help="encode a text file (one sentence per line) to a .npy matrix")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--pooling", choices=["cls", "mean"], default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--normalize", action="store_true", help="unit-length vectors")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("similarity", help="cosine similarity of two sentences")
    p.add_argument("sentence_a")
    p.add_argument("sentence_b")
    p.add_argument("--model", required=True)
    p.add_argument("--pooling", choices=["cls", "mean"], default=None)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_similarity)

    from jtcse.mteb_adapter import register_cli as register_mteb
    from jtcse.packaging import register_cli as register_packaging
    from jtcse.tuning import register_cli as register_tuning

    register_mteb(sub)
    register_packaging(sub)
    register_tuning(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, only rank 0 logs progress
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from jtcse.api import IntegrityError
    from jtcse.config import ConfigError
    from jtcse.data import DataError
    from jtcse.validation import DataValidationError

    # Bad input, bad settings or a tampered package: one line on stderr and exit status 2 (the retrain flow
    # reads 2 as "do not retry").
    known = (ConfigError, DataError, DataValidationError, IntegrityError, FileNotFoundError, ValueError)
    try:
        if args.command in TRAINING_COMMANDS:
            from jtcse.training import distributed

            nproc = _settings(args).runtime.nproc_per_node
            if nproc > 1 and not distributed.launched_by_torchrun():
                return distributed.relaunch(nproc, argv)
        args.func(args)
    except known as err:
        print(f"jtcse {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.command in TRAINING_COMMANDS:
            from jtcse.training import distributed

            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
