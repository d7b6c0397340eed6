"""The jtcse command line: one sub-command per pipeline stage (arguments mirror dvc.yaml's deps and outs), plus
encode and similarity for using a trained model. `jtcse COMMAND --help` describes each command."""

# The module doc is the --help text: plain text, no markup. This is the root only: each sub-command lives in
# jtcse/commands/ (one module per command or family), which never imports this module. Heavy libraries (torch,
# transformers, great-expectations, optuna) are imported inside the commands, so --help and --version answer
# at once.

from __future__ import annotations

import argparse
import logging
import os
import sys

from jtcse.commands.common import command_settings
from jtcse.commands.encode import encode_command_parser
from jtcse.commands.evaluate import evaluate_command_parser
from jtcse.commands.mteb import mteb_command_parser
from jtcse.commands.package import package_command_parser
from jtcse.commands.params import params_command_parser
from jtcse.commands.report import report_command_parser
from jtcse.commands.train import TRAINING_COMMANDS, train_command_parser
from jtcse.commands.tune import tune_command_parser
from jtcse.commands.validate import validate_command_parser

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: The sub-command families in the order `jtcse --help` lists them.
COMMAND_PARSERS = (
    validate_command_parser,
    train_command_parser,
    evaluate_command_parser,
    encode_command_parser,
    mteb_command_parser,
    package_command_parser,
    report_command_parser,
    params_command_parser,
    tune_command_parser,
)


def build_parser() -> argparse.ArgumentParser:
    from jtcse import __version__

    parser = argparse.ArgumentParser(
        prog="jtcse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"jtcse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in COMMAND_PARSERS:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun, only rank 0 logs progress
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from jtcse.errors import UserError
    from jtcse.io import no_space_error
    from jtcse.training.guards import TrainingInterrupted

    # Bad input (a file, a setting, an option; jtcse.errors.UserError) or a full disk: one line on stderr and exit
    # status 2 (the retrain flow reads 2 as "do not retry"). Anything else is a bug: its traceback stays, exit 1.
    try:
        if args.command in TRAINING_COMMANDS:
            from jtcse.training import distributed

            nproc = command_settings(args).runtime.nproc_per_node
            if nproc > 1 and not distributed.launched_by_torchrun():
                return distributed.relaunch(nproc, argv)
        args.func(args)
    except UserError as err:
        print(f"jtcse: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a full disk, however the library that hit it says so (jtcse.io.no_space_error)
        full = no_space_error(err)
        if full is None:
            raise
        where = f" writing {full.filename}" if full.filename else ""
        print(f"jtcse: error: no space left on device{where}; free some space and rerun", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:  # SIGTERM/SIGINT: a checkpoint was written; 128 + signal number
        print(f"jtcse {args.command}: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop: nothing half-written remains
        print(f"jtcse {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.command in TRAINING_COMMANDS:
            from jtcse.training import distributed

            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
