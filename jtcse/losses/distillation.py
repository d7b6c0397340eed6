"""JTCSE-D: a single student tower learns the twin teacher's in-batch similarity distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jtcse.losses.infonce import InfoNCELoss, cosine_matrix


class SimilarityDistillationLoss(nn.Module):
    """KL(teacher || student) between rows of softmax(cos / tau) over the batch, self-pairs left out.

    Matching whole similarity rows (not single vectors) lets the student keep its own embedding space while
    inheriting the teacher's ranking of neighbours, which is what STS measures.
    """

    def __init__(self, teacher_temperature: float = 0.05, student_temperature: float = 0.05):
        super().__init__()
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        n = student.shape[0]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)
        s = (cosine_matrix(student, student) / self.student_temperature)[off_diagonal].view(n, n - 1)
        t = (cosine_matrix(teacher, teacher) / self.teacher_temperature)[off_diagonal].view(n, n - 1)
        return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


class DistillationLoss(nn.Module):
    """w_kl * KL + w_nce * NCE(student)."""

    def __init__(
        self,
        *,
        w_kl: float = 1.0,
        w_nce: float = 0.1,
        temperature: float = 0.05,
        teacher_temperature: float = 0.05,
        student_temperature: float = 0.05,
    ):
        super().__init__()
        self.w_kl, self.w_nce = w_kl, w_nce
        self.kl = SimilarityDistillationLoss(teacher_temperature, student_temperature)
        self.nce = InfoNCELoss(temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        kl = self.kl(student, teacher.detach())
        nce = self.nce(student)
        return {"loss": self.w_kl * kl + self.w_nce * nce, "loss_kl": kl.detach(), "loss_nce": nce.detach()}
