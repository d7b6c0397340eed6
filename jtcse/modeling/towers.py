"""Loading an encoder tower from any Hugging Face / sentence-transformers directory, and pooling."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from jtcse.errors import InputNotFoundError, UserError
from jtcse.formats import resolve_model_path

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
#: Weight files that only pickle can read: unpickling runs whatever code the file names, so they are never opened.
PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: Files whose ``auto_map`` makes transformers import Python code shipped with the checkpoint.
REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")


def transformer_dir(path: str) -> str:
    """The folder holding the HF weights: a sentence-transformers package may keep them in a sub-folder."""
    modules = Path(path) / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            if module.get("type", "").endswith("models.Transformer") and module.get("path"):
                return str(Path(path) / module["path"])
    return path


def _masked_lm_model_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def check_encoder_folder(name: str, path: str) -> None:
    """A local model folder holds a config and safetensors weights; a hub name (no folder) is resolved later."""
    folder = Path(path)
    if not folder.exists():
        text = str(name)
        if Path(text).is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
            raise InputNotFoundError(f"model {name!r}: folder {path} does not exist")
        return  # a hub id ('bert-base-uncased', 'org/name'): looked up in the local cache
    if not folder.is_dir():
        raise UserError(f"model {name!r}: {path} is a file, expected a model folder")
    if not (folder / "config.json").is_file():
        raise UserError(f"model {name!r}: {path} has no config.json; not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        detail = f"only pickle weights ({', '.join(pickled)}), which jtcse never unpickles" if pickled else "no weights"
        raise UserError(
            f"model {name!r}: {path} has {detail}; save the model with safetensors "
            "(model.save_pretrained(folder, safe_serialization=True))"
        )


def load_tower(
    name_or_path: str,
    *,
    dropout: float | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load encoder and tokenizer, safetensors only (weights a user hands us are never unpickled)."""
    path = transformer_dir(resolve_model_path(name_or_path))
    check_encoder_folder(name_or_path, path)
    if os.path.isdir(path):
        check_safe_to_load(Path(path), trust_remote_code=trust_remote_code)
    config_kwargs = {}
    if dropout is not None:
        config_kwargs = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **config_kwargs)
    except OSError:
        if os.path.isdir(path):
            raise
        raise UserError(
            f"model {name_or_path!r}: not a local folder, and not in the local Hugging Face cache "
            "(jtcse runs offline); give a model folder, 'minilm', or a hub id downloaded before"
        ) from None
    if config.model_type not in _masked_lm_model_types():
        raise UserError(
            f"model {name_or_path!r}: model_type {config.model_type!r} is not a BERT-like encoder "
            "(expected e.g. bert, roberta, distilbert: an encoder trained with masked language modelling)"
        )
    model, loading = AutoModel.from_pretrained(
        path,
        config=config,
        use_safetensors=True,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    missing = [k for k in loading.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise UserError(
            f"model {name_or_path!r}: checkpoint lacks weights {missing[:5]}; is it an encoder of this architecture?"
        )
    if any(k.startswith("pooler.") for k in loading.get("missing_keys", [])):
        # A randomly initialised pooler would feed noise into the modulus term: better to have none.
        log.warning("model %s has no trained pooler weights; pooler disabled", name_or_path)
        model.pooler = None
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer


def check_safe_to_load(directory: Path, *, trust_remote_code: bool = False) -> None:
    """Refuse, before transformers opens anything, a folder that would need unpickling or remote code."""
    if not list(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLED_WEIGHTS)
        if pickled:
            raise UserError(
                f"{directory}: only pickled weights ({', '.join(pickled)}) and no *.safetensors; jtcse "
                "never unpickles model files (unpickling can run arbitrary code): convert them to "
                "safetensors where you trust the file (model.save_pretrained(dir, safe_serialization=True))"
            )
    check_safetensors_readable(directory)
    if trust_remote_code:
        return
    for name in REMOTE_CODE_FILES:
        config = directory / name
        try:
            auto_map = json.loads(config.read_text(encoding="utf-8")).get("auto_map") if config.is_file() else None
        except (json.JSONDecodeError, AttributeError):
            continue  # not ours to judge: transformers reports a malformed config
        if auto_map:
            raise UserError(
                f"{config}: auto_map {sorted(auto_map)} asks to run Python code shipped with the model; "
                "refused because model.trust_remote_code is false (set it to true in params.yaml only "
                "for code you have read)"
            )


def check_safetensors_readable(directory: Path) -> None:
    """Refuse a ``*.safetensors`` file whose header cannot be read (0 bytes, truncated, garbled), naming it, before
    transformers opens it; a ``pytorch_model.bin`` beside it is never the fallback (nothing is unpickled)."""
    from safetensors import safe_open

    for path in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as err:  # SafetensorError (HeaderTooSmall, InvalidHeader...), OSError
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            size = path.stat().st_size if path.exists() else 0
            raise UserError(
                f"{path}: not a readable safetensors file ({size} bytes; {reason}); the file is damaged or was not "
                "written whole: copy or save the model again"
            ) from None


def pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Sentence vector of each row: the first token's state, or the mean over real tokens."""
    if pooling == "cls":
        return last_hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
        return (last_hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def pooler_of(model: nn.Module) -> nn.Module | None:
    return getattr(model, "pooler", None)


def save_tower(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """Save a plain HF encoder directory (safetensors), loadable with AutoModel and by `jtcse evaluate`."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
