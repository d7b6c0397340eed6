"""``jtcse validate``: the great-expectations gate over the STS files and the corpus."""

from __future__ import annotations

import time
from pathlib import Path

from jtcse.commands.common import add_params, command_settings


def validate_command(args) -> None:
    from jtcse.data.validation import validate_data

    settings = command_settings(args)
    started = time.perf_counter()
    validate_data(
        Path(args.data_dir),
        corpus=Path(args.corpus or settings.data.corpus),
        docs_dir=args.docs_dir,
        report=args.report,
        min_words=settings.validate_data.min_words,
        max_words=settings.validate_data.max_words,
    )
    print(f"data valid ({time.perf_counter() - started:.1f} s); report -> {args.report}")


def validate_command_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="great-expectations gate over the STS files and the corpus")
    add_params(p)
    p.add_argument("--data-dir", default="data", help="the DVC-tracked data folder (default: data)")
    p.add_argument("--corpus", help="corpus file (default: data.corpus of --params)")
    p.add_argument("--docs-dir", help="write Data Docs HTML here")
    p.add_argument("--report", help="write a JSON summary here")
    p.set_defaults(func=validate_command)
