"""GPU check for an NVIDIA H200 (or any CUDA GPU), called by bench/gpu_check.sh; see that script's header.

Three measurements (and the modulus-loss comparison of bench/speed_loss.py on the GPU), each printed and written to bench/results/gpu.md (+ gpu.json), and to $OUT when it is set:

  1. training step time and peak memory of a bert-base-sized tower (BertConfig() defaults: 12 layers x 768, random
     init, no download; random token ids of shape (2 x batch, 64)) at batch 64 and 256, bf16 autocast: one tower
     (SimCSE), the twin without bridge, and the JTCSE twin with the cross-attention bridge (6 of 12 layers), each
     under the recipe's loss (jtcse.training.build.build_twin_loss) and bridge design;
  2. encoding throughput (sentences/s) in bf16 and fp32: the bert-base tower on random ids, and, when the MiniLM
     weights are carried, jtcse's TowerEncoder on the real STS-B dev sentences (with the dev Spearman of both);
  3. a short real training of the MiniLM base (SimCSE tower A, tower B, then the JTCSE twin) with its STS-B dev
     Spearman, from bench/.carry (made here by `bash bench/gpu_check.sh --prepare`): the pipeline's own stages
     (jtcse.training.stages: trainer, bf16 autocast, dev evaluation, best weights kept) under the params file's
     recipe, with this check's step budget and data (--set changes either), in a temporary folder.

The recipe is read from --params (default params.yaml) through jtcse.config, which needs pydantic: the device image
lacks it, so carry its wheels (see bench/gpu_check.sh).

``--cpu-smoke`` runs everything at a tiny size on the CPU (about a minute) to check the script works.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

log = logging.getLogger("bench.gpu_check")

CARRY = common.REPO / "bench" / ".carry"

#: What each part measures, on the GPU and with --cpu-smoke: size -> (GPU, CPU smoke).
SIZES: dict[str, tuple] = {
    "batches": ([64, 256], [4, 8]),  # training-step batches (part 1)
    "length": (64, 16),  # tokens per random 'sentence' (parts 1 and 2)
    "steps": (10, 2),  # timed steps per variant (part 1)
    "warmup": (3, 1),
    "num_ca": (6, 2),  # bridged layers of the JTCSE variant (part 1); must divide the layer count
    "enc_n": (16384, 64),  # sentences encoded (part 2)
    "enc_batch": (128, 32),
    "train_steps": (500, 3),  # steps of each SimCSE tower (part 3)
    "twin_steps": (500, 3),  # steps of the JTCSE twin (part 3)
    "train_batch": (64, 8),
    "max_length": (32, 24),  # training truncation (part 3)
    "eval_every": (100, 3),
    "dev_pairs": (None, 60),  # STS-B dev pairs (None: all 1500)
    "max_sentences": (None, 400),  # corpus sentences (None: all)
    "twin_layers": (None, 2),  # the twin's bridged layers (part 3); None: the recipe's
    "loss_batches": ((64, 256), (4, 8)),  # bench/speed_loss.py's modulus-loss comparison
    "loss_hidden": (768, 16),
    "loss_repeats": (15, 2),
}
#: The random-init tower of parts 1 and 2 with --cpu-smoke (on the GPU: BertConfig() defaults, bert-base).
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}


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


def build_variant(name: str, config_kwargs: dict, num_ca_layers: int, settings, device):
    """(module, loss function of a batch) for one tower, twin without bridge, or the JTCSE twin: the recipe's
    temperature, bridge design, poolings and stage-2 loss (``settings``), on random-init bert towers."""
    import torch
    from transformers import BertConfig, BertModel

    from jtcse.losses import InfoNCELoss
    from jtcse.modeling.twin import BridgedTwin
    from jtcse.training.build import build_twin_loss, tower_pooling

    def tower():
        with torch.device(device):
            return BertModel(BertConfig(**config_kwargs, attn_implementation="sdpa"), add_pooling_layer=True)

    if name == "one_tower":
        model, nce = tower(), InfoNCELoss(settings.pretrain.temperature)

        def loss(batch):
            return nce(model(**batch).last_hidden_state[:, 0])

        return model, loss
    ca = settings.train.cross_attention
    model = BridgedTwin(
        tower(),
        tower(),
        num_ca_layers=num_ca_layers if name == "jtcse_twin" else 0,
        mode=ca.mode,
        mix_gate=ca.mix_gate,
        pooling=(tower_pooling(settings, "a"), tower_pooling(settings, "b")),
    )
    jtcse_loss = build_twin_loss(settings)

    def loss(batch):
        out_a, out_b = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        return jtcse_loss(out_a, out_b)["loss"]

    return model, loss


def _time_variant(
    name: str,
    batch: dict,
    device,
    config_kwargs: dict,
    num_ca_layers: int,
    settings,
    steps: int,
    warmup: int,
    bf16: bool,
) -> tuple[float, float, float]:
    """(seconds per step, last loss, parameters in millions) of one variant; everything it allocates is freed when it returns."""
    import torch

    torch.manual_seed(0)
    model, loss_fn = build_variant(name, config_kwargs, num_ca_layers, settings, device)
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
    seconds, last = common.time_call(lambda: [step() for _ in range(steps)][-1], device)
    return seconds / steps, float(last.detach()), sum(p.numel() for p in params) / 1e6


def bench_training_steps(
    device,
    config_kwargs: dict,
    batches,
    length: int,
    steps: int,
    warmup: int,
    num_ca_layers: int,
    settings,
    bf16: bool,
) -> list[dict]:
    import torch
    from transformers import BertConfig

    from jtcse.modeling.twin import check_bridge_layers

    check_bridge_layers(
        num_ca_layers, BertConfig(**config_kwargs).num_hidden_layers, "bridged layers", "the bert tower"
    )
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
                name, batch, device, config_kwargs, num_ca_layers, settings, steps, warmup, bf16
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
        seconds, _ = common.time_call(functools.partial(run, n_batches), device)
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


def bench_encode_real(device, model_dir: Path, dev_dir: Path, batch: int) -> list[dict]:
    from jtcse.encoding import TowerEncoder
    from jtcse.evaluation.sts import dev_evaluator

    evaluator = dev_evaluator(dev_dir, "stsb_dev", batch_size=batch)
    sentences = sorted({s for p in evaluator.pairs.values() for s in (*p.sentence1, *p.sentence2)})
    out = []
    for bf16 in (True, False):
        encoder = TowerEncoder.from_pretrained(str(model_dir), "cls", 128, device.type)
        encoder = _autocast_encoder(encoder, device, bf16)
        encoder.encode(sentences[:batch], batch_size=batch)
        seconds, _ = common.time_call(functools.partial(encoder.encode, sentences, batch_size=batch), device)
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
    return out


# --- 3. short real training --------------------------------------------------------------------------------


def float32_copy(model_dir: Path, target: Path) -> Path:
    """The tower at ``model_dir`` saved again in float32 (the carried MiniLM is stored in fp16 to fit the
    transfer limit; the stages load weights in the dtype they are stored in)."""
    from jtcse.modeling.towers import load_tower, save_tower

    model, tokenizer = load_tower(str(model_dir))
    save_tower(model.float(), tokenizer, target)
    return target


def dev_folder(sts_dir: Path, dev_pairs: int | None, target: Path) -> Path:
    """A data folder holding STS-B dev alone (its first ``dev_pairs`` pairs; None: all of them)."""
    from jtcse.evaluation.sts import DEV_TASKS

    name = DEV_TASKS["stsb_dev"]
    lines = (Path(sts_dir) / name).read_text(encoding="utf-8").splitlines()
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_text("\n".join(lines[: dev_pairs + 1] if dev_pairs else lines) + "\n", encoding="utf-8")
    return target


def tiny_tower(target: Path, config_kwargs: dict) -> Path:
    """A random-init BERT tower of ``config_kwargs`` with the MiniLM tokenizer (stands in for MiniLM with
    --cpu-smoke when nothing is carried)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from jtcse.formats import resolve_model_path
    from jtcse.modeling.towers import save_tower

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    model = BertModel(BertConfig(**config_kwargs, vocab_size=tokenizer.vocab_size), add_pooling_layer=True)
    save_tower(model, tokenizer, target)
    return target


def training_settings(
    recipe, device, base: Path, dev_dir: Path, corpus: Path, sizes: dict, user: dict, model: str | None = None
):
    """The recipe with this check's base, data and step budget (each key the user set with --set stays theirs).
    A bridge that does not fit the base is an error here, before anything is measured, never replaced."""
    from transformers import AutoConfig

    from jtcse.config import apply_overrides
    from jtcse.modeling.twin import check_bridge_layers

    budget = {"batch_size": sizes["train_batch"], "eval_every": sizes["eval_every"], "keep_checkpoints": 1}
    check = {
        "model.base": str(base),
        "model.max_length": sizes["max_length"],
        "data.corpus": str(corpus),
        "data.sts_dir": str(dev_dir),
        "data.max_sentences": sizes["max_sentences"],
        "evaluate.selection": "stsb_dev",
        "evaluate.batch_size": 256,
        "evaluate.max_length": 128,
        "runtime.device": device.type,
        "runtime.bf16": True,
        "runtime.nproc_per_node": 1,
        "pretrain.steps": sizes["train_steps"],
        "pretrain.checkpoint_every": sizes["train_steps"],
        "train.steps": sizes["twin_steps"],
        "train.checkpoint_every": sizes["twin_steps"],
        "train.diagnostics": False,
        **{f"{section}.{k}": v for section in ("pretrain", "train") for k, v in budget.items()},
    }
    if sizes["twin_layers"] is not None:
        check["train.cross_attention.num_layers"] = sizes["twin_layers"]
    settings = apply_overrides(recipe, {**{k: v for k, v in check.items() if k not in user}, **user}, "gpu_check")
    layers = AutoConfig.from_pretrained(str(base)).num_hidden_layers
    check_bridge_layers(
        settings.train.cross_attention.num_layers, layers, "train.cross_attention.num_layers", model or str(base)
    )
    return settings


def prepare_training(carry: Path, work: Path, cpu_smoke: bool, device, sizes: dict, recipe, user: dict, report: dict):
    """The short training's settings (its base a float32 copy in ``work``), or None, with the reason in
    ``report``, when the carry lacks MiniLM or the data. With --cpu-smoke and nothing carried: a tiny random
    tower and the repository's data."""
    model_dir, sts_dir, corpus = carry / "minilm", carry, carry / "train.txt"
    if cpu_smoke and not (model_dir / "config.json").is_file():
        model_dir = tiny_tower(work / "tiny", TINY_BERT)
        sts_dir, corpus = common.REPO / "data" / "sts", common.REPO / "data" / "corpus" / "sample.txt"
        report["notes"].append("cpu smoke: a tiny random tower with the MiniLM vocabulary stands in for MiniLM")
    if not ((model_dir / "config.json").is_file() and (sts_dir / "stsb.dev.tsv").is_file() and corpus.is_file()):
        report["training_skipped"] = (
            f"{carry} lacks minilm/, stsb.dev.tsv or train.txt: run `bash bench/gpu_check.sh --prepare` on the "
            "CPU machine and carry bench/.carry"
        )
        log.warning(report["training_skipped"])
        return None
    base = float32_copy(model_dir, work / "base")
    dev_dir = dev_folder(sts_dir, sizes["dev_pairs"], work / "dev")
    return training_settings(recipe, device, base, dev_dir, corpus, sizes, user, str(model_dir))


def _stage_record(stage: str, optim, seed: int, result, wall: float, metrics_dir: Path) -> dict:
    import csv

    with (metrics_dir / "eval.csv").open(newline="") as fh:
        curve = [(int(r["step"]), float(r["stsb_dev"])) for r in csv.DictReader(fh)]
    record = {
        "stage": stage,
        "steps": result.steps,
        "batch": optim.batch_size,
        "lr": optim.lr,
        "seed": seed,
        "initial_dev": result.initial_metric,
        "final_dev": curve[-1][1],
        "best_dev": result.best_metric,
        "best_step": result.best_step,
        "wall_s": wall,
        "ms_per_step": 1e3 * result.seconds / result.steps,
        "curve": curve,
    }
    log.info(
        "%s: %d steps, %.1f ms/step, dev %.2f -> best %.2f (step %d)",
        stage,
        result.steps,
        record["ms_per_step"],
        result.initial_metric,
        result.best_metric,
        result.best_step,
    )
    return record


def short_training(settings, work: Path) -> dict:
    """Stage 1 (towers A and B) and stage 2 (the twin) of the pipeline, as ``settings`` say, in ``work``."""
    from jtcse.data.readers import read_corpus
    from jtcse.encoding import TowerEncoder
    from jtcse.evaluation.sts import dev_evaluator
    from jtcse.training.build import tower_optim
    from jtcse.training.stages import train_tower, train_twin

    base, device = settings.model.base, settings.runtime.device
    evaluator = dev_evaluator(settings.data.sts_dir, "stsb_dev", batch_size=settings.evaluate.batch_size)
    zero_shot = {
        pooling: evaluator(TowerEncoder.from_pretrained(base, pooling, settings.evaluate.max_length, device))[
            "stsb_dev"
        ]
        for pooling in ("cls", "mean")
    }
    log.info("zero-shot STS-B dev: cls %.2f, mean %.2f", zero_shot["cls"], zero_shot["mean"])

    def folders(name: str) -> dict[str, Path]:
        return {
            "output": work / name,
            "checkpoint_dir": work / "checkpoints" / name,
            "metrics_dir": work / "metrics" / name,
        }

    stages = []
    for which in ("a", "b"):
        began = time.perf_counter()
        result = train_tower(settings, which=which, **folders(f"tower_{which}"))
        stages.append(
            _stage_record(
                f"SimCSE tower {which}",
                tower_optim(settings, which),
                settings.pretrain.tower(which).seed,
                result,
                time.perf_counter() - began,
                work / "metrics" / f"tower_{which}",
            )
        )
    began = time.perf_counter()
    result = train_twin(settings, tower_a=str(work / "tower_a"), tower_b=str(work / "tower_b"), **folders("twin"))
    ca = settings.train.cross_attention
    stages.append(
        _stage_record(
            f"JTCSE twin ({ca.mode} x {ca.num_layers})" if ca.num_layers else "TNCSE twin (no bridge)",
            settings.train,
            settings.train.seed,
            result,
            time.perf_counter() - began,
            work / "metrics" / "twin",
        )
    )
    gc.collect()
    return {
        "zero_shot_dev": zero_shot,
        "stages": stages,
        "dev_pairs": len(evaluator.pairs["stsb_dev"]),
        "corpus_sentences": len(read_corpus(settings.data.corpus, settings.data.max_sentences)),
        "max_length": settings.model.max_length,
        "bridged_layers": ca.num_layers,
        "bridge_mode": ca.mode,
        "settings": common.settings_dict(settings),
    }


# --- report ------------------------------------------------------------------------------------------------


def environment(device) -> dict:
    """:func:`bench.common.environment`, plus the device and the GPU's memory and SM count."""
    import torch

    info = {**common.environment(), "device": str(device)}
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
        *(
            [f"Overrides of the recipe: {', '.join(f'`{k}={v}`' for k, v in report['overrides'].items())}."]
            if report.get("overrides")
            else []
        ),
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
        "jtcse_twin": f"JTCSE twin, {cfg['bridged_layers']} bridged layers ({cfg['bridge_mode']})",
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
            f"{t['bridged_layers']} bridged layers ({t['bridge_mode']}); the pipeline's stages under the recipe of "
            f"`{report['params_file']}` with this check's budget; each stage starts from the best weights of the one "
            "before. ms/step: the trainer's seconds over its steps (dev evaluations, best-weight saves and the last "
            "checkpoint included).",
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
        (common.REPO / "data" / "sts" / "stsb.dev.tsv", carry / "stsb.dev.tsv"),
        (common.REPO / "data" / "corpus" / "train.txt", carry / "train.txt"),
    ):
        if not src.is_file():
            raise SystemExit(f"{src} is missing: run `dvc pull` first")
        shutil.copy2(src, dst)
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file()) / 2**20
    print(f"{carry}: {size:.1f} MiB (MiniLM in fp16 + stsb.dev.tsv + train.txt); carry it as 'bench/.carry'")


def main(argv: list[str] | None = None) -> dict:
    p = common.training_bench_parser(
        __doc__,
        set_help="override a setting of the recipe (--params), dotted key, YAML value (repeatable); it wins over the "
        "check's own budget and data",
        profile=False,
    )
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU, to check the script (about a minute)"
    )
    p.add_argument("--prepare", action="store_true", help="fill the carry folder (run here, not on the GPU)")
    p.add_argument("--carry", default=str(CARRY), help="folder with minilm/, stsb.dev.tsv, train.txt")
    p.add_argument("--out", help="results folder (default: bench/results; with --cpu-smoke a temporary folder)")
    p.add_argument("--batches", nargs="+", type=int, help="training-step batches (default: 64 256)")
    p.add_argument("--train-steps", type=int, help="steps of each SimCSE tower in the short training (default: 500)")
    p.add_argument("--twin-steps", type=int, help="steps of the JTCSE twin in the short training (default: 500)")
    args = p.parse_args(argv)
    common.setup_logging(args.verbose)
    carry = Path(args.carry)
    if args.prepare:
        prepare_carry(carry)
        return {}

    began = time.perf_counter()
    notes: list[str] = []
    import torch

    sizes = {k: v[1 if args.cpu_smoke else 0] for k, v in SIZES.items()}
    if args.cpu_smoke:
        device = torch.device("cpu")
        config = dict(TINY_BERT)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run this on the GPU machine, or pass --cpu-smoke")
        device = torch.device("cuda")
        config = {}  # BertConfig() defaults: 12 layers x 768, 12 heads, vocab 30522 (bert-base)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        notes.append("fp32 rows use TF32 matmuls (torch.backends.cuda.matmul.allow_tf32 = True)")
    for key in ("batches", "train_steps", "twin_steps"):
        if getattr(args, key):
            sizes[key] = getattr(args, key)
    from jtcse.errors import ConfigError

    user = common.parse_set(args.set)
    recipe = common.load_bench_settings(args.params, user)
    bf16 = True
    from transformers import BertConfig

    base_cfg = BertConfig(**config)
    report = {
        "benchmark": "gpu_check",
        "cpu_smoke": args.cpu_smoke,
        "notes": notes,
        "sizes": sizes,
        "params_file": str(args.params),
        "overrides": user,
        "environment": environment(device),
        "config": {
            "layers": base_cfg.num_hidden_layers,
            "hidden": base_cfg.hidden_size,
            "length": sizes["length"],
            "bf16": bf16,
            "steps": sizes["steps"],
            "warmup": sizes["warmup"],
            "bridged_layers": sizes["num_ca"],
            "bridge_mode": recipe.train.cross_attention.mode,
        },
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        # The short training's settings first: a recipe that cannot run fails before anything is measured.
        try:
            settings = prepare_training(carry, work, args.cpu_smoke, device, sizes, recipe, user, report)
        except ConfigError as err:
            raise SystemExit(f"gpu_check: {err}") from None

        report["steps"] = bench_training_steps(
            device,
            config,
            sizes["batches"],
            sizes["length"],
            sizes["steps"],
            sizes["warmup"],
            sizes["num_ca"],
            recipe,
            bf16,
        )
        from bench import speed_loss  # needs torch and jtcse.losses only

        report["loss"] = speed_loss.bench_loss(
            sizes["loss_batches"], sizes["loss_hidden"], sizes["loss_repeats"], device=device.type
        )
        report["loss"]["agreement"] = speed_loss.loss_agreement(device=device.type)
        report["encode"] = bench_encode_random(device, config, sizes["enc_n"], sizes["enc_batch"], sizes["length"])
        if settings is not None:
            report["encode"] += bench_encode_real(
                device, settings.model.base, settings.data.sts_dir, sizes["enc_batch"]
            )
            report["training"] = short_training(settings, work / "train")
    report["total_s"] = time.perf_counter() - began

    markdown = render_markdown(report)
    if args.out:
        out = Path(args.out)
    elif args.cpu_smoke:  # never let a smoke run overwrite real results
        out = Path(tempfile.mkdtemp(prefix="gpu-check-smoke-"))
    else:
        out = common.RESULTS
    report["out"] = str(out)
    targets = [out] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    from jtcse.io import atomic_write_text

    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in (("gpu.md", markdown), ("gpu.json", json.dumps(report, indent=2) + "\n")):
            atomic_write_text(folder / name, text)
    print(markdown)
    log.info("wrote %s", ", ".join(str(t / "gpu.md") for t in targets))
    return report


if __name__ == "__main__":
    main()
