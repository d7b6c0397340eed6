"""Argument helpers shared by the sub-commands: the settings file, ``--set`` overrides, the device."""

from __future__ import annotations

import argparse


def add_params(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (default: auto = cuda if available)",
    )


def parse_assignment(text: str) -> tuple[str, object]:
    """``--set train.lr=2e-5``: a dotted key and a YAML value (the settings validate both on load)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a dotted key (train.lr=2e-5), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(
            f"{key}: value {raw!r} is not valid YAML ({getattr(err, 'problem', err)})"
        ) from err
    return key, value


def command_settings(args):
    """The settings of ``--params`` with the ``--set`` overrides; an error names the overrides too."""
    from jtcse.config import load_settings
    from jtcse.errors import ConfigError

    overrides = dict(getattr(args, "set", None) or [])
    try:
        return load_settings(args.params, overrides=overrides)
    except ConfigError as err:
        if not overrides:
            raise
        given = " ".join(f"--set {key}=..." for key in overrides)
        raise ConfigError(f"{err} (settings from {args.params} with {given})") from None
