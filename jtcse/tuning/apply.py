"""``tune-apply``: write a study's best values into params.yaml, comments and layout kept, validated first."""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml

from jtcse.config import settings_from_dict
from jtcse.errors import ConfigError, InputNotFoundError
from jtcse.io import atomic_write_text
from jtcse.tuning.settings import dotted_get

log = logging.getLogger("jtcse.tuning")


def _yaml_float(value: float) -> str:
    """A float in a form every YAML reader (PyYAML's YAML 1.1 too) reads back as a float: 1.0e-05, not 1e-05."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        if exponent[0] not in "+-":
            exponent = "+" + exponent
        text = f"{mantissa}e{exponent}"
    elif "." not in text:
        text += ".0"
    return text


def _round_trip_yaml():
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        pass

    Representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    Representer.add_representer(float, lambda r, v: r.represent_scalar("tag:yaml.org,2002:float", _yaml_float(v)))
    handler = YAML(typ="rt")
    handler.Representer = Representer
    handler.preserve_quotes = True
    handler.width = 4096
    handler.indent(mapping=2, sequence=4, offset=2)
    return handler


def read_best_params(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: not found; run `jtcse tune` first")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of dotted keys to values")
    values = {k: v for k, v in raw.items() if not str(k).startswith("_")}
    for key, value in values.items():
        if not isinstance(key, str) or "." not in key or isinstance(value, (dict, list)):
            raise ConfigError(f"{path}: {key!r}: expected a dotted setting (train.w_tm) with a single value")
    return values


def apply_best(
    best: str | os.PathLike | dict[str, Any], params: str | os.PathLike = "params.yaml"
) -> dict[str, tuple[Any, Any]]:
    """Write the best values into ``params`` (comments and layout kept; atomic); return key -> (old, new).

    The edited file is validated before it replaces the original: an invalid value leaves params.yaml as it was.
    """
    values = read_best_params(best) if not isinstance(best, dict) else dict(best)
    params = Path(params)
    if not params.is_file():
        raise InputNotFoundError(f"{params}: not found")
    handler = _round_trip_yaml()
    original = params.read_text(encoding="utf-8")
    tree = handler.load(original)
    if tree is None:
        from ruamel.yaml.comments import CommentedMap

        tree = CommentedMap()
    changes: dict[str, tuple[Any, Any]] = {}
    for dotted, value in values.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for key in parents:
            if key not in node or node[key] is None:
                from ruamel.yaml.comments import CommentedMap

                node[key] = CommentedMap()
            node = node[key]
            if not hasattr(node, "keys"):
                raise ConfigError(f"{params}: {dotted}: '{key}' is not a section")
        old = node.get(leaf)
        if leaf in node and old == value and isinstance(old, bool) == isinstance(value, bool):
            continue
        node[leaf] = value
        changes[dotted] = (old, value)
    buffer = io.StringIO()
    handler.dump(tree, buffer)
    text = buffer.getvalue()
    settings = settings_from_dict(yaml.safe_load(text), str(params))  # refuse to write an invalid file
    for dotted, value in values.items():
        got = dotted_get(settings, dotted)
        if got != value and not (isinstance(value, float) and math.isclose(got, value, rel_tol=1e-12)):
            raise ConfigError(f"{params}: {dotted}: wrote {value!r} but it reads back as {got!r}")
    if text != original:
        atomic_write_text(params, text)  # keeps the file's permission bits
    for dotted, (old, new) in changes.items():
        log.info("%s: %s: %s -> %s", params, dotted, old, new)
    return changes
