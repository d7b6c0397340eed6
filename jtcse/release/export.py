"""A trained model as shipped: the distilled tower in the portable sentence-transformers layout (HF weights at the
root, ``modules.json`` = Transformer + Pooling) and the twin folder as it is, never a pickled file.
:mod:`jtcse.release.packaging` assembles the release from these."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jtcse.errors import InputNotFoundError, UserError
from jtcse.formats import TWIN_MANIFEST
from jtcse.io import atomic_write_json

POOLING_DIR = "1_Pooling"
#: sentence-transformers metadata that the export writes itself (never copied from the source folder).
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "README.md")
#: Pickled weights or training state: never shipped (a loader would have to unpickle them).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def library_versions() -> dict[str, str]:
    """The versions of jtcse, PyTorch and transformers, as recorded in a package."""
    import torch
    import transformers

    import jtcse

    return {"jtcse": jtcse.__version__, "pytorch": torch.__version__, "transformers": transformers.__version__}


def _hf_root(source: Path) -> Path:
    from jtcse.modeling.towers import transformer_dir

    return Path(transformer_dir(str(source)))


def _hidden_size(model_dir: Path) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(model_dir)).hidden_size)


def export_sentence_transformer(
    source: str | Path, target: str | Path, *, pooling: str, max_seq_length: int, model_card: str | None = None
) -> dict:
    """Write ``source`` (an HF encoder folder, or a sentence-transformers one) to ``target`` in the portable
    sentence-transformers layout: HF files at the root, ``modules.json`` = Transformer (path "") + Pooling.

    Only the classic module names (``sentence_transformers.models.*``) and config keys are used, so every
    sentence-transformers version from 2.x to 6.x loads it without custom code or ``trust_remote_code``.
    Returns the model's entry for ``jtcse_package.json``.
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    source, target = Path(source), Path(target)
    root = _hf_root(source)
    if not (root / "config.json").is_file():
        raise UserError(f"{source}: no config.json; not a Hugging Face model folder")
    if not list(root.glob("*.safetensors")):
        raise UserError(f"{source}: no *.safetensors weights (pickled weights are not packaged)")
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(root.iterdir()):
        if path.is_file() and path.name not in ST_FILES and path.suffix not in PICKLE_SUFFIXES:
            shutil.copyfile(path, target / path.name)
    dimension = _hidden_size(target)
    (target / POOLING_DIR).mkdir(exist_ok=True)
    atomic_write_json(
        target / POOLING_DIR / "config.json",
        {
            "word_embedding_dimension": dimension,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    atomic_write_json(
        target / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": POOLING_DIR, "type": "sentence_transformers.models.Pooling"},
        ],
    )
    # The tokenizer's own lower-casing (uncased vocabularies) still applies; this flag would add a second one.
    atomic_write_json(target / "sentence_bert_config.json", {"max_seq_length": max_seq_length, "do_lower_case": False})
    atomic_write_json(
        target / "config_sentence_transformers.json",
        {
            # No "sentence_transformers" version: it is not written by that library, and a version newer than the
            # reader's would only trigger a warning.
            "__version__": library_versions(),
            "model_type": "SentenceTransformer",
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    if model_card is not None:
        (target / "README.md").write_text(model_card, encoding="utf-8")
    return {
        "path": target.name,
        "kind": "tower",
        "format": "sentence-transformers",
        "pooling": pooling,
        "dimension": dimension,
        "max_seq_length": max_seq_length,
    }


def copy_twin(source: str | Path, target: str | Path) -> dict:
    """Copy a twin folder (tower_a/, tower_b/, twin.json); returns its entry for ``jtcse_package.json``."""
    source, target = Path(source), Path(target)
    manifest_path = source / TWIN_MANIFEST
    if not manifest_path.is_file():
        raise InputNotFoundError(
            f"{source}: no {TWIN_MANIFEST}; not a twin folder (expected the output of `jtcse train`)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for tower in manifest["towers"]:
        if not list((source / tower).glob("*.safetensors")):
            raise UserError(f"{source / tower}: no *.safetensors weights")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", *(f"*{s}" for s in PICKLE_SUFFIXES)))
    dimension = _hidden_size(target / manifest["towers"][0])
    if manifest["combine"] == "concat":
        dimension += _hidden_size(target / manifest["towers"][1])
    return {
        "path": target.name,
        "kind": "twin",
        "format": "jtcse-twin",
        "towers": manifest["towers"],
        "pooling": manifest["pooling"],
        "combine": manifest["combine"],
        "normalize": bool(manifest.get("normalize", False)),
        "dimension": dimension,
    }
