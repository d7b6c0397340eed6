"""FLOPs of a training step and this CPU's matrix-multiply limit: what the step part divides to get utilisation.

Counting. A step's FLOPs are counted by running its forward and its backward once under
``torch.utils.flop_counter.FlopCounterMode``: every matrix multiply (mm, addmm, bmm, scaled-dot-product attention)
is counted from its operand shapes as 2 x m x n x k. Element-wise work (softmax, LayerNorm, GELU, AdamW) is not
counted: these are the FLOPs a matrix engine can do, the usual basis of "model FLOP utilisation". On the CPU,
PyTorch's SDPA runs ``_scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode does not know (it would
count 0); :data:`CPU_SDPA` maps it (and its backward) to torch's own SDPA formulas. The backward of a flash
kernel recomputes the scores, as torch's formula counts.

By hand, from the shapes (what :func:`tower_forward_flops` and :func:`twin_forward_flops` compute, and
tests/bench/test_speed_flops.py checks against the counter): a BERT layer on R rows of L tokens (T = R x L tokens),
hidden h, feed-forward i, costs in its forward

    linear  2 T (4 h^2 + 2 h i)          (query, key, value, attention output; the two feed-forward matrices)
    attn    2 x 2 R L^2 h                (Q K^T and P V over all heads: heads x head_dim = h)

plus the pooler 2 R h^2 (BERT's dense on the first token, computed by the HF forward). A SimCSE step feeds each of
N sentences twice: R = 2N. The backward is about 2x the forward (a gradient for the input and one for the weight of
every matrix multiply; 2.5x for attention whose scores are recomputed), so a step is about 3x its forward.

A JTCSE step runs both towers on the same R rows (2x a SimCSE forward), and in ``stream`` mode a cross stream per
tower from the first bridged layer b0 to the last: at a bridged layer the stream takes the main stream's Q, K and
the other tower's V (no projections of its own: 2 T (h^2 + 2 h i) + attn), at the layers between it runs the full
layer. With 6 layers, 3 bridged (1, 3, 5): 3 x (9 h^2-units) + 2 x 12 = 51 of a tower's 72 units of linear work,
so about 1.7 towers each, 3.4 SimCSE forwards in all. ``side`` mode adds only the last bridged layer's cross
attention, output block and feed-forward per tower; ``mix`` adds that at every bridged layer.

Peak. :func:`gemm_rates` times ``torch.matmul`` of float32 matrices of the shapes a step multiplies
(tokens x hidden by hidden x hidden, hidden x 4 hidden, 4 hidden x hidden) and one large square, with the
process's torch thread count; the peak is the best rate seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bench import common


def _cpu_sdpa_mapping() -> dict:
    import torch
    from torch.utils import flop_counter

    aten = torch.ops.aten
    mapping = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None:

        def sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

        mapping[forward] = sdpa_cpu
    if backward is not None:

        def sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw):
            return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        mapping[backward] = sdpa_cpu_backward
    return mapping


def counter():
    """A FlopCounterMode that also counts the CPU flash-attention kernels (see the module's doc)."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping())


def count(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(FLOPs of the matrix multiplies ``fn`` runs, its result)."""
    with counter() as mode:
        out = fn()
    return int(mode.get_total_flops()), out


def step_flops(forward: Callable[[], Any], backward: Callable[[Any], None]) -> dict[str, int]:
    """FLOPs of one step's forward (``forward()`` returns the loss) and of its backward (``backward(loss)``)."""
    f, loss = count(forward)
    b, _ = count(lambda: backward(loss))
    return {"forward": f, "backward": b, "total": f + b}


# --- by hand -------------------------------------------------------------------------------------------------


def layer_flops(hidden: int, intermediate: int, rows: int, length: int, *, projections: bool = True) -> int:
    """Forward FLOPs of one BERT layer on ``rows`` x ``length`` tokens (``projections=False``: a layer that reuses
    another stream's query, key and value, as a bridged layer of a cross stream does)."""
    tokens = rows * length
    weights = (4 if projections else 1) * hidden * hidden + 2 * hidden * intermediate
    return 2 * tokens * weights + 2 * 2 * rows * length * length * hidden


def tower_forward_flops(config, rows: int, length: int, *, pooler: bool = True) -> int:
    """Forward FLOPs of a BERT-like encoder (HF ``config``) on ``rows`` x ``length`` tokens, pooler included."""
    h, i = config.hidden_size, config.intermediate_size
    total = config.num_hidden_layers * layer_flops(h, i, rows, length)
    return total + (2 * rows * h * h if pooler else 0)


def twin_forward_flops(config, rows: int, length: int, bridged: Sequence[int], mode: str, *, pooler=True) -> int:
    """Forward FLOPs of :class:`jtcse.modeling.twin.BridgedTwin` (both towers, the bridge as ``mode`` computes it)."""
    h, i = config.hidden_size, config.intermediate_size
    towers = 2 * tower_forward_flops(config, rows, length, pooler=pooler)
    if not bridged:
        return towers
    if mode == "stream":
        extra = sum(
            layer_flops(h, i, rows, length, projections=False) if k in bridged else layer_flops(h, i, rows, length)
            for k in range(bridged[0], config.num_hidden_layers)
        )
    elif mode == "side":
        extra = layer_flops(h, i, rows, length, projections=False)
    else:  # mix: the cross output block at every bridged layer (no feed-forward)
        tokens = rows * length
        extra = len(bridged) * (2 * tokens * h * h + 2 * 2 * rows * length * length * h)
    return towers + 2 * extra


# --- the machine's limit -------------------------------------------------------------------------------------


def gemm_shapes(tokens: int, hidden: int, intermediate: int, square: int = 2048) -> dict[str, tuple[int, int, int]]:
    """(m, k, n) of the float32 products a step on ``tokens`` rows does, and one large square."""
    return {
        f"[{tokens},{hidden}]x[{hidden},{hidden}]": (tokens, hidden, hidden),
        f"[{tokens},{hidden}]x[{hidden},{intermediate}]": (tokens, hidden, intermediate),
        f"[{tokens},{intermediate}]x[{intermediate},{hidden}]": (tokens, intermediate, hidden),
        f"[{square},{square}]x[{square},{square}]": (square, square, square),
    }


def gemm_rates(shapes: dict[str, tuple[int, int, int]], *, seconds: float = 1.0, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of ``torch.matmul`` per shape: each repeat runs the product for about ``seconds`` / ``repeats``,
    repeats interleaved across shapes, median kept. The peak is the best shape's median."""
    import torch

    g = torch.Generator().manual_seed(0)
    operands = {
        name: (torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)) for name, (m, k, n) in shapes.items()
    }
    loops = {}
    for name, (a, b) in operands.items():  # warm-up, and how many products fill a repeat's share of time
        torch.matmul(a, b)
        started = time.perf_counter()
        torch.matmul(a, b)
        one = max(time.perf_counter() - started, 1e-6)
        loops[name] = max(1, int(seconds / repeats / one))
    rates: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(repeats):
        for name, (a, b) in operands.items():
            m, k, n = shapes[name]
            started = time.perf_counter()
            for _ in range(loops[name]):
                torch.matmul(a, b)
            rates[name].append(2 * m * k * n * loops[name] / (time.perf_counter() - started) / 1e9)
    medians = {name: common.median(v) for name, v in rates.items()}
    best = max(medians, key=medians.get)
    return {
        "gflops": medians,
        "peak_gflops": medians[best],
        "peak_shape": best,
        "threads": torch.get_num_threads(),
        "dtype": "float32",
        "repeats": repeats,
    }
