"""Running the `mteb` package's own evaluation on any jtcse model (optional extra: ``pip install 'jtcse[mteb]'``).

:class:`MTEBEncoder` follows mteb 2.x's ``EncoderProtocol`` (``mteb/models/models_protocols.py``):
``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs)`` receives a torch
``DataLoader`` of batches ``{"text": [...]}`` and returns one row per input; ``similarity`` and
``similarity_pairwise`` are cosine (the scoring the jtcse models are trained for); ``mteb_model_meta``
names the model in the results. The vectors are exactly ``jtcse.load(path).encode(texts)``: a twin is the sum
(or concatenation) of its towers, a single tower or a package its own pooling. Prompts and instructions are
ignored: jtcse models were trained without them.

jtcse keeps its no-network rule: the Hugging Face hub stays offline, so a task runs when its dataset is
already in the local Hugging Face cache (``HF_HOME``); otherwise the error says so and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jtcse.errors import UserError

if TYPE_CHECKING:  # numpy and torch load on first use, so `jtcse --help` stays fast
    import numpy as np

    from jtcse.encoding import Encoder

log = logging.getLogger(__name__)


def require_mteb():
    try:
        import mteb
    except ImportError:
        raise ImportError(
            "the mteb package is not installed: pip install 'jtcse[mteb]' (or pip install mteb)"
        ) from None
    return mteb


def _revision(path: Path) -> str:
    """A stable revision id for a local model: the SHA256 of its weights' and configs' checksums."""
    from jtcse.formats import sha256_file

    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".txt"))
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(bytes.fromhex(sha256_file(file)))  # streamed: weights files can be GBs
    return digest.hexdigest()[:12] if files else "local"


class MTEBEncoder:
    """A jtcse :class:`Encoder` seen through mteb's model protocol."""

    def __init__(
        self,
        encoder: Encoder,
        *,
        name: str,
        revision: str = "local",
        batch_size: int = 64,
        max_tokens: int | None = None,
    ):
        require_mteb()
        from mteb.models.model_meta import ModelMeta, ScoringFunction

        self.encoder, self.batch_size = encoder, batch_size
        # mteb requires "organisation/name"; the results folder is named after it.
        model_name = name if "/" in name else f"jtcse/{name}"
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites={
                "name": model_name,
                "revision": revision,
                "embed_dim": encoder.dimension,
                "max_tokens": max_tokens,
                "similarity_fn_name": ScoringFunction.COSINE,
                "framework": ["PyTorch"],
                "languages": ["eng-Latn"],
                "open_weights": True,
                "use_instructions": False,
            }
        )

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        pooling: str | None = None,
        device: str = "auto",
        max_length: int | None = None,
        batch_size: int = 64,
        name: str | None = None,
    ) -> MTEBEncoder:
        from jtcse.api import load

        path = Path(path)
        encoder = load(path, pooling=pooling, device=device, max_length=max_length)
        max_tokens = getattr(encoder, "max_length", None) or getattr(
            getattr(encoder, "tower_a", None), "max_length", None
        )
        return cls(
            encoder,
            name=name or path.resolve().name,
            revision=_revision(path) if path.is_dir() else "local",
            batch_size=batch_size,
            max_tokens=max_tokens,
        )

    def encode(
        self,
        inputs,
        *,
        task_metadata=None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type=None,
        **kwargs: Any,
    ) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            texts.extend(batch["text"])
        batch_size = kwargs.get("batch_size") or self.batch_size
        return self.encoder.encode(texts, batch_size=batch_size, show_progress=bool(kwargs.get("show_progress_bar")))

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def resolve_tasks(names: list[str]):
    """mteb task objects for the given names; an unknown name is a ValueError naming it."""
    mteb = require_mteb()
    known = {t.metadata.name for t in mteb.get_tasks()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown MTEB task(s) {', '.join(unknown)} (see `python -m mteb available-tasks`)")
    return list(mteb.get_tasks(tasks=names))


def run_mteb(model: MTEBEncoder, tasks: list, output_dir: str | Path, *, batch_size: int = 64) -> dict[str, float]:
    """Run mteb's evaluation of ``tasks``; results go to ``output_dir`` (mteb's layout) and a summary.json.

    Returns task name -> main score (x 100, as the MTEB leaderboard shows it).
    """
    mteb = require_mteb()
    from mteb.cache import ResultCache

    from jtcse.io import atomic_write_json

    output_dir = Path(output_dir)
    started = time.perf_counter()
    result = mteb.evaluate(
        model,
        tasks,
        cache=ResultCache(cache_path=output_dir),
        overwrite_strategy="always",
        encode_kwargs={"batch_size": batch_size},
        show_progress_bar=False,
    )
    scores = {r.task_name: float(r.get_score()) * 100.0 for r in result.task_results}
    atomic_write_json(
        output_dir / "summary.json",
        {
            "model": model.mteb_model_meta.name,
            "revision": model.mteb_model_meta.revision,
            "main_score_x100": scores,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )
    return scores


__all__ = ["MTEBEncoder", "require_mteb", "resolve_tasks", "run_mteb"]
