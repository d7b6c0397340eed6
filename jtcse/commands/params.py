"""``jtcse params-apply``: write a settings overlay's values (params-gpu.yaml) into the params file DVC reads."""

from __future__ import annotations


def params_apply_command(args) -> None:
    from jtcse.config import overlay_values
    from jtcse.tuning.apply import apply_best

    changes = apply_best(overlay_values(args.overlay), args.params)  # logs each change
    print(f"{args.params}: {len(changes)} value(s) of {args.overlay} written" if changes else "nothing to change")


def params_command_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "params-apply",
        help="write a settings overlay's values (params-gpu.yaml) into params.yaml, comments kept",
        description="DVC reads its stages' settings from params.yaml alone: to run the pipeline on an overlay "
        "(a settings file whose `extends:` names params.yaml, e.g. params-gpu.yaml), write the values it sets into "
        "params.yaml, then `dvc repro`. The result is validated before it replaces the file; "
        "`git checkout params.yaml` goes back.",
    )
    p.add_argument("overlay", help="the overlay settings file (top-level `extends:`), e.g. params-gpu.yaml")
    p.add_argument("--params", default="params.yaml", help="the file to write into (default: params.yaml)")
    p.set_defaults(func=params_apply_command)
