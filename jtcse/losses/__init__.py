"""One loss per module, each an ``nn.Module``; :class:`JTCSELoss` is their weighted total."""

from jtcse.losses.distillation import DistillationLoss, SimilarityDistillationLoss
from jtcse.losses.infonce import InfoNCELoss
from jtcse.losses.interaction import InteractionInfoNCELoss
from jtcse.losses.jtcse_loss import JTCSELoss
from jtcse.losses.modulus import TensorModulusLoss

__all__ = [
    "DistillationLoss",
    "InfoNCELoss",
    "InteractionInfoNCELoss",
    "JTCSELoss",
    "SimilarityDistillationLoss",
    "TensorModulusLoss",
]
