"""The optimiser and learning-rate schedule every stage trains with (the ``OptimSettings`` of its section)."""

from __future__ import annotations

import torch

from jtcse.config.sections import OptimSettings


def make_optimizer(params: list[torch.nn.Parameter], settings: OptimSettings, device: torch.device):
    """AdamW with the fused kernel where torch has one (CPU and CUDA): on CPU torch's default is a Python loop over
    the parameters, a fifth of a training step in bench/speed.py's profile. Same update rule, same state."""
    fused = device.type in ("cpu", "cuda") and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params
    )
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: OptimSettings) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, total = settings.warmup_steps, settings.steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if settings.scheduler == "linear":
            return max(0.0, (total - step) / max(1, total - warmup))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
