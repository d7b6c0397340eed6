"""``jtcse evaluate``: the seven-task STS suite (Spearman x 100) or the SentEval transfer suite (accuracy x 100)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from jtcse.commands.common import add_device
from jtcse.errors import UserError

log = logging.getLogger("jtcse")


def _evaluation_encoder(args):
    from jtcse.api import load
    from jtcse.encoding import TowerEncoder, TwinEncoder

    encoder = load(args.model, pooling=args.pooling, device=args.device, max_length=args.max_length)
    if args.model_b:
        if not isinstance(encoder, TowerEncoder):
            raise UserError(f"--model-b: {args.model} is not a single tower")
        other = TowerEncoder.from_pretrained(args.model_b, args.pooling, args.max_length, args.device)
        encoder = TwinEncoder(encoder, other, args.combine, normalize=args.normalize)
    elif args.normalize:
        raise UserError("--normalize: only for a twin made of --model and --model-b")
    return encoder


def _transfer_evaluator(args):
    from jtcse.config import Settings, load_settings
    from jtcse.evaluation.transfer import TransferEvaluator

    # Outside a project (no params.yaml here) the documented defaults apply; an explicit --params must exist.
    if args.params:
        settings = load_settings(args.params)
    else:
        settings = load_settings("params.yaml") if Path("params.yaml").is_file() else Settings()
    return TransferEvaluator.from_settings(
        settings.transfer, batch_size=args.batch_size, data_dir=args.data_dir, show_progress=True
    )


def evaluate_command(args) -> None:
    from jtcse.evaluation.sts import STS_TASKS, STSEvaluator, format_table
    from jtcse.evaluation.transfer import TRANSFER_TASKS
    from jtcse.io import atomic_write_json, atomic_write_text, check_output_file

    check_output_file(args.output)
    started = time.perf_counter()
    if args.suite == "transfer":
        evaluator, tasks, unit = _transfer_evaluator(args), TRANSFER_TASKS, "accuracy"
    else:
        evaluator = STSEvaluator(args.data_dir or "data/sts", STS_TASKS, batch_size=args.batch_size, show_progress=True)
        tasks, unit = tuple(STS_TASKS), "spearman"
    encoder = _evaluation_encoder(args)
    results = {k: round(v, 4) for k, v in evaluator(encoder).items()}
    undefined = [task for task, value in results.items() if value != value]
    if undefined:
        raise UserError(
            f"{args.model}: Spearman is undefined (NaN) on {', '.join(undefined)}: the model gives every "
            "pair the same similarity (collapsed embeddings); nothing written"
        )
    name = args.name or Path(args.model).name
    print(format_table({name: results}, tasks=tasks))
    elapsed = time.perf_counter() - started
    if args.suite == "transfer":
        timings = evaluator.timings
        print(
            f"{args.suite} suite: {elapsed:.0f} s ({timings.sentences} distinct sentences encoded in "
            f"{timings.encode:.0f} s; probes " + ", ".join(f"{t} {s:.0f} s" for t, s in timings.probes.items()) + ")"
        )
    else:
        print(f"{args.suite} suite: {elapsed:.0f} s")
    atomic_write_json(args.output, results)
    log.info("metrics -> %s", args.output)
    if args.plot_data:
        rows = [f"{task},{results[task]}" for task in (*tasks, "avg") if task in results]
        atomic_write_text(args.plot_data, f"task,{unit}\n" + "\n".join(rows) + "\n")


def evaluate_command_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="seven-task STS evaluation (Spearman x 100) or SentEval transfer (accuracy x 100)"
    )
    p.add_argument(
        "--suite",
        choices=["sts", "transfer"],
        default="sts",
        help="sts (default): cosine Spearman on STS12-16, STS-B, SICK-R; transfer: logistic-regression "
        "probe on MR, CR, SUBJ, MPQA, SST2, TREC, MRPC",
    )
    p.add_argument(
        "--model", required=True, help="tower, twin folder, package, or any HF / sentence-transformers model"
    )
    p.add_argument("--model-b", help="second tower: evaluate --model and --model-b as a twin")
    p.add_argument(
        "--pooling", choices=["cls", "mean"], default=None, help="tower pooling (default: cls, or the model's own)"
    )
    p.add_argument(
        "--combine", choices=["sum", "concat"], default="sum", help="how a twin's vectors combine (default: sum)"
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="with --model-b: L2-normalise each tower's vector before combining, as train.twin_normalize does",
    )
    p.add_argument(
        "--data-dir",
        help="folder of the STS TSV files (default: data/sts) or of the transfer tasks (default: transfer.data_dir)",
    )
    p.add_argument("--params", help="settings file for the transfer suite (default: params.yaml if present)")
    p.add_argument("--output", required=True, help="JSON file of the per-task scores and their average")
    p.add_argument("--plot-data", help="also write a task,spearman (or task,accuracy) CSV (DVC bar plot)")
    p.add_argument("--name", help="row name in the printed table (default: the model folder's name)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per forward pass (default: 128)")
    p.add_argument("--max-length", type=int, default=128, help="truncation in tokens (default: 128)")
    add_device(p)
    p.set_defaults(func=evaluate_command)
