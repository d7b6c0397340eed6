"""InfoNCE inside one tower: unsupervised SimCSE over two dropout views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def other_view(n_rows: int, device: torch.device | None = None) -> torch.Tensor:
    """Index of each row's other dropout view: rows 2k and 2k+1 hold the same sentence."""
    return torch.arange(n_rows, device=device) ^ 1


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Softmax and log over bf16 logits lose the small differences contrastive losses live on."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = at_least_float32(a), at_least_float32(b)
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


class InfoNCELoss(nn.Module):
    """NCE(h)[i] = -log exp(cos(h_i, h_pi(i))/tau) / sum_{j != i} exp(cos(h_i, h_j)/tau), mean over the 2N rows."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        n = embeddings.shape[0]
        if n % 2:
            raise ValueError(f"InfoNCE needs pairs of views (an even row count), got {n} rows")
        logits = cosine_matrix(embeddings, embeddings) / self.temperature
        self_pair = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_pair, float("-inf"))
        return F.cross_entropy(logits, other_view(n, logits.device))
