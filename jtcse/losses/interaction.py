"""Interaction InfoNCE across towers (ICNCE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jtcse.losses.infonce import cosine_matrix, other_view


class InteractionInfoNCELoss(nn.Module):
    """Anchors from one tower, candidates from the other.

    The positive of row i is the other tower's *other* view pi(i); the same-view pair (j = i) is left out of
    the denominator, because the same text through the same dropout-free path would make it a trivial match.
    ``direction``: 'random' picks (a, b) or (b, a) per call as the reference code does (torch RNG, so seeded
    and restored on resume); 'symmetric' averages both directions.
    """

    def __init__(self, temperature: float = 0.05, direction: str = "random"):
        super().__init__()
        if direction not in ("random", "symmetric"):
            raise ValueError(f"train.icnce_direction must be 'random' or 'symmetric', got {direction!r}")
        self.temperature = temperature
        self.direction = direction

    def one_direction(self, anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        n = anchors.shape[0]
        if candidates.shape[0] != n or n % 2:
            raise ValueError(f"ICNCE needs two equal, even row counts, got {n} and {candidates.shape[0]}")
        logits = cosine_matrix(anchors, candidates) / self.temperature
        same_view = torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(same_view, float("-inf"))
        return F.cross_entropy(logits, other_view(n, logits.device))

    def forward(self, a: torch.Tensor, b: torch.Tensor, flip: bool | None = None) -> torch.Tensor:
        if self.direction == "symmetric":
            return 0.5 * (self.one_direction(a, b) + self.one_direction(b, a))
        if flip is None:
            flip = bool(torch.randint(0, 2, ()).item())
        return self.one_direction(b, a) if flip else self.one_direction(a, b)
