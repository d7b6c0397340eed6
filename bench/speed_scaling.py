"""Speed, part `scaling`: how cost grows with batch and length, and encoding time with the number of sentences.

Steps. Our SimCSE step and the JTCSE step (bench/speed_step.py's builders, i.e. jtcse.training.build) at every
batch x max length of the grid. Every row is filled to the max length (consecutive corpus sentences joined until
a row has at least that many words), so a config's length is the length that is computed. Each (variant, config)
runs in its own Python process: its time is the median of the repeats after warm-up, and its memory is that
process's peak resident set (VmHWM of ``/proc/self/status``) next to its resident set once the model
and optimizer were built (``/proc/self/statm``), so the difference is what the steps add: activations, gradients
and AdamW's state. Each finished config is kept in the work folder, so an interrupted grid resumes where it stopped.

Encoding. ``jtcse.load(folder).encode`` of the distilled model folder (bench/speed_encode.py's: a package's, or the
base model exported into the work folder) on 1k / 10k / 100k corpus sentences (the corpus repeated where it is
shorter; the encoder does not deduplicate), batch ``encode_batch``, the folder's max length: wall time and
sentences/s, each size measured (none extrapolated).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

log = logging.getLogger("bench.speed.scaling")

TITLE = "How cost grows: batch x length, and encoding by corpus size"
VARIANTS = ("simcse", "jtcse")


def filled_sentences(corpus: str | Path, count: int, words: int) -> list[str]:
    """``count`` rows of at least ``words`` words each: consecutive corpus lines joined (so every row truncates at
    the max length instead of padding to it)."""
    from jtcse.data.readers import read_corpus

    lines = read_corpus(corpus, max(4 * count, 64) * max(1, words // 8))
    rows, current, k = [], [], 0
    while len(rows) < count:
        current += lines[k % len(lines)].split()
        k += 1
        if len(current) >= words:
            rows.append(" ".join(current))
            current = []
    return rows


def _rss_mib() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return float("nan")


def _peak_rss_mib() -> float:
    """This process's peak resident set. On Linux VmHWM of /proc/self/status: getrusage's ru_maxrss survives
    execve, so a child of a large parent would report the parent's peak (7.3 GB for every config, first measured)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def run_config(spec: dict) -> dict[str, Any]:
    """One (variant, batch, length) config, in this process (the child's work)."""
    import torch

    from bench.speed_step import BUILDERS, step_settings
    from jtcse.config import settings_from_dict
    from jtcse.training.trainer import seed_everything

    torch.set_num_threads(spec["threads"])
    settings = step_settings(settings_from_dict(spec["settings"], "bench/speed.py"), spec["batch"], spec["length"])
    seed_everything(settings.train.seed, settings.runtime.deterministic)
    sentences = filled_sentences(settings.data.corpus, spec["batch"], spec["length"])
    step = BUILDERS[spec["variant"]](settings, sentences, torch.device("cpu"))
    built = _rss_mib()
    for _ in range(spec["warmup"]):
        step.run()
    times = [step.run()["total"] for _ in range(spec["repeats"])]
    peak = _peak_rss_mib()
    return {
        **{k: spec[k] for k in ("variant", "batch", "length", "repeats")},
        "tokens_per_tower": 2 * spec["batch"] * spec["length"],
        "step_ms": common.median(times) * 1e3,
        "step_runs_ms": [t * 1e3 for t in times],
        "rss_built_mib": built,
        "peak_rss_mib": peak,
        "step_rss_mib": peak - built,
        "threads": torch.get_num_threads(),
    }


def _child(spec: dict) -> dict[str, Any]:
    """run_config in a fresh Python process (its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="jtcse-scaling-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(
            [sys.executable, "-m", "bench.speed_scaling", "--child", str(spec_path), "--out", str(out_path)],
            cwd=common.REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out_path.is_file():
            raise RuntimeError(
                f"scaling config {spec['variant']} b{spec['batch']} l{spec['length']} failed "
                f"({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        return json.loads(out_path.read_text(encoding="utf-8"))


def corpus_sentences(corpus: str | Path, n: int) -> tuple[list[str], int]:
    """The first ``n`` corpus lines, the corpus repeated when shorter; and how many are distinct."""
    from jtcse.data.readers import read_corpus

    lines = read_corpus(corpus, n)
    return [lines[k % len(lines)] for k in range(n)], len(lines)


def encode_sizes(ctx) -> list[dict[str, Any]]:
    import jtcse
    from bench.speed_encode import model_folder

    path, _, _, source = model_folder(ctx.settings, ctx.package, ctx.work)
    batch = ctx.sizes["encode_batch"]
    rows = []
    for n in ctx.sizes["encode_scale_sizes"]:

        def one(n=n) -> dict[str, Any]:
            encoder = jtcse.load(path, device="cpu")
            texts, distinct = corpus_sentences(ctx.settings.data.corpus, n)
            encoder.encode(texts[: min(n, 2 * batch)], batch_size=batch, show_progress_bar=False)  # warm-up
            repeats = max(1, min(3, 10_000 // n))
            runs = [common.time_call(lambda: encoder.encode(texts, batch_size=batch, show_progress_bar=False))[0]]
            runs += [
                common.time_call(lambda: encoder.encode(texts, batch_size=batch, show_progress_bar=False))[0]
                for _ in range(repeats - 1)
            ]
            seconds = common.median(runs)
            log.info("encode %d sentences: %.1f s (%.0f/s)", n, seconds, n / seconds)
            return {
                "sentences": n,
                "distinct": distinct,
                "seconds": seconds,
                "sentences_per_s": n / seconds,
                "repeats": repeats,
                "batch_size": batch,
                "max_seq_length": encoder.max_seq_length,
                "source": source,
                "measured": True,
            }

        rows.append(ctx.cache("encode_size", {"n": n, "batch": batch, "folder": source}, one))
    return rows


def memory_budget_mib(fraction: float = 0.6) -> float:
    """``fraction`` of the memory available now (MemAvailable of /proc/meminfo; 8 GiB where unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return fraction * int(line.split()[1]) / 1024
    except (OSError, ValueError):  # pragma: no cover - not Linux
        pass
    return fraction * 8192.0


def predicted_peak_mib(done: list[dict], tokens: int) -> float | None:
    """Peak RSS of a config of ``tokens`` per tower, from the configs of the same variant already measured: their
    largest step RSS per token (step memory grows about linearly in tokens: activations) plus the built RSS."""
    if not done:
        return None
    rate = max(d["step_rss_mib"] / d["tokens_per_tower"] for d in done)
    return max(d["rss_built_mib"] for d in done) + 1.1 * rate * tokens


def measure(ctx) -> dict[str, Any]:
    import torch

    s = ctx.sizes
    settings = common.settings_dict(ctx.settings)
    threads = torch.get_num_threads()
    budget = s.get("scaling_max_mib") or memory_budget_mib()
    configs = sorted(
        (
            (variant, batch, length)
            for variant in VARIANTS
            for batch in s["scaling_batches"]
            for length in s["scaling_lengths"]
        ),
        key=lambda c: (c[1] * c[2], c[2], VARIANTS.index(c[0])),
    )
    steps, skipped = [], []
    for variant, batch, length in configs:
        spec = {
            "variant": variant,
            "batch": batch,
            "length": length,
            "repeats": s["scaling_repeats"],
            "warmup": s["scaling_warmup"],
            "threads": threads,
            "settings": settings,
        }
        row = ctx.lookup("scaling_step", spec)
        if row is None:
            tokens = 2 * batch * length
            peak = predicted_peak_mib([d for d in steps if d["variant"] == variant], tokens)
            if peak is not None and peak > budget:
                skipped.append({"variant": variant, "batch": batch, "length": length, "predicted_peak_mib": peak})
                log.warning(
                    "%s batch %d length %d skipped: predicted peak %.0f MiB over the budget %.0f MiB",
                    variant, batch, length, peak, budget,
                )  # fmt: skip
                continue
            row = ctx.store("scaling_step", spec, _child(spec))
            log.info(
                "%s batch %d length %d: %.0f ms, peak RSS %.0f MiB (+%.0f over the built model)",
                variant, batch, length, row["step_ms"], row["peak_rss_mib"], row["step_rss_mib"],
            )  # fmt: skip
        steps.append(row)
    return {
        "memory_method": "peak RSS of a fresh process per config (VmHWM of /proc/self/status) and its RSS once built "
        "(/proc/self/statm); step RSS = the difference",
        "memory_budget_mib": budget,
        "rows_filled_to_length": True,
        "threads": threads,
        "steps": steps,
        "skipped": skipped,
        "encode": encode_sizes(ctx),
    }


def render(r: dict) -> list[str]:
    by = {(x["variant"], x["batch"], x["length"]): x for x in r["steps"]}
    lines = [
        f"Step time (ms, median of {r['steps'][0]['repeats']} after warm-up) and memory per config, every row "
        f"filled to the max length, {r['threads']} threads, one fresh process per config. Memory: {r['memory_method']}.",
        "",
        "| batch | max length | tokens per tower | SimCSE ms | JTCSE ms | JTCSE / SimCSE | SimCSE peak MiB (step +) "
        "| JTCSE peak MiB (step +) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    skipped = {(x["variant"], x["batch"], x["length"]): x for x in r.get("skipped", [])}
    budget = r["memory_budget_mib"] / 1024

    def cells(variant: str, batch: int, length: int) -> tuple[str, str]:
        """(step ms, peak MiB) of one variant at one config, or why it was not run."""
        x = by.get((variant, batch, length))
        if x is not None:
            return f"{x['step_ms']:.0f}", f"{x['peak_rss_mib']:.0f} (+{x['step_rss_mib']:.0f})"
        skip = skipped.get((variant, batch, length))
        why = f"not run: predicted {skip['predicted_peak_mib'] / 1024:.1f} GiB > {budget:.1f} GiB" if skip else "—"
        return why, ""

    configs = sorted({k[1:] for k in [*by, *skipped]}, key=lambda c: (c[1], c[0]))
    for batch, length in configs:
        (a_ms, a_mem), (b_ms, b_mem) = cells("simcse", batch, length), cells("jtcse", batch, length)
        a, b = by.get(("simcse", batch, length)), by.get(("jtcse", batch, length))
        ratio = f"{b['step_ms'] / a['step_ms']:.2f}" if a and b else "—"
        lines.append(f"| {batch} | {length} | {2 * batch * length} | {a_ms} | {b_ms} | {ratio} | {a_mem} | {b_mem} |")
    enc = r["encode"]
    if enc:
        lines += [
            "",
            f"Encoding with `jtcse.load(...).encode` ({enc[0]['source']}; batch {enc[0]['batch_size']}, max "
            f"{enc[0]['max_seq_length']} tokens; corpus sentences, repeated where the corpus is shorter; every size "
            "measured):",
            "",
            "| sentences | distinct | seconds | sentences/s | runs |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {e['sentences']} | {e['distinct']} | {e['seconds']:.1f} | {e['sentences_per_s']:.0f} | {e['repeats']} |"
            for e in enc
        ]
    return lines


def bars(r: dict) -> list[tuple[str, float]]:
    return []  # plotted in panels of its own (see plot)


def plot(r: dict, ax_time, ax_mem, ax_enc) -> None:
    lengths = sorted({x["length"] for x in r["steps"]})
    for variant, style in (("simcse", "--"), ("jtcse", "-")):
        for k, length in enumerate(lengths):
            rows = sorted((x for x in r["steps"] if x["variant"] == variant and x["length"] == length),
                          key=lambda x: x["batch"])  # fmt: skip
            if not rows:
                continue
            color = f"C{k}"
            label = f"{'JTCSE' if variant == 'jtcse' else 'SimCSE'}, len {length}"
            batches = [x["batch"] for x in rows]
            ax_time.plot(batches, [x["step_ms"] / 1e3 for x in rows], style, color=color, marker="o", label=label)
            ax_mem.plot(batches, [x["peak_rss_mib"] for x in rows], style, color=color, marker="o", label=label)
    for ax, ylabel in ((ax_time, "step time (s)"), (ax_mem, "peak RSS (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (sentences)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_time.set_title("training step time")
    ax_mem.set_title("peak memory per config")
    enc = r["encode"]
    if enc:
        ax_enc.plot([e["sentences"] for e in enc], [e["seconds"] for e in enc], marker="o")
        ax_enc.set_xscale("log")
        ax_enc.set_yscale("log")
        ax_enc.set_xlabel("sentences")
        ax_enc.set_ylabel("encode time (s)")
        ax_enc.set_title("jtcse.load(...).encode")
        ax_enc.grid(True, which="both", alpha=0.3)


def _main(argv: list[str] | None = None) -> None:
    """The child: ``python -m bench.speed_scaling --child SPEC --out RESULT``."""
    from jtcse.io import atomic_write_json

    p = argparse.ArgumentParser(description="one scaling config (run by bench/speed.py)")
    p.add_argument("--child", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    result = run_config(json.loads(Path(args.child).read_text(encoding="utf-8")))
    result["process_s"] = time.perf_counter() - started
    atomic_write_json(Path(args.out), result)


if __name__ == "__main__":
    _main()
