"""GPU check for an NVIDIA H200 (or any CUDA GPU), called by bench/gpu_check.sh; see that script's header.

Three measurements (and the modulus-loss comparison of bench/speed.py on the GPU), each printed and written to bench/results/gpu.md (+ gpu.json), and to $OUT when it is set:

  1. training step time and peak memory of a bert-base-sized tower (BertConfig() defaults: 12 layers x 768, random
     init, no download; random token ids of shape (2 x batch, 64)) at batch 64 and 256, bf16 autocast: one tower
     (SimCSE), the twin without bridge, and the JTCSE twin with the cross-attention bridge (6 of 12 layers);
  2. encoding throughput (sentences/s) in bf16 and fp32: the bert-base tower on random ids, and, when the MiniLM
     weights are carried, jtcse's TowerEncoder on the real STS-B dev sentences (with the dev Spearman of both);
  3. a short real training of the MiniLM base (SimCSE tower A, tower B, then the JTCSE twin) with its STS-B dev
     Spearman, from bench/.carry (made here by `bash bench/gpu_check.sh --prepare`).

Depends only on what the device image has (torch, transformers, scipy, numpy, tqdm, pyyaml): the parts of jtcse
used here (jtcse.modeling, jtcse.formats, jtcse.io) need no pydantic; only ``default_bridge_mode`` reads
jtcse.config.

``--cpu-smoke`` runs everything at a tiny size on the CPU (under a minute) to check the script works.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jtcse.io import atomic_write_text  # noqa: E402  (after the sys.path set-up above)

log = logging.getLogger("bench.gpu_check")

CARRY = REPO / "bench" / ".carry"


def default_bridge_mode() -> str:
    """The bridge design the GPU check measures: the project's default, read from jtcse.config."""
    from jtcse.config.sections import CrossAttentionSettings

    return CrossAttentionSettings().mode


# --- 1. training steps -------------------------------------------------------------------------------------


def _views(batch: int, length: int, vocab: int, device, seed: int = 0):
    """Random token ids, each 'sentence' fed twice (rows 2k, 2k+1), [CLS] ... [SEP], no padding."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    ids = ids.repeat_interleave(2, 0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "token_type_ids": torch.zeros_like(ids).to(device),
    }


def build_variant(name: str, config_kwargs: dict, num_ca_layers: int, device):
    """(module, loss function of a batch) for one tower, twin without bridge, or the JTCSE twin."""
    import torch
    from transformers import BertConfig, BertModel

    from jtcse.losses import InfoNCELoss, JTCSELoss
    from jtcse.modeling.twin import BridgedTwin

    def tower():
        with torch.device(device):
            return BertModel(BertConfig(**config_kwargs, attn_implementation="sdpa"), add_pooling_layer=True)

    if name == "one_tower":
        model, nce = tower(), InfoNCELoss(0.05)

        def loss(batch):
            return nce(model(**batch).last_hidden_state[:, 0])

        return model, loss
    layers = num_ca_layers if name == "jtcse_twin" else 0
    model = BridgedTwin(tower(), tower(), num_ca_layers=layers, mode=default_bridge_mode(), pooling="cls")
    jtcse_loss = JTCSELoss()

    def loss(batch):
        out_a, out_b = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return jtcse_loss(out_a, out_b)["loss"]

    return model, loss


def _time_variant(
    name: str, batch: dict, device, config_kwargs: dict, num_ca_layers: int, steps: int, warmup: int, bf16: bool
) -> tuple[float, float, float]:
    """(seconds per step, last loss, parameters in millions) of one variant; everything it allocates is freed when it returns."""
    import torch

    torch.manual_seed(0)
    model, loss_fn = build_variant(name, config_kwargs, num_ca_layers, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss

    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        last = step()
    _sync(device)
    return (time.perf_counter() - started) / steps, float(last.detach()), sum(p.numel() for p in params) / 1e6


def bench_training_steps(
    device, config_kwargs: dict, batches, length: int, steps: int, warmup: int, num_ca_layers: int, bf16: bool
) -> list[dict]:
    import torch

    cuda = device.type == "cuda"
    rows = []
    for batch_size in batches:
        batch = _views(batch_size, length, config_kwargs.get("vocab_size", 30522), device)
        for name in ("one_tower", "twin_no_bridge", "jtcse_twin"):
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            seconds, loss, params_m = _time_variant(
                name, batch, device, config_kwargs, num_ca_layers, steps, warmup, bf16
            )
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            rows.append(
                {
                    "batch": batch_size,
                    "rows": 2 * batch_size,
                    "variant": name,
                    "ms_per_step": seconds * 1e3,
                    "sentences_per_s": batch_size / seconds,
                    "peak_gib": peak,
                    "loss": loss,
                    "params_m": params_m,
                }
            )
            log.info(
                "step %-14s batch %3d: %.1f ms/step, %.0f sentences/s, peak %s GiB",
                name,
                batch_size,
                seconds * 1e3,
                batch_size / seconds,
                f"{peak:.2f}" if peak is not None else "n/a",
            )
    for row in rows:
        ref = next(r for r in rows if r["batch"] == row["batch"] and r["variant"] == "one_tower")
        row["x_one_tower"] = row["ms_per_step"] / ref["ms_per_step"]
    return rows


# --- 2. encoding throughput --------------------------------------------------------------------------------


def bench_encode_random(device, config_kwargs: dict, n: int, batch: int, length: int) -> list[dict]:
    import torch
    from transformers import BertConfig, BertModel

    with torch.device(device):
        model = BertModel(BertConfig(**config_kwargs, attn_implementation="sdpa"), add_pooling_layer=False).eval()
    ids = _views(batch // 2, length, config_kwargs.get("vocab_size", 30522), device)
    out = []
    for bf16 in (True, False):

        def run(batches: int):
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for _ in range(batches):
                    model(**ids).last_hidden_state[:, 0].float()

        run(2)
        n_batches = max(1, n // batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        run(n_batches)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        cfg = model.config
        out.append(
            {
                "model": f"{cfg.num_hidden_layers}x{cfg.hidden_size} BERT (random init), random ids",
                "dtype": "bf16" if bf16 else "fp32",
                "batch": batch,
                "length": length,
                "sentences": n_batches * batch,
                "sentences_per_s": n_batches * batch / seconds,
            }
        )
        log.info("encode random ids %s: %.0f sentences/s", out[-1]["dtype"], out[-1]["sentences_per_s"])
    return out


def _autocast_encoder(encoder, device, enabled: bool):
    """Wrap an Encoder's embed in bf16 autocast (jtcse's encode itself has no precision option)."""
    import torch

    embed = encoder.embed

    def wrapped(sentences):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled):
            return embed(sentences)

    encoder.embed = wrapped
    return encoder


def bench_encode_real(device, model_dir: Path, sts_dir: Path, batch: int, dev_pairs: int | None) -> list[dict]:
    from jtcse.encoding import TowerEncoder

    evaluator = _dev_evaluator(sts_dir, dev_pairs, batch)
    sentences = sorted({s for p in evaluator.pairs.values() for s in (*p.sentence1, *p.sentence2)})
    out = []
    for bf16 in (True, False):
        model, tokenizer = _load_float32(model_dir)
        encoder = _autocast_encoder(TowerEncoder(model.to(device).eval(), tokenizer, "cls", 128, device), device, bf16)
        encoder.encode(sentences[:batch], batch_size=batch)
        _sync(device)
        started = time.perf_counter()
        encoder.encode(sentences, batch_size=batch)
        _sync(device)
        seconds = time.perf_counter() - started
        dev = evaluator(encoder)["stsb_dev"]
        out.append(
            {
                "model": "MiniLM (jtcse TowerEncoder, cls)",
                "dtype": "bf16" if bf16 else "fp32",
                "batch": batch,
                "length": "as tokenized (<= 128)",
                "sentences": len(sentences),
                "sentences_per_s": len(sentences) / seconds,
                "stsb_dev": dev,
            }
        )
        log.info(
            "encode MiniLM STS-B dev %s: %.0f sentences/s, dev %.2f", out[-1]["dtype"], out[-1]["sentences_per_s"], dev
        )
        del model, encoder
    return out


# --- 3. short real training --------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _load_float32(path: Path):
    """load_tower, then float32 weights (the carried MiniLM is stored in fp16 to fit the transfer limit)."""
    from jtcse.modeling.towers import load_tower

    model, tokenizer = load_tower(str(path))
    return model.float(), tokenizer


def _dev_evaluator(sts_dir: Path, dev_pairs: int | None, batch: int):
    import tempfile

    from jtcse.evaluation.sts import DEV_TASKS, STSEvaluator

    if dev_pairs:
        folder = Path(tempfile.mkdtemp(prefix="gpu-check-dev-"))
        lines = (Path(sts_dir) / DEV_TASKS["stsb_dev"]).read_text(encoding="utf-8").splitlines()[: dev_pairs + 1]
        (folder / DEV_TASKS["stsb_dev"]).write_text("\n".join(lines) + "\n", encoding="utf-8")
        sts_dir = folder
    return STSEvaluator(sts_dir, {"stsb_dev": DEV_TASKS["stsb_dev"]}, batch_size=batch)


def _train(
    objective,
    sentences,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    eval_every: int,
    evaluator,
    device,
    bf16: bool,
    desc: str,
) -> dict:
    """The trainer's loop without its files: AdamW, bf16 autocast, clipping 1.0, dev every eval_every, best kept."""
    import torch

    from jtcse.data.readers import SentenceStream

    torch.manual_seed(seed)
    stream = SentenceStream(sentences, batch, seed)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)

    def dev() -> float:
        objective.eval()
        try:
            return evaluator(objective.dev_encoder())["stsb_dev"]
        finally:
            objective.train()

    objective.train()
    initial = dev()
    best, best_step, best_state = (
        initial,
        0,
        copy.deepcopy({k: v.detach().cpu() for k, v in objective.state_dict().items()}),
    )
    curve = [(0, initial)]
    _sync(device)
    started = time.perf_counter()
    train_seconds = 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = objective(stream.batch(step - 1))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            _sync(device)
            train_seconds += time.perf_counter() - t0
            metric = dev()
            curve.append((step, metric))
            if metric > best:
                best, best_step = metric, step
                best_state = {k: v.detach().cpu().clone() for k, v in objective.state_dict().items()}
            log.info(
                "%s step %d: loss %.4f, dev %.2f (best %.2f at %d)", desc, step, loss.item(), metric, best, best_step
            )
        else:
            train_seconds += time.perf_counter() - t0
    _sync(device)
    wall = time.perf_counter() - started
    final = curve[-1][1]
    objective.load_state_dict(best_state)
    return {
        "stage": desc,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "initial_dev": initial,
        "final_dev": final,
        "best_dev": best,
        "best_step": best_step,
        "wall_s": wall,
        "ms_per_step": 1e3 * train_seconds / steps,
        "curve": curve,
    }


def short_training(
    device,
    model_dir: Path,
    sts_dir: Path,
    corpus: Path,
    *,
    steps: int,
    twin_steps: int,
    batch: int,
    max_length: int,
    eval_every: int,
    num_ca_layers: int,
    bf16: bool,
    dev_pairs: int | None,
    max_sentences: int | None,
) -> dict:
    from jtcse.data.readers import read_corpus
    from jtcse.encoding import TowerEncoder
    from jtcse.losses import JTCSELoss
    from jtcse.modeling.twin import BridgedTwin, bridge_layer_counts
    from jtcse.training.objectives import JTCSEObjective, SimCSEObjective

    evaluator = _dev_evaluator(sts_dir, dev_pairs, 256)
    sentences = read_corpus(corpus, max_sentences)
    zero_shot = {}
    for pooling in ("cls", "mean"):
        model, tokenizer = _load_float32(model_dir)
        zero_shot[pooling] = evaluator(TowerEncoder(model.to(device).eval(), tokenizer, pooling, 128, device))[
            "stsb_dev"
        ]
        del model
    log.info("zero-shot STS-B dev: cls %.2f, mean %.2f", zero_shot["cls"], zero_shot["mean"])
    stages, towers = [], {}
    for which, seed in (("a", 1), ("b", 2)):
        model, tokenizer = _load_float32(model_dir)
        objective = SimCSEObjective(
            model, tokenizer, temperature=0.05, pooling="cls", max_length=max_length, eval_max_length=128
        ).to(device)
        stages.append(
            _train(
                objective,
                sentences,
                steps=steps,
                batch=batch,
                lr=2e-5,
                seed=seed,
                eval_every=eval_every,
                evaluator=evaluator,
                device=device,
                bf16=bf16,
                desc=f"SimCSE tower {which}",
            )
        )
        towers[which] = objective.tower
    layers = towers["a"].config.num_hidden_layers
    num_ca_layers = num_ca_layers if num_ca_layers in bridge_layer_counts(layers)[1:] else max(1, layers // 2)
    twin = BridgedTwin(towers["a"], towers["b"], num_ca_layers=num_ca_layers, mode=default_bridge_mode(), pooling="cls")
    objective = JTCSEObjective(twin, tokenizer, JTCSELoss(), max_length=max_length, eval_max_length=128).to(device)
    stages.append(
        _train(
            objective,
            sentences,
            steps=twin_steps,
            batch=batch,
            lr=1e-5,
            seed=42,
            eval_every=eval_every,
            evaluator=evaluator,
            device=device,
            bf16=bf16,
            desc="JTCSE twin",
        )
    )
    del objective, twin, towers
    gc.collect()
    return {
        "zero_shot_dev": zero_shot,
        "stages": stages,
        "dev_pairs": len(evaluator.pairs["stsb_dev"]),
        "corpus_sentences": len(sentences),
        "max_length": max_length,
        "bridged_layers": num_ca_layers,
    }


# --- report ------------------------------------------------------------------------------------------------


def environment(device) -> dict:
    import torch
    import transformers

    info = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(),
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = "unknown"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
    return info


def render_markdown(report: dict) -> str:
    env = report["environment"]
    cfg = report["config"]
    lines = [
        "# GPU check",
        "",
        f"{env.get('gpu') or env['device']} ({env.get('gpu_memory_gib', '?')} GiB), torch {env['torch']}, CUDA "
        f"{env['cuda']}, transformers {env['transformers']}; commit `{env['git_commit'][:12]}`; {env['created']}"
        f"{'; CPU SMOKE RUN (tiny sizes, numbers meaningless)' if report['cpu_smoke'] else ''}.",
    ]
    lines += [f"Note: {n}." for n in report["notes"]]
    lines += [
        "",
        f"## 1. Training step ({cfg['layers']} layers x {cfg['hidden']} hidden, random init, max length "
        f"{cfg['length']}, bf16 autocast: {cfg['bf16']}, AdamW + clipping; {cfg['steps']} timed steps after "
        f"{cfg['warmup']} warm-up)",
        "",
        "| batch | rows/tower | variant | ms/step | sentences/s | peak GiB | x one tower |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    names = {
        "one_tower": "one tower (SimCSE)",
        "twin_no_bridge": "twin, no bridge (TNCSE)",
        "jtcse_twin": f"JTCSE twin, {cfg['bridged_layers']} bridged layers",
    }
    for r in report["steps"]:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "n/a"
        lines.append(
            f"| {r['batch']} | {r['rows']} | {names[r['variant']]} | {r['ms_per_step']:.1f} | "
            f"{r['sentences_per_s']:.0f} | {peak} | {r['x_one_tower']:.2f} |"
        )
    loss = report["loss"]
    lines += [
        "",
        f"Tensor-modulus loss on {loss['device']} ({loss['what']}, {loss['dtype']}, median of "
        f"{loss['rows'][0]['repeats']}; agreement in float64: |value diff| {loss['agreement']['max_abs_diff_value']:.1e}, "
        f"max |grad diff| {loss['agreement']['max_abs_diff_grad']:.1e}):",
        "",
        "| batch | rows | hidden | vectorised ms | per-sample loop ms (one sync per sentence) | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['batch']} | {r['rows']} | {r['hidden']} | {r['vectorised_ms']:.3f} | {r['naive_ms']:.2f} | "
        f"x{r['speedup']:.1f} |"
        for r in loss["rows"]
    ]
    lines += [
        "",
        "## 2. Encoding throughput",
        "",
        "| model | dtype | batch | sentences | sentences/s | STS-B dev |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["encode"]:
        dev = f"{r['stsb_dev']:.2f}" if "stsb_dev" in r else ""
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['sentences']} | {r['sentences_per_s']:.0f} | {dev} |"
        )
    lines += ["", "## 3. Short real training of the MiniLM base (STS-B dev Spearman x 100)", ""]
    t = report.get("training")
    if not t:
        lines.append(f"Skipped: {report.get('training_skipped', 'no MiniLM weights carried')}.")
    else:
        lines += [
            f"Zero-shot: cls {t['zero_shot_dev']['cls']:.2f}, mean {t['zero_shot_dev']['mean']:.2f}; "
            f"{t['dev_pairs']} dev pairs, {t['corpus_sentences']} corpus sentences, max length {t['max_length']}, "
            f"{t['bridged_layers']} bridged layers; each stage starts from the best weights of the one before.",
            "",
            "| stage | steps | batch | lr | ms/step | wall s | dev at start | best (step) | final |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in t["stages"]:
            lines.append(
                f"| {s['stage']} | {s['steps']} | {s['batch']} | {s['lr']:.0e} | {s['ms_per_step']:.1f} | "
                f"{s['wall_s']:.1f} | {s['initial_dev']:.2f} | {s['best_dev']:.2f} ({s['best_step']}) | "
                f"{s['final_dev']:.2f} |"
            )
    lines += ["", f"Total wall time of the check: {report['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def prepare_carry(carry: Path) -> None:
    """Here, on the CPU machine: MiniLM in fp16 (45 MB, under the 64 MiB transfer limit) and the two data files."""
    import torch

    from jtcse.modeling.towers import load_tower, save_tower

    carry.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_tower("minilm")
    shutil.rmtree(carry / "minilm", ignore_errors=True)
    save_tower(model.to(torch.float16), tokenizer, carry / "minilm")
    for src, dst in (
        (REPO / "data" / "sts" / "stsb.dev.tsv", carry / "stsb.dev.tsv"),
        (REPO / "data" / "corpus" / "train.txt", carry / "train.txt"),
    ):
        if not src.is_file():
            raise SystemExit(f"{src} is missing: run `dvc pull` first")
        shutil.copy2(src, dst)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file()) / 2**20
    print(f"{carry}: {size:.1f} MiB (MiniLM in fp16 + stsb.dev.tsv + train.txt); carry it as 'bench/.carry'")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, to check the script (< 60 s)")
    p.add_argument("--prepare", action="store_true", help="fill the carry folder (run here, not on the GPU)")
    p.add_argument("--carry", default=str(CARRY), help="folder with minilm/, stsb.dev.tsv, train.txt")
    p.add_argument("--out", help="results folder (default: bench/results; with --cpu-smoke a temporary folder)")
    p.add_argument("--batches", nargs="+", type=int, help="training-step batches (default: 64 256)")
    p.add_argument("--train-steps", type=int, help="steps of each SimCSE tower in the short training (default: 500)")
    p.add_argument("--twin-steps", type=int, help="steps of the JTCSE twin in the short training (default: 500)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    carry = Path(args.carry)
    if args.prepare:
        prepare_carry(carry)
        return {}

    began = time.perf_counter()
    notes: list[str] = []
    import torch

    if args.cpu_smoke:
        device = torch.device("cpu")
        config = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
        sizes = dict(
            batches=[4, 8],
            length=16,
            steps=2,
            warmup=1,
            num_ca=2,
            enc_n=64,
            enc_batch=32,
            train_steps=3,
            twin_steps=3,
            train_batch=8,
            max_length=24,
            eval_every=3,
            dev_pairs=60,
            max_sentences=400,
        )
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run this on the GPU machine, or pass --cpu-smoke")
        device = torch.device("cuda")
        config = {}  # BertConfig() defaults: 12 layers x 768, 12 heads, vocab 30522 (bert-base)
        sizes = dict(
            batches=[64, 256],
            length=64,
            steps=10,
            warmup=3,
            num_ca=6,
            enc_n=16384,
            enc_batch=128,
            train_steps=500,
            twin_steps=500,
            train_batch=64,
            max_length=32,
            eval_every=100,
            dev_pairs=None,
            max_sentences=None,
        )
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        notes.append("fp32 rows use TF32 matmuls (torch.backends.cuda.matmul.allow_tf32 = True)")
    if args.batches:
        sizes["batches"] = args.batches
    if args.train_steps:
        sizes["train_steps"] = args.train_steps
    if args.twin_steps:
        sizes["twin_steps"] = args.twin_steps
    bf16 = True
    from transformers import BertConfig

    base_cfg = BertConfig(**config)
    report = {
        "benchmark": "gpu_check",
        "cpu_smoke": args.cpu_smoke,
        "notes": notes,
        "sizes": sizes,
        "environment": environment(device),
        "config": {
            "layers": base_cfg.num_hidden_layers,
            "hidden": base_cfg.hidden_size,
            "length": sizes["length"],
            "bf16": bf16,
            "steps": sizes["steps"],
            "warmup": sizes["warmup"],
            "bridged_layers": sizes["num_ca"],
        },
    }
    report["steps"] = bench_training_steps(
        device, config, sizes["batches"], sizes["length"], sizes["steps"], sizes["warmup"], sizes["num_ca"], bf16
    )
    from bench import speed  # its loss part needs torch and jtcse.losses only

    loss_sizes = (
        dict(batches=(4, 8), hidden=16, repeats=2)
        if args.cpu_smoke
        else dict(batches=(64, 256), hidden=768, repeats=15)
    )
    report["loss"] = speed.bench_loss(
        loss_sizes["batches"], loss_sizes["hidden"], loss_sizes["repeats"], device=device.type
    )
    report["loss"]["agreement"] = speed.loss_agreement(device=device.type)
    report["encode"] = bench_encode_random(device, config, sizes["enc_n"], sizes["enc_batch"], sizes["length"])

    model_dir, sts_dir, corpus = carry / "minilm", carry, carry / "train.txt"
    if args.cpu_smoke and not (model_dir / "config.json").is_file():
        # Here: a tiny random tower with the MiniLM vocabulary, and the repository's data.
        import tempfile

        from tests.conftest import build_tiny_model

        model_dir = build_tiny_model(Path(tempfile.mkdtemp(prefix="gpu-check-tiny-")))
        sts_dir, corpus = REPO / "data" / "sts", REPO / "data" / "corpus" / "sample.txt"
        notes.append("cpu smoke: a tiny random tower with the MiniLM vocabulary stands in for MiniLM")
    if (model_dir / "config.json").is_file() and (sts_dir / "stsb.dev.tsv").is_file() and corpus.is_file():
        report["encode"] += bench_encode_real(device, model_dir, sts_dir, sizes["enc_batch"], sizes["dev_pairs"])
        report["training"] = short_training(
            device,
            model_dir,
            sts_dir,
            corpus,
            steps=sizes["train_steps"],
            twin_steps=sizes["twin_steps"],
            batch=sizes["train_batch"],
            max_length=sizes["max_length"],
            eval_every=sizes["eval_every"],
            num_ca_layers=3,
            bf16=bf16,
            dev_pairs=sizes["dev_pairs"],
            max_sentences=sizes["max_sentences"],
        )
    else:
        report["training_skipped"] = (
            f"{carry} lacks minilm/, stsb.dev.tsv or train.txt: run `bash bench/gpu_check.sh "
            "--prepare` on the CPU machine and carry bench/.carry"
        )
        log.warning(report["training_skipped"])
    report["total_s"] = time.perf_counter() - began

    markdown = render_markdown(report)
    if args.out:
        out = Path(args.out)
    elif args.cpu_smoke:  # never let a smoke run overwrite real results
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="gpu-check-smoke-"))
    else:
        out = REPO / "bench" / "results"
    report["out"] = str(out)
    targets = [out] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.md", markdown), ("gpu.json", json.dumps(report, indent=2) + "\n")):
            atomic_write_text(folder / name, text)
    print(markdown)
    log.info("wrote %s", ", ".join(str(t / "gpu.md") for t in targets))
    return report


if __name__ == "__main__":
    main()
