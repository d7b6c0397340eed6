"""Speed, part `loss`: the vectorised tensor-modulus loss (jtcse.losses.TensorModulusLoss) against the reference's
per-sample loop (one ``.item()`` device sync per sentence), forward + backward, rows = 2 x batch: the speed-up.
The two are also checked to agree in float64 (value and gradients). Run by bench/speed.py (``--parts loss``).
"""

from __future__ import annotations

import logging
from typing import Any

from bench import common

log = logging.getLogger("bench.speed.loss")

TITLE = "Tensor-modulus loss: vectorised vs per-sample loop"


def naive_modulus_loss(h_a, h_b, x_a, x_b, clamp: float = 1e-4):
    """The reference's per-sample loop: for each first view k, the cosine is computed with torch ops and compared
    on the host (``.item()``: one device sync per sample); a negative cosine becomes the constant ``clamp``."""
    import torch

    n = h_a.shape[0] // 2
    total = 0.0
    for k in range(n):
        u, v = h_a[2 * k], h_b[2 * k + 1]
        c = torch.sum(u * v) / (torch.norm(u) * torch.norm(v))
        if c.item() <= 0:  # the reference tests < 0; <= also covers an exact 0 exactly as the vectorised loss does
            c = torch.tensor(clamp, dtype=h_a.dtype, device=h_a.device)
        p, q = x_a[2 * k], x_b[2 * k + 1]
        total = total + (-torch.log(c) * 0.5 * torch.norm(p - q) / (torch.norm(p) + torch.norm(q)))
    return total / n


def _loss_inputs(batch: int, hidden: int, dtype, device, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = 2 * batch
    base = torch.randn(rows, hidden, generator=g, dtype=torch.float64)
    # Correlated views (mostly positive cosines, as in training) and a few anti-correlated rows for the clamp branch.
    h_a = base + 0.3 * torch.randn(rows, hidden, generator=g, dtype=torch.float64)
    h_b = base + 0.3 * torch.randn(rows, hidden, generator=g, dtype=torch.float64)
    h_b[1::8] = -h_a[0::8]
    x_a = torch.randn(rows, hidden, generator=g, dtype=torch.float64)
    x_b = x_a + 0.5 * torch.randn(rows, hidden, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (h_a, h_b, x_a, x_b)]


def loss_agreement(batch: int = 8, hidden: int = 16, device: str = "cpu") -> dict[str, Any]:
    """Value and gradients of the vectorised and the naive loss, in float64."""
    import torch
    import torch.nn.functional as F

    from jtcse.losses import TensorModulusLoss

    leaves = _loss_inputs(batch, hidden, torch.float64, device)
    fast = TensorModulusLoss()(*leaves)
    slow = naive_modulus_loss(*leaves)
    g_fast = torch.autograd.grad(fast, leaves)
    g_slow = torch.autograd.grad(slow, leaves)
    cos = F.cosine_similarity(leaves[0][0::2], leaves[1][1::2], dim=-1)
    return {
        "batch": batch,
        "hidden": hidden,
        "dtype": "float64",
        "vectorised": fast.item(),
        "naive": slow.item(),
        "max_abs_diff_value": abs(fast.item() - slow.item()),
        "max_abs_diff_grad": max((a - b).abs().max().item() for a, b in zip(g_fast, g_slow)),
        "clamped_rows": int((cos <= 0).sum()),
    }


def bench_loss(
    batches=(64, 256),
    hidden: int = 768,
    repeats: int = 15,
    warmup: int = 2,
    device: str = "cpu",
    dtype_name: str = "float32",
) -> dict[str, Any]:
    import torch

    from jtcse.losses import TensorModulusLoss

    dev = torch.device(device)
    dtype = getattr(torch, dtype_name)
    vectorised = TensorModulusLoss()
    rows = []
    for batch in batches:
        leaves = _loss_inputs(batch, hidden, dtype, dev, seed=batch)

        def step(fn):
            def call():
                for t in leaves:
                    t.grad = None
                fn(*leaves).backward()

            return call

        variants = {"vectorised": step(vectorised), "naive": step(naive_modulus_loss)}
        for _ in range(warmup):
            for call in variants.values():
                call()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for name, call in variants.items():
                times[name].append(common.time_call(call, dev)[0])
        v, n = common.median(times["vectorised"]), common.median(times["naive"])
        rows.append(
            {
                "batch": batch,
                "rows": 2 * batch,
                "hidden": hidden,
                "vectorised_ms": v * 1e3,
                "naive_ms": n * 1e3,
                "speedup": n / v,
                "repeats": repeats,
            }
        )
        log.info(
            "modulus loss batch %d: vectorised %.3f ms, naive %.2f ms, speed-up x%.1f", batch, v * 1e3, n * 1e3, n / v
        )
    return {"device": str(dev), "dtype": dtype_name, "what": "one TM call, forward + backward", "rows": rows}


def measure(ctx) -> dict[str, Any]:
    import torch

    device = ctx.loss_device or ("cuda" if torch.cuda.is_available() else "cpu")
    result = bench_loss(
        tuple(ctx.sizes["loss_batches"]), ctx.sizes["loss_hidden"], ctx.sizes["loss_repeats"], device=device
    )
    result["agreement"] = loss_agreement()
    return result


def render(loss: dict) -> list[str]:
    agree = loss["agreement"]
    lines = [
        f"{loss['what']}, {loss['dtype']} on {loss['device']}, median of {loss['rows'][0]['repeats']}. "
        f"Agreement (float64, batch {agree['batch']}, {agree['clamped_rows']} clamped rows): "
        f"|value diff| {agree['max_abs_diff_value']:.1e}, max |grad diff| {agree['max_abs_diff_grad']:.1e}.",
        "",
        "| batch | rows | hidden | vectorised ms | naive loop ms | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']} | {r['rows']} | {r['hidden']} | {r['vectorised_ms']:.3f} | {r['naive_ms']:.2f} | "
        f"x{r['speedup']:.1f} |"
        for r in loss["rows"]
    ]
    return lines


def bars(loss: dict) -> list[tuple[str, float]]:
    return [(f"TM loss speed-up, batch {r['batch']}", r["speedup"]) for r in loss["rows"]]
