"""Speed, part `step`: one training step side by side, and how close it runs to this CPU's matrix-multiply limit.

Same base (``model.base``), batch, max length and device for every variant; each step is what a trainer runs:
tokenise, forward, backward, gradient clipping, AdamW step. Built only through :mod:`jtcse.training.build`:

  simcse           our SimCSE step: ``build_tower_objective(settings, "a")`` (tower A's seed, dropout, pooling)
                   with the ``pretrain`` section's AdamW and clipping, as jtcse's Trainer runs it
  st_simcse        sentence-transformers' own unsupervised SimCSE step on the same base folder: ``SentenceTransformer``
                   (max_seq_length = model.max_length, the pooling of our tower A, train mode: dropout on), the
                   (s, s) pair batch tokenised by ``model.preprocess`` per column as its data collator does,
                   ``MultipleNegativesRankingLoss(scale = 1 / pretrain.temperature)``, fused ``torch.optim.AdamW`` (the
                   transformers Trainer's default), the same clipping: the step a sentence-transformers user would run
  two_towers_nce   both towers of a bridge-less twin, each with its own InfoNCE only (the 'two SimCSE towers' floor)
  twin_no_bridge   ``build_twin_objective`` with ``train.cross_attention.num_layers: 0``: the towers and every loss
  jtcse            ``build_twin_objective(settings, base, base)``: the default JTCSE step (bridge, every loss,
                   ``train.w_cross`` as set), the ``train`` section's AdamW and clipping

Variants run interleaved (a rotating order per repeat); medians. FLOPs are counted once per variant
(:mod:`bench.speed_flops`), the GEMM peak is measured in the same process with the same threads, and one JTCSE
step is profiled (torch.profiler, CPU) to show where its time goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import common, speed_flops

log = logging.getLogger("bench.speed.step")

TITLE = "Training step: ours vs sentence-transformers, JTCSE vs SimCSE, and the machine's limit"
PHASES = ("forward", "backward", "optimizer", "total")
LABELS = {
    "simcse": "our SimCSE step (one tower)",
    "st_simcse": "sentence-transformers SimCSE step (MNRL on (s, s))",
    "two_towers_nce": "two plain towers, InfoNCE only",
    "twin_no_bridge": "two towers + every loss (no bridge)",
    "jtcse": "JTCSE step (bridge + every loss)",
    "jtcse_attention": "JTCSE step, `attention` bridge (the cheapest design)",
}
#: Operators that are matrix multiplies (the work FLOPs count) in a CPU profile.
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention")


@dataclass
class Step:
    """One training step: ``forward()`` gives the loss; then zero_grad, backward, clipping, optimizer step."""

    forward: Callable[[], Any]
    optimizer: Any
    max_grad_norm: float | None
    info: dict = field(default_factory=dict)
    config: Any = None  # the tower's HF config (shapes for the GEMM sizes)

    @property
    def params(self) -> list:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def run(self) -> dict[str, float]:
        import torch

        t0 = time.perf_counter()
        loss = self.forward()
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        t2 = time.perf_counter()
        self.optimizer.step()
        t3 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0}

    def flops(self) -> dict[str, int]:
        self.optimizer.zero_grad(set_to_none=True)
        return speed_flops.step_flops(self.forward, lambda loss: loss.backward())


def _adamw(module, section) -> Any:
    """The optimiser jtcse's Trainer builds (jtcse.training.optimization.make_optimizer)."""
    import torch

    from jtcse.training.optimization import make_optimizer

    return make_optimizer([p for p in module.parameters() if p.requires_grad], section, torch.device("cpu"))


def _st_adamw(module, section) -> Any:
    """sentence-transformers' fit runs the transformers Trainer, whose default optimiser for torch >= 2.8 is
    ``adamw_torch_fused``: torch's fused AdamW."""
    import torch

    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=section.lr, weight_decay=section.weight_decay, fused=True)


def step_settings(settings, batch_size: int, max_length: int):
    from jtcse.config import apply_overrides

    return apply_overrides(
        settings,
        {"model.max_length": max_length, "pretrain.batch_size": batch_size, "train.batch_size": batch_size},
        "bench/speed.py (step sizes)",
    )


def simcse_step(settings, sentences: list[str], device) -> Step:
    from jtcse.training.build import build_tower_objective, tower_optim

    objective = build_tower_objective(settings, "a").to(device).train()
    optim = tower_optim(settings, "a")
    tower = objective.tower.config
    info = {"dropout": tower.hidden_dropout_prob, "attn": tower._attn_implementation, "pooling": objective.pooling}
    return Step(lambda: objective(sentences)["loss"], _adamw(objective, optim), optim.max_grad_norm, info, tower)


def st_simcse_step(settings, sentences: list[str], device) -> Step:
    """sentence-transformers' unsupervised SimCSE step (see the module's doc)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling

    from jtcse.formats import resolve_model_path
    from jtcse.training.build import tower_optim, tower_pooling

    torch.manual_seed(settings.pretrain.tower("a").seed)
    model = SentenceTransformer(resolve_model_path(settings.model.base), device=str(device))
    model.max_seq_length = settings.model.max_length
    pooling = tower_pooling(settings, "a")
    for name, module in list(model.named_children()):
        if isinstance(module, Pooling) and module.pooling_mode != pooling:  # the base folder's own may differ
            model._modules[name] = Pooling(module.embedding_dimension, pooling_mode=pooling)
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model, scale=1.0 / settings.pretrain.temperature)
    optim = tower_optim(settings, "a")

    def features() -> dict:
        batch = model.preprocess(sentences)
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    hf = model[0].auto_model.config
    info = {
        "dropout": hf.hidden_dropout_prob,
        "attn": hf._attn_implementation,
        "pooling": [m.pooling_mode for m in model.children() if isinstance(m, Pooling)],
        "modules": [type(m).__name__ for m in model.children()],
    }
    return Step(lambda: loss_fn([features(), features()], None), _st_adamw(model, optim), optim.max_grad_norm, info)


class _TwoTowersNCE:
    """Both towers of a bridge-less twin with only each tower's InfoNCE: the 'two plain SimCSE towers' floor."""

    def __init__(self, objective, temperature: float):
        from jtcse.losses import InfoNCELoss

        self.objective = objective
        self.nce = InfoNCELoss(temperature)

    def __call__(self, sentences):
        batch = self.objective.views(sentences)
        a, b = self.objective.twin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return self.nce(a.embedding) + self.nce(b.embedding)


def twin_step(
    settings, sentences: list[str], device, *, bridge: bool = True, nce_only: bool = False, mode: str | None = None
) -> Step:
    """The twin stage's step as the settings build it; ``mode`` replaces ``train.cross_attention.mode``."""
    from jtcse.config import apply_overrides
    from jtcse.training.build import build_twin_objective

    if not bridge:
        settings = apply_overrides(settings, {"train.cross_attention.num_layers": 0}, "bench/speed.py (no bridge)")
    if mode is not None:
        settings = apply_overrides(settings, {"train.cross_attention.mode": mode}, "bench/speed.py (bridge mode)")
    base = settings.model.base
    objective = build_twin_objective(settings, base, base).to(device).train()
    t = settings.train
    if nce_only:
        two = _TwoTowersNCE(objective, t.temperature)
        forward = lambda: two(sentences)  # noqa: E731
    else:
        forward = lambda: objective(sentences)["loss"]  # noqa: E731
    info = {"bridged_layers": objective.twin.bridged, "mode": objective.twin.mode, "w_cross": t.w_cross}
    return Step(forward, _adamw(objective, t), t.max_grad_norm, info)


BUILDERS: dict[str, Callable[..., Step]] = {
    "simcse": simcse_step,
    "st_simcse": st_simcse_step,
    "two_towers_nce": lambda s, x, d: twin_step(s, x, d, bridge=False, nce_only=True),
    "twin_no_bridge": lambda s, x, d: twin_step(s, x, d, bridge=False),
    "jtcse": twin_step,
    "jtcse_attention": lambda s, x, d: twin_step(s, x, d, mode="attention"),
}


def time_steps(steps: dict[str, Step], *, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median ms per phase of each step, the steps interleaved in a rotating order."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name].run()
    times: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(steps[name].run())
        log.info(
            "step repeat %d/%d: %s",
            r + 1,
            repeats,
            ", ".join(f"{k} {times[k][-1]['total'] * 1e3:.0f} ms" for k in names),
        )
    return {k: {p: common.median([x[p] for x in v]) * 1e3 for p in PHASES} for k, v in times.items()}


def profile_step(step: Step, top: int = 12) -> dict[str, Any]:
    """Self CPU time of one step by operator (torch.profiler): the share of the matrix multiplies, the top ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step.run()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key.startswith(GEMM_OPS))
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {
        "self_cpu_ms": total / 1e3,
        "gemm_share": gemm / total if total else float("nan"),
        "top": [
            {
                "op": e.key,
                "self_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / total,
                "calls": e.count,
            }
            for e in events[:top]
        ],
    }


def losses_alone_ms(settings, rows: int, hidden: int, bridged: bool, repeats: int) -> float:
    """The stage-2 loss alone (``build_twin_loss``), forward + backward on fixed random tower outputs."""
    import torch

    from jtcse.modeling.twin import TowerOutput
    from jtcse.training.build import build_twin_loss

    loss = build_twin_loss(settings)
    g = torch.Generator().manual_seed(0)

    def outputs():
        make = lambda: torch.randn(rows, hidden, generator=g).requires_grad_()  # noqa: E731
        return TowerOutput(make(), make(), make() if bridged else None)

    times = []
    for _ in range(max(3, repeats)):
        out_a, out_b = outputs(), outputs()
        times.append(common.time_call(lambda: loss(out_a, out_b)["loss"].backward())[0])
    return common.median(times) * 1e3


def measure(ctx) -> dict[str, Any]:
    import torch

    from jtcse.training.trainer import seed_everything

    sizes = ctx.sizes
    batch, length = sizes["step_batch"], sizes["step_max_length"]
    settings = step_settings(ctx.settings, batch, length)
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        seed_everything(settings.train.seed, settings.runtime.deterministic)  # as the Trainer does (process-wide)
        return _measure(settings, sizes, batch, length)
    finally:
        # the later parts run as they would alone
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _measure(settings, sizes: dict, batch: int, length: int) -> dict[str, Any]:
    import torch

    from jtcse.data.readers import read_corpus

    device = torch.device("cpu")
    sentences = read_corpus(settings.data.corpus, batch)[:batch]
    steps = {name: build(settings, sentences, device) for name, build in BUILDERS.items()}
    ms = time_steps(steps, repeats=sizes["step_repeats"], warmup=sizes["step_warmup"])
    flops = {name: step.flops() for name, step in steps.items()}
    config = steps["simcse"].config
    hidden, intermediate = config.hidden_size, config.intermediate_size
    tokens = 2 * batch * length
    gemm = speed_flops.gemm_rates(
        speed_flops.gemm_shapes(tokens, hidden, intermediate, sizes["gemm_square"]),
        seconds=sizes["gemm_seconds"],
        repeats=sizes["gemm_repeats"],
    )
    peak = gemm["peak_gflops"]
    achieved = {k: flops[k]["total"] / (ms[k]["total"] / 1e3) / 1e9 for k in steps}
    profile = profile_step(steps["jtcse"])
    s = ms["simcse"]["total"]
    rows = 2 * batch
    return {
        "device": str(device),
        "base": str(settings.model.base),
        "batch_size": batch,
        "rows_per_tower": rows,
        "max_length": length,
        "threads": torch.get_num_threads(),
        "deterministic": settings.runtime.deterministic,
        "repeats": sizes["step_repeats"],
        "info": {k: v.info for k, v in steps.items()},
        "ms": ms,
        "flops": flops,
        "achieved_gflops": achieved,
        "gemm": gemm,
        "utilisation": {k: v / peak for k, v in achieved.items()},
        "flops_ratio_jtcse_vs_simcse": flops["jtcse"]["total"] / flops["simcse"]["total"],
        "ratio_ours_vs_st": s / ms["st_simcse"]["total"],
        "ratio_jtcse_vs_simcse": ms["jtcse"]["total"] / s,
        "ratio_jtcse_attention_vs_simcse": ms["jtcse_attention"]["total"] / s,
        "parts_in_simcse_steps": {
            "two_plain_towers": ms["two_towers_nce"]["total"] / s,
            "losses_extra": (ms["twin_no_bridge"]["total"] - ms["two_towers_nce"]["total"]) / s,
            "bridge_extra": (ms["jtcse"]["total"] - ms["twin_no_bridge"]["total"]) / s,
        },
        "losses_alone_ms": losses_alone_ms(
            settings, rows, hidden, bool(steps["jtcse"].info["bridged_layers"]), sizes["step_repeats"]
        ),
        "profile_jtcse": profile,
    }


def targets(s: dict) -> list[dict]:
    return [
        {
            "key": "ours_vs_st_step",
            "what": "our SimCSE step time / sentence-transformers' SimCSE step time",
            "value": s["ratio_ours_vs_st"],
            "op": "<=",
            "target": 1.0,
        },
        {
            "key": "jtcse_vs_simcse_step",
            "what": "JTCSE step time / our SimCSE step time",
            "value": s["ratio_jtcse_vs_simcse"],
            "op": "<=",
            "target": 2.2,
        },
        {
            "key": "jtcse_attention_vs_simcse_step",
            "what": "the same with `train.cross_attention.mode: attention` (a setting, not the default)",
            "value": s["ratio_jtcse_attention_vs_simcse"],
            "op": "<=",
            "target": 2.2,
        },
        {
            "key": "jtcse_step_utilisation",
            "what": "JTCSE step's achieved FLOP/s / measured GEMM peak",
            "value": s["utilisation"]["jtcse"],
            "op": ">=",
            "target": 0.5,
        },
    ]


def render(s: dict) -> list[str]:
    ms, gemm = s["ms"], s["gemm"]
    info = s["info"]
    lines = [
        f"Base `{s['base']}` on {s['device']}, {s['threads']} threads, batch {s['batch_size']} "
        f"({s['rows_per_tower']} rows per tower), max length {s['max_length']}; JTCSE: bridged layers "
        f"{info['jtcse']['bridged_layers']} ({info['jtcse']['mode']}), w_cross {info['jtcse']['w_cross']}. "
        f"Tokenise + forward, backward + clipping, AdamW; median of {s['repeats']} interleaved repeats. "
        f"Dropout ours {info['simcse']['dropout']} / sentence-transformers {info['st_simcse']['dropout']}, "
        f"attention {info['simcse']['attn']} / {info['st_simcse']['attn']}, pooling {info['simcse']['pooling']} / "
        f"{info['st_simcse']['pooling']} (modules {info['st_simcse']['modules']}).",
        "",
        "| variant | forward ms | backward ms | optimizer ms | total ms | x our SimCSE | GFLOP | GFLOP/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in LABELS.items():
        m = ms[key]
        lines.append(
            f"| {label} | {m['forward']:.1f} | {m['backward']:.1f} | {m['optimizer']:.1f} | {m['total']:.1f} | "
            f"{m['total'] / ms['simcse']['total']:.2f} | {s['flops'][key]['total'] / 1e9:.1f} | "
            f"{s['achieved_gflops'][key]:.1f} | {s['utilisation'][key]:.2f} |"
        )
    p = s["parts_in_simcse_steps"]
    lines += [
        "",
        f"**Ours / sentence-transformers: {s['ratio_ours_vs_st']:.2f}. JTCSE / SimCSE: "
        f"{s['ratio_jtcse_vs_simcse']:.2f}** (in SimCSE steps: two plain towers {p['two_plain_towers']:.2f} + "
        f"losses {p['losses_extra']:+.2f} + bridge {p['bridge_extra']:+.2f}); its FLOPs are "
        f"{s['flops_ratio_jtcse_vs_simcse']:.2f}x SimCSE's, so at equal efficiency the time ratio would be that. "
        f"The stage-2 losses alone on fixed tower outputs (forward + backward): {s['losses_alone_ms']:.2f} ms.",
        "",
        f"GEMM limit (`torch.matmul`, float32, {gemm['threads']} threads, median of {gemm['repeats']}): "
        + ", ".join(f"{name} {v:.0f}" for name, v in gemm["gflops"].items())
        + f" GFLOP/s; peak **{gemm['peak_gflops']:.0f} GFLOP/s** ({gemm['peak_shape']}). FLOPs: every matrix "
        "multiply of forward + backward, counted by FlopCounterMode (bench/speed_flops.py); the optimizer and "
        "element-wise work are not counted but are in the time.",
    ]
    prof = s["profile_jtcse"]
    lines += [
        "",
        f"Where a JTCSE step's time goes (torch.profiler, one step, self CPU {prof['self_cpu_ms']:.0f} ms; "
        f"matrix multiplies {100 * prof['gemm_share']:.0f} %):",
        "",
        "| operator | self ms | share | calls |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{t['op']}` | {t['self_ms']:.1f} | {100 * t['share']:.1f} % | {t['calls']} |" for t in prof["top"]]
    return lines


def bars(s: dict) -> list[tuple[str, float]]:
    return [
        ("our / sentence-transformers SimCSE step time", s["ratio_ours_vs_st"]),
        ("JTCSE / SimCSE step time", s["ratio_jtcse_vs_simcse"]),
    ]
