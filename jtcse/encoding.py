"""Turning sentences into vectors with a single tower or a twin, in length-sorted batches."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from jtcse.errors import UserError
from jtcse.modeling.towers import load_tower, pool


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' was asked for (runtime.device or --device) but torch sees no CUDA device; "
                        "use 'auto' or 'cpu'")
    return torch.device(device)


def check_batch_size(batch_size: int) -> int:
    """A batch size from the user (``--batch-size``, ``evaluate.batch_size``): a positive whole number."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch size (--batch-size) must be a positive integer, got {batch_size!r}")
    return batch_size


class Encoder:
    """Shared batching: sort by length so a batch pads to similar lengths, then restore the input order."""

    def embed(self, sentences: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dimension(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, sentences: list[str] | str, batch_size: int = 64, normalize: bool = False,
               show_progress: bool = False) -> np.ndarray:
        check_batch_size(batch_size)
        single = isinstance(sentences, str)
        items = [sentences] if single else list(sentences)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: -len(items[i]))
        out = np.empty((len(items), self.dimension), dtype=np.float32)
        starts = range(0, len(items), batch_size)
        for start in tqdm(starts, desc="encode", unit="batch", disable=not show_progress, leave=False):
            idx = order[start:start + batch_size]
            with torch.inference_mode():
                vectors = self.embed([items[i] for i in idx]).float()
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[idx] = vectors.cpu().numpy()
        return out[0] if single else out


class TowerEncoder(Encoder):
    """One encoder and its pooling: the deployed form of a tower or a distilled JTCSE-D model."""

    def __init__(self, model, tokenizer, pooling: str = "cls", max_length: int = 128, device: torch.device | None = None):
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.max_length = min(max_length, tokenizer.model_max_length)
        self.device = device or next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str, pooling: str = "cls", max_length: int = 128, device: str = "auto",
                        trust_remote_code: bool = False) -> "TowerEncoder":
        model, tokenizer = load_tower(path, trust_remote_code=trust_remote_code)
        dev = pick_device(device)
        return cls(model.to(dev).eval(), tokenizer, pooling, max_length, dev)

    @property
    def dimension(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def embed(self, sentences: list[str]) -> torch.Tensor:
        batch = self.tokenize(sentences)
        last = self.model(**batch).last_hidden_state
        return pool(last, batch["attention_mask"], self.pooling)


class TwinEncoder(Encoder):
    """The shipped JTCSE twin: both towers run independently; their vectors are summed (or concatenated)."""

    def __init__(self, tower_a: TowerEncoder, tower_b: TowerEncoder, combine: str = "sum"):
        if combine not in ("sum", "concat"):
            raise ValueError(f"twin combine must be 'sum' or 'concat', got {combine!r}")
        self.tower_a, self.tower_b, self.combine = tower_a, tower_b, combine

    @property
    def dimension(self) -> int:
        d = self.tower_a.dimension
        return d if self.combine == "sum" else d + self.tower_b.dimension

    def embed(self, sentences: list[str]) -> torch.Tensor:
        a, b = self.tower_a.embed(sentences), self.tower_b.embed(sentences)
        return a + b if self.combine == "sum" else torch.cat([a, b], dim=-1)
