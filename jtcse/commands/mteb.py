"""``jtcse mteb``: mteb's own evaluation of a model (:mod:`jtcse.evaluation.mteb_adapter`; needs the ``[mteb]`` extra)."""

from __future__ import annotations

from jtcse.commands.common import add_device
from jtcse.errors import InputNotFoundError, UserError


def _is_offline_miss(err: BaseException) -> bool:
    text = f"{type(err).__name__}: {err}"
    return any(
        marker in text
        for marker in (
            "offline",
            "OfflineModeIsEnabled",
            "LocalEntryNotFound",
            "Couldn't reach",
            "couldn't be found on the Hugging Face Hub",
            "is not cached",
        )
    )


def mteb_command(args) -> None:
    from jtcse.evaluation.mteb_adapter import MTEBEncoder, require_mteb, resolve_tasks, run_mteb
    from jtcse.formats import resolve_model_path

    try:
        require_mteb()
    except ImportError as err:  # an absent optional extra is a set-up problem, not a bug: one line, status 2
        raise UserError(str(err)) from None
    tasks = resolve_tasks(args.tasks)
    model = MTEBEncoder.from_path(
        resolve_model_path(args.model),
        pooling=args.pooling,
        device=args.device,
        max_length=args.max_length,
        batch_size=args.batch_size,
        name=args.name,
    )
    try:
        scores = run_mteb(model, tasks, args.output, batch_size=args.batch_size)
    except Exception as err:  # datasets raises several types when the hub is offline and nothing is cached
        if _is_offline_miss(err):
            raise InputNotFoundError(
                f"an MTEB dataset is not in the local Hugging Face cache and the hub is offline "
                f"(jtcse never downloads at run time): {str(err).splitlines()[0]}"
            ) from None
        raise
    print("| task | main score x 100 |\n|---|---:|")
    for task, score in scores.items():
        print(f"| {task} | {score:.2f} |")
    print(f"results -> {args.output} (mteb's layout; summary.json lists the main scores)")


def mteb_command_parser(subparsers) -> None:
    p = subparsers.add_parser("mteb", help="run mteb's own evaluation (needs the [mteb] extra and cached datasets)")
    p.add_argument(
        "--model", required=True, help="tower, twin folder, package, or any HF / sentence-transformers model"
    )
    p.add_argument(
        "--tasks", nargs="+", required=True, help="MTEB task names, e.g. STSBenchmark Banking77Classification"
    )
    p.add_argument("--output", required=True, help="results folder (mteb's layout) and summary.json")
    p.add_argument("--pooling", choices=["cls", "mean"], default=None, help="tower pooling (default: the model's own)")
    p.add_argument("--max-length", type=int, default=None, help="truncation (default: the model's own, else 128)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass (default: 64)")
    p.add_argument("--name", help="model name in the results (default: the folder name)")
    add_device(p)
    p.set_defaults(func=mteb_command)
