"""The JTCSE objective: the weighted sum of the losses over the twin's outputs."""

from __future__ import annotations

import torch
from torch import nn

from jtcse.losses.infonce import InfoNCELoss
from jtcse.losses.interaction import InteractionInfoNCELoss
from jtcse.losses.modulus import TensorModulusLoss
from jtcse.modeling.twin import TowerOutput


class JTCSELoss(nn.Module):
    """L = w_nce * L_nce + w_icnce * ICNCE(h_A, h_B) + w_cross * ICNCE(c_A, c_B) + w_tm * L_tm, with its parts.

    L_nce   = NCE(h_A) + NCE(h_B)
    L_icnce = ICNCE(h_A, h_B)                       (logged as loss_icnce)
    L_cross = ICNCE(c_A, c_B), the bridge's term    (logged as loss_cross; only when the twin has a bridge)
    L_tm    = TM(h_A, h_B, x_A, x_B) + TM(h_B, h_A, x_B, x_A), x = pooler outputs or the sentence vectors

    The reference weighs both interaction terms with one weight; ``w_cross`` sets the bridge's share apart, so
    ``w_cross = w_icnce`` is the reference and ``w_cross = 0`` is TNCSE.
    """

    def __init__(
        self,
        *,
        w_nce: float = 1.0,
        w_icnce: float = 1.0,
        w_cross: float = 1.0,
        w_tm: float = 1.0,
        temperature: float = 0.05,
        icnce_direction: str = "random",
        modulus_on: str = "pooler",
        tm_clamp: float = 1e-4,
    ):
        super().__init__()
        if modulus_on not in ("pooler", "embedding"):
            raise ValueError(f"train.modulus_on must be 'pooler' or 'embedding', got {modulus_on!r}")
        self.weights = {"nce": w_nce, "icnce": w_icnce, "cross": w_cross, "tm": w_tm}
        self.modulus_on = modulus_on
        self.nce = InfoNCELoss(temperature)
        self.icnce = InteractionInfoNCELoss(temperature, icnce_direction)
        self.tm = TensorModulusLoss(tm_clamp)

    def _modulus_vectors(self, out: TowerOutput) -> torch.Tensor:
        if self.modulus_on == "embedding":
            return out.embedding
        if out.pooler is None:
            raise ValueError("train.modulus_on is 'pooler' but the checkpoint has no pooler: set it to 'embedding'")
        return out.pooler

    def parts(self, out_a: TowerOutput, out_b: TowerOutput, flip: bool | None = None) -> dict[str, torch.Tensor]:
        """The unweighted terms (with their graphs); 'cross' only when both towers carry a bridge output."""
        if flip is None and self.icnce.direction == "random":
            flip = bool(torch.randint(0, 2, ()).item())  # one draw: both interaction terms share the direction
        h_a, h_b = out_a.embedding, out_b.embedding
        parts = {"nce": self.nce(h_a) + self.nce(h_b), "icnce": self.icnce(h_a, h_b, flip=flip)}
        if out_a.cross is not None and out_b.cross is not None:
            parts["cross"] = self.icnce(out_a.cross, out_b.cross, flip=flip)
        x_a, x_b = self._modulus_vectors(out_a), self._modulus_vectors(out_b)
        parts["tm"] = self.tm(h_a, h_b, x_a, x_b) + self.tm(h_b, h_a, x_b, x_a)
        return parts

    def forward(self, out_a: TowerOutput, out_b: TowerOutput) -> dict[str, torch.Tensor]:
        parts = self.parts(out_a, out_b)
        total = sum(self.weights[k] * v for k, v in parts.items())
        return {"loss": total, **{f"loss_{k}": v.detach() for k, v in parts.items()}}
