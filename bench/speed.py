"""Speed benchmark: four ratios, each measured within one process run.

  loss          vectorised tensor-modulus loss (jtcse.losses.TensorModulusLoss) vs the reference's per-sample loop
                (one .item() device sync per sentence), forward + backward, rows = 2 x batch, hidden 768: speed-up
  step          one JTCSE training step (two towers + bridge + three losses) vs one SimCSE step (one tower), same
                batch and base model, with the parts: two plain towers, the losses, the bridge: cost ratio
  encode        sentences/s of the packaged distilled model with jtcse.load(...).encode vs
                sentence_transformers.SentenceTransformer(...).encode on the same directory, batch 64; twin too
  orchestration a no-change `dvc repro`, and a Prefect flow run of one stage vs calling it directly

    python bench/speed.py                       # everything, full sizes
    python bench/speed.py --quick               # tiny sizes (a minute or two)
    python bench/speed.py --parts loss step --package models/jtcse-minilm-0.1.0

Medians over repeats, repeats interleaved so that a slow patch of a shared machine hits every variant alike.
Writes bench/results/speed.json, speed.md and speed.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

log = logging.getLogger("bench.speed")

PARTS = ("loss", "step", "encode", "orchestration")
FULL = {
    "loss_batches": (64, 256),
    "loss_hidden": 768,
    "loss_repeats": 15,
    "step_repeats": 8,
    "step_warmup": 2,
    "encode_sentences": 2000,
    "encode_repeats": 3,
    "flow_repeats": 3,
    "dvc_repeats": 2,
    "dev_pairs": None,
}
QUICK = {
    "loss_batches": (16, 32),
    "loss_hidden": 64,
    "loss_repeats": 3,
    "step_repeats": 2,
    "step_warmup": 1,
    "encode_sentences": 128,
    "encode_repeats": 1,
    "flow_repeats": 1,
    "dvc_repeats": 1,
    "dev_pairs": 60,
    "step_batch": 4,
    "step_max_length": 16,
}


# --- 1. the modulus loss -----------------------------------------------------------------------------------


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


# --- 2. a training step ------------------------------------------------------------------------------------


class _TwoTowersNCE:
    """Both towers of a bridge-less twin with only each tower's InfoNCE: the 'two plain SimCSE towers' baseline."""

    def __init__(self, objective):
        from jtcse.losses import InfoNCELoss

        self.objective = objective
        self.nce = InfoNCELoss(objective.loss.nce.temperature)

    def __call__(self, sentences):
        batch = self.objective.views(sentences)
        a, b = self.objective.twin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return {"loss": self.nce(a.embedding) + self.nce(b.embedding)}

    def parameters(self):
        return self.objective.parameters()


def bench_step(settings, *, batch_size: int, max_length: int, repeats: int, warmup: int) -> dict[str, Any]:
    import torch

    from jtcse.config import apply_overrides
    from jtcse.data.readers import read_corpus
    from jtcse.encoding import pick_device
    from jtcse.losses import JTCSELoss
    from jtcse.modeling.towers import load_tower
    from jtcse.modeling.twin import TowerOutput
    from jtcse.training.build import build_twin_objective
    from jtcse.training.objectives import SimCSEObjective
    from jtcse.training.trainer import seed_everything

    settings = apply_overrides(settings, {"model.max_length": max_length, "train.batch_size": batch_size})
    device = pick_device(settings.runtime.device)
    autocast = device.type == "cuda" and settings.runtime.bf16
    seed_everything(settings.train.seed, settings.runtime.deterministic)
    sentences = read_corpus(settings.data.corpus, max(batch_size, 2))[:batch_size]
    base, m, t = settings.model.base, settings.model, settings.train
    layers = t.cross_attention.num_layers

    tower, tokenizer = load_tower(
        base, dropout=m.dropout, attn_implementation=m.attn_implementation, trust_remote_code=m.trust_remote_code
    )
    simcse = (
        SimCSEObjective(
            tower,
            tokenizer,
            temperature=t.temperature,
            pooling=m.pooling,
            max_length=max_length,
            eval_max_length=settings.evaluate.max_length,
        )
        .to(device)
        .train()
    )
    jtcse = build_twin_objective(settings, base, base).to(device).train()
    plain = (
        build_twin_objective(apply_overrides(settings, {"train.cross_attention.num_layers": 0}), base, base)
        .to(device)
        .train()
    )
    variants = {"simcse": simcse, "two_towers_nce": _TwoTowersNCE(plain), "twin_no_bridge": plain, "jtcse": jtcse}
    optimizers = {
        k: torch.optim.AdamW([p for p in v.parameters() if p.requires_grad], lr=1e-7) for k, v in variants.items()
    }

    def one_step(name: str) -> dict[str, float]:
        objective, optimizer = variants[name], optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        common.sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            losses = objective(sentences)
        common.sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if t.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        common.sync(device)
        t2 = time.perf_counter()
        optimizer.step()
        common.sync(device)
        t3 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "total": t3 - t0}

    for _ in range(warmup):
        for name in variants:
            one_step(name)
    times: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(repeats):
        for name in variants:
            times[name].append(one_step(name))
        log.info(
            "training step repeat %d/%d: %s",
            r + 1,
            repeats,
            ", ".join(f"{k} {times[k][-1]['total'] * 1e3:.0f} ms" for k in variants),
        )
    med = {
        k: {
            phase: common.median([x[phase] for x in v]) * 1e3 for phase in ("forward", "backward", "optimizer", "total")
        }
        for k, v in times.items()
    }

    # The losses alone (forward + backward on fixed tower outputs), for the record.
    hidden = tower.config.hidden_size
    rows = 2 * batch_size
    g = torch.Generator().manual_seed(0)

    def outputs():
        make = lambda: torch.randn(rows, hidden, generator=g).to(device).requires_grad_()  # noqa: E731
        return TowerOutput(make(), make(), make() if layers else None), TowerOutput(
            make(), make(), make() if layers else None
        )

    loss = JTCSELoss(
        w_nce=t.w_nce,
        w_icnce=t.w_icnce,
        w_tm=t.w_tm,
        temperature=t.temperature,
        icnce_direction=t.icnce_direction,
        modulus_on=t.modulus_on,
        tm_clamp=t.tm_clamp,
    )
    loss_times = []
    for _ in range(max(3, repeats)):
        out_a, out_b = outputs()
        loss_times.append(common.time_call(lambda: loss(out_a, out_b)["loss"].backward(), device)[0])
    losses_alone = common.median(loss_times) * 1e3

    s = med["simcse"]["total"]
    parts = {
        "two_plain_towers": med["two_towers_nce"]["total"] / s,
        "losses_extra": (med["twin_no_bridge"]["total"] - med["two_towers_nce"]["total"]) / s,
        "bridge_extra": (med["jtcse"]["total"] - med["twin_no_bridge"]["total"]) / s,
    }
    return {
        "device": str(device),
        "bf16_autocast": autocast,
        "base": str(base),
        "batch_size": batch_size,
        "rows_per_tower": rows,
        "max_length": max_length,
        "bridged_layers": layers,
        "cross_attention_mode": t.cross_attention.mode,
        "modulus_on": t.modulus_on,
        "repeats": repeats,
        "ms": med,
        "losses_alone_ms": losses_alone,
        "ratio": med["jtcse"]["total"] / s,
        "parts_in_simcse_steps": parts,
        "over_two": med["jtcse"]["total"] / s - 2.0,
    }


# --- 3. encoding throughput --------------------------------------------------------------------------------


def sts_sentences(sts_dir: Path, n: int) -> list[str]:
    from jtcse.data.readers import read_sts
    from jtcse.evaluation.sts import STS_TASKS

    seen: dict[str, None] = {}
    for name in STS_TASKS.values():
        pairs = read_sts(Path(sts_dir) / name)
        for a, b in zip(pairs.sentence1, pairs.sentence2):
            seen.setdefault(a)
            seen.setdefault(b)
            if len(seen) >= n:
                return list(seen)[:n]
    return list(seen)


def build_st_dir(base: str, directory: Path, pooling: str = "cls", max_seq_length: int = 128) -> Path:
    """A sentence-transformers folder with no custom code: the HF files at the root, modules.json listing
    Transformer + Pooling, 1_Pooling/config.json, sentence_bert_config.json (the portable layout of docs/STACK.md, as `jtcse package` writes it)."""
    from jtcse.modeling.towers import load_tower, save_tower

    model, tokenizer = load_tower(base)
    save_tower(model, tokenizer, directory)
    (directory / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ],
            indent=2,
        ),
        encoding="utf-8",
    )
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": model.config.hidden_size,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False,
                "pooling_mode_lasttoken": False,
                "include_prompt": True,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}), encoding="utf-8"
    )
    return directory


def package_parts(package: Path) -> tuple[Path, Path | None]:
    """(distilled sentence-transformers dir, twin dir or None) of a package, a bare model dir, or a twin."""
    entry = package / "jtcse_package.json"
    if entry.is_file():
        manifest = json.loads(entry.read_text(encoding="utf-8"))
        distilled = package / manifest.get("default", "distilled")
    elif (package / "distilled").is_dir():
        distilled = package / "distilled"
    else:
        distilled = package
    twin = package / "twin" if (package / "twin" / "twin.json").is_file() else None
    return distilled, twin


def bench_encode(settings, *, package: str | None, n: int, batch_size: int, repeats: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    import jtcse
    from jtcse.encoding import TowerEncoder, TwinEncoder, pick_device

    device = pick_device(settings.runtime.device)
    sentences = sts_sentences(settings.data.sts_dir, n)
    tmp = None
    notes = []
    if package:
        pkg = Path(package)
        if not pkg.exists():
            raise SystemExit(f"--package {pkg}: no such folder")
        st_dir, twin_dir = package_parts(pkg)
        jtcse_path = pkg  # jtcse.load resolves the package's default model (checksums verified at load)
        source = f"package {pkg}"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="jtcse-st-")
        st_dir = build_st_dir(settings.model.base, Path(tmp.name) / "st", "cls", settings.evaluate.max_length)
        jtcse_path, twin_dir = st_dir, None
        source = f"temporary sentence-transformers dir built from the base model {settings.model.base} (cls pooling)"
        notes.append(
            "no --package: the distilled model is stood in for by the base model; the twin by two copies of it"
        )
    try:
        st = SentenceTransformer(str(st_dir), device=str(device))
        max_length = int(st.max_seq_length)
        ours = jtcse.load(str(jtcse_path), device=str(device), max_length=max_length)
        if twin_dir is not None:
            twin = jtcse.load(str(twin_dir), device=str(device), max_length=max_length)
        else:
            tower = TowerEncoder.from_pretrained(str(st_dir), "cls", max_length, str(device))
            twin = TwinEncoder(tower, TowerEncoder.from_pretrained(str(st_dir), "cls", max_length, str(device)))
        variants = {
            "jtcse_distilled": lambda: ours.encode(sentences, batch_size=batch_size),
            "sentence_transformers": lambda: st.encode(
                sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
            ),
            "jtcse_twin": lambda: twin.encode(sentences, batch_size=batch_size),
        }
        probe = sentences[:batch_size]
        a = ours.encode(probe, batch_size=batch_size)
        b = st.encode(probe, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        twin.encode(probe, batch_size=batch_size)  # warm-up of every variant
        diff = float(np.abs(a - b).max())
        times: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(repeats):
            for name, fn in variants.items():
                times[name].append(common.time_call(fn, device)[0])
            log.info(
                "encode repeat %d/%d: %s",
                r + 1,
                repeats,
                ", ".join(f"{k} {len(sentences) / times[k][-1]:.0f}/s" for k in variants),
            )
        rates = {k: len(sentences) / common.median(v) for k, v in times.items()}
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "device": str(device),
        "source": source,
        "sentences": len(sentences),
        "batch_size": batch_size,
        "max_length": max_length,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "sentences_per_s": rates,
        "ratio_jtcse_vs_st": rates["jtcse_distilled"] / rates["sentence_transformers"],
        "twin_vs_distilled": rates["jtcse_twin"] / rates["jtcse_distilled"],
        "max_abs_diff_jtcse_vs_st": diff,
        "notes": notes,
    }


# --- 4. orchestration overhead -----------------------------------------------------------------------------


def _venv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def bench_dvc(project_dir: Path, repeats: int) -> dict[str, Any]:
    project_dir = Path(project_dir).resolve()
    if not (project_dir / "dvc.lock").is_file():
        return {
            "skipped": f"{project_dir}/dvc.lock is absent: the pipeline has not been reproduced, so a no-change "
            "`dvc repro` cannot be measured"
        }
    dvc = [sys.executable, "-m", "dvc"]
    started = time.perf_counter()
    status = subprocess.run(
        [*dvc, "status", "--json"], cwd=project_dir, capture_output=True, text=True, env=_venv_env()
    )
    status_s = time.perf_counter() - started
    if status.returncode != 0:
        return {
            "skipped": f"`dvc status` failed ({status.returncode}): {status.stderr.strip()[-400:]}",
            "status_s": status_s,
        }
    try:
        changed = json.loads(status.stdout.strip() or "{}")
    except json.JSONDecodeError:
        changed = {"unparsed": status.stdout.strip()[-400:]}
    if changed:
        # A repro now would run real stages (possibly hours of training): never do that from a benchmark.
        return {
            "skipped": "the pipeline is not up to date (`dvc status` lists changes in "
            f"{', '.join(sorted(changed))[:300]}); run `dvc repro` first",
            "status_s": status_s,
        }
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        proc = subprocess.run([*dvc, "repro"], cwd=project_dir, capture_output=True, text=True, env=_venv_env())
        runs.append(time.perf_counter() - started)
        if proc.returncode != 0:
            return {
                "skipped": f"`dvc repro` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}",
                "status_s": status_s,
            }
        log.info("no-change dvc repro: %.2f s", runs[-1])
    return {"project_dir": str(project_dir), "status_s": status_s, "repro_s": common.median(runs), "repro_runs_s": runs}


def evaluate_stage(model: str, sts_dir: str, pooling: str, max_length: int, batch_size: int, device: str) -> dict:
    """The stage both ways run: `jtcse evaluate` of a model on STS-B dev, as a library call."""
    from jtcse.encoding import TowerEncoder
    from jtcse.evaluation.sts import DEV_TASKS, STSEvaluator

    encoder = TowerEncoder.from_pretrained(model, pooling, max_length, device)
    return STSEvaluator(sts_dir, {"stsb_dev": DEV_TASKS["stsb_dev"]}, batch_size=batch_size)(encoder)


def bench_prefect(settings, *, repeats: int, dev_pairs: int | None) -> dict[str, Any]:
    from jtcse.formats import resolve_model_path

    home = tempfile.TemporaryDirectory(prefix="jtcse-prefect-")
    sts = tempfile.TemporaryDirectory(prefix="jtcse-stsdev-")
    saved = {
        k: os.environ.get(k)
        for k in ("PREFECT_HOME", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "PREFECT_API_URL")
    }
    os.environ["PREFECT_HOME"] = home.name
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    os.environ.pop("PREFECT_API_URL", None)
    try:
        dev_file = Path(settings.data.sts_dir) / "stsb.dev.tsv"
        lines = dev_file.read_text(encoding="utf-8").splitlines()
        if dev_pairs:
            lines = lines[: dev_pairs + 1]
        (Path(sts.name) / "stsb.dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        kwargs = dict(
            model=resolve_model_path(settings.model.base),
            sts_dir=sts.name,
            pooling=settings.model.pooling,
            max_length=settings.evaluate.max_length,
            batch_size=settings.evaluate.batch_size,
            device=settings.runtime.device,
        )

        started = time.perf_counter()
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE
        from prefect.testing.utilities import prefect_test_harness

        import_s = time.perf_counter() - started
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per API request otherwise

        @task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
        def evaluate_task(**kw):
            return evaluate_stage(**kw)

        @flow(name="bench-evaluate", persist_result=False)
        def evaluate_flow(**kw):
            return evaluate_task(**kw)

        @flow(name="bench-noop", persist_result=False)
        def noop_flow():
            return None

        direct_first, result = common.time_call(lambda: evaluate_stage(**kwargs))  # warms file caches and imports
        started = time.perf_counter()
        with prefect_test_harness(server_startup_timeout=120):
            server_s = time.perf_counter() - started
            first_flow_s = common.time_call(noop_flow)[0]  # flow registration and the client's first contact
            direct, flowed = [], []
            for r in range(repeats):
                d, direct_result = common.time_call(lambda: evaluate_stage(**kwargs))
                f, flow_result = common.time_call(lambda: evaluate_flow(**kwargs))
                direct.append(d)
                flowed.append(f)
                log.info("prefect repeat %d/%d: direct %.2f s, flow %.2f s", r + 1, repeats, d, f)
            noop = [common.time_call(noop_flow)[0] for _ in range(repeats)]
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        home.cleanup()
        sts.cleanup()
    d, f = common.median(direct), common.median(flowed)
    return {
        "stage": "evaluate the base model on STS-B dev" + (f" (first {dev_pairs} pairs)" if dev_pairs else ""),
        "pairs": len(lines) - 1,
        "stsb_dev": result.get("stsb_dev"),
        "same_result": abs(flow_result["stsb_dev"] - direct_result["stsb_dev"]) < 1e-9,
        "prefect_import_s": import_s,
        "server_startup_s": server_s,
        "first_flow_run_s": first_flow_s,
        "direct_first_call_s": direct_first,
        "direct_s": d,
        "flow_s": f,
        "overhead_s": f - d,
        "overhead_pct": 100.0 * (f - d) / d,
        "empty_flow_s": common.median(noop),
        "repeats": repeats,
        "direct_runs_s": direct,
        "flow_runs_s": flowed,
    }


# --- report ------------------------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Speed benchmark",
        "",
        f"Hardware: {env['hardware']} (torch {env['torch']}, {env['torch_threads']} threads, load average "
        f"{env.get('load_average')}); commit `{env['git_commit'][:12]}`; {env['created']}"
        f"{'; --quick sizes' if report['quick'] else ''}.",
        "",
    ]
    if "loss" in report:
        loss = report["loss"]
        agree = loss["agreement"]
        lines += [
            "## 1. Tensor-modulus loss: vectorised vs per-sample loop",
            "",
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
        lines.append("")
    if "step" in report:
        s = report["step"]
        ms = s["ms"]
        names = {
            "simcse": "SimCSE step (one tower)",
            "two_towers_nce": "two plain towers, InfoNCE only",
            "twin_no_bridge": "two towers + the three losses (no bridge)",
            "jtcse": "JTCSE step (bridge + losses)",
        }
        lines += [
            "## 2. Training step: JTCSE vs SimCSE",
            "",
            f"Base `{s['base']}` on {s['device']} (bf16 autocast: {s['bf16_autocast']}), batch {s['batch_size']} "
            f"({s['rows_per_tower']} rows per tower), max length {s['max_length']}, {s['bridged_layers']} bridged "
            f"layer(s) ({s['cross_attention_mode']}), modulus on {s['modulus_on']}; forward + backward (+ clipping) "
            f"+ AdamW, median of {s['repeats']}.",
            "",
            "| variant | forward ms | backward ms | optimizer ms | total ms | x SimCSE |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, label in names.items():
            m = ms[key]
            lines.append(
                f"| {label} | {m['forward']:.1f} | {m['backward']:.1f} | {m['optimizer']:.1f} | {m['total']:.1f} "
                f"| {m['total'] / ms['simcse']['total']:.2f} |"
            )
        p = s["parts_in_simcse_steps"]
        lines += [
            "",
            f"**Cost ratio JTCSE / SimCSE: {s['ratio']:.2f}** (in SimCSE steps: two plain towers "
            f"{p['two_plain_towers']:.2f} + losses {p['losses_extra']:+.2f} + bridge {p['bridge_extra']:+.2f}). "
            f"Over 2.0: {s['over_two']:+.2f}, of which the second tower's own overhead "
            f"{p['two_plain_towers'] - 2:+.2f}, the interaction and modulus losses (and the pooler) "
            f"{p['losses_extra']:+.2f}, the cross-attention bridge {p['bridge_extra']:+.2f}. "
            f"The three losses alone on fixed tower outputs (forward + backward): {s['losses_alone_ms']:.2f} ms.",
            "",
        ]
    if "encode" in report:
        e = report["encode"]
        r = e["sentences_per_s"]
        lines += [
            "## 3. Encoding throughput",
            "",
            f"{e['sentences']} distinct STS sentences, batch {e['batch_size']}, max length {e['max_length']}, "
            f"{e['device']}, median of {e['repeats']}; {e['source']}.",
            "",
            "| encoder | sentences/s |",
            "|---|---:|",
            f"| jtcse.load(...).encode, distilled | {r['jtcse_distilled']:.1f} |",
            f"| SentenceTransformer(...).encode, same dir | {r['sentence_transformers']:.1f} |",
            f"| jtcse twin (two towers, summed) | {r['jtcse_twin']:.1f} |",
            "",
            f"**jtcse / sentence-transformers: {e['ratio_jtcse_vs_st']:.2f}** (aim: >= 1); twin / distilled "
            f"{e['twin_vs_distilled']:.2f}. Same vectors: max |diff| {e['max_abs_diff_jtcse_vs_st']:.1e}.",
        ]
        lines += [f"Note: {n}." for n in e["notes"]] + [""]
    if "orchestration" in report:
        o = report["orchestration"]
        lines += ["## 4. Orchestration overhead", ""]
        dvc = o["dvc"]
        if "skipped" in dvc:
            lines.append(f"- `dvc repro` (no change): skipped: {dvc['skipped']}.")
        else:
            lines.append(
                f"- `dvc repro` with nothing changed: **{dvc['repro_s']:.2f} s** (median of "
                f"{len(dvc['repro_runs_s'])}; `dvc status` {dvc['status_s']:.2f} s) in `{dvc['project_dir']}`."
            )
        pf = o["prefect"]
        if "skipped" in pf:
            lines.append(f"- Prefect: skipped: {pf['skipped']}.")
        else:
            lines += [
                f"- Prefect flow (one task) vs direct call of the same stage ({pf['stage']}, {pf['pairs']} pairs): "
                f"direct {pf['direct_s']:.2f} s, flow {pf['flow_s']:.2f} s: **overhead {pf['overhead_s']:.2f} s = "
                f"{pf['overhead_pct']:.1f} %** of the stage (median of {pf['repeats']}; same result: "
                f"{pf['same_result']}). An empty flow run: {pf['empty_flow_s']:.2f} s.",
                f"- Not in the per-run overhead: temporary server start-up {pf['server_startup_s']:.1f} s, first "
                f"flow run {pf['first_flow_run_s']:.2f} s, `import prefect` {pf['prefect_import_s']:.1f} s.",
            ]
        lines.append("")
    return "\n".join(lines)


def render_plot(report: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars: list[tuple[str, float]] = []
    for r in report.get("loss", {}).get("rows", []):
        bars.append((f"TM loss speed-up, batch {r['batch']}", r["speedup"]))
    if "step" in report:
        bars.append(("JTCSE / SimCSE step cost", report["step"]["ratio"]))
    if "encode" in report:
        bars.append(("jtcse / sentence-transformers enc. rate", report["encode"]["ratio_jtcse_vs_st"]))
    pf = report.get("orchestration", {}).get("prefect", {})
    if "overhead_s" in pf:
        bars.append(("Prefect flow / direct time", pf["flow_s"] / pf["direct_s"]))
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(bars) + 1.2))
    labels, values = zip(*bars)
    ax.barh(labels, values, color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(1.0, color="grey", lw=0.8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("ratio (log scale)")
    ax.invert_yaxis()
    common.write_png(fig, path)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> dict:
    import torch

    from jtcse.io import atomic_write_json, atomic_write_text

    sizes = dict(FULL)
    if args.quick:
        sizes.update(QUICK)
    settings = common.load_bench_settings(args.params, common.parse_set(args.set))
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    parts = list(dict.fromkeys(args.parts or PARTS))
    out = Path(args.out)
    report: dict[str, Any] = {
        "benchmark": "speed",
        "quick": bool(args.quick),
        "parts": parts,
        "settings": common.settings_dict(settings),
        "overrides": common.parse_set(args.set),
    }
    if "loss" in parts:
        device = args.loss_device or ("cuda" if torch.cuda.is_available() else "cpu")
        report["loss"] = bench_loss(
            tuple(args.loss_batches or sizes["loss_batches"]),
            sizes["loss_hidden"],
            sizes["loss_repeats"],
            device=device,
        )
        report["loss"]["agreement"] = loss_agreement()
    if "step" in parts:
        report["step"] = bench_step(
            settings,
            batch_size=args.batch_size or sizes.get("step_batch", settings.train.batch_size),
            max_length=args.max_length or sizes.get("step_max_length", settings.model.max_length),
            repeats=sizes["step_repeats"],
            warmup=sizes["step_warmup"],
        )
    if "encode" in parts:
        report["encode"] = bench_encode(
            settings,
            package=args.package,
            n=args.sentences or sizes["encode_sentences"],
            batch_size=64,
            repeats=sizes["encode_repeats"],
        )
    if "orchestration" in parts:
        report["orchestration"] = {"dvc": bench_dvc(Path(args.project_dir), sizes["dvc_repeats"])}
        try:
            report["orchestration"]["prefect"] = bench_prefect(
                settings, repeats=sizes["flow_repeats"], dev_pairs=sizes["dev_pairs"]
            )
        except ImportError as err:  # pragma: no cover - prefect is a project dependency
            report["orchestration"]["prefect"] = {"skipped": f"prefect not importable: {err}"}
    report["environment"] = common.environment()
    atomic_write_json(out / "speed.json", report)
    atomic_write_text(out / "speed.md", render_markdown(report))
    plotted = render_plot(report, out / "speed.png")
    log.info("wrote %s, %s%s", out / "speed.json", out / "speed.md", f", {out / 'speed.png'}" if plotted else "")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--parts", nargs="+", choices=PARTS, help="which measurements (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repeats, to check the script works")
    p.add_argument("--params", default=str(common.REPO / "params.yaml"), help="settings file (default: params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting (repeatable)")
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument("--loss-batches", nargs="+", type=int, help="batches of the loss benchmark (default: 64 256)")
    p.add_argument(
        "--loss-device", choices=["cpu", "cuda"], help="device of the loss benchmark (default: cuda if present)"
    )
    p.add_argument("--batch-size", type=int, help="training-step batch (default: train.batch_size)")
    p.add_argument("--max-length", type=int, help="training-step max length (default: model.max_length)")
    p.add_argument(
        "--package",
        help="packaged model folder models/<name>-<version> (default: a temporary "
        "sentence-transformers dir built from the base model)",
    )
    p.add_argument("--sentences", type=int, help="STS sentences to encode (default: 2000)")
    p.add_argument("--project-dir", default=".", help="DVC project of the no-change `dvc repro` (default: .)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
