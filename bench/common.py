"""What the benchmark scripts share: settings with overrides, provenance, timing, atomic file output."""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

log = logging.getLogger("bench")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], dict], argv: list[str] | None = None
) -> dict:
    """Parse a benchmark's arguments, set up logging and run it (the shared ``main`` of the scripts)."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run(args)


#: Step budgets of the quality benchmarks, applied before --set. 'make-run' is params.yaml as it is (60 steps per
#: stage, what `make run` trains); 'long' is the larger CPU budget: 300 steps per stage, evaluated every 50.
PROFILES: dict[str, dict[str, Any]] = {
    "make-run": {},
    "long": {
        f"{stage}.{key}": value
        for stage in ("pretrain", "train", "distill")
        for key, value in (("steps", 300), ("eval_every", 50), ("checkpoint_every", 50))
    },
}


def training_bench_parser(doc: str | None, *, set_help: str, profile: bool = True) -> argparse.ArgumentParser:
    """The options every settings-driven benchmark shares: --params, --set, --profile (hidden with
    ``profile=False``: the script then runs the params file as it is) and -v. Each script adds its own."""
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--params", default=str(REPO / "params.yaml"), help="settings file (default: params.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument(
        "--profile",
        default="make-run",
        choices=list(PROFILES),
        help="step budget: make-run (params.yaml, 60 steps per stage) or long (300 steps per stage)"
        if profile
        else argparse.SUPPRESS,
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def profile_overrides(profile: str, items: Iterable[str] | None) -> dict[str, Any]:
    """A profile's overrides, then the --set ones on top."""
    if profile not in PROFILES:
        raise SystemExit(f"--profile: unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return {**PROFILES[profile], **parse_set(items)}


def run_settings(args: argparse.Namespace):
    """A training benchmark's settings: the params file, then its --profile, then --set; torch threads applied.
    Returns the settings and the overrides that made them (for the report)."""
    import torch

    overrides = profile_overrides(args.profile, args.set)
    settings = load_bench_settings(args.params, overrides)
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    return settings, overrides


@contextmanager
def work_dir(reuse_dir: str | None, prefix: str) -> Iterator[Path]:
    """--reuse-dir (created, kept: finished stages are reused, interrupted ones resume), else a temporary folder
    that is deleted at the end."""
    if reuse_dir:
        path = Path(reuse_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def parse_set(items: Iterable[str] | None) -> dict[str, Any]:
    """``["train.w_tm=0.5", "model.base=minilm"]`` -> dotted key -> value parsed as a YAML scalar."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set expects key=value with a dotted key, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def parse_design(item: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` (quality's --design, ablation's --cells): a named set of overrides; keys that
    do not start with a settings section are read under train."""
    from jtcse.config import Settings

    name, sep, spec = item.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--design expects name:key=value,..., got {item!r}")
    sections = {f.alias or n for n, f in Settings.model_fields.items()}
    overrides = parse_set([p for p in spec.split(",") if p.strip()])
    return name.strip(), {(k if k.split(".")[0] in sections else f"train.{k}"): v for k, v in overrides.items()}


def resolve_paths(settings, root: Path):
    """Relative data paths (and a relative model.base folder) are read against the params file's folder,
    as DVC does, so a benchmark gives the same answer from any working directory."""
    from jtcse.formats import SYMBOLIC_MODELS

    data = settings.data
    for name in ("corpus", "sts_dir"):
        value = Path(getattr(data, name))
        if not value.is_absolute() and not value.exists() and (root / value).exists():
            setattr(data, name, root / value)
    base = settings.model.base
    if (
        base not in SYMBOLIC_MODELS
        and not Path(base).is_absolute()
        and (root / base).exists()
        and not Path(base).exists()
    ):
        settings.model.base = str(root / base)
    return settings


def load_bench_settings(params: str | os.PathLike, overrides: dict[str, Any] | None = None):
    from jtcse.config import load_settings

    params = Path(params)
    return resolve_paths(load_settings(params, overrides or {}), params.resolve().parent)


def settings_dict(settings) -> dict:
    return settings.model_dump(mode="json", by_alias=True)


def environment() -> dict[str, Any]:
    """Hardware and software the numbers were measured on, plus the git commit."""
    import torch

    from jtcse.provenance import git_commit, git_dirty, hardware

    info: dict[str, Any] = {
        "hardware": hardware(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": git_commit(REPO),
        "git_dirty": git_dirty(REPO),
        "load_average": _loadavg(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device=None) -> tuple[float, Any]:
    """Wall seconds of one call (device work included: CUDA is synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def write_png(fig, path: Path) -> None:
    """The benchmarks' figure format (120 dpi, tight box), saved atomically by jtcse.io."""
    from jtcse.io import atomic_savefig

    atomic_savefig(fig, path, dpi=120, bbox_inches="tight")


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "—"
    return f"{value:.{digits}f}"


def summarise(per_seed: dict[int, dict]) -> dict[str, Any]:
    """Mean and sample std over seeds of per-seed records (``scores`` by task, ``train_s``, ``eval_s``)."""
    import numpy as np

    tasks = list(next(iter(per_seed.values()))["scores"])
    mean = {t: float(np.mean([r["scores"][t] for r in per_seed.values()])) for t in tasks}
    n = len(per_seed)
    std = {t: (float(np.std([r["scores"][t] for r in per_seed.values()], ddof=1)) if n > 1 else None) for t in tasks}
    timing = {}
    for k in ("train_s", "eval_s"):
        values = [r[k] for r in per_seed.values()]
        timing[k] = float(np.mean(values))
        timing[f"{k}_std"] = float(np.std(values, ddof=1)) if n > 1 else None
    return {"mean": mean, "std": std, "n_seeds": n, **timing}
