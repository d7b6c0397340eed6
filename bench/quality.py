"""Quality benchmark: the seven-task STS table of every model the method compares, trained under one budget.

Rows (same base checkpoint, corpus, step budget and seeds for every trained row):

  1  base checkpoint zero-shot, ``cls`` pooling (1a) and ``mean`` pooling (1b)
  2  unsupervised SimCSE, one tower (tower A, ``pretrain`` settings)
  3  plain twin ensemble: tower A + tower B of row 2's stage, sum of vectors, no joint training
  4  TNCSE: joint twin training from the two towers WITHOUT cross-attention (train.cross_attention.num_layers 0)
  5  JTCSE twin: the three losses + cross-attention, ``train`` settings as given
  6  JTCSE-D: one tower distilled from row 5's twin (``distill`` settings)
  C  optional control (``--rows control``): tower A trained ``train.steps`` more SimCSE steps, so one tower sees
     as many steps as each tower of the twins (pretrain.steps + train.steps)

Work is reused where it is the same thing: towers A and B are trained once per seed and feed rows 2-5; row 6
distils row 5's twin. Seed ``s`` (>= 1) shifts pretrain.tower_a.seed, pretrain.tower_b.seed, train.seed and distill.seed by
1000 * (s - 1), so seed 1 is exactly params.yaml. Rows in ``--repeat-rows`` (default SimCSE and JTCSE) run with
every seed and report mean and sample std; the other trained rows use the first seed.

    python bench/quality.py                                   # params.yaml, seeds 1 2 3, all rows
    python bench/quality.py --rows 1 2 5 --seeds 1 --set train.steps=60 --reuse-dir runs/bench/quality

Writes bench/results/quality.json, quality.md and quality.png (atomically).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

log = logging.getLogger("bench.quality")

SEED_STRIDE = 1000


@dataclass(frozen=True)
class Row:
    key: str
    number: str
    label: str
    needs_training: bool = True
    control: bool = False


ROWS: tuple[Row, ...] = (
    Row("base_cls", "1a", "base zero-shot (cls)", needs_training=False),
    Row("base_mean", "1b", "base zero-shot (mean)", needs_training=False),
    Row("simcse", "2", "unsup SimCSE (one tower)"),
    Row("ensemble", "3", "SimCSE twin ensemble (A+B, no joint training)"),
    Row("tncse", "4", "TNCSE twin (joint, no cross-attention)"),
    Row("jtcse", "5", "JTCSE twin"),
    Row("jtcse_d", "6", "JTCSE-D (distilled tower)"),
    Row("simcse_long", "C", "control: SimCSE tower, pretrain+train steps", control=True),
)
ROW_BY_KEY = {r.key: r for r in ROWS}
DEFAULT_ROWS = [r.key for r in ROWS if not r.control]
ALIASES = {
    "1": ["base_cls", "base_mean"],
    "1a": ["base_cls"],
    "1b": ["base_mean"],
    "base": ["base_cls", "base_mean"],
    "2": ["simcse"],
    "3": ["ensemble"],
    "4": ["tncse"],
    "5": ["jtcse"],
    "6": ["jtcse_d"],
    "c": ["simcse_long"],
    "control": ["simcse_long"],
    "all": DEFAULT_ROWS,
}


def parse_design(item: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value``: keys that do not start with a settings section are read under train."""
    from jtcse.config import Settings

    name, sep, spec = item.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--design expects name:key=value,..., got {item!r}")
    sections = {f.alias or n for n, f in Settings.model_fields.items()}
    overrides = common.parse_set([p for p in spec.split(",") if p.strip()])
    return name.strip(), {(k if k.split(".")[0] in sections else f"train.{k}"): v for k, v in overrides.items()}


@dataclass(frozen=True)
class RowTable:
    """The rows of one run: the fixed ones plus one JTCSE row per --design (5.1, 5.2, ... after row 5, keys
    design_<name>, usable in --rows and --repeat-rows), with the train overrides of each design."""

    rows: tuple[Row, ...] = ROWS
    designs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def by_key(self) -> dict[str, Row]:
        return {r.key: r for r in self.rows}


def row_table(design_items: list[str] | None = None) -> RowTable:
    rows, designs = list(ROWS), {}
    after = [r.key for r in ROWS].index("jtcse") + 1
    for i, item in enumerate(design_items or [], start=1):
        name, overrides = parse_design(item)
        designs[f"design_{name}"] = overrides
        bridged = overrides.get("train.cross_attention.num_layers") != 0
        label = f"{'JTCSE' if bridged else 'TNCSE'} twin, {name}"
        rows.insert(after + i - 1, Row(f"design_{name}", f"5.{i}", label))
    return RowTable(tuple(rows), designs)


def select_rows(items: list[str] | None, table: RowTable | None = None) -> list[str]:
    table = table or RowTable()
    if not items:
        return [r.key for r in table.rows if r.key in DEFAULT_ROWS or r.key in table.designs]
    by_key = table.by_key
    chosen: set[str] = set()
    for item in items:
        for part in item.replace(",", " ").split():
            key = part.strip().lower()
            if key in ALIASES:
                chosen.update(ALIASES[key])
            elif key in by_key or f"design_{key}" in by_key:
                chosen.add(key if key in by_key else f"design_{key}")
            else:
                raise SystemExit(f"--rows: unknown row {part!r}; use 1-6, C or one of {', '.join(by_key)}")
    return [r.key for r in table.rows if r.key in chosen]


def seeded_overrides(settings, seed: int) -> dict[str, int]:
    if seed < 1:
        raise SystemExit(f"--seeds must be positive integers (seed 1 = params.yaml), got {seed}")
    shift = SEED_STRIDE * (seed - 1)
    return {
        "pretrain.tower_a.seed": settings.pretrain.tower_a.seed + shift,
        "pretrain.tower_b.seed": settings.pretrain.tower_b.seed + shift,
        "train.seed": settings.train.seed + shift,
        "distill.seed": settings.distill.seed + shift,
    }


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class NotFinished(Exception):
    """--report-only: what a row needs is not in the work dir yet (the row's seed is left out of the report)."""


@dataclass
class Stage:
    """A trained model in the work dir: where it is, how long it took (wall), what it depends on."""

    name: str
    path: Path
    seconds: float
    fingerprint: str
    reused: bool
    requires: list[Stage] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    synthetic: bool = False  # a row made of other stages, with no training of its own (the ensemble)
    #: The finished stage of another name whose model this one reuses (same settings and inputs), and its
    #: fingerprint: the key of that stage's cached test scores. None when the stage is its own.
    source: str | None = None
    source_fingerprint: str | None = None

    @property
    def scores_key(self) -> tuple[str, str]:
        """(name, fingerprint) of the model's own training: where its test scores are cached and what they match."""
        return (self.source or self.name), (self.source_fingerprint or self.fingerprint)

    def _walk(self) -> dict[str, Stage]:
        found: dict[str, Stage] = {}

        def walk(stage: Stage) -> None:
            found.setdefault(stage.name, stage)
            for dep in stage.requires:
                walk(dep)

        walk(self)
        return found

    def total_seconds(self) -> float:
        """Wall time of every stage this model needs from the base checkpoint (shared stages counted once)."""
        return sum(s.seconds for s in self._walk().values())

    def breakdown(self) -> dict[str, float]:
        return {name: round(s.seconds, 2) for name, s in self._walk().items() if not s.synthetic}

    def reused_stages(self) -> list[str]:
        return sorted(name for name, s in self._walk().items() if s.reused and not s.synthetic)


class Workspace:
    """Trains each stage at most once per seed; with a persistent work dir, finished stages are reused across
    runs when their settings and inputs are unchanged, and an interrupted stage resumes from its checkpoint."""

    def __init__(self, root: Path, base_settings, train: bool = True):
        self.root = root
        self.base_settings = base_settings
        #: Off (--report-only): a stage or test score that is not already in the work dir raises NotFinished.
        self.train = train
        self.cache: dict[tuple[int, str], Stage] = {}

    def settings_for(self, seed: int, extra: dict[str, Any] | None = None):
        from jtcse.config import apply_overrides

        return apply_overrides(self.base_settings, {**seeded_overrides(self.base_settings, seed), **(extra or {})})

    def _run(self, seed: int, name: str, kind: str, section: str, settings, requires: list[Stage], train) -> Stage:
        """``kind`` names what ``train`` does beyond its settings and inputs (tower A and tower B read the same
        pretrain section but train with different seeds): only a finished stage of the same kind may stand in
        for this one under another name."""
        key = (seed, name)
        if key in self.cache:
            return self.cache[key]
        folder = self.root / f"seed{seed}"
        output, checkpoints, metrics = folder / name, folder / "checkpoints" / name, folder / "metrics" / name
        marker = folder / f"{name}.done.json"
        sections = {k: getattr(settings, k).model_dump(mode="json") for k in ("model", "data", "evaluate", section)}
        # The benchmark trains in this process, so runtime.nproc_per_node (read only by the CLI's torchrun
        # relaunch) changes nothing here and must not invalidate finished stages.
        # Nor do the CPU threads of this process: a benchmark resumed with another runtime.threads reuses its work.
        sections["runtime"] = settings.runtime.model_dump(mode="json", exclude={"nproc_per_node", "threads"})
        requires_fingerprints = [r.fingerprint for r in requires]

        def fingerprint_as(stage_name: str) -> str:
            return _digest({"stage": stage_name, "settings": sections, "requires": requires_fingerprints})

        fingerprint = fingerprint_as(name)
        stale = False
        if marker.is_file() and output.is_dir():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("fingerprint") == fingerprint:
                log.info("seed %d: reusing %s from %s (trained in %.1f s)", seed, name, output, done["seconds"])
                stage = Stage(
                    name, output, float(done["seconds"]), fingerprint, True, requires, done.get("summary", {})
                )
                self.cache[key] = stage
                return stage
            stale = True
        if (twin := self._same_training(folder, fingerprint_as, kind)) is not None:
            # e.g. quality's twin_jtcse and ablation's ablation_stream3 when the defaults are stream x 3
            source, done = twin
            log.info(
                "seed %d: reusing %s for %s: trained with the same settings and inputs (%.1f s)",
                seed,
                folder / source,
                name,
                done["seconds"],
            )
            stage = Stage(
                name,
                folder / source,
                float(done["seconds"]),
                fingerprint,
                True,
                requires,
                done.get("summary", {}),
                source=source,
                source_fingerprint=done["fingerprint"],
            )
            self.cache[key] = stage
            return stage
        if not self.train:
            raise NotFinished(f"seed {seed}: {name} is not trained")
        if stale:
            log.info("seed %d: %s in %s was made with other settings or inputs; retraining", seed, name, folder)
        from jtcse.training.checkpoints import latest_checkpoint

        resumed = latest_checkpoint(checkpoints) is not None  # the trainer resumes only with the same fingerprint
        log.info("seed %d: training %s -> %s%s", seed, name, output, " (a checkpoint exists)" if resumed else "")
        started = time.perf_counter()
        result = train(output=output, checkpoint_dir=checkpoints, metrics_dir=metrics)
        seconds = time.perf_counter() - started
        summary = {
            "dev_metric": settings.evaluate.selection,
            "best_dev": round(result.best_metric, 4),
            "best_step": result.best_step,
            "initial_dev": round(result.initial_metric, 4),
            "steps": result.steps,
            "trainer_seconds": round(result.seconds, 2),
            "checkpoint_found": resumed,
        }
        shutil.rmtree(checkpoints, ignore_errors=True)  # the model is final: resumable state is no longer needed
        from jtcse.io import atomic_write_json

        atomic_write_json(
            marker, {"fingerprint": fingerprint, "kind": kind, "seconds": round(seconds, 3), "summary": summary}
        )
        log.info(
            "seed %d: %s done in %.1f s (best dev %.2f at step %d)",
            seed,
            name,
            seconds,
            result.best_metric,
            result.best_step,
        )
        stage = Stage(name, output, seconds, fingerprint, False, requires, summary)
        self.cache[key] = stage
        return stage

    @staticmethod
    def _same_training(folder: Path, fingerprint_as, kind: str) -> tuple[str, dict] | None:
        """A finished stage of another name and the same kind in this seed's folder whose fingerprint, recomputed
        under its own name, is the one it stored: it was trained with these very settings and inputs. Markers
        written without a kind are reused only under their own name."""
        for marker in sorted(folder.glob("*.done.json")):
            other = marker.name.removesuffix(".done.json")
            if not (folder / other).is_dir():
                continue
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("kind") == kind and done.get("fingerprint") == fingerprint_as(other):
                return other, done
        return None

    def scores_by_content(self, identity: str, evaluate) -> tuple[dict[str, float], float, bool]:
        """The seven test tasks of the encoder whose weights and pooling hash to ``identity`` (see
        :func:`encoder_identity`), cached by that content: a stage that kept its step 0 ships its input's weights,
        and its scores are then the input's, read here instead of being computed again."""
        from jtcse.io import atomic_write_json

        cache = self.root / "scores-by-content" / f"{identity}.json"
        if cache.is_file():
            stored = json.loads(cache.read_text(encoding="utf-8"))
            log.info("test scores of an identical encoder from %s", cache)
            return stored["scores"], stored["eval_s"], True
        if not self.train:
            raise NotFinished(f"no test scores of encoder {identity} yet")
        started = time.perf_counter()
        scores = evaluate()
        eval_s = time.perf_counter() - started
        atomic_write_json(cache, {"scores": scores, "eval_s": round(eval_s, 2)})
        return scores, eval_s, False

    def test_scores(
        self, seed: int, stage: Stage, evaluate, identity: str | None = None
    ) -> tuple[dict[str, float], float, bool]:
        """The seven test tasks of a trained model, cached beside it (``<name>.test.json``, keyed by the training's
        fingerprint) so a rerun, or another benchmark reusing the model, does not evaluate it again; with an
        ``identity`` (:func:`encoder_identity`), an identical encoder's scores are reused too.
        Returns the scores, the seconds the evaluation took when it ran, and whether they came from the cache."""
        from jtcse.io import atomic_write_json

        name, fingerprint = stage.scores_key
        cache = self.root / f"seed{seed}" / f"{name}.test.json"
        if cache.is_file():
            stored = json.loads(cache.read_text(encoding="utf-8"))
            if stored.get("fingerprint") == fingerprint:
                log.info("seed %d: test scores of %s from %s", seed, stage.name, cache)
                return stored["scores"], stored["eval_s"], True
        if not self.train and identity is None:
            raise NotFinished(f"seed {seed}: no test scores of {stage.name} yet")
        if identity is not None:
            scores, eval_s, cached = self.scores_by_content(identity, evaluate)
        else:
            started = time.perf_counter()
            scores, cached = evaluate(), False
            eval_s = time.perf_counter() - started
        atomic_write_json(cache, {"fingerprint": fingerprint, "scores": scores, "eval_s": round(eval_s, 2)})
        return scores, eval_s, cached

    def tower(self, seed: int, which: str) -> Stage:
        from jtcse.training.stages import train_tower

        settings = self.settings_for(seed)
        return self._run(
            seed,
            f"tower_{which}",
            f"tower_{which}",
            "pretrain",
            settings,
            [],
            lambda **kw: train_tower(settings, which=which, **kw),
        )

    def simcse_long(self, seed: int) -> Stage:
        """Tower A trained train.steps more SimCSE steps (pretrain settings otherwise), from its stage-1 weights."""
        from jtcse.training.stages import train_tower

        base = self.settings_for(seed)
        settings = self.settings_for(seed, {"pretrain.steps": base.train.steps})
        tower_a = self.tower(seed, "a")
        return self._run(
            seed,
            "simcse_long",
            "tower_a",
            "pretrain",
            settings,
            [tower_a],
            lambda **kw: train_tower(settings, which="a", init=str(tower_a.path), **kw),
        )

    def twin(
        self, seed: int, cross_attention: bool = True, *, design: dict[str, Any] | None = None, name: str | None = None
    ) -> Stage:
        """Stage 2 from this seed's towers: the train settings, without the bridge (TNCSE), or with ``design``
        overrides (an ablation cell or a named design row, stored under ``name``)."""
        from jtcse.training.stages import train_twin

        extra = dict(design or {})
        if not cross_attention:
            extra["train.cross_attention.num_layers"] = 0
        settings = self.settings_for(seed, extra)
        a, b = self.tower(seed, "a"), self.tower(seed, "b")
        name = name or ("twin_jtcse" if cross_attention else "twin_tncse")
        return self._run(
            seed,
            name,
            "twin",
            "train",
            settings,
            [a, b],
            lambda **kw: train_twin(settings, tower_a=str(a.path), tower_b=str(b.path), **kw),
        )

    def distilled(self, seed: int) -> Stage:
        from jtcse.training.stages import distill_twin

        settings = self.settings_for(seed)
        twin = self.twin(seed, cross_attention=True)
        return self._run(
            seed,
            "distilled",
            "distill",
            "distill",
            settings,
            [twin],
            lambda **kw: distill_twin(settings, twin=str(twin.path), **kw),
        )


def make_encoder(
    row: str, ws: Workspace, seed: int, settings, designs: dict[str, dict[str, Any]] | None = None
) -> tuple[Callable[[], Any], Stage | None]:
    """The row's trained stage (training it when it is missing) and a loader of its encoder: loading waits until
    the test scores are not in the cache."""
    from jtcse.api import load_twin
    from jtcse.encoding import TowerEncoder, TwinEncoder
    from jtcse.formats import resolve_model_path
    from jtcse.training.build import tower_pooling

    device, max_length, pooling = settings.runtime.device, settings.evaluate.max_length, settings.model.pooling

    def tower(path, pooling: str = pooling) -> TowerEncoder:
        return TowerEncoder.from_pretrained(str(path), pooling, max_length, device, settings.model.trust_remote_code)

    def twin(stage: Stage):
        return load_twin(stage.path, device=device, max_length=max_length)

    if row in ("base_cls", "base_mean"):
        return functools.partial(tower, resolve_model_path(settings.model.base), row.split("_")[1]), None
    if row == "simcse":
        stage = ws.tower(seed, "a")
        return functools.partial(tower, stage.path, tower_pooling(settings, "a")), stage
    if row == "ensemble":
        a, b = ws.tower(seed, "a"), ws.tower(seed, "b")
        # The ensemble's "training" is both towers: a stage that depends on both, with no time of its own.
        stage = Stage("ensemble", b.path, 0.0, _digest([a.fingerprint, b.fingerprint]), False, [a, b], synthetic=True)
        return lambda: TwinEncoder(
            tower(a.path, tower_pooling(settings, "a")),
            tower(b.path, tower_pooling(settings, "b")),
            settings.train.twin_combine,
            settings.train.twin_normalize,
        ), stage
    if row in ("tncse", "jtcse"):
        stage = ws.twin(seed, cross_attention=row == "jtcse")
        return functools.partial(twin, stage), stage
    if row in (designs or {}):
        # Named like bench/ablation.py's cells, so a design trained there is reused here and vice versa.
        stage = ws.twin(seed, design=designs[row], name=f"ablation_{row.removeprefix('design_')}")
        return functools.partial(twin, stage), stage
    if row == "jtcse_d":
        stage = ws.distilled(seed)
        return functools.partial(tower, stage.path), stage
    if row == "simcse_long":
        stage = ws.simcse_long(seed)
        return functools.partial(tower, stage.path), stage
    raise KeyError(row)


def _weights_digest(path: str | Path) -> str:
    """SHA256 of a tower's weights as the model holds them (sorted names, raw bytes): equal for a checkpoint and a
    copy saved from it, whatever the file's metadata or tensor order."""
    from jtcse.modeling.towers import load_tower

    model, _ = load_tower(str(path))
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def encoder_identity(towers: list[tuple[str | Path, str]], combine: str = "sum", normalize: bool = False) -> str:
    """What an encoder's test scores depend on: its towers' weights and poolings and how they combine. A
    normalised sum of two identical towers points where the tower alone points (cosine ignores the factor 2), so
    it has the tower's identity."""
    parts = [(_weights_digest(path), pooling) for path, pooling in towers]
    if len(parts) == 2 and parts[0] == parts[1] and normalize and combine == "sum":
        parts = parts[:1]
    return _digest({"towers": parts, "combine": combine if len(parts) == 2 else None, "normalize": normalize})


def row_towers(row: str, stage: Stage | None, settings) -> tuple[list[tuple[str | Path, str]], str, bool]:
    """The (weights folder, pooling) of each tower a row's encoder runs, and how they combine."""
    from jtcse.formats import TWIN_MANIFEST, resolve_model_path, twin_poolings
    from jtcse.training.build import tower_pooling

    train = settings.train
    if row in ("base_cls", "base_mean"):
        return [(resolve_model_path(settings.model.base), row.split("_")[1])], "sum", False
    if row == "simcse":
        return [(stage.path, tower_pooling(settings, "a"))], "sum", False
    if row == "ensemble":
        a, b = stage.requires
        pools = (tower_pooling(settings, "a"), tower_pooling(settings, "b"))
        return [(a.path, pools[0]), (b.path, pools[1])], train.twin_combine, train.twin_normalize
    manifest_path = Path(stage.path) / TWIN_MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        pools = twin_poolings(manifest)
        towers = [(Path(stage.path) / name, pool) for name, pool in zip(manifest["towers"], pools)]
        return towers, manifest["combine"], bool(manifest.get("normalize", False))
    return [(stage.path, settings.model.pooling)], "sum", False


def summarise(per_seed: dict[int, dict]) -> dict[str, Any]:
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


def comparisons(rows: list[dict]) -> list[str]:
    """One line per table row that does not beat the row above it on the average."""
    lines = []
    main = [r for r in rows if not r["control"]]
    for above, row in zip(main, main[1:]):
        a, b = row["mean"]["avg"], above["mean"]["avg"]
        if not a > b:
            lines.append(
                f"row {row['number']} ({row['label']}) does not beat row {above['number']} "
                f"({above['label']}) on avg ({a:.2f} vs {b:.2f})"
            )
    by_key = {r["key"]: r for r in rows}
    if "simcse_long" in by_key and "jtcse" in by_key:
        c, j = by_key["simcse_long"], by_key["jtcse"]
        verb = "beats" if j["mean"]["avg"] > c["mean"]["avg"] else "does not beat"
        lines.append(
            f"control: row 5 ({j['label']}) {verb} row C ({c['label']}) on avg "
            f"({j['mean']['avg']:.2f} vs {c['mean']['avg']:.2f})"
        )
    return lines


def render_markdown(report: dict) -> str:
    from jtcse.evaluation.sts import STS_TASKS

    tasks = [*STS_TASKS, "avg"]
    names = {
        "sts12": "STS12",
        "sts13": "STS13",
        "sts14": "STS14",
        "sts15": "STS15",
        "sts16": "STS16",
        "stsb": "STS-B",
        "sickr": "SICK-R",
        "avg": "avg",
    }
    s = report["settings"]
    lines = [
        "# Quality benchmark: seven-task STS (Spearman x 100)",
        "",
        f"Base `{s['model']['base']}`, pooling `{s['model']['pooling']}`, corpus `{s['data']['corpus']}`"
        f"{' (first ' + str(s['data']['max_sentences']) + ')' if s['data']['max_sentences'] else ''}; "
        f"steps: pretrain {s['pretrain']['steps']} x batch {s['pretrain']['batch_size']}, "
        f"train {s['train']['steps']} x {s['train']['batch_size']}, distill {s['distill']['steps']} x "
        f"{s['distill']['batch_size']}; bridged layers {s['train']['cross_attention']['num_layers']} "
        f"({s['train']['cross_attention']['mode']}); seeds {report['seeds']}.",
        f"Hardware: {report['environment']['hardware']}; commit `{report['environment']['git_commit'][:12]}`"
        f"{' (uncommitted changes)' if report['environment'].get('git_dirty') else ''}; {report['environment']['created']}.",
        *(
            [f"Overrides of the params file: {', '.join(f'`{k}={v}`' for k, v in report['overrides'].items())}."]
            if report.get("overrides")
            else []
        ),
        "",
        "| # | model | " + " | ".join(names[t] for t in tasks) + " | train s | eval s | seeds |",
        "|---|---|" + "---:|" * (len(tasks) + 3),
    ]
    for row in report["rows"]:
        cells = []
        for t in tasks:
            m, sd = row["mean"][t], row["std"][t]
            cells.append(f"{m:.2f} ± {sd:.2f}" if sd is not None else f"{m:.2f}")
        train = common.fmt(row["train_s"], 1) if row["trained"] else "0"
        lines.append(
            f"| {row['number']} | {row['label']} | "
            + " | ".join(cells)
            + f" | {train} | {common.fmt(row['eval_s'], 1)} | {row['n_seeds']} |"
        )
    lines.append("")
    verdicts = report["comparisons"]
    if verdicts:
        lines += [f"- {v}" for v in verdicts]
    elif sum(not r["control"] for r in report["rows"]) > 1:
        lines.append("- every row beats the row above it on avg")
    if report.get("missing"):
        lines.append(f"- not finished when this table was made (left out): {', '.join(report['missing'])}")
    for row in report["rows"]:
        kept = [str(seed) for seed, r in row["per_seed"].items() if r["stage_summary"].get("best_step") == 0]
        if kept:
            lines.append(
                f"- row {row['number']} ({row['label']}): its last training stage kept its starting weights "
                f"(best dev score at step 0) for seed(s) {', '.join(kept)}"
            )
    lines += [
        "",
        "Mean ± sample std over seeds where a row ran with several. *train s*: wall seconds of every training stage "
        "the row's model needs, from the base checkpoint (shared stages counted in full for each row, reused ones at "
        "the time they took; dev evaluations during training included); *eval s*: loading the model and the seven "
        "tasks. Wall times on a shared machine are indicative only.",
    ]
    repeated = [r for r in report["rows"] if r["n_seeds"] > 1]
    if repeated:
        lines += [
            "",
            "## Per seed",
            "",
            "| # | model | seed | " + " | ".join(names[t] for t in tasks) + " | train s |",
            "|---|---|---:|" + "---:|" * (len(tasks) + 1),
        ]
        for row in repeated:
            for seed, r in row["per_seed"].items():
                lines.append(
                    f"| {row['number']} | {row['label']} | {seed} | "
                    + " | ".join(f"{r['scores'][t]:.2f}" for t in tasks)
                    + f" | {r['train_s']:.1f} |"
                )
    return "\n".join(lines) + "\n"


def render_plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jtcse.evaluation.sts import STS_TASKS

    tasks = [*STS_TASKS, "avg"]
    names = {"stsb": "STS-B", "sickr": "SICK-R", "avg": "avg"}
    rows = report["rows"]
    x = np.arange(len(tasks))
    width = 0.84 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(12, 5.2))
    for i, row in enumerate(rows):
        means = [row["mean"][t] for t in tasks]
        errs = [row["std"][t] or 0.0 for t in tasks]
        ax.bar(
            x - 0.42 + width * (i + 0.5),
            means,
            width,
            yerr=errs if any(errs) else None,
            capsize=2,
            label=f"{row['number']} {row['label']}",
        )
    ax.set_xticks(x, [names.get(t, t.upper()) for t in tasks])
    ax.set_ylabel("Spearman x 100")
    lo = min(min(r["mean"][t] for t in tasks) for r in rows)
    hi = max(max(r["mean"][t] + (r["std"][t] or 0.0) for t in tasks) for r in rows)
    ax.set_ylim(max(0.0, lo - 5) if lo > 0 else lo - 5, hi + 2)
    ax.set_title("Seven-task STS per model (mean over seeds; error bars: sample std)")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    common.write_png(fig, path)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    from jtcse.evaluation.sts import STS_TASKS, STSEvaluator
    from jtcse.io import atomic_write_json, atomic_write_text

    settings, overrides = common.run_settings(args)
    table = row_table(args.design)
    spec_of = table.by_key
    rows = select_rows(args.rows, table)
    seeds = list(dict.fromkeys(args.seeds))
    repeat = set(select_rows(args.repeat_rows, table)) if args.repeat_rows else set()
    out = Path(args.out)
    evaluator = STSEvaluator(
        settings.data.sts_dir, STS_TASKS, batch_size=settings.evaluate.batch_size, show_progress=True
    )

    with common.work_dir(args.reuse_dir, "jtcse-quality-") as work:
        log.info("rows %s, seeds %s (repeated rows: %s), work dir %s", rows, seeds, sorted(repeat & set(rows)), work)
        ws = Workspace(work, settings, train=not args.report_only)
        results: list[dict] = []
        missing: list[str] = []
        plan = [
            (row, seed)
            for row in rows
            for seed in (seeds if (row in repeat) else seeds[:1])
            if spec_of[row].needs_training or seed == seeds[0]
        ]
        per_row: dict[str, dict[int, dict]] = {}
        for i, (row, seed) in enumerate(plan, start=1):
            log.info("[%d/%d] %s, seed %d", i, len(plan), spec_of[row].label, seed)
            seed_settings = ws.settings_for(seed)
            try:
                load_encoder, stage = make_encoder(row, ws, seed, seed_settings, table.designs)

                def evaluate() -> dict[str, float]:
                    return evaluator(load_encoder())

                towers, combine, normalize = row_towers(row, stage, seed_settings)
                identity = encoder_identity(towers, combine, normalize)
                if stage is None:  # the base rows: nothing trained, cached by content only
                    scores, eval_s, cached = ws.scores_by_content(identity, evaluate)
                else:
                    scores, eval_s, cached = ws.test_scores(seed, stage, evaluate, identity)
            except NotFinished as why:
                log.info("--report-only: %s; %s seed %d left out", why, row, seed)
                missing.append(f"{row} seed {seed}")
                continue
            entry = {
                "scores": {k: round(v, 4) for k, v in scores.items()},
                "train_s": round(stage.total_seconds(), 2) if stage else 0.0,
                "train_stages_s": stage.breakdown() if stage else {},
                "reused_stages": stage.reused_stages() if stage else [],
                "eval_s": round(eval_s, 2),
                "eval_cached": cached,
                "encoder_identity": identity,
                "stage_summary": stage.summary if stage else {},
                "seeds_used": seeded_overrides(settings, seed) if stage else {},
            }
            log.info(
                "%s seed %d: avg %.2f (eval %.1f s%s)", row, seed, scores["avg"], eval_s, ", cached" if cached else ""
            )
            per_row.setdefault(row, {})[seed] = entry
        for row in rows:
            spec = spec_of[row]
            if row not in per_row:
                continue
            results.append(
                {
                    "key": row,
                    "number": spec.number,
                    "label": spec.label,
                    "control": spec.control,
                    "trained": spec.needs_training,
                    "per_seed": per_row[row],
                    **summarise(per_row[row]),
                }
            )

    report = {
        "benchmark": "quality",
        "command": " ".join(sys.argv) if __name__ == "__main__" else None,
        "params_file": str(args.params),
        "overrides": overrides,
        "seeds": seeds,
        "seed_derivation": f"seed s shifts pretrain.tower_a.seed, pretrain.tower_b.seed, train.seed, distill.seed by "
        f"{SEED_STRIDE} * (s - 1); seed 1 = the params file",
        "repeated_rows": sorted(repeat & set(rows)),
        "profile": args.profile,
        "row_overrides": {
            "tncse": {"train.cross_attention.num_layers": 0},
            **{k: table.designs[k] for k in rows if k in table.designs},
            "simcse_long": {"pretrain.steps": settings.train.steps, "init": "tower_a"},
        },
        "settings": common.settings_dict(settings),
        "environment": common.environment(),
        "work_dir": str(work) if args.reuse_dir else None,
        "rows": results,
        "missing": missing,
    }
    report["comparisons"] = comparisons(results)
    atomic_write_json(out / "quality.json", report)
    atomic_write_text(out / "quality.md", render_markdown(report))
    render_plot(report, out / "quality.png")
    log.info("wrote %s, %s, %s", out / "quality.json", out / "quality.md", out / "quality.png")
    for line in report["comparisons"]:
        log.info(line)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = common.training_bench_parser(
        __doc__, set_help="override a setting, dotted key, value parsed as YAML (repeatable): --set train.steps=60"
    )
    p.add_argument(
        "--design",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="an extra JTCSE row with these train overrides, e.g. "
        "stream6:cross_attention.mode=stream,cross_attention.num_layers=6 (repeatable)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[1, 2, 3],
        help="seeds of the repeated rows; the first one is used by the others (default: 1 2 3)",
    )
    p.add_argument(
        "--rows", nargs="+", help=f"rows to run: 1-6, C (control), or keys ({', '.join(ROW_BY_KEY)}); default: 1-6"
    )
    p.add_argument(
        "--repeat-rows",
        nargs="*",
        default=["simcse", "jtcse"],
        help="rows run with every seed (default: simcse jtcse; 'all' for 1-6)",
    )
    p.add_argument("--out", default=str(common.RESULTS), help="results folder (default: bench/results)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train and evaluate nothing: the table of what the work dir holds (rows and seeds missing are listed)",
    )
    p.add_argument(
        "--reuse-dir",
        help="persistent work dir for models: finished stages with the same settings are "
        "reused and interrupted ones resume (e.g. runs/bench/quality); default: a temporary dir, deleted",
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    main()
