"""Turning sentences into vectors with a single tower or a twin, in length-sorted batches."""

from __future__ import annotations

import logging

import numpy as np
import torch
from tqdm.auto import tqdm

from jtcse.errors import UserError
from jtcse.modeling.towers import load_tower, pool


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "device 'cuda' was asked for (runtime.device or --device) but torch sees no CUDA device; "
            "use 'auto' or 'cpu'"
        )
    return torch.device(device)


#: ``precision=`` values of ``SentenceTransformer.encode``; all but float32 go through its quantize_embeddings.
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")

log = logging.getLogger(__name__)


def _as_batch(vectors) -> torch.Tensor:
    """A float32 2-D tensor from a tensor, an array or a list of vectors (a 1-D input becomes one row)."""
    if isinstance(vectors, (list, tuple)) and vectors and all(isinstance(v, torch.Tensor) for v in vectors):
        tensor = torch.stack(list(vectors))
    elif isinstance(vectors, torch.Tensor):
        tensor = vectors
    else:
        tensor = torch.as_tensor(np.asarray(vectors))
    tensor = tensor.float()
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


def check_batch_size(batch_size: int) -> int:
    """A batch size from the user (``--batch-size``, ``evaluate.batch_size``): a positive whole number."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size (--batch-size) must be a positive integer, got {batch_size!r}")
    return batch_size


def encode_distinct(encoder: Encoder, sentences, *, batch_size: int, show_progress: bool = False):
    """Encode every distinct sentence once (sorted, so batches are reproducible); returns the number encoded and a
    lookup: a list of sentences -> the matrix of their vectors, in that order."""
    distinct = sorted(set(sentences))
    vectors = encoder.encode(distinct, batch_size=batch_size, show_progress=show_progress)
    index = {s: i for i, s in enumerate(distinct)}
    return len(distinct), lambda texts: vectors[[index[s] for s in texts]]


class Encoder:
    """Shared batching and the sentence-transformers ``encode`` interface.

    Batches are sorted by length so each pads to similar lengths; the input order is restored afterwards.
    ``encode`` takes SentenceTransformer.encode's arguments with the same meaning, so code written for a
    sentence-transformers model runs unchanged on a jtcse twin or tower.
    """

    #: What :meth:`similarity` computes (sentence-transformers' default, and what the STS evaluation uses).
    similarity_fn_name = "cosine"

    def embed(self, sentences: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def to(self, device) -> Encoder:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dimension(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_sentence_embedding_dimension(self) -> int:
        """Length of the vectors :meth:`encode` returns (as in sentence-transformers)."""
        return self.dimension

    def get_embedding_dimension(self) -> int:
        """sentence-transformers 6's name for :meth:`get_sentence_embedding_dimension`."""
        return self.dimension

    def encode(
        self,
        sentences: list[str] | str,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | torch.device | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        *,
        normalize: bool | None = None,
        show_progress: bool | None = None,
    ):
        """Vectors of ``sentences``, as ``SentenceTransformer.encode`` returns them.

        - one string gives one 1-D vector; a list gives a ``(n, dimension)`` float32 array (an empty list gives
          shape ``(0, dimension)``);
        - ``convert_to_tensor=True``: one torch tensor on the model's device (it wins over ``convert_to_numpy``);
          ``convert_to_numpy=False`` alone: a list of 1-D tensors;
        - ``normalize_embeddings``: unit-length vectors (then a dot product is the cosine);
        - ``device``: move the model there first ("cpu", "cuda", "cuda:1"; it stays there afterwards);
        - ``precision``: float32, or int8 / uint8 / binary / ubinary quantised by sentence-transformers;
        - ``show_progress_bar``: a progress bar per batch; None shows it when this module logs at INFO or DEBUG;
        - ``truncate_dim``: keep the first N dimensions (before normalisation, like sentence-transformers).

        ``normalize`` and ``show_progress`` are the older names of ``normalize_embeddings`` and
        ``show_progress_bar``.
        """
        if normalize is not None:
            normalize_embeddings = normalize
        if show_progress is not None:
            show_progress_bar = show_progress
        if show_progress_bar is None:
            show_progress_bar = log.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        check_batch_size(batch_size)
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not supported, must be one of {PRECISIONS}")
        if device is not None:
            self.to(device)
        single = isinstance(sentences, str)
        items = [sentences] if single else list(sentences)
        width = self.dimension if truncate_dim is None else min(truncate_dim, self.dimension)
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        starts = range(0, len(items), batch_size)
        with torch.inference_mode():
            vectors = torch.empty((len(items), width), dtype=torch.float32, device=self.device)
            for start in tqdm(starts, desc="encode", unit="batch", disable=not show_progress_bar, leave=False):
                idx = order[start : start + batch_size]
                batch = self.embed([items[i] for i in idx]).float()[:, :width]
                if normalize_embeddings:
                    batch = torch.nn.functional.normalize(batch, p=2, dim=-1)
                vectors[idx] = batch
        if precision != "float32":
            from sentence_transformers import quantize_embeddings

            quantized = quantize_embeddings(vectors.cpu().numpy(), precision=precision)
            vectors = torch.from_numpy(quantized) if (convert_to_tensor or not convert_to_numpy) else quantized
        if convert_to_tensor:
            out = vectors
        elif convert_to_numpy:
            out = vectors.cpu().numpy() if isinstance(vectors, torch.Tensor) else vectors
        else:
            out = list(vectors)
        return out[0] if single else out

    def similarity(self, embeddings1, embeddings2) -> torch.Tensor:
        """Cosine similarity matrix ``[i, j] = cos(embeddings1[i], embeddings2[j])`` as a float32 tensor."""
        a = torch.nn.functional.normalize(_as_batch(embeddings1), p=2, dim=-1)
        b = torch.nn.functional.normalize(_as_batch(embeddings2), p=2, dim=-1)
        return a @ b.T.to(a.device)

    def similarity_pairwise(self, embeddings1, embeddings2) -> torch.Tensor:
        """Cosine of each pair ``(embeddings1[i], embeddings2[i])``: a 1-D float32 tensor."""
        a, b = _as_batch(embeddings1), _as_batch(embeddings2)
        if a.shape != b.shape:
            raise ValueError(
                f"similarity_pairwise needs as many vectors on each side, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        return torch.nn.functional.cosine_similarity(a, b.to(a.device), dim=-1)


class TowerEncoder(Encoder):
    """One encoder and its pooling: the deployed form of a tower or a distilled JTCSE-D model."""

    def __init__(
        self, model, tokenizer, pooling: str = "cls", max_length: int = 128, device: torch.device | None = None
    ):
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.max_length = min(max_length, tokenizer.model_max_length)
        self.device = device or next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        pooling: str = "cls",
        max_length: int = 128,
        device: str = "auto",
        trust_remote_code: bool = False,
    ) -> TowerEncoder:
        model, tokenizer = load_tower(path, trust_remote_code=trust_remote_code)
        dev = pick_device(device)
        return cls(model.to(dev).eval(), tokenizer, pooling, max_length, dev)

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_seq_length(self) -> int:
        """Truncation in tokens (sentence-transformers' name for ``max_length``)."""
        return self.max_length

    def to(self, device: str | torch.device) -> TowerEncoder:
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)
        self.model.to(self.device)
        return self

    def tokenize(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def embed(self, sentences: list[str]) -> torch.Tensor:
        batch = self.tokenize(sentences)
        last = self.model(**batch).last_hidden_state
        return pool(last, batch["attention_mask"], self.pooling)


def combine_vectors(a: torch.Tensor, b: torch.Tensor, combine: str, normalize: bool = False) -> torch.Tensor:
    """The twin's sentence vector from its towers' (``train.twin_combine`` / ``train.twin_normalize``)."""
    if normalize:
        a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    return a + b if combine == "sum" else torch.cat([a, b], dim=-1)


class TwinEncoder(Encoder):
    """The shipped JTCSE twin: both towers run independently (each with its own pooling); their vectors are
    summed or concatenated, raw or each L2-normalised first."""

    def __init__(self, tower_a: TowerEncoder, tower_b: TowerEncoder, combine: str = "sum", normalize: bool = False):
        if combine not in ("sum", "concat"):
            raise ValueError(f"twin combine must be 'sum' or 'concat', got {combine!r}")
        self.tower_a, self.tower_b, self.combine, self.normalize = tower_a, tower_b, combine, normalize

    @property
    def device(self) -> torch.device:
        return self.tower_a.device

    @property
    def max_seq_length(self) -> int:
        return self.tower_a.max_length

    def to(self, device: str | torch.device) -> TwinEncoder:
        self.tower_a.to(device)
        self.tower_b.to(device)
        return self

    @property
    def dimension(self) -> int:
        d = self.tower_a.dimension
        return d if self.combine == "sum" else d + self.tower_b.dimension

    def embed(self, sentences: list[str]) -> torch.Tensor:
        return combine_vectors(
            self.tower_a.embed(sentences), self.tower_b.embed(sentences), self.combine, self.normalize
        )
