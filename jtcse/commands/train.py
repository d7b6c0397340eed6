"""``jtcse train-tower``, ``train`` and ``distill``: the three training stages."""

from __future__ import annotations

import argparse
from pathlib import Path

from jtcse.commands.common import add_params, command_settings, parse_assignment

#: Sub-commands that train; with runtime.nproc_per_node > 1 they relaunch themselves under torchrun.
TRAINING_COMMANDS = ("train-tower", "train", "distill")


def _add_run_args(p: argparse.ArgumentParser, output_help: str) -> None:
    add_params(p)
    p.add_argument("--output", required=True, help=output_help)
    p.add_argument("--checkpoint-dir", help="resumable checkpoints (default: checkpoints/<output name>)")
    p.add_argument("--metrics-dir", help="train.csv / eval.csv / summary.json for DVC plots and metrics")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if checkpoints exist")
    p.add_argument(
        "--set",
        action="append",
        type=parse_assignment,
        metavar="KEY=VALUE",
        help="override one setting of --params for this run, e.g. --set train.lr=2e-5 (dotted key, "
        "YAML value; repeatable). Outside DVC only: in the pipeline use `dvc exp run -S`.",
    )


def _checkpoint_dir(args) -> Path:
    return Path(args.checkpoint_dir) if args.checkpoint_dir else Path("checkpoints") / Path(args.output).name


def _report_training(name: str, result, output: str) -> None:
    from jtcse.training import distributed

    if distributed.is_main():  # under torchrun, one line for the run, not one per process
        print(
            f"{name}: STS-B dev {result.initial_metric:.2f} -> best {result.best_metric:.2f} "
            f"(step {result.best_step}) in {result.seconds / 60:.1f} min; saved to {output}"
        )


def train_tower_command(args) -> None:
    from jtcse.training.stages import train_tower

    result = train_tower(
        command_settings(args),
        which=args.tower,
        output=args.output,
        checkpoint_dir=_checkpoint_dir(args),
        metrics_dir=args.metrics_dir,
        init=args.init,
        resume=not args.no_resume,
    )
    _report_training(f"tower {args.tower}", result, args.output)


def train_command(args) -> None:
    from jtcse.training.stages import train_twin

    result = train_twin(
        command_settings(args),
        tower_a=args.tower_a,
        tower_b=args.tower_b,
        output=args.output,
        checkpoint_dir=_checkpoint_dir(args),
        metrics_dir=args.metrics_dir,
        resume=not args.no_resume,
    )
    _report_training("jtcse twin", result, args.output)


def distill_command(args) -> None:
    from jtcse.training.stages import distill_twin

    result = distill_twin(
        command_settings(args),
        twin=args.twin,
        output=args.output,
        checkpoint_dir=_checkpoint_dir(args),
        metrics_dir=args.metrics_dir,
        resume=not args.no_resume,
    )
    _report_training("jtcse-d", result, args.output)


def train_command_parser(subparsers) -> None:
    """Add ``train-tower``, ``train`` and ``distill``."""
    p = subparsers.add_parser("train-tower", help="stage 1: unsupervised SimCSE on one tower")
    _add_run_args(p, "folder for the best tower (HF format)")
    p.add_argument(
        "--tower", choices=["a", "b"], required=True, help="which tower (its own settings: pretrain.tower_a / tower_b)"
    )
    p.add_argument("--init", help="start from this checkpoint instead of model.base")
    p.set_defaults(func=train_tower_command)

    p = subparsers.add_parser("train", help="stage 2: joint JTCSE training of the twin")
    _add_run_args(p, "folder for the best twin (tower_a/, tower_b/, twin.json)")
    p.add_argument("--tower-a", required=True, help="stage-1 tower A")
    p.add_argument("--tower-b", required=True, help="stage-1 tower B")
    p.set_defaults(func=train_command)

    p = subparsers.add_parser("distill", help="stage 3: distil the twin into one tower (JTCSE-D)")
    _add_run_args(p, "folder for the best student tower (HF format)")
    p.add_argument("--twin", required=True, help="trained twin folder")
    p.set_defaults(func=distill_command)
