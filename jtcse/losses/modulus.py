"""Tensor-modulus constraint (TM), vectorised over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jtcse.losses.infonce import at_least_float32


class TensorModulusLoss(nn.Module):
    """TM = mean_k [ -log(c_k) * 0.5 * ||x_2k - y_2k+1|| / (||x_2k|| + ||y_2k+1||) ].

    c_k = cos(hA_2k, hB_2k+1) pairs tower A's first view with tower B's second view. As in the reference,
    a non-positive cosine is replaced by the constant ``clamp`` (no gradient through it), so the term then
    only pulls the lengths together. The reference loops over samples in Python with one device sync each;
    this is one batched expression with the same value and gradient.
    """

    def __init__(self, clamp: float = 1e-4):
        super().__init__()
        self.clamp = clamp

    def forward(self, h_a: torch.Tensor, h_b: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """h_*: vectors whose cosine weighs the term; x_*: vectors whose moduli are constrained (2N rows each)."""
        h1, h2 = at_least_float32(h_a[0::2]), at_least_float32(h_b[1::2])
        x1, x2 = at_least_float32(x_a[0::2]), at_least_float32(x_b[1::2])
        cos = F.cosine_similarity(h1, h2, dim=-1)
        cos = torch.where(cos > 0, cos, torch.full_like(cos, self.clamp))
        ratio = (x1 - x2).norm(dim=-1) / (x1.norm(dim=-1) + x2.norm(dim=-1))
        return (-torch.log(cos) * 0.5 * ratio).mean()
