"""``jtcse tune``, ``tune-worker``, ``tune-report`` and ``tune-apply``: the Optuna search (:mod:`jtcse.tuning`)."""

from __future__ import annotations

import argparse
import os
import sys

from jtcse.commands.common import add_params
from jtcse.tuning.settings import BEST_FILE, DEFAULT_TOWER_A, DEFAULT_TOWER_B


def _tune_options(p: argparse.ArgumentParser, *, towers: bool = True) -> None:
    add_params(p)
    if towers:
        p.add_argument("--tower-a", default=DEFAULT_TOWER_A, help=f"stage-1 tower A (default: {DEFAULT_TOWER_A})")
        p.add_argument("--tower-b", default=DEFAULT_TOWER_B, help=f"stage-1 tower B (default: {DEFAULT_TOWER_B})")
    p.add_argument("--n-trials", type=int, help="finished trials the study should hold (default: tune.n_trials)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study (default: tune.storage)")
    p.add_argument("--study-name", help="study name (default: tune.study_name)")


def _settings_from(args):
    from jtcse.config import load_settings
    from jtcse.tuning import with_overrides

    settings = load_settings(args.params)
    return with_overrides(
        settings,
        n_trials=args.n_trials,
        storage=args.storage,
        study_name=args.study_name,
        workers=getattr(args, "workers", None) if args.command == "tune" else None,
    )


def tune_command(args) -> None:
    from jtcse.tuning import TuningError, TuningInterrupted, run_study

    settings = _settings_from(args)
    try:
        report = run_study(
            settings,
            tower_a=args.tower_a,
            tower_b=args.tower_b,
            output_dir=args.output_dir,
            subprocesses=args.subprocesses or None,
        )
    except TuningError as err:
        print(f"jtcse tune: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except TuningInterrupted as stop:
        print(f"jtcse tune: {stop}", file=sys.stderr)
        raise SystemExit(stop.exit_status) from None
    print(report.summary.split("\n## Trials")[0].rstrip())
    print("\n" + "\n".join(f"{name}: {path}" for name, path in report.files.items()))


def tune_worker_command(args) -> None:
    from jtcse.tuning import check_data, check_towers, prepare_study, resolve_tower, run_worker

    settings = _settings_from(args)
    if not args.no_create:
        check_towers(settings, resolve_tower(args.tower_a), resolve_tower(args.tower_b))
        check_data(settings)
        prepare_study(settings)
    run_worker(
        settings,
        tower_a=resolve_tower(args.tower_a),
        tower_b=resolve_tower(args.tower_b),
        worker_index=args.worker_index,
        workers=args.workers,
        progress=os.environ.get("TQDM_DISABLE") != "1",
    )


def tune_report_command(args) -> None:
    from jtcse.tuning import write_report

    report = write_report(_settings_from(args), args.output_dir)
    print(report.summary.split("\n## Trials")[0].rstrip())


def tune_apply_command(args) -> None:
    from jtcse.tuning import apply_best

    changes = apply_best(args.best, args.params)
    if not changes:
        print(f"{args.params} already holds the values of {args.best}")
    for dotted, (old, new) in changes.items():
        print(f"{dotted}: {old} -> {new}")
    if changes:
        print(f"{args.params} updated; `dvc repro` retrains with the tuned values")


def tune_command_parser(subparsers) -> None:
    """Add ``tune``, ``tune-worker``, ``tune-report`` and ``tune-apply``."""
    p = subparsers.add_parser("tune", help="Optuna search over the twin's loss weights (resumable, several workers)")
    _tune_options(p)
    p.add_argument("--workers", type=int, help="worker processes sharing the study (default: tune.workers)")
    p.add_argument("--output-dir", default="tune", help="best_params.yaml, summary.md, plots, logs (default: tune/)")
    p.add_argument("--subprocesses", action="store_true", help="run even a single worker as a separate process")
    p.set_defaults(func=tune_command)

    p = subparsers.add_parser(
        "tune-worker", help="one more worker for a study (e.g. on another machine, PostgreSQL storage)"
    )
    _tune_options(p)
    p.add_argument("--worker-index", type=int, default=0, help="distinct per worker of a machine: seeds its sampler")
    p.add_argument(
        "--workers", type=int, default=1, help="workers on this machine: the CPU threads are split among them"
    )
    p.add_argument("--no-create", action="store_true", help="the study exists already (set by `jtcse tune`)")
    p.set_defaults(func=tune_worker_command)

    p = subparsers.add_parser("tune-report", help="write best_params.yaml, summary.md and plots of a study")
    _tune_options(p, towers=False)
    p.add_argument("--output-dir", default="tune", help="where to write (default: tune/)")
    p.set_defaults(func=tune_report_command)

    p = subparsers.add_parser("tune-apply", help="write a study's best values into params.yaml (comments kept)")
    p.add_argument("--best", default=f"tune/{BEST_FILE}", help=f"best parameters (default: tune/{BEST_FILE})")
    p.add_argument("--params", default="params.yaml", help="settings file to update (default: params.yaml)")
    p.set_defaults(func=tune_apply_command)
