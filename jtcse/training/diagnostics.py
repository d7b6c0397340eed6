"""What the twin's losses do to the towers, measured at every dev evaluation of stage 2.

Per loss term: its value and the norm of the gradient of its *weighted* term over the towers' parameters (what
the optimiser actually receives from it, before clipping), from one extra forward of a fixed batch and one
backward per term. On a fixed probe set, in eval mode: the cosine between the two towers' vectors of a sentence,
the anisotropy (mean pairwise cosine between different sentences) of the sentence vectors h and of the bridge's
vectors c, and E_CLS, the norm of the CLS state over the mean norm of the sentence's other token states (the
quantity the JTCSE paper says cross-attention raises: BERT-like models "sink" attention away from CLS).

All of it runs under a forked RNG, so a run with diagnostics trains exactly as one without them.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from jtcse.io import atomic_savefig

#: Loss terms of the twin, in the order they are logged.
TERMS = ("nce", "icnce", "cross", "tm")
PROBE_COLUMNS = ("cos_towers", "aniso_h", "aniso_c", "e_cls_a", "e_cls_b")
COLUMNS = ("step", *(f"loss_{t}" for t in TERMS), *(f"grad_{t}" for t in TERMS), "grad_total", *PROBE_COLUMNS)


def e_cls(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per sentence: ||CLS state|| / mean ||state|| of its other real tokens (padding left out)."""
    norms = last_hidden.float().norm(dim=-1)
    others = attention_mask[:, 1:].to(norms.dtype)
    mean_other = (norms[:, 1:] * others).sum(1) / others.sum(1).clamp_min(1.0)
    return norms[:, 0] / mean_other


def anisotropy(vectors: torch.Tensor) -> float:
    """Mean cosine between the vectors of different sentences (1 = all point one way)."""
    n = vectors.shape[0]
    if n < 2:
        return math.nan
    unit = F.normalize(vectors.float(), dim=-1)
    sims = unit @ unit.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def gradient_norms(
    parts: dict[str, torch.Tensor], weights: dict[str, float], params: list[torch.nn.Parameter]
) -> dict[str, float]:
    """Norm over ``params`` of the gradient of each weighted term, and of their sum."""
    norms: dict[str, float] = {}
    total: list[torch.Tensor] | None = None
    for name, value in parts.items():
        grads = torch.autograd.grad(weights[name] * value, params, retain_graph=True, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        norms[f"grad_{name}"] = float(torch.sqrt(sum(g.float().pow(2).sum() for g in grads)))
        total = grads if total is None else [t + g for t, g in zip(total, grads)]
    norms["grad_total"] = float(torch.sqrt(sum(g.float().pow(2).sum() for g in total))) if total else math.nan
    return norms


def plot_diagnostics(csv_path: Path, png_path: Path, title: str = "stage 2 diagnostics") -> Path | None:
    """One PNG with four panels over the training steps: loss terms, their gradient norms, cosines, E_CLS."""
    if not csv_path.is_file():
        return None
    with csv_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(column: str) -> tuple[list[int], list[float]]:
        points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
        return [p[0] for p in points], [p[1] for p in points]

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [
        ("loss value (unweighted)", [f"loss_{t}" for t in TERMS], True),
        ("gradient norm of the weighted term", [f"grad_{t}" for t in TERMS] + ["grad_total"], True),
        ("cosine (probe set)", ["cos_towers", "aniso_h", "aniso_c"], False),
        ("E_CLS = |CLS| / mean |token| (probe set)", ["e_cls_a", "e_cls_b"], False),
    ]
    for ax, (name, columns, log_scale) in zip(axes, panels):
        for column in columns:
            x, y = series(column)
            if x:
                ax.plot(x, y, marker="o", markersize=3, label=column)
        if log_scale and any(v > 0 for c in columns for v in series(c)[1]):
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, png_path, dpi=110)
    plt.close(fig)
    return png_path
